"""Image -> network input: the reference evaluation protocol, and the device path's uint8 resize.

Reference: BGR uint8 -> float32 -> ``cv2.INTER_LINEAR`` resize so that the longer side equals
``long_side`` (aspect kept, no padding) -> subtract the BGR mean -> NCHW. ``fdq eval --model``
keeps it, to reproduce the published numbers exactly.

Device path (:data:`RESIZERS` ``"uint8"``, what every bundle detector uses): the same ratio and output
size, resized in uint8 by OpenCV's fixed-point INTER_LINEAR. Converting a 1024-wide frame to float32
first costs more than the decode and NMS of a frame; the uint8 result differs from the float one by
at most one grey level per pixel (rounding); on the validation subset that moves slim's AP at long side
320 by at most 0.09 point (``scripts/bench_resize.py``; ``tests/test_runtimes.py`` holds it to 0.2).

A model with a fixed input size (``input.fixed_hw``) is letterboxed instead (:func:`letterbox`): the frame
scaled by the same resize to fit inside that size, its aspect kept, zero-padded at the bottom and right.
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


def scale_reference(image: np.ndarray, ratio: float) -> np.ndarray:
    """The reference resize by ``ratio``: float32 ``cv2.INTER_LINEAR``; at ratio 1 the frame itself (same values)."""
    if ratio == 1.0:
        return image
    return cv2.resize(image.astype(np.float32), None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR)


def scale_uint8(image: np.ndarray, ratio: float) -> np.ndarray:
    """The device path's resize by ``ratio``: uint8, OpenCV's fixed-point ``INTER_LINEAR``."""
    if ratio == 1.0:
        return image
    return cv2.resize(image, None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR)


def resize_image(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """Resized float32 HWC image and the ratio used (boxes are divided by it to go back)."""
    ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
    return scale_reference(image, ratio).astype(np.float32, copy=False), ratio


def resize_reference(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """:func:`resize_image`, except that a frame already at the input size stays uint8 (same values)."""
    ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
    return scale_reference(image, ratio), ratio


def resize_uint8(image: np.ndarray, long_side: int) -> Tuple[np.ndarray, float]:
    """The device path: :func:`resize_image`'s ratio and size, resized in uint8 (fixed-point INTER_LINEAR)."""
    ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
    return scale_uint8(image, ratio), ratio


def pad_bottom_right(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad an HWC image at the bottom and right to ``height`` x ``width`` (no larger than those)."""
    bottom, right = height - image.shape[0], width - image.shape[1]
    if not (bottom or right):
        return image
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=0)


def letterbox(image: np.ndarray, fixed_hw: Tuple[int, int], scale: "ScaleFn") -> Tuple[np.ndarray, float]:
    """A frame for a model of fixed input (height, width) ``fixed_hw``: scaled by ``scale`` with
    ratio ``min(W / w, H / h)`` (it fits inside, aspect kept), zero-padded at the bottom and right to
    exactly H x W; and the ratio (boxes decoded in the padded input are divided by it, as for padding
    to a multiple). A 4:3 frame at W x H = 4:3 gets the very input of the dynamic path at long side W."""
    height, width = fixed_hw
    ratio = min(width / image.shape[1], height / image.shape[0])
    return pad_bottom_right(scale(image, ratio), height, width), ratio


ResizeFn = Callable[[np.ndarray, int], Tuple[np.ndarray, float]]
ScaleFn = Callable[[np.ndarray, float], np.ndarray]
RESIZERS: Dict[str, ResizeFn] = {"reference": resize_reference, "uint8": resize_uint8}
SCALERS: Dict[str, ScaleFn] = {"reference": scale_reference, "uint8": scale_uint8}  # the same, for letterbox


def normalize(resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """HWC BGR (uint8 or float32) -> mean-subtracted float32 NCHW with a batch of one."""
    chw = resized.astype(np.float32, copy=False).transpose(2, 0, 1)
    out = chw - np.asarray(mean_bgr, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray(out[None])
