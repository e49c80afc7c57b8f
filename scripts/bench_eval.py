#!/usr/bin/env python3
"""Evaluation speed: the whole val split with the model, and decode + NMS against the forward pass.

Compares, on the same real network outputs, fdq's post-processing (whichever path
``FaceDetector`` selects) with the upstream reference's (decode every anchor in torch, filter,
sort, NMS in Python/numpy). Medians after warm-up, 1 thread, within one run.

    python scripts/bench_eval.py --json docs/results/bench_eval.json --force
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch

from benchlib.data import add_data_argument, data_of
from benchlib.results import result, write_result
from benchlib.timing import timed

from fdq.device.anchors import prior_boxes
from fdq.device.detector import FaceDetector
from fdq.device.nms import nms
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.preprocess import normalize, resize_image
from fdq.host.evaluate import evaluate_detector
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--model", default="slim")
    ap.add_argument("--long-side", type=int, default=320)
    ap.add_argument("--json", default="docs/results/bench_eval.json")
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    target, = checked_outputs_or_exit("bench_eval", args.force, ("--json", args.json))

    torch.set_num_threads(1)
    data = data_of(args, "val")
    gt, images = data.ground_truth(), str(data.val_images)
    model = load_model(args.model, resolve_weights(args.model, None))
    spec = SPECS[args.model]
    infer = torch_inference(model)
    detector = FaceDetector(infer, spec, long_side=args.long_side)

    evaluate_detector(detector, images, gt)  # warm-up (and kernel build)
    walls = [evaluate_detector(detector, images, gt)["seconds"] for _ in range(3)]

    forward, ours, reference, candidates = [], [], [], []
    for _, image in data.read_val():
        resized, ratio = resize_image(image, args.long_side)
        blob = normalize(resized, spec.mean_bgr)
        h, w = resized.shape[:2]
        priors = prior_boxes(spec.min_sizes, spec.steps, h, w)
        outputs = infer(blob)
        candidates.append(int((outputs[1] > 0.02).sum()))
        forward.append(timed(lambda: infer(blob), 3)["median_ms"])
        ours.append(timed(lambda: detector.decoder.postprocess(*outputs, priors, spec.variance, (w, h), ratio), 5)["median_ms"])
        reference.append(timed(lambda: reference_postprocess(*outputs, priors, spec.variance, (w, h), ratio),
                               5)["median_ms"])

    per = {"forward": statistics.median(forward), "postprocess_fdq": statistics.median(ours),
           "postprocess_reference": statistics.median(reference)}
    row = {"model": args.model, "long_side": args.long_side, "images": len(forward), "kernels": detector.kernels,
           "val_split_seconds_median": statistics.median(walls), "val_split_seconds_runs": walls,
           "per_image_median_ms": per, "candidates_median": statistics.median(candidates),
           "ratios": {"fdq_post_over_forward": per["postprocess_fdq"] / per["forward"],
                      "reference_post_over_forward": per["postprocess_reference"] / per["forward"],
                      "reference_over_fdq_post": per["postprocess_reference"] / per["postprocess_fdq"]}}
    write_result(target, result("bench_eval", [row], settings={"threads": 1}))
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
