"""The calibration report: does the quantized model still detect what the float one does?

Measured on images the quantizer did not calibrate on (the held-back split of the calibration
folder), through the same :class:`~fdq.device.detector.FaceDetector` path the device runs:

* with labels, WIDER easy/medium/hard AP (points, 0-100) of float and quantized, and the drop;
* always, *agreement*: the share of float faces (score > 0.5) that the quantized model also finds
  (IoU >= 0.5), and the AP of the quantized detections against the float ones as ground truth;
* always, the *output error*: mean |quantized - float| of the box offsets and of the face logit on
  the anchors float scores >= 0.1. Thousands of anchors stand behind it, so it is steady where AP
  on a few dozen images is not (``scripts/bench_ap_resolution.py``).

A drop of several points means a broken quantization (per-tensor weights on mnet025 give AP 4-16
instead of ~80): :func:`warn_if_collapsed` raises a :class:`QuantizationCollapseWarning` and the
bundle's ``report.json`` keeps the message, so such a model is never shipped silently.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from fdq.device.detector import FaceDetector, InferenceFn
from fdq.device.evaluation import SETTINGS, GroundTruth, evaluate, to_wider_rows
from fdq.device.images import read_image
from fdq.device.postprocess import Detections
from fdq.device.spec import DetectorSpec
from fdq.host.torch_inference import torch_inference

from .data import CalibrationImages

AP_DROP_WARN = 5.0          # points on any setting
AGREEMENT_WARN = 0.8        # share of float faces the quantized model must keep
FACE_SCORE = 0.5
MATCH_IOU = 0.5
RELEVANT_SCORE = 0.1        # anchors the output error covers: those a detection can come from


class QuantizationCollapseWarning(UserWarning):
    """The quantized model lost much more accuracy than quantization should cost."""


def detect(model: nn.Module, spec: DetectorSpec, long_side: int, images: CalibrationImages) -> Dict[str, Detections]:
    """Detections per image key, through the device's preprocessing and postprocessing."""
    detector = FaceDetector(torch_inference(model), spec, long_side=long_side)
    return {key: detector.detect(read_image(path)) for key, path in zip(images.keys, images.paths)}


def wider_rows(detections: Dict[str, Detections]) -> Dict[str, np.ndarray]:
    return {k: to_wider_rows(d.boxes, d.scores) for k, d in detections.items()}


def ap_points(detections: Dict[str, Detections], gt: GroundTruth) -> Dict[str, float]:
    """Easy/medium/hard AP in points; a setting without faces in these images is left out (nan)."""
    result = evaluate(wider_rows(detections), gt)
    return {s: round(100.0 * float(result[s]), 3) for s in SETTINGS if np.isfinite(result[s])}


def pseudo_ground_truth(detections: Dict[str, Detections], min_score: float = FACE_SCORE) -> GroundTruth:
    """Float detections above ``min_score`` as a ground truth where every face counts in every setting."""
    from .qat import pseudo_ground_truth as from_rows

    return from_rows(wider_rows(detections), min_score)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    return inter / np.maximum(_area(a)[:, None] + _area(b)[None, :] - inter, 1e-12)


def agreement(reference: Dict[str, Detections], candidate: Dict[str, Detections],
              score: float = FACE_SCORE, iou: float = MATCH_IOU) -> Dict[str, Any]:
    """Share of reference faces (score > ``score``) that ``candidate`` finds at IoU >= ``iou``
    with any of its detections above ``score`` / 2 (a score dipping just below the line is no loss)."""
    total = matched = 0
    for key, ref in reference.items():
        ref_boxes = ref.boxes[ref.scores > score]
        cand = candidate[key]
        cand_boxes = cand.boxes[cand.scores > score / 2]
        total += len(ref_boxes)
        if len(ref_boxes) and len(cand_boxes):
            matched += int((_iou(ref_boxes, cand_boxes).max(axis=1) >= iou).sum())
    return {"float_faces": total, "matched": matched, "recall": round(matched / total, 4) if total else None}


