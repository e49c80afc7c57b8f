"""SSD-style prior boxes (anchors) for an input size, in normalised (cx, cy, w, h) form."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence, Tuple

import numpy as np


def feature_map_sizes(height: int, width: int, steps: Sequence[int]) -> list:
    """(rows, cols) per detection level: stride-2 convolutions with padding 1 give ceil(n / step)."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in steps]


@lru_cache(maxsize=32)
def _prior_boxes_cached(min_sizes: Tuple[Tuple[int, ...], ...], steps: Tuple[int, ...],
                        height: int, width: int, clip: bool) -> np.ndarray:
    levels = []
    for (rows, cols), step, sizes in zip(feature_map_sizes(height, width, steps), steps, min_sizes):
        # Order: row-major over cells, then anchor sizes within a cell (matches the heads' layout).
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * step / height,
                             (np.arange(cols) + 0.5) * step / width, indexing="ij")
        per_size = []
        for size in sizes:
            per_size.append(np.stack([cx, cy, np.full_like(cx, size / width),
                                      np.full_like(cy, size / height)], axis=-1))
        levels.append(np.stack(per_size, axis=2).reshape(-1, 4))
    priors = np.concatenate(levels, axis=0).astype(np.float32)
    if clip:
        np.clip(priors, 0.0, 1.0, out=priors)
    priors.setflags(write=False)
    return priors


def prior_boxes(min_sizes: Sequence[Sequence[int]], steps: Sequence[int],
                height: int, width: int, clip: bool = False) -> np.ndarray:
    """Anchors for a ``height`` x ``width`` network input, shape (N, 4), float32, read-only.

    Cached per input size: a video stream or an evaluation at one long side pays for it once.
    """
    key = tuple(tuple(int(s) for s in level) for level in min_sizes)
    return _prior_boxes_cached(key, tuple(int(s) for s in steps), int(height), int(width), bool(clip))


def anchor_count(min_sizes: Sequence[Sequence[int]], steps: Sequence[int], height: int, width: int) -> int:
    """Number of anchors the network predicts for this input size."""
    return sum(r * c * len(sizes) for (r, c), sizes in zip(feature_map_sizes(height, width, steps), min_sizes))
