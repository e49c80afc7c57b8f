"""Activation observers by name, including the two fdq adds: percentile and entropy (KL).

Both new observers reuse torch's HistogramObserver accumulation (a 2048-bin histogram that is
re-binned as the range grows) and only choose the clipping range differently:

* ``percentile``: the 0.01th / 99.99th percentiles (a few extreme activations stop stretching the grid);
* ``entropy``: the range whose 8-bit version of the histogram has the least KL divergence from
  the full one (TensorRT's calibration, adapted to torch's affine uint8 grid: see the class);
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

    As there: a 2048-bin histogram (torch's, accumulated and re-binned by HistogramObserver),
    thresholds ``T = i / 2048 * max|x|`` for i = 128..2048, P the histogram inside the range with
    the clipped mass piled on its edge bins, Q that range merged into the quantization levels and
    spread back over P's non-empty bins, Q floored at 1e-4 where P has mass (the reference's
    smoothing), and the T of least KL(P || Q). Departures, and what the first version of this
    observer (16-25 AP points lost on these detectors) got wrong without them:

    * The range is ``[max(lo, -T), min(hi, T)]`` on torch's affine uint8 grid (256 levels, zero point
      rounded so that 0 is a level), not ``[-T, T]`` with 128 levels a side: ReLU outputs get all 256
      levels, and the signed, asymmetric head outputs lose their longer tail first. (Scaling both
      ends towards zero together, as before, clipped the short side to reach outliers on the long one.)
    * Exact zeros are counted apart and kept out of the merging, in P and Q alike: every grid holds 0
      exactly. Merged into the first level, the zeros of a ReLU output (10-50 % of its values) made
      every wide range look lossy, and the search clipped it at a quarter of its maximum.
    * P is read at ``resolution`` sub-bins per level for every candidate (the histogram's CDF
      interpolated), not at i/128 histogram bins per level: at 2048 bins over the few 10^5 values a
      head sees on a few dozen images, the counting noise of the finer bins of wide ranges looked
      like quantization loss and pulled every range in.
    """

    def __init__(self, step: int = 2, resolution: int = 8, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.step = step              # thresholds every ``step`` bins (TensorRT: 1; the KL is smooth at 2)
        self.resolution = resolution
        self.register_buffer("zeros", torch.zeros((), dtype=torch.int64))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        self.zeros += (x_orig.detach() == 0).sum()
        return super().forward(x_orig)

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double().cpu().numpy()
        lo_full, hi_full = float(self.min_val), float(self.max_val)
        if hi_full <= lo_full or hist.sum() <= 0:
            return self.min_val, self.max_val
        bins = len(hist)
        thresholds = np.arange(bins, bins // 16 - 1, -self.step) / bins * max(-lo_full, hi_full)
        lo, hi = np.maximum(min(lo_full, 0.0), -thresholds), np.minimum(max(hi_full, 0.0), thresholds)
        levels = self.quant_max - self.quant_min + 1
        kl = np.concatenate([kl_divergences(hist, lo_full, hi_full, lo[i:i + _CHUNK], hi[i:i + _CHUNK], levels,
                                            float(self.zeros), self.resolution)
                             for i in range(0, len(lo), _CHUNK)])
        best = int(np.argmin(kl))
        return torch.tensor(lo[best], dtype=torch.float32), torch.tensor(hi[best], dtype=torch.float32)


def kl_divergences(hist: np.ndarray, lo_full: float, hi_full: float, lo: np.ndarray, hi: np.ndarray, levels: int,
                   zeros: float = 0.0, resolution: int = 8, floor: float = 1e-4) -> np.ndarray:
    """KL(P || Q) of each candidate range [lo, hi] (arrays, each holding 0; see :class:`EntropyObserver`)
    for a histogram of ``len(hist)`` bins over [lo_full, hi_full] holding ``zeros`` exact zeros; all
    candidates at once (a row each)."""
    bins = len(hist)
    edges = np.linspace(lo_full, hi_full, bins + 1)
    hist = hist.astype(np.float64).copy()
    atom = 0.0
    if lo_full <= 0.0 <= hi_full:
        zero_bin = min(int((0.0 - lo_full) / (edges[1] - edges[0])), bins - 1)
        atom = min(zeros, hist[zero_bin])
        hist[zero_bin] -= atom
    cdf = np.concatenate([[0.0], np.cumsum(hist)])
    scale = (hi - lo) / (levels - 1)
    grid_lo = -np.rint(-lo / scale) * scale                    # torch rounds the zero point: 0 is a level
    sub = np.arange(levels * resolution + 1) / resolution - 0.5   # sub-bin edges, in levels from grid_lo
    cuts = np.interp(grid_lo[:, None] + sub[None, :] * scale[:, None], edges, cdf)   # mass below each edge
    window = np.diff(cuts, axis=1)
    p = window.copy()
    p[:, 0] += cuts[:, 0]                                      # clipped mass piled on the edge bins
    p[:, -1] += cdf[-1] - cuts[:, -1]
    occupied = p > 0
    mass = window.reshape(len(lo), levels, resolution).sum(axis=2, keepdims=True)
    count = occupied.reshape(len(lo), levels, resolution).sum(axis=2, keepdims=True)
    q = (np.broadcast_to(mass / np.maximum(count, 1), (len(lo), levels, resolution))
         .reshape(len(lo), -1) * occupied)
    p_total, q_total = p.sum(axis=1) + atom, q.sum(axis=1) + atom
    p, q = p / p_total[:, None], q / np.maximum(q_total, 1e-300)[:, None]
    q = np.where(occupied & (q <= 0), floor, q)
    ratio = np.where(occupied, p, 1.0) / np.where(occupied, q, 1.0)
    kl = np.sum(np.where(occupied, p * np.log(ratio), 0.0), axis=1)
    if atom:    # the exact zeros: the same mass in P and Q before normalisation
        kl += atom / p_total * np.log(q_total / p_total)
    return np.where(q_total > atom, kl, np.inf)   # a window holding no mass keeps nothing


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
