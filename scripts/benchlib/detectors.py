"""Detectors timed inside the runner's pipeline, and AP and median inference time of several measured
on the same images in turn (the int8 comparisons of bench_mnn_int8 and bench_ncnn_int8)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from benchlib.scoring import points

from fdq.device.detector import FaceDetector
from fdq.device.evaluation import SETTINGS, evaluate, to_wider_rows


def timed_detector(infer: Callable[[np.ndarray], Any], spec: Any, side: int) -> Tuple[FaceDetector, List[float]]:
    """The runner's pipeline (uint8 resize) around ``infer``, and the list its inference times (ms) go to."""
    timed: List[float] = []

    def timed_infer(blob: np.ndarray):
        started = time.perf_counter()
        out = infer(blob)
        timed.append(1000 * (time.perf_counter() - started))
        return out

    return FaceDetector(timed_infer, spec, side, resize="uint8"), timed


def measure(detectors: Dict[str, Tuple[FaceDetector, List[float]]], images: List[Tuple[str, np.ndarray]],
            gt: Any) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """AP per setting and median inference ms of each detector, all on each image in turn (one load for all)."""
    predictions: Dict[str, Dict[str, np.ndarray]] = {k: {} for k in detectors}
    for _ in range(2):  # an untimed pass (first sizes), then the measured one
        for _, times in detectors.values():
            times.clear()
        for key, image in images:
            for name, (det, _) in detectors.items():
                dets = det.detect(image)
                predictions[name][key] = to_wider_rows(dets.boxes, dets.scores)
    ap = {name: points(evaluate(pred, gt), 3) for name, pred in predictions.items()}
    return ap, {name: float(np.median(times)) for name, (_, times) in detectors.items()}


def comparison_table(rows: List[Dict[str, Any]]) -> str:
    """The Markdown table of :func:`measure`'s rows: AP, the worst setting against float, time against float."""
    lines = ["| model | side | setting | easy | medium | hard | worst vs float | inference vs float |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = min(r["ap_minus_float"].values())
        lines.append(f"| {r['model']} | {r['long_side']} | {r['setting']} | "
                     + " | ".join(f"{r['ap'][s]:.2f}" for s in SETTINGS)
                     + f" | {worst:+.2f} | {r['inference_vs_float']:.2f}x |")
    return "\n".join(lines)
