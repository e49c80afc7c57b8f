"""Raw network outputs -> face detections in original image pixels.

Reference protocol: score = softmax face column; keep score > threshold; decode; greedy NMS;
no top-k; boxes scaled by the network input size and divided by the resize ratio, not clipped.
Only the candidates above the threshold are decoded: the same values as decoding every anchor,
for a fraction of the work. :func:`postprocess` is the reference, :func:`postprocess_cv2` the
fastest numpy path that reproduces it; :func:`fdq.device.decoders.ssd_priors.select_postprocess` picks between
them and the C kernels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence, Tuple

import cv2
import numpy as np

from .decode import decode_boxes, decode_landmarks
from .nms import nms, score_order


@dataclass
class Detections:
    """Kept faces, by descending score. Boxes are (x1, y1, x2, y2), landmarks 5 (x, y) pairs; a detector
    without landmarks (``ssd-decoded``) gives (K, 0) ones, so ``landmarks[i].reshape(-1, 2)`` is each face's
    points either way."""

    boxes: np.ndarray      # (K, 4) float32
    scores: np.ndarray     # (K,) float32
    landmarks: np.ndarray  # (K, 10) float32, or (K, 0) without landmarks

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


PostprocessFn = Callable[..., Detections]
# Pixel boxes (K, 4), their scores (K,), the IoU threshold -> kept positions by descending score.
NmsFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def candidates(scores: np.ndarray, score_threshold: float) -> np.ndarray:
    """Indices of anchors whose face score is strictly above the threshold, ascending."""
    return np.flatnonzero(scores > np.float32(score_threshold))


def pixel_scale(input_size: Tuple[int, int], ratio: float) -> np.ndarray:
    """Multiplier from normalised coordinates to original pixels, per (x, y) coordinate pair."""
    width, height = input_size
    return np.array([width, height], dtype=np.float32) / np.float32(ratio)


def _decode_candidates(loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                       variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
                       score_threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel boxes, pixel landmarks and scores of the candidates, in ascending anchor order."""
    idx = candidates(scores, score_threshold)
    scale = pixel_scale(input_size, ratio)
    boxes = decode_boxes(loc[idx], priors[idx], variances) * np.tile(scale, 2)
    points = decode_landmarks(landm[idx], priors[idx], variances) * np.tile(scale, 5)
    return boxes, points, scores[idx]


def postprocess(loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
                score_threshold: float = 0.02, nms_threshold: float = 0.4) -> Detections:
    """Decode and suppress with numpy. ``loc`` (N,4), ``scores`` (N,) face probability, ``landm`` (N,10)."""
    boxes, points, cand_scores = _decode_candidates(loc, scores, landm, priors, variances, input_size,
                                                    ratio, score_threshold)
    keep = nms_keep(boxes, cand_scores, nms_threshold)
    return Detections(boxes[keep], cand_scores[keep], points[keep])


def nms_keep(boxes: np.ndarray, scores: np.ndarray, nms_threshold: float) -> np.ndarray:
    """The reference NMS on unsorted boxes: kept positions, by descending score."""
    order = score_order(scores)
    return order[nms(boxes[order], nms_threshold)]


def nms_keep_cv2(boxes: np.ndarray, scores: np.ndarray, nms_threshold: float) -> np.ndarray:
    """:func:`nms_keep` by ``cv2.dnn.NMSBoxes`` fed reference-convention rects (see :func:`postprocess_cv2`).
    The candidates are already above the score threshold (>= 0), so NMSBoxes' own (score > 0) drops none."""
    corners = boxes.astype(np.float64)
    rects = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2] + 1.0], axis=1)
    kept = cv2.dnn.NMSBoxes(rects, scores, 0.0, float(nms_threshold))
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def postprocess_decoded(boxes: np.ndarray, scores: np.ndarray, input_size: Tuple[int, int], ratio: float,
                        score_threshold: float, nms_threshold: float, suppress: NmsFn = nms_keep) -> Detections:
    """Threshold + NMS for a graph that decodes its own boxes: ``boxes`` (N, 4) corners normalised to the
    network input, ``scores`` (N,) face probability. The same protocol as :func:`postprocess` (scaled by
    the input size, divided by the ratio, not clipped), without landmarks: (K, 0)."""
    idx = candidates(scores, score_threshold)
    pixel = boxes[idx] * np.tile(pixel_scale(input_size, ratio), 2)
    cand_scores = scores[idx]
    keep = suppress(pixel, cand_scores, nms_threshold)
    return Detections(pixel[keep], cand_scores[keep], np.zeros((keep.shape[0], 0), np.float32))


def postprocess_cv2(loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                    variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
                    score_threshold: float = 0.02, nms_threshold: float = 0.4) -> Detections:
    """numpy decoding + ``cv2.dnn.NMSBoxes``: the fastest path without the C kernels.

    NMSBoxes orders by a stable descending sort (ties by index, as :func:`score_order`) and keeps
    a box when its IoU with every kept box is ``<= nms_threshold``, but measures IoU on (x, y, w, h)
    rects without the +1. Rects with ``w = x2 - x1 + 1`` (built in float64, so ``x + w`` is exactly
    ``x2 + 1``) give the reference's intersection and areas. It computes IoU in double rather
    than float32, so the kept set can differ only for an IoU within float32 rounding (~1e-7) of
    the threshold; :func:`cv2_nms_agrees` checks the installed OpenCV before it is chosen.
    """
    boxes, points, cand_scores = _decode_candidates(loc, scores, landm, priors, variances, input_size,
                                                    ratio, score_threshold)
    keep = nms_keep_cv2(boxes, cand_scores, nms_threshold)
    return Detections(boxes[keep], cand_scores[keep], points[keep])


@lru_cache(maxsize=1)
def cv2_nms_agrees() -> bool:
    """Whether this OpenCV's NMSBoxes keeps exactly what :func:`nms` keeps on a test set with
    tied scores, duplicates and an IoU exactly at the threshold (older releases sorted unstably)."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, size=(400, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 60, size=(400, 2))], axis=1).astype(np.float32)
    boxes[::7] = np.round(boxes[::7])
    boxes[1::50] = boxes[::50]
    boxes[-2:] = [[0, 0, 9, 9], [0, 0, 3, 9]]  # IoU exactly 0.4: kept by "IoU > threshold" rules
    scores = (np.round(rng.uniform(size=400), 2) + np.float32(0.01)).astype(np.float32)
    expected = nms_keep(boxes, scores, 0.4)
    try:
        kept = nms_keep_cv2(boxes, scores, 0.4)
    except (cv2.error, AttributeError):  # an OpenCV built without the dnn module
        return False
    return bool(np.array_equal(kept, expected))
