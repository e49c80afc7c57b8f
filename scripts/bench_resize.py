#!/usr/bin/env python3
"""AP of the two resize paths on the val split: the reference protocol's float32 resize and the device
path's uint8 resize (``fdq.device.preprocess``), same float model, same everything else.

    python scripts/bench_resize.py --models slim,rfb,mnet025 --long-sides 320,640 --force

Writes docs/results/bench_resize.json.
"""
from __future__ import annotations

import argparse
import sys

from benchlib.data import REPO, add_data_argument, data_of
from benchlib.results import result, write_result
from benchlib.scoring import score

from fdq.device.evaluation import SETTINGS
from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import load_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-sides", default="320,640")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_resize.json"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    target, = checked_outputs_or_exit("bench_resize", args.force, ("--json", args.json))
    data = data_of(args, "val")
    gt = data.ground_truth()
    rows = []
    for name in args.models.split(","):
        infer = torch_inference(load_model(name, resolve_weights(name, None)))
        for side in (int(v) for v in args.long_sides.split(",")):
            ap_of = {resize: score(infer, name, side, data.val_images, gt, resize=resize, digits=3)
                     for resize in ("reference", "uint8")}
            rows.append({"model": name, "long_side": side, "ap_points": ap_of,
                         "uint8_minus_reference": {s: round(ap_of["uint8"][s] - ap_of["reference"][s], 3)
                                                   for s in SETTINGS}})
            print(rows[-1], flush=True)
    worst = max(abs(v) for r in rows for v in r["uint8_minus_reference"].values())
    write_result(target, result("bench_resize", rows, settings={"split": "val (64 images)"},
                                summary={"largest_difference_ap_points": worst}))
    print(f"largest |uint8 - reference|: {worst:.3f} AP points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
