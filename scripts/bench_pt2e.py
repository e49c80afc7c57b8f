#!/usr/bin/env python3
"""PT2E (XNNPACK quantizer) int8 against float: AP per activation observer and weight-scale floor.

For each model: ``fdq quantize --level 2 --backend xnnpack``'s calibration (fusion, cross-layer
equalization, the calibration images less the held-back ones, :func:`fdq.calibration.ptq.calibrate_pt2e`)
with each variant, and AP on the val split at the long side through the PT2E reference model (the
integer arithmetic in float form, which the ExecuTorch program follows within one rounding step),
in the runner's pipeline (uint8 resize). Lowering each variant would take minutes; the shipped default
is checked lowered by ``tests/test_runtimes.py``. Also the output SQNR (dB) against float on the
held-back calibration images, which AP on 64 images only roughly follows.

    python scripts/bench_pt2e.py --models slim,rfb,mnet025

Writes docs/results/bench_pt2e.json.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from benchlib.data import REPO, add_data_argument, data_of
from benchlib.results import result, write_result
from benchlib.scoring import score

from fdq.device.evaluation import SETTINGS


def _variants() -> Dict[str, Tuple[str, Optional[float]]]:
    """name -> (activation observer, weight-scale floor; None: fdq's default, float32's eps)."""
    from fdq.calibration.quant_api import PT2E_PERCENTILE, XNNPACK_STOCK_EPS

    return {"xnnpack-stock (histogram, eps 2**-12)": ("histogram", XNNPACK_STOCK_EPS),
            "minmax": ("minmax", None), "histogram": ("histogram", None),
            f"percentile {PT2E_PERCENTILE} (default)": ("percentile", None)}


def sqnr_db(reference, candidate, blobs: List[torch.Tensor]) -> List[float]:
    """Mean output SQNR (loc, conf, landmarks) of ``candidate`` against ``reference``."""
    from fdq.calibration.report import output_sqnr_db

    with torch.no_grad():
        per = [[output_sqnr_db(r, c) for r, c in zip(reference(b), candidate(b))] for b in blobs]
    return [round(float(v), 2) for v in np.mean(per, axis=0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-side", type=int, default=320)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_pt2e.json"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    from fdq.device.outputs import checked_outputs_or_exit

    target, = checked_outputs_or_exit("bench_pt2e", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib")

    from fdq.calibration.data import find_images, split_holdout
    from fdq.calibration.ptq import calibrate_pt2e
    from fdq.host.export.executorch import export_inputs
    from fdq.host.torch_inference import torch_inference
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    torch.set_num_threads(1)
    gt = data.ground_truth()
    example, dynamic, _ = export_inputs(args.long_side)
    rows: List[dict] = []
    for name in args.models.split(","):
        spec = SPECS[name]
        model = load_model(name, resolve_weights(name, None)).eval()
        images = find_images(str(data.calib_images))
        blobs, _ = images.load(args.long_side, spec.mean_bgr)
        calibrate_on, held_back = split_holdout(images)
        by_key = dict(zip(images.keys, blobs))
        calib, check = [by_key[k] for k in calibrate_on.keys], [by_key[k] for k in held_back.keys]
        float_ap = score(torch_inference(model), name, args.long_side, data.val_images, gt, resize="uint8")
        rows.append({"model": name, "variant": "float", "ap": float_ap})
        for variant, (observer, eps) in _variants().items():
            quantized, _ = calibrate_pt2e(model, calib, example, dynamic, observer=observer, weight_eps=eps)
            got = score(torch_inference(quantized), name, args.long_side, data.val_images, gt, resize="uint8")
            rows.append({"model": name, "variant": variant, "ap": got,
                         "drop": {s: round(float_ap[s] - got[s], 2) for s in SETTINGS},
                         "sqnr_db_loc_conf_landm": sqnr_db(model, quantized, check)})
            print(rows[-1], flush=True)
    write_result(target, result("bench_pt2e", rows, settings={
        "long_side": args.long_side, "split": "val (64 images)", "threads": 1,
        "through": "PT2E reference model, runner pipeline, uint8 resize"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
