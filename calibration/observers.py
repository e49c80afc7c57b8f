"""Activation observers by name, including the two fdq adds: percentile and entropy (KL).

Both new observers reuse torch's HistogramObserver accumulation (a 2048-bin histogram that is
re-binned as the range grows) and only choose the clipping range differently:

* ``percentile``: the 0.01th / 99.99th percentiles (a few extreme activations stop stretching the grid);
* ``entropy``: the zero-anchored range whose 8-bit version of the histogram has the least KL
  divergence from the full one (TensorRT's calibration);
* ``histogram`` is torch's own: the range minimising the L2 quantization error.
"""
from __future__ import annotations

from typing import Dict, Tuple, Type

import numpy as np
import torch

from .quant_api import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, ObserverBase


class UnknownObserverError(ValueError):
    """An observer name fdq does not know."""


def _bin_edges(observer: HistogramObserver) -> np.ndarray:
    return np.linspace(float(observer.min_val), float(observer.max_val), observer.bins + 1)


class PercentileObserver(HistogramObserver):
    """Clip the range to the ``percentile``-th percentile at each end (both ends keep zero inside)."""

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.percentile = percentile

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double().cpu().numpy()
        cdf = np.cumsum(hist) / max(hist.sum(), 1e-12)
        edges = _bin_edges(self)
        q = self.percentile / 100.0
        hi = edges[min(int(np.searchsorted(cdf, q)) + 1, self.bins)]
        lo = edges[int(np.searchsorted(cdf, 1.0 - q))]
        new_min = min(lo, 0.0) if float(self.min_val) < 0 else float(self.min_val)
        return torch.tensor(new_min, dtype=torch.float32), torch.tensor(max(hi, 0.0), dtype=torch.float32)


_CHUNK = 128   # candidates per vectorised pass (bounds memory to a few MB)


class EntropyObserver(HistogramObserver):
    """KL (entropy) calibration: the range whose 8-bit version of the histogram loses the least
    information, after TensorRT's (Migacz, "8-bit Inference with TensorRT", GTC 2017).

    As there: torch's 2048-bin histogram (accumulated and re-binned by HistogramObserver), candidate
    ranges from the full one down to one bin per level, P the window with the clipped mass piled
    on its edge bins, Q the window merged into the levels and spread back over P's non-empty bins,
    Q floored at 1e-4 where P has mass (the reference's smoothing). Departures, each measured on
    these detectors (docs/RESULTS.md):

    * The grid is torch's affine uint8 one, not TensorRT's 128 symmetric levels of ``|x|``: Q merges
      the bins that round to the same of 256 levels (zero point rounded, so 0 is a level) of the
      zero-anchored range ``t * [min(lo, 0), max(hi, 0)]``, 1/8 <= t <= 1 (at 1/8, one bin per level).
      The head outputs are signed and asymmetric; ReLU outputs get all 256 levels.
    * Exact zeros are counted apart and kept out of the merging (in P and Q alike): every grid holds 0
      exactly. Merged into the first level, the zeros of a ReLU output (about half its values) made
      every wide range look lossy and the search clipped at a quarter of the maximum.
    * Finite-sample correction: a histogram of N values overstates the loss of a level spread over n
      non-empty bins by about (n - 1) / 2N (Miller-Madow bias of the plug-in entropy), which grows with
      the range. With the 10^5-10^6 values a head sees on a few dozen images this bias outweighed the
      cost of clipping and pulled every range in; it is subtracted.
    """

    def __init__(self, step: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.step = step    # candidate window sizes step by this many bins (TensorRT: 1)
        self.register_buffer("zeros", torch.zeros((), dtype=torch.int64))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        self.zeros += (x_orig.detach() == 0).sum()
        return super().forward(x_orig)

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double().cpu().numpy()
        lo_full, hi_full = float(self.min_val), float(self.max_val)
        levels = self.quant_max - self.quant_min + 1
        if hi_full <= lo_full or hist.sum() <= 0 or len(hist) < levels:
            return self.min_val, self.max_val
        t = np.arange(len(hist), levels - 1, -self.step) / len(hist)
        kl = np.concatenate([kl_divergences(hist, lo_full, hi_full, t[i:i + _CHUNK], levels, float(self.zeros))
                             for i in range(0, len(t), _CHUNK)])
        best = t[int(np.argmin(kl))]
        lo, hi = min(lo_full, 0.0) * best, max(hi_full, 0.0) * best
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)


