#!/usr/bin/env python3
"""AP of the two resize paths: the reference protocol's float32 resize and the device path's uint8 resize
(``fdq.device.preprocess``), same model, same everything else. They differ by at most one grey level per
pixel, so what they move AP by is how finely a split's AP resolves anything (int8 drops included).

    python scripts/bench_resize.py --models slim,rfb,mnet025 --long-sides 320,640 --force

writes docs/results/bench_resize.json (the float models on val). ``--bundles A,B`` scores bundles instead
(each at its own long side, through the runner's code: ``bundle_detector``), on each of ``--splits``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

from benchlib.data import REPO, add_data_argument, data_of
from benchlib.results import result, write_result
from benchlib.scoring import score, score_detector

from fdq.device.bundle import load_bundle
from fdq.device.evaluation import SETTINGS, load_ground_truth
from fdq.device.runtimes import bundle_detector
from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import load_model


def _scored(args: argparse.Namespace, images: Path, gt: Any) -> Iterator[Tuple[Dict[str, str], int, Dict]]:
    """(what was scored, long side, AP per resize) for each float model and side, or each bundle."""
    resizes = ("reference", "uint8")
    if args.bundles:
        for folder in args.bundles.split(","):
            bundle = load_bundle(folder)
            yield ({"bundle": Path(folder).name, "model": bundle.manifest["model"]["name"]}, bundle.long_side,
                   {r: score_detector(bundle_detector(bundle, 1, resize=r), images, gt, digits=3) for r in resizes})
        return
    for name in args.models.split(","):
        infer = torch_inference(load_model(name, resolve_weights(name, None)))
        for side in (int(v) for v in args.long_sides.split(",")):
            yield {"model": name}, side, {r: score(infer, name, side, images, gt, resize=r, digits=3) for r in resizes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-sides", default="320,640")
    ap.add_argument("--bundles", help="comma list of bundle folders to score instead of --models")
    ap.add_argument("--splits", default="val", help="comma list of splits to score on (val, calib)")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_resize.json"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    target, = checked_outputs_or_exit("bench_resize", args.force, ("--json", args.json))
    splits = args.splits.split(",")
    data = data_of(args, *splits)
    rows = []
    for split in splits:
        images, gt = data.root / split / "images", load_ground_truth(data.root / split / "ground_truth")
        for subject, side, ap_of in _scored(args, images, gt):
            rows.append({**subject, "split": split, "long_side": side, "ap_points": ap_of,
                         "uint8_minus_reference": {s: round(ap_of["uint8"][s] - ap_of["reference"][s], 3)
                                                   for s in SETTINGS}})
            print(rows[-1], flush=True)
    worst = max(abs(v) for r in rows for v in r["uint8_minus_reference"].values())
    write_result(target, result("bench_resize", rows, settings={"splits": splits},
                                summary={"largest_difference_ap_points": worst}))
    print(f"largest |uint8 - reference|: {worst:.3f} AP points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
