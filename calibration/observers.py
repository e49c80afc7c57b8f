"""Activation observers by name, including the one fdq adds: percentile.

``percentile`` reuses torch's HistogramObserver accumulation (a 2048-bin histogram that is re-binned
as the range grows) and only chooses the clipping range differently: the 0.01th / 99.99th
percentiles (a few extreme activations stop stretching the grid). ``histogram`` is torch's own: the
range minimising the L2 quantization error.

There is no ``entropy`` (KL, TensorRT's calibration) observer: fixed to TensorRT's algorithm on
torch's uint8 grid it still lost up to 1.5 AP points on qnnpack (no better than min-max), because
KL's own objective clips the ReLU outputs of these detectors to 0.36-0.9 of the L2 range
(docs/ACCURACY.md); it was removed rather than shipped. Its last version is in git (commit 7485546).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import numpy as np
import torch

from .quant_api import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, ObserverBase


class UnknownObserverError(ValueError):
    """An observer name fdq does not know."""


def _bin_edges(observer: Any) -> np.ndarray:
    return np.linspace(float(observer.min_val), float(observer.max_val), observer.bins + 1)


class PercentileRange:
    """Clip the range to the ``percentile``-th percentile at each end (both ends keep zero inside).

    A mixin over a histogram observer: torch.ao's (eager mode, :class:`PercentileObserver`) or
    torchao's (PT2E, :func:`fdq.calibration.quant_api.pt2e_activation_observer`), which keep the
    same histogram state.
    """

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
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


class PercentileObserver(PercentileRange, HistogramObserver):
    """torch.ao's histogram observer with the percentile range (eager mode)."""


class _CalibrationMovingAverage(MovingAverageMinMaxObserver):
    """Moving-average min-max with a 0.1 step: PTQ sees only tens of single-image batches, and
    torch's 0.01 would leave the range at the first image's."""

    def __init__(self, averaging_constant: float = 0.1, **kwargs: object) -> None:
        super().__init__(averaging_constant=averaging_constant, **kwargs)


ACTIVATION_OBSERVERS: Dict[str, Type[ObserverBase]] = {
    "minmax": MinMaxObserver,
    "moving-minmax": _CalibrationMovingAverage,
    "histogram": HistogramObserver,
    "percentile": PercentileObserver,
}
OBSERVER_NAMES = tuple(ACTIVATION_OBSERVERS)


def activation_observer(name: str) -> Type[ObserverBase]:
    """Observer class for a CLI/config name."""
    try:
        return ACTIVATION_OBSERVERS[name]
    except KeyError:
        raise UnknownObserverError(f"unknown observer {name!r} (choose from: {', '.join(OBSERVER_NAMES)})") from None


class SymmetricThreshold:
    """The threshold ``T`` of a symmetric int8 grid (``x -> round(x * 127 / T)``, ncnn's) from activation
    observer ``name``. Rounding ``x`` on that grid errs exactly as rounding ``|x|`` on its half, 128 levels
    over [0, T], so the observer sees ``|x|`` with that many levels: its range search (histogram's L2,
    percentile's clipping) then fits the grid the runtime uses. A ReLU output uses only that half anyway."""

    def __init__(self, name: str, levels: int = 128) -> None:
        self.observer = activation_observer(name)(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                                                  quant_max=levels - 1)
        if hasattr(self.observer, "dst_nbins"):  # torch's histogram search assumes 256 levels otherwise
            self.observer.dst_nbins = levels

    def __call__(self, x: torch.Tensor) -> None:
        self.observer(x.detach().abs())

    def threshold(self) -> float:
        scale, _ = self.observer.calculate_qparams()
        return float(scale) * (self.observer.quant_max - self.observer.quant_min)
