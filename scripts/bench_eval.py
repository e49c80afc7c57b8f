#!/usr/bin/env python3
"""Evaluation speed: the whole val split with the model, and decode + NMS against the forward pass.

Compares, on the same real network outputs, fdq's post-processing (whichever path
``FaceDetector`` selects) with the upstream reference's (decode every anchor in torch, filter,
sort, NMS in Python/numpy). Medians after warm-up, 1 thread, within one run.

    python scripts/bench_eval.py --shared ../shared --json docs/results/bench_eval.json --force
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fdq.device.anchors import prior_boxes
from fdq.device.atomic import atomic_write_text
from fdq.device.detector import FaceDetector
from fdq.device.evaluation import load_ground_truth
from fdq.device.images import list_images, read_image
from fdq.device.nms import nms
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.preprocess import normalize, resize_image
from fdq.host.evaluate import evaluate_detector
from fdq.host.torch_inference import torch_inference
from fdq.models import SPECS, load_model


def reference_postprocess(loc, scores, landm, priors, variances, size, ratio, thr=0.02, nms_thr=0.4):
    """The upstream test script's steps: decode all anchors (torch), filter, argsort, py_cpu_nms."""
    loc_t, pri_t = torch.from_numpy(loc), torch.from_numpy(priors)
    boxes = torch.cat((pri_t[:, :2] + loc_t[:, :2] * variances[0] * pri_t[:, 2:],
                       pri_t[:, 2:] * torch.exp(loc_t[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    w, h = size
    boxes = (boxes * torch.tensor([w, h, w, h], dtype=torch.float32) / ratio).numpy()
    lm_t = torch.from_numpy(landm)
    landms = torch.cat([pri_t[:, :2] + lm_t[:, 2 * k:2 * k + 2] * variances[0] * pri_t[:, 2:] for k in range(5)], 1)
    landms = (landms * torch.tensor([w, h] * 5, dtype=torch.float32) / ratio).numpy()
    inds = np.where(scores > thr)[0]
    boxes, landms, sc = boxes[inds], landms[inds], scores[inds]
    order = sc.argsort()[::-1]
    boxes, landms, sc = boxes[order], landms[order], sc[order]
    keep = nms(boxes, nms_thr)
    return boxes[keep], sc[keep], landms[keep]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("FDQ_SHARED", "../shared"))
    ap.add_argument("--model", default="slim")
    ap.add_argument("--long-side", type=int, default=320)
    ap.add_argument("--json", default="docs/results/bench_eval.json")
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    target, = checked_outputs_or_exit("bench_eval", args.force, ("--json", args.json))

    torch.set_num_threads(1)
    split = Path(args.shared) / "data" / "widerface_val_subset" / "val"
    gt = load_ground_truth(split / "ground_truth")
    weights = Path(args.shared) / "weights" / {"slim": "slim_Final.pth", "rfb": "RBF_Final.pth",
                                                 "mnet025": "mobilenet0.25_Final.pth"}[args.model]
    model = load_model(args.model, weights)
    spec = SPECS[args.model]
    infer = torch_inference(model)
    detector = FaceDetector(infer, spec, long_side=args.long_side)

    evaluate_detector(detector, str(split / "images"), gt)  # warm-up (and kernel build)
    walls = [evaluate_detector(detector, str(split / "images"), gt)["seconds"] for _ in range(3)]

    forward, ours, reference, candidates = [], [], [], []
    for _, path in list_images(str(split / "images")):
        resized, ratio = resize_image(read_image(path), args.long_side)
        blob = normalize(resized, spec.mean_bgr)
        h, w = resized.shape[:2]
        priors = prior_boxes(spec.min_sizes, spec.steps, h, w)
        outputs = infer(blob)
        candidates.append(int((outputs[1] > 0.02).sum()))
        forward.append(median_ms(lambda: infer(blob), 3))
        ours.append(median_ms(lambda: detector.postprocess(*outputs, priors, spec.variance, (w, h), ratio), 5))
        reference.append(median_ms(lambda: reference_postprocess(*outputs, priors, spec.variance, (w, h), ratio), 5))

    result = {
        "command": "python scripts/bench_eval.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": str(torch.__version__), "threads": 1},
        "model": args.model, "long_side": args.long_side, "images": len(forward),
        "kernels": detector.kernels,
        "val_split_seconds_median": statistics.median(walls), "val_split_seconds_runs": walls,
        "per_image_median_ms": {"forward": statistics.median(forward), "postprocess_fdq": statistics.median(ours),
                                "postprocess_reference": statistics.median(reference)},
        "candidates_median": statistics.median(candidates),
    }
    per = result["per_image_median_ms"]
    result["ratios"] = {"fdq_post_over_forward": per["postprocess_fdq"] / per["forward"],
                        "reference_post_over_forward": per["postprocess_reference"] / per["forward"],
                        "reference_over_fdq_post": per["postprocess_reference"] / per["postprocess_fdq"]}
    atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
