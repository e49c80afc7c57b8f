"""Box and landmark decoding from anchor-relative regressions (SSD / RetinaFace encoding)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: Sequence[float]) -> np.ndarray:
    """(N, 4) regressions + (N, 4) priors (cx, cy, w, h) -> (N, 4) corners (x1, y1, x2, y2), normalised."""
    v0, v1 = np.float32(variances[0]), np.float32(variances[1])
    centers = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
    sizes = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
    top_left = centers - sizes / np.float32(2)
    return np.concatenate([top_left, top_left + sizes], axis=1)


def decode_landmarks(landm: np.ndarray, priors: np.ndarray, variances: Sequence[float]) -> np.ndarray:
    """(N, 10) regressions -> (N, 10) points (x0, y0, ..., x4, y4), normalised."""
    offsets = landm.reshape(-1, 5, 2) * np.float32(variances[0]) * priors[:, None, 2:]
    return (priors[:, None, :2] + offsets).reshape(-1, 10)
