#!/usr/bin/env python
"""How far the AP drop of one quantization method moves with the choice of calibration images.

For each model and long side the script scores the float model on the val images, then the
level-2 int8 model (the ``fdq quantize --level 2`` defaults: x86, histogram observer, per-channel
weights, cross-layer equalization; bias correction with ``--bias-correction``) calibrated on
``--subsets`` draws of 24 of the 32 ``calib`` images: first the 24 ``fdq quantize`` itself
calibrates on, then random ones. For each draw it
records the drop (the largest AP loss over the six settings, easy/medium/hard at each long side,
as in the goals) and the int8 output error against float on the val anchors the float model
scores >= 0.1 (:func:`fdq.calibration.report.output_error`): mean |delta| of the box offsets and
of the face logit.

The output error measures how close int8 is to float with thousands of anchors behind each
number; the drop is what a 64-image split makes of it. Their spread over draws of the same method
is the resolution any AP goal on this split can be checked at.

    python scripts/bench_ap_resolution.py --json docs/results/bench_ap_resolution.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from benchlib.data import Data, add_data_argument, data_of
from benchlib.results import result, write_result
from benchlib.scoring import score

from fdq.calibration import ptq
from fdq.calibration.data import find_images, split_holdout
from fdq.calibration.report import output_error
from fdq.device.evaluation import SETTINGS
from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import MODEL_NAMES, load_model

GOAL_POINTS = 0.5


def max_drop(reference: Dict[str, Dict[str, float]], candidate: Dict[str, Dict[str, float]]) -> float:
    return max(reference[side][s] - candidate[side][s] for side in reference for s in SETTINGS)


def run_model(model: str, data: Data, long_sides: List[int], subsets: int, seed: int,
              options: ptq.PTQOptions) -> Dict[str, Any]:
    val_images, gt = str(data.val_images), data.ground_truth()
    float_model = load_model(model, resolve_weights(model, None)).eval()
    float_infer = torch_inference(float_model)
    calib = find_images(str(data.calib_images))
    own = split_holdout(calib)[0]  # what ``fdq quantize`` calibrates on
    ap_float = {str(side): score(float_infer, model, side, val_images, gt) for side in long_sides}
    val = find_images(val_images)
    val_blobs = {side: [b.numpy() for b in val.load(side, float_model.spec.mean_bgr)[0]] for side in long_sides}
    rng = np.random.default_rng(seed)
    draws = []
    for k in range(subsets):
        picked = own if k == 0 else calib.subset(sorted(rng.choice(len(calib), len(own), replace=False).tolist()))
        ap, errors = {}, {}
        for side in long_sides:
            blobs, _ = picked.load(side, float_model.spec.mean_bgr)
            int8 = ptq.calibrate(float_model, options, blobs).convert()
            int8_infer = torch_inference(int8)
            ap[str(side)] = score(int8_infer, model, side, val_images, gt)
            errors[str(side)] = output_error(float_infer, int8_infer, val_blobs[side])
        draws.append({"images": list(picked.keys), "ap": ap, "max_drop": round(max_drop(ap_float, ap), 3),
                      "error": errors})
    drops = [d["max_drop"] for d in draws]
    error_mean = {str(side): {k: round(statistics.mean(d["error"][str(side)][k] for d in draws), 4)
                              for k in ("box_offset", "face_logit")} for side in long_sides}
    return {"model": model, "ap_float": ap_float, "calibration_images": len(own), "draws": draws,
            "output_error_mean": error_mean,
            "max_drop": {"min": min(drops), "median": round(statistics.median(drops), 3), "max": max(drops)},
            "share_within_goal": round(sum(d <= GOAL_POINTS for d in drops) / len(drops), 3)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--models", default=",".join(MODEL_NAMES))
    p.add_argument("--long-sides", default="320,640")
    p.add_argument("--subsets", type=int, default=8, help="calibration subsets per model (the first: fdq quantize's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--json", default="docs/results/bench_ap_resolution.json")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    target, = checked_outputs_or_exit("bench_ap_resolution", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib")
    torch.set_num_threads(1)
    sides = [int(s) for s in args.long_sides.split(",")]
    options = ptq.PTQOptions(backend="x86", bias_correction=args.bias_correction)
    results = []
    for model in args.models.split(","):
        results.append(run_model(model, data, sides, args.subsets, args.seed, options))
        print(json.dumps({k: results[-1][k] for k in ("model", "max_drop", "share_within_goal", "output_error_mean")}),
              flush=True)
    write_result(target, result("bench_ap_resolution", results, argv=argv,
                                settings={"goal_points": GOAL_POINTS, "ptq_options": options.to_dict(),
                                          "long_sides": sides, "subsets": args.subsets, "seed": args.seed}))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
