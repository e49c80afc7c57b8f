#!/usr/bin/env python
"""x86/fbgemm int8 on this CPU: 8-bit activations and weights, 7-bit activations, 7-bit weights, or 7-bit
weights only in the convolutions whose kernel saturates (``saturating-weights``).

Without VNNI, fbgemm sums pairs of u8 x s8 products in int16 (``vpmaddubsw``), which saturates at
8/8 bits; either operand can give up a bit. Every row is a level-2 x86 bundle made by ``fdq quantize``
(the product path, calibrated on ``calib``) per model, long side and ``--reduce-range`` choice, scored
through the runner's code on ``val`` and on ``calib`` (a second split: the calibration images, so
in-sample for the ranges), against the same model's fp32 bundle. The eager model of the same settings
gives ``output_error`` (mean |int8 - float| box offset and face logit over the anchors float scores,
on every val image: finer than the AP of 64 images) and ``kernel_error``
(:func:`fdq.calibration.quant_api.integer_kernel_error` on 4 calibration images: the largest difference,
in output codes of any convolution, between the int8 kernel and a float computation from its own int8
operands; 1 is rounding, saturation makes far more). ``machine.cpu_features`` says whether this CPU
has VNNI: the numbers hold for CPUs like it. ``--choices`` with ``--update`` measures some choices again
(or a new one) and keeps the other rows of the existing ``--json`` (``settings.kept_rows_from`` names
the run that measured them).

Example::

    FDQ_WEIGHTS_PATH=../shared/weights python scripts/bench_x86_range.py \\
        --json docs/results/bench_x86_range.json
    python scripts/bench_x86_range.py --choices saturating-weights --update --json docs/results/bench_x86_range.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchlib.data import add_data_argument, data_of
from benchlib.results import read_result, result, write_result

from fdq.device.outputs import checked_outputs_or_exit

CHOICES = ("none", "activations", "weights", "saturating-weights")
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


def errors(model_name: str, side: int, choice: str, calib: Path, val: Path) -> Dict[str, Any]:
    """The eager level-2 x86 model of the same settings as the bundle (calibrated on every ``calib`` image at
    ``side``): its worst integer-kernel difference on a few calibration images, and its output error
    against float on every ``val`` image (continuous, so finer than the AP of 64 images)."""
    from fdq.calibration import ptq, quant_api
    from fdq.calibration.data import find_images
    from fdq.calibration.report import output_error
    from fdq.host.torch_inference import torch_inference
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    model = load_model(model_name, resolve_weights(model_name, None))
    mean = SPECS[model_name].mean_bgr
    blobs, _ = find_images(str(calib)).load(side, mean)
    quant_api.set_engine("x86")
    int8 = ptq.calibrate(model, ptq.PTQOptions(backend="x86", reduce_range=choice), blobs).convert()
    kernel = max(quant_api.integer_kernel_error(int8, blobs[:KERNEL_IMAGES]).values())
    val_blobs = [b.numpy() for b in find_images(str(val)).load(side, mean)[0]]
    return {"kernel_error": kernel,
            "output_error": output_error(torch_inference(model), torch_inference(int8), val_blobs)}


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--models", default="slim,rfb,mnet025")
    p.add_argument("--long-sides", default="320,640")
    p.add_argument("--choices", default=",".join(("fp32",) + CHOICES),
                   help="comma list of fp32 and the --reduce-range choices to measure")
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    p.add_argument("--update", action="store_true",
                   help="keep the existing --json's rows of the models, sides and choices not measured now")
    args = p.parse_args(argv)
    choices = args.choices.split(",")
    unknown = sorted(set(choices) - {"fp32", *CHOICES})
    if unknown:
        sys.exit(f"bench_x86_range: unknown --choices {', '.join(unknown)} (fp32, {', '.join(CHOICES)})")
    earlier = read_result(args.json, "bench_x86_range") if args.update else None
    if not args.update:
        checked_outputs_or_exit("bench_x86_range", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib").root
    splits = {"val": (data / "val" / "images", data / "val" / "ground_truth"),
              "calib": (data / "calib" / "images", data / "calib" / "ground_truth")}
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for side in map(int, args.long_sides.split(",")):
                for choice in choices:
                    bundle = quantize(model, side, choice, splits["calib"][0], Path(tmp) / f"{model}-{side}-{choice}")
                    row = {"model": model, "long_side": side, "choice": choice,
                           **{split: ap_of(bundle, *paths) for split, paths in splits.items()}}
                    if choice != "fp32":
                        row.update(errors(model, side, choice, splits["calib"][0], splits["val"][0]))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    settings: Dict[str, Any] = {"level": 2, "backend": "x86", "calib": "calib", "kernel_images": KERNEL_IMAGES,
                                "output_error_on": "val"}
    if earlier is not None:
        measured = {(r["model"], r["long_side"], r["choice"]) for r in rows}
        kept = [r for r in earlier["rows"] if (r["model"], r["long_side"], r["choice"]) not in measured]
        models = list(dict.fromkeys([r["model"] for r in earlier["rows"]] + args.models.split(",")))
        rows = sorted(kept + rows, key=lambda r: (models.index(r["model"]), r["long_side"],
                                                   (("fp32",) + CHOICES).index(r["choice"])))
        settings["kept_rows_from"] = earlier["settings"].get("kept_rows_from") or \
            {"command": earlier["command"], "created": earlier["created"]}
    write_result(args.json, result("bench_x86_range", rows, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
