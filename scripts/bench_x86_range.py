#!/usr/bin/env python
"""x86/fbgemm int8 on this CPU: 8-bit activations and weights, 7-bit activations, or 7-bit weights.

Without VNNI, fbgemm sums pairs of u8 x s8 products in int16 (``vpmaddubsw``), which saturates at
8/8 bits; either operand can give up a bit. Every row is a level-2 x86 bundle made by ``fdq quantize``
(the product path, calibrated on ``calib``) per model, long side and ``--reduce-range`` choice, scored
through the runner's code on ``val`` and on ``calib`` (a second split: the calibration images, so
in-sample for the ranges), against the same model's fp32 bundle. ``kernel_error`` is
:func:`fdq.calibration.quant_api.integer_kernel_error` on 4 calibration images at 320: the largest
difference, in output codes of any convolution, between the int8 kernel and a float computation from
its own int8 operands (1 is rounding; saturation makes far more), of a model calibrated on 8 images. ``cpu_flags`` says whether this CPU
has VNNI: the numbers hold for CPUs like it.

Example::

    FDQ_WEIGHTS_PATH=../shared/weights python scripts/bench_x86_range.py \\
        --json docs/results/bench_x86_range.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchlib.data import add_data_argument, data_of
from benchlib.results import result, write_result

from fdq.device.outputs import checked_outputs_or_exit

CHOICES = ("none", "activations", "weights")
SETTINGS = ("easy", "medium", "hard")
KERNEL_IMAGES = 4


def ap_of(bundle: Path, images: Path, gt: Path) -> Dict[str, float]:
    from fdq.device.bundle import load_bundle
    from fdq.device.evaluation import load_ground_truth
    from fdq.device.runtimes import bundle_detector
    from fdq.host.evaluate import evaluate_detector

    result = evaluate_detector(bundle_detector(load_bundle(str(bundle)), 1, None), str(images), load_ground_truth(str(gt)))
    return {s: round(float(result[s]), 4) for s in SETTINGS}


def quantize(model: str, side: int, choice: str, calib: Path, out: Path) -> Path:
    from fdq.host.cli import main

    flags = ["--fp32"] if choice == "fp32" else ["--level", "2", "--backend", "x86", "--calib", str(calib),
                                                 *(["--no-reduce-range"] if choice == "none" else
                                                   ["--reduce-range", choice])]
    if main(["quantize", "--model", model, "--long-side", str(side), *flags, "--out", str(out)]) != 0:
        sys.exit(f"bench_x86_range: fdq quantize {model} {side} {choice} failed")
    return out


def kernel_error(model_name: str, choice: str, calib: Path) -> int:
    """The worst integer-kernel difference of the level-2 x86 model on a few calibration images at 320."""
    from fdq.calibration import ptq, quant_api
    from fdq.calibration.data import find_images
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    model = load_model(model_name, resolve_weights(model_name, None))
    blobs, _ = find_images(str(calib)).subset(range(2 * KERNEL_IMAGES)).load(320, SPECS[model_name].mean_bgr)
    quant_api.set_engine("x86")
    int8 = ptq.calibrate(model, ptq.PTQOptions(backend="x86", reduce_range=choice), blobs).convert()
    return max(quant_api.integer_kernel_error(int8, blobs[:KERNEL_IMAGES]).values())


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--models", default="slim,rfb,mnet025")
    p.add_argument("--long-sides", default="320,640")
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    checked_outputs_or_exit("bench_x86_range", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib").root
    splits = {"val": (data / "val" / "images", data / "val" / "ground_truth"),
              "calib": (data / "calib" / "images", data / "calib" / "ground_truth")}
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            errors = {choice: kernel_error(model, choice, splits["calib"][0]) for choice in CHOICES}
            for side in map(int, args.long_sides.split(",")):
                for choice in ("fp32",) + CHOICES:
                    bundle = quantize(model, side, choice, splits["calib"][0], Path(tmp) / f"{model}-{side}-{choice}")
                    row = {"model": model, "long_side": side, "choice": choice,
                           **{split: ap_of(bundle, *paths) for split, paths in splits.items()}}
                    if choice != "fp32":
                        row["kernel_error"] = errors[choice]
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    write_result(args.json, result("bench_x86_range", rows, {"level": 2, "backend": "x86", "calib": "calib",
                                                             "kernel_images": KERNEL_IMAGES}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
