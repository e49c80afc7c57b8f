"""Image -> network input: the reference evaluation protocol, and the device path's uint8 resize.

Reference: BGR uint8 -> float32 -> ``cv2.INTER_LINEAR`` resize so that the longer side equals
``long_side`` (aspect kept, no padding) -> subtract the BGR mean -> NCHW. ``fdq eval --model``
keeps it, to reproduce the published numbers exactly.

Device path (:data:`RESIZERS` ``"uint8"``, what every bundle detector uses): the same ratio and output
size, resized in uint8 by OpenCV's fixed-point INTER_LINEAR. Converting a 1024-wide frame to float32
first costs more than the decode and NMS of a frame; the uint8 result differs from the float one by
at most one grey level per pixel (rounding); on the validation subset that moves slim's AP at long side
320 by at most 0.09 point (``scripts/bench_resize.py``; ``tests/test_runtimes.py`` holds it to 0.2).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

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


def resize_reference(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """:func:`resize_image`, except that a frame already at the input size stays uint8 (same values)."""
    if resize_ratio(image.shape[0], image.shape[1], long_side) == 1.0:
        return image, 1.0
    return resize_image(image, long_side)


def resize_uint8(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """The device path: :func:`resize_image`'s ratio and size, resized in uint8 (fixed-point INTER_LINEAR)."""
    ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
    if ratio == 1.0:
        return image, 1.0
    return cv2.resize(image, None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR), ratio


ResizeFn = Callable[[np.ndarray, int], Tuple[np.ndarray, float]]
RESIZERS: Dict[str, ResizeFn] = {"reference": resize_reference, "uint8": resize_uint8}


def normalize(resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """HWC BGR (uint8 or float32) -> mean-subtracted float32 NCHW with a batch of one."""
    chw = resized.astype(np.float32, copy=False).transpose(2, 0, 1)
    out = chw - np.asarray(mean_bgr, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(out[None])