def kl_divergences(hist: np.ndarray, lo_full: float, hi_full: float, scales: np.ndarray, levels: int,
                   zeros: float = 0.0, floor: float = 1e-4) -> np.ndarray:
    """Bias-corrected KL(P || Q) of each candidate range ``t * [min(lo, 0), max(hi, 0)]``, ``t`` in
    ``scales`` (see :class:`EntropyObserver`), for a histogram of ``len(hist)`` bins over
    [lo_full, hi_full] holding ``zeros`` exact zeros; all candidates at once (a row each)."""
    bins = len(hist)
    width = (hi_full - lo_full) / bins
    centers = lo_full + (np.arange(bins) + 0.5) * width
    hist = hist.astype(np.float64).copy()
    atom = 0.0
    if lo_full <= 0.0 <= hi_full:
        zero_bin = min(int((0.0 - lo_full) / width), bins - 1)
        atom = min(zeros, hist[zero_bin])
        hist[zero_bin] -= atom
    lo, hi = min(lo_full, 0.0) * scales, max(hi_full, 0.0) * scales
    first = np.clip(np.floor((lo - lo_full) / width), 0, bins - 1).astype(np.int64)
    stop = np.clip(np.ceil((hi - lo_full) / width), first + 1, bins).astype(np.int64)
    rows = np.arange(len(scales))
    inside = (np.arange(bins) >= first[:, None]) & (np.arange(bins) < stop[:, None])
    window = np.where(inside, hist, 0.0)
    cumsum = np.concatenate([[0.0], np.cumsum(hist)])
    p = window.copy()
    p[rows, first] += cumsum[first]
    p[rows, stop - 1] += cumsum[-1] - cumsum[stop]
    scale = (hi - lo) / (levels - 1)
    zero_point = np.rint(-lo / scale)
    level = np.clip(np.rint(centers / scale[:, None]) + zero_point[:, None], 0, levels - 1).astype(np.int64)
    flat = (level + rows[:, None] * levels).ravel()
    occupied = p > 0
    mass = np.bincount(flat, weights=window.ravel(), minlength=len(rows) * levels).reshape(-1, levels)
    count = np.bincount(flat, weights=occupied.ravel(), minlength=len(rows) * levels).reshape(-1, levels)
    q = np.take_along_axis(mass / np.maximum(count, 1.0), level, axis=1) * occupied
    p_total = p.sum(axis=1) + atom
    q_total = q.sum(axis=1) + atom
    p, q = p / p_total[:, None], q / np.maximum(q_total, 1e-300)[:, None]
    q = np.where(occupied & (q <= 0), floor, q)
    ratio = np.where(occupied, p, 1.0) / np.where(occupied, q, 1.0)
    kl = np.sum(np.where(occupied, p * np.log(ratio), 0.0), axis=1)
    if atom:    # the exact zeros: the same mass in P and Q before normalisation
        kl += atom / p_total * np.log(q_total / p_total)
    bias = (count.sum(axis=1) - (count > 0).sum(axis=1)) / (2.0 * p_total)
    return np.where(q_total > atom, kl - bias, np.inf)   # a window holding no mass keeps nothing


class _CalibrationMovingAverage(MovingAverageMinMaxObserver):
    """Moving-average min-max with a 0.1 step: PTQ sees only tens of single-image batches, and
    torch's 0.01 would leave the range at the first image's."""

    def __init__(self, averaging_constant: float = 0.1, **kwargs: object) -> None:
        super().__init__(averaging_constant=averaging_constant, **kwargs)


ACTIVATION_OBSERVERS: Dict[str, Type[ObserverBase]] = {
    "minmax": MinMaxObserver,
    "moving-minmax": _CalibrationMovingAverage,
    "histogram": HistogramObserver,
    "entropy": EntropyObserver,
    "percentile": PercentileObserver,
}
OBSERVER_NAMES = tuple(ACTIVATION_OBSERVERS)


def activation_observer(name: str) -> Type[ObserverBase]:
    """Observer class for a CLI/config name."""
    try:
        return ACTIVATION_OBSERVERS[name]
    except KeyError:
        raise UnknownObserverError(f"unknown observer {name!r} (choose from: {', '.join(OBSERVER_NAMES)})") from None
