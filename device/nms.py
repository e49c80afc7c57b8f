"""Greedy non-maximum suppression with the reference's pixel convention (areas use +1)."""
from __future__ import annotations

import numpy as np


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties keep index order, so every NMS implementation agrees."""
    return np.argsort(-scores, kind="stable")


def nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over boxes already sorted by descending score; returns kept positions.

    IoU follows the reference ``py_cpu_nms``: widths and heights are ``x2 - x1 + 1``, a box is
    suppressed when its IoU with a kept box is strictly above ``iou_threshold``.
    """
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float32) for i in range(4))
    one = np.float32(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    remaining = np.arange(len(boxes))
    keep = []
    while remaining.size:
        i = remaining[0]
        keep.append(i)
        rest = remaining[1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        remaining = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
