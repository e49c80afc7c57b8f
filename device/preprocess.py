"""Image -> network input, following the reference evaluation protocol exactly.

BGR uint8 -> float32 -> ``cv2.INTER_LINEAR`` resize so that the longer side equals ``long_side``
(aspect kept, no padding) -> subtract the BGR mean -> NCHW.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np


def resize_ratio(height: int, width: int, long_side: int) -> float:
    """Scale factor of the reference: short side to ``long_side``, unless that makes the long side too big.

    ``long_side <= 0`` keeps the original size.
    """
    if long_side <= 0:
        return 1.0
    ratio = float(long_side) / float(min(height, width))
    if np.round(ratio * max(height, width)) > long_side:
        ratio = float(long_side) / float(max(height, width))
    return ratio


def resize_image(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """Resized float32 HWC image and the ratio used (boxes are divided by it to go back)."""
    ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
    img = image.astype(np.float32)
    if ratio != 1.0:
        img = cv2.resize(img, None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR)
    return img, ratio


def normalize(resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """HWC BGR (uint8 or float32) -> mean-subtracted float32 NCHW with a batch of one."""
    chw = resized.astype(np.float32, copy=False).transpose(2, 0, 1)
    out = chw - np.asarray(mean_bgr, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(out[None])
