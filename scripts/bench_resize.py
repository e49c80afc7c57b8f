#!/usr/bin/env python3
"""AP of the two resize paths on the val split: the reference protocol's float32 resize and the device
path's uint8 resize (``fdq.device.preprocess``), same float model, same everything else.

    python scripts/bench_resize.py --models slim,rfb,mnet025 --long-sides 320,640 --force

Writes docs/results/bench_resize.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fdq.device.atomic import atomic_write_text
from fdq.device.detector import FaceDetector
from fdq.device.evaluation import load_ground_truth
from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.evaluate import evaluate_detector
from fdq.host.torch_inference import torch_inference
from fdq.models import SPECS, load_model

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("easy", "medium", "hard")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("FDQ_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-sides", default="320,640")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "bench_resize.json"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    target, = checked_outputs_or_exit("bench_resize", args.force, ("--json", args.json))
    shared = Path(args.shared)
    split = shared / "data" / "widerface_val_subset" / "val"
    gt = load_ground_truth(split / "ground_truth")
    weights = {"slim": "slim_Final.pth", "rfb": "RBF_Final.pth", "mnet025": "mobilenet0.25_Final.pth"}
    rows = []
    for name in args.models.split(","):
        infer = torch_inference(load_model(name, shared / "weights" / weights[name]))
        for side in (int(v) for v in args.long_sides.split(",")):
            ap_of = {}
            for resize in ("reference", "uint8"):
                result = evaluate_detector(FaceDetector(infer, SPECS[name], side, resize=resize), str(split / "images"), gt)
                ap_of[resize] = {s: round(100 * result[s], 3) for s in SETTINGS}
            rows.append({"model": name, "long_side": side, "ap_points": ap_of,
                         "uint8_minus_reference": {s: round(ap_of["uint8"][s] - ap_of["reference"][s], 3)
                                                   for s in SETTINGS}})
            print(rows[-1], flush=True)
    worst = max(abs(v) for r in rows for v in r["uint8_minus_reference"].values())
    atomic_write_text(target, json.dumps({"command": "python scripts/bench_resize.py " + " ".join(sys.argv[1:]),
                                             "split": "val (64 images)", "rows": rows,
                                             "largest_difference_ap_points": worst}, indent=2) + "\n")
    print(f"largest |uint8 - reference|: {worst:.3f} AP points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