def face_logit(scores: np.ndarray) -> np.ndarray:
    """Face scores back to logits (clipped away from 0 and 1, so a saturated score stays finite)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    return np.log(s) - np.log1p(-s)


def output_error(reference: InferenceFn, candidate: InferenceFn, blobs: Iterable[np.ndarray],
                 min_score: float = RELEVANT_SCORE) -> Dict[str, Any]:
    """Mean |candidate - reference| of the box offsets and of the face logit over the anchors
    ``reference`` scores >= ``min_score``, fed the same ``blobs``."""
    offsets: List[np.ndarray] = []
    logits: List[np.ndarray] = []
    for blob in blobs:
        ref, got = reference(blob), candidate(blob)
        keep = ref[1] >= min_score
        offsets.append(np.abs(got[0][keep] - ref[0][keep]).ravel())
        logits.append(np.abs(face_logit(got[1][keep]) - face_logit(ref[1][keep])))
    offset, logit = np.concatenate(offsets), np.concatenate(logits)
    if not logit.size:
        return {"anchors": 0, "min_score": min_score, "box_offset": None, "face_logit": None}
    return {"anchors": int(logit.size), "min_score": min_score, "box_offset": round(float(offset.mean()), 4),
            "face_logit": round(float(logit.mean()), 4)}


def compare(float_model: nn.Module, quantized: nn.Module, spec: DetectorSpec, long_side: int,
            images: CalibrationImages, gt: Optional[GroundTruth], in_sample: bool,
            float_detections: Optional[Dict[str, Detections]] = None) -> Dict[str, Any]:
    """Float-vs-quantized report on ``images`` (labels optional), with collapse warnings filled in."""
    ref = float_detections if float_detections is not None else detect(float_model, spec, long_side, images)
    quant = detect(quantized, spec, long_side, images)
    pseudo = pseudo_ground_truth(ref)
    blobs, _ = images.load(long_side, spec.mean_bgr)
    report: Dict[str, Any] = {
        "images": len(images), "long_side": long_side, "in_sample": in_sample,
        "agreement": agreement(ref, quant),
        "float_agreement_ap": ap_points(ref, pseudo), "quantized_agreement_ap": ap_points(quant, pseudo),
        "output_error": output_error(torch_inference(float_model), torch_inference(quantized),
                                     (b.numpy() for b in blobs)),
    }
    if gt is not None:
        report["float_ap"] = ap_points(ref, gt)
        report["quantized_ap"] = ap_points(quant, gt)
        report["ap_drop"] = {s: round(report["float_ap"][s] - report["quantized_ap"].get(s, 0.0), 3)
                             for s in report["float_ap"]}
    report["warnings"] = collapse_messages(report)
    return report


def max_drop(report: Dict[str, Any]) -> float:
    """Worst AP drop over the settings: against labels if the report has them, else against float."""
    if "ap_drop" in report:
        return max(report["ap_drop"].values(), default=0.0)
    f, q = report["float_agreement_ap"], report["quantized_agreement_ap"]
    return max((f[s] - q.get(s, 0.0) for s in f), default=0.0)


def collapse_messages(report: Dict[str, Any]) -> List[str]:
    messages = []
    drop = max_drop(report)
    what = "AP" if "ap_drop" in report else "AP against the float detections"
    if drop > AP_DROP_WARN:
        messages.append(f"quantized model loses {drop:.1f} points of {what} on {report['images']} held-back "
                        f"images (warning above {AP_DROP_WARN:g}): quantization collapsed; try per-channel "
                        f"weights, --cle, another observer or --ap-budget")
    recall = report["agreement"]["recall"]
    if recall is not None and recall < AGREEMENT_WARN:
        messages.append(f"quantized model finds only {100 * recall:.0f}% of the float model's faces "
                        f"(warning below {100 * AGREEMENT_WARN:.0f}%): quantization collapsed")
    return messages


def warn_if_collapsed(report: Dict[str, Any]) -> None:
    """Emit every collapse message of a report as a :class:`QuantizationCollapseWarning`."""
    for message in report.get("warnings", []):
        warnings.warn(message, QuantizationCollapseWarning, stacklevel=2)


def output_sqnr_db(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (finite even for identical tensors, for JSON)."""
    noise = (reference.float() - candidate.float()).pow(2).sum().clamp_min(1e-30)
    signal = reference.float().pow(2).sum().clamp_min(1e-30)
    return round(float(10.0 * torch.log10(signal / noise)), 3)
