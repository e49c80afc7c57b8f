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


class EntropyObserver(HistogramObserver):
    """Pick the range (scaled towards zero) minimising KL(full histogram || its quantized version)."""

    def __init__(self, candidates: int = 128, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.candidates = candidates

    @staticmethod
    def _kl_after_quantization(window: np.ndarray, outliers: Tuple[float, float], levels: int) -> float:
        """KL(P || Q): P is the window with the clipped mass piled on its edge bins, Q the window
        (without that mass) collapsed into ``levels`` buckets and spread back over its non-empty bins."""
        p = window.copy()
        p[0] += outliers[0]
        p[-1] += outliers[1]
        starts = (np.arange(levels) * len(window)) // levels
        occupied = (window > 0).astype(np.float64)
        bucket = np.repeat(np.arange(levels), np.diff(np.append(starts, len(window))))
        per_bin = np.add.reduceat(window, starts) / np.maximum(np.add.reduceat(occupied, starts), 1.0)
        q = per_bin[bucket] * occupied
        mask = p > 0
        p_n, q_n = p[mask] / p.sum(), np.maximum(q[mask] / max(q.sum(), 1e-12), 1e-12)
        return float(np.sum(p_n * np.log(p_n / q_n)))

    def _non_linear_param_search(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double().cpu().numpy()
        lo_full, hi_full = float(self.min_val), float(self.max_val)
        width = (hi_full - lo_full) / self.bins
        levels = self.quant_max - self.quant_min + 1
        if width <= 0 or hist.sum() <= 0:
            return self.min_val, self.max_val
        best = (float("inf"), lo_full, hi_full)
        for t in np.linspace(1.0, levels / self.bins, self.candidates):
            lo = lo_full * t if lo_full < 0 else lo_full
            hi = hi_full * t if hi_full > 0 else hi_full
            i0 = int(np.floor((lo - lo_full) / width))
            i1 = min(max(int(np.ceil((hi - lo_full) / width)), i0 + levels), self.bins)
            kl = self._kl_after_quantization(hist[i0:i1], (hist[:i0].sum(), hist[i1:].sum()), levels)
            if kl < best[0]:
                best = (kl, lo_full + i0 * width, lo_full + i1 * width)
        return torch.tensor(best[1], dtype=torch.float32), torch.tensor(best[2], dtype=torch.float32)


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
