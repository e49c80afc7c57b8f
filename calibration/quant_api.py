"""The one module of fdq that calls quantization APIs: ``torch.ao.quantization`` (eager mode) and PT2E.

torch 2.13 deprecates eager-mode quantization, so everything fdq needs from it lives here: moving to
PT2E / torchao is a change to this file only. That one deprecation notice is for fdq's maintainers,
not its users (docs/ARCHITECTURE.md records it and what replaces the API), so this module filters
exactly that message; every other warning stays visible.
The rest of fdq (PTQ, data-free, sensitivity, QAT, distillation) works through these functions.

PT2E (:func:`quantize_pt2e_xnnpack`) is the path to ARM that PyTorch keeps: ``torch.export``, then
torchao's ``prepare_pt2e`` / ``convert_pt2e`` with ExecuTorch's XNNPACK quantizer, whose model is lowered
to an ExecuTorch program (:mod:`fdq.host.export.executorch`). Its imports load only when it is used.

Weights are symmetric int8 (per channel by default), activations affine uint8. ``reduce_range``
exists for x86/fbgemm kernels that sum pairs of u8 x s8 products in int16 (``vpmaddubsw``) and
saturate (2 x 255 x 127 = 64,770 > 32,767): one operand gives up a bit. ``"activations"`` (torch's
own reduce_range: 7-bit activations, 0..127, per tensor) or ``"weights"`` (7-bit weights, -64..63,
per channel: 2 x 255 x 64 = 32,640 fits) everywhere; ``"saturating-weights"`` 7-bit weights only in
the convolutions whose kernel saturates on this machine (:class:`UnitQConfig`: fbgemm's depthwise
kernel even with VNNI, every kernel without); ``"none"`` keeps 8 and 8, for kernels that do not
saturate (VNNI's ``vpdpbusd``). :func:`default_reduce_range` makes that choice by probing this
machine's kernels (:func:`conv_saturates`, per convolution geometry) when the user does not; the bundle
records the choice and why, and :func:`integer_kernel_error` checks on real inputs that the int8 kernels compute
what their own scales say, which a saturating kernel does not.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn import intrinsic as nni
from torch.ao.nn.intrinsic import qat as nniqat

from fdq.models import fusion_groups

warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor")

BACKENDS = ("qnnpack", "fbgemm", "x86")
PT2E_BACKENDS = ("xnnpack",)  # PT2E quantizers; their models run on ExecuTorch, not on torch's engines

# Re-exported so that the rest of fdq does not import torch.ao itself.
DeQuantStub = tq.DeQuantStub


class UnsupportedBackendError(ValueError):
    """A quantized engine fdq does not know, or this torch build lacks."""


def check_backend(backend: str) -> str:
    """``backend`` if fdq knows it and this torch supports it; one-line error otherwise."""
    if backend in PT2E_BACKENDS:
        return check_pt2e_backend(backend)
    if backend not in BACKENDS:
        raise UnsupportedBackendError(f"unknown backend {backend!r} (choose from: {', '.join(BACKENDS + PT2E_BACKENDS)})")
    if backend not in torch.backends.quantized.supported_engines:
        raise UnsupportedBackendError(f"backend {backend} is not supported by this torch build "
                                      f"(supported: {', '.join(torch.backends.quantized.supported_engines)})")
    return backend


def check_pt2e_backend(backend: str) -> str:
    """``backend`` if its PT2E quantizer is importable here (torchao and executorch); one line otherwise."""
    import importlib.util

    missing = [m for m in ("torchao", "executorch") if importlib.util.find_spec(m) is None]
    if missing:
        raise UnsupportedBackendError(f"backend {backend} quantizes through PT2E and needs {' and '.join(missing)} "
                                      f"(install fdq's executorch extra, see scripts/install_runtimes.sh)")
    return backend


def set_engine(backend: str) -> None:
    """Select the quantized engine used by prepare/convert and by running the converted model."""
    torch.backends.quantized.engine = check_backend(backend)


#: Which operand of an x86/fbgemm int8 product gives up its 8th bit (see the module docstring);
#: ``"saturating-weights"`` gives 7-bit weights only to the convolutions whose kernel saturates here.
REDUCE_RANGES = ("none", "activations", "weights", "saturating-weights")
#: What an x86 engine whose 8-bit int8 saturates gets: 7-bit weights only where a kernel saturates, 8-bit
#: activations and weights everywhere else, measured closest to float of the choices that do not saturate
#: (docs/ACCURACY.md, "x86: which operand gives up a bit"; scripts/bench_x86_range.py).
SATURATING_CHOICE = "saturating-weights"


@dataclass(frozen=True)
class ConvGeometry:
    """What picks a torch int8 convolution kernel: the x86 engine hands convolutions of over 100 groups
    to fbgemm (whose depthwise kernel sums pairs in int16) and, with VNNI, the others to oneDNN."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv2d) -> "ConvGeometry":
        return cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                   tuple(conv.padding), tuple(conv.dilation), conv.groups)


#: The machine-level probes: a 3x3 depthwise layer of 256 channels (fbgemm's depthwise kernel) and a
#: 256-channel pointwise one (fbgemm's or oneDNN's dense kernel).
PROBES = {"depthwise": ConvGeometry(256, 256, (3, 3), (1, 1), (1, 1), (1, 1), 256),
          "pointwise": ConvGeometry(256, 256, (1, 1), (1, 1), (0, 0), (1, 1), 1)}


def int8_products_saturate(backend: str) -> bool:
    """Whether any of ``backend``'s int8 convolution kernels on this machine saturates 8-bit products
    (:data:`PROBES`, :func:`conv_saturates`). fbgemm's depthwise kernel sums u8 x s8 pairs in int16 even
    on an AMD EPYC that lists avx512_vnni (measured here); without VNNI its dense kernel does too."""
    return any(conv_saturates(backend, g) for g in PROBES.values())


@functools.lru_cache(maxsize=None)
def conv_saturates(backend: str, geometry: ConvGeometry) -> bool:
    """Whether ``backend``'s int8 kernel for a convolution of ``geometry`` saturates 8-bit products on this
    machine: every activation code 255 and weight code 127, compared with the same sums in float (exact
    output codes span 0..200; an int16 pair sum saturates at 32,767 < 2 x 255 x 127 = 64,770). Asked of
    the kernel, not of the CPU flags, once per geometry and process."""
    engine = torch.backends.quantized.engine
    set_engine(backend)
    try:
        return _probe_saturates(geometry)
    finally:
        torch.backends.quantized.engine = engine  # a probe (a bundle cache key asks it) leaves the engine as it was


def _probe_saturates(g: ConvGeometry) -> bool:
    """The probe itself, on the engine set."""
    from torch.ao.nn import quantized as nnq
    from torch.nn import functional as F

    conv = nnq.Conv2d(g.in_channels, g.out_channels, g.kernel_size, g.stride, g.padding, g.dilation, g.groups)
    weight = torch.full((g.out_channels, g.in_channels // g.groups, *g.kernel_size), 127.0)
    conv.set_weight_bias(torch.quantize_per_channel(weight, torch.ones(g.out_channels),
                                                    torch.zeros(g.out_channels, dtype=torch.long), 0, torch.qint8), None)
    side = max(d * (k - 1) + 1 for d, k in zip(g.dilation, g.kernel_size)) + 2 * max(g.stride)
    x = torch.full((1, g.in_channels, side, side), 255.0)
    exact = F.conv2d(x, weight, None, g.stride, g.padding, g.dilation, g.groups)
    conv.scale, conv.zero_point = float(exact.max()) / 200.0, 0
    got = conv(torch.quantize_per_tensor(x, 1.0, 0, torch.quint8)).int_repr().float()
    return bool((got - torch.round(exact / conv.scale)).abs().max() > 1)


def default_reduce_range(backend: str) -> Tuple[str, str]:
    """Which of :data:`REDUCE_RANGES` ``backend`` should use on this machine, and why (for the manifest).

    Only x86/fbgemm int8 saturates, on the machines whose kernels sum u8 x s8 pairs in int16; an x86
    bundle runs on the workstation that quantized it in fdq's loop, so its kernels decide. Give
    ``--[no-]reduce-range`` to quantize for another CPU."""
    if backend not in ("x86", "fbgemm"):
        return "none", f"{backend} has no use for it"
    saturating = [kind for kind, g in PROBES.items() if conv_saturates(backend, g)]
    if saturating:
        return SATURATING_CHOICE, (f"this machine's {backend} int8 kernels saturate 8-bit products (an int16 pair "
                                   f"sum, probed: {' and '.join(saturating)}): 7-bit weights in the convolutions "
                                   f"whose kernel saturates, 8 bits elsewhere")
    return "none", f"this machine's {backend} int8 kernels do not saturate 8-bit products (probed): 8-bit int8"


def choose_reduce_range(backend: str, given: Optional[str]) -> Tuple[str, str]:
    """The user's ``--reduce-range [activations|weights|saturating-weights]`` / ``--no-reduce-range`` where
    given, else :func:`default_reduce_range`; with the reason."""
    if given is not None:
        flag = {"none": "--no-reduce-range", "activations": "--reduce-range"}.get(given, f"--reduce-range {given}")
        return given, f"{flag} given"
    return default_reduce_range(backend)


def _activation_range(reduce_range: str) -> Tuple[int, int]:
    return (0, 127) if reduce_range == "activations" else (0, 255)


def _weight_range(reduce_range: str) -> Tuple[int, int]:
    return (-64, 63) if reduce_range == "weights" else (-128, 127)


@dataclass(frozen=True)
class UnitQConfig:
    """The qconfig of each convolution unit: ``base``, or ``narrow`` (7-bit weights) for the units whose
    ``backend`` kernel saturates on this machine (``reduce_range="saturating-weights"``)."""

    base: tq.QConfig
    narrow: Optional[tq.QConfig] = None
    backend: str = ""

    def of(self, conv: nn.Conv2d) -> tq.QConfig:
        """The qconfig of the unit whose float convolution is ``conv``."""
        if self.narrow is not None and conv_saturates(self.backend, ConvGeometry.of(conv)):
            return self.narrow
        return self.base

    def assign(self, model: nn.Module) -> nn.Module:
        """Set ``model``'s qconfig, and the narrowed units' own, for ``prepare``; a unit already without one
        (a float island) stays float."""
        model.qconfig = self.base
        if self.narrow is not None:
            modules = dict(model.named_modules())
            for name in conv_units(model):
                unit = modules[name]
                if getattr(unit, "qconfig", self.base) is not None:
                    unit.qconfig = self.of(unit_conv(unit))
        return model


def narrowed_units(model: nn.Module) -> List[str]:
    """The convolution units of a converted model whose weights are 7-bit (-64..63): for the manifest."""
    from torch.ao.nn import quantized as nnq

    return [name for name, m in model.named_modules()
            if isinstance(m, nnq.Conv2d) and int(m.weight().int_repr().min()) >= -64
            and int(m.weight().int_repr().max()) <= 63]


# --------------------------------------------------------------------------------------------------
# Activation observers by name, including the one fdq adds: percentile.
#
# ``percentile`` reuses torch's HistogramObserver accumulation (a 2048-bin histogram that is re-binned
# as the range grows) and only chooses the clipping range differently: the 0.01th / 99.99th
# percentiles (a few extreme activations stop stretching the grid). ``histogram`` is torch's own: the
# range minimising the L2 quantization error.
#
# There is no ``entropy`` (KL, TensorRT's calibration) observer: fixed to TensorRT's algorithm on
# torch's uint8 grid it still lost up to 1.5 AP points on qnnpack (no better than min-max), because
# KL's own objective clips the ReLU outputs of these detectors to 0.36-0.9 of the L2 range
# (docs/ACCURACY.md); it was removed rather than shipped. Its last version is in git (commit 7485546).
# --------------------------------------------------------------------------------------------------


class UnknownObserverError(ValueError):
    """An observer name fdq does not know."""


def _bin_edges(observer: Any) -> np.ndarray:
    return np.linspace(float(observer.min_val), float(observer.max_val), observer.bins + 1)


class PercentileRange:
    """Clip the range to the ``percentile``-th percentile at each end (both ends keep zero inside).

    A mixin over a histogram observer: torch.ao's (eager mode, :class:`PercentileObserver`) or
    torchao's (PT2E, :func:`pt2e_activation_observer`), which keep the same histogram state.
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


class PercentileObserver(PercentileRange, tq.HistogramObserver):
    """torch.ao's histogram observer with the percentile range (eager mode)."""


class _CalibrationMovingAverage(tq.MovingAverageMinMaxObserver):
    """Moving-average min-max with a 0.1 step: PTQ sees only tens of single-image batches, and
    torch's 0.01 would leave the range at the first image's."""

    def __init__(self, averaging_constant: float = 0.1, **kwargs: object) -> None:
        super().__init__(averaging_constant=averaging_constant, **kwargs)


ACTIVATION_OBSERVERS: Dict[str, Type[tq.ObserverBase]] = {
    "minmax": tq.MinMaxObserver,
    "moving-minmax": _CalibrationMovingAverage,
    "histogram": tq.HistogramObserver,
    "percentile": PercentileObserver,
}
OBSERVER_NAMES = tuple(ACTIVATION_OBSERVERS)


def activation_observer(name: str) -> Type[tq.ObserverBase]:
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

    passes = 1

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


class KLThreshold:
    """ncnn2table's default threshold, re-implemented: the clipping point of ``|x|`` whose 128-level
    quantization keeps the histogram closest in KL divergence. ncnn's own method, step for step, so that
    fdq's ncnn int8 calibrates as ncnn's tool would: a first pass finds ``absmax``; a second fills 2048
    bins over [0, absmax] with the non-zero ``|x|`` (the zeros of a ReLU say nothing about the range).
    Each candidate threshold ``t`` (bins 128..2047) clips the normalized histogram (the tail summed into
    its last bin), spreads ``t`` bins over 128 equal levels (fractions of a bin split by width), expands
    each level's mass uniformly back over its span, and scores ``sum p log(p / q)`` with 1e-4 added to
    every bin; the best ``t`` gives the threshold ``(t + 0.5) * absmax / 2048``. As in ncnn, the levels
    are computed from the unclipped bins, so the clipped tail counts against a threshold only through
    ``p``'s last bin."""

    passes = 2
    bins, levels, eps = 2048, 128, 1e-4

    def __init__(self) -> None:
        self.absmax = 0.0
        self.histogram: Optional[np.ndarray] = None

    def next_pass(self) -> None:
        """Done finding absmax: the following calls fill the histogram."""
        self.histogram = np.zeros(self.bins, np.float64)

    def __call__(self, x: torch.Tensor) -> None:
        magnitude = x.detach().abs().reshape(-1)
        if self.histogram is None:
            self.absmax = max(self.absmax, float(magnitude.max()) if magnitude.numel() else 0.0)
            return
        magnitude = magnitude[magnitude != 0]
        index = (magnitude / max(self.absmax, 1e-30) * self.bins).long().clamp_(max=self.bins - 1)
        self.histogram += torch.bincount(index, minlength=self.bins).double().numpy()

    def threshold(self) -> float:
        if self.histogram is None or self.histogram.sum() == 0:
            return self.absmax
        hist = self.histogram / self.histogram.sum()
        below = np.concatenate([[0.0], np.cumsum(hist)])  # mass of bins [0, k)

        def mass_to(x: np.ndarray) -> np.ndarray:  # mass of [0, x], uniform within a bin
            whole = np.minimum(np.floor(x).astype(np.int64), self.bins - 1)
            return below[whole] + (x - whole) * hist[whole]

        best, best_kl = self.levels, np.inf
        for t in range(self.levels, self.bins):
            p = hist[:t] + self.eps
            p[-1] += hist[t:].sum()
            width = t / self.levels
            edges = np.arange(self.levels + 1) * width
            density = np.diff(mass_to(edges)) / width
            cumulative = np.concatenate([[0.0], np.cumsum(density * width)])  # expanded mass of [0, edge_j)
            at = np.arange(t + 1, dtype=np.float64)
            level = np.minimum((at // width).astype(np.int64), self.levels - 1)
            expanded = cumulative[level] + density[level] * (at - edges[level])
            q = np.diff(expanded) + self.eps
            kl = float(np.sum(p * np.log(p / q)))
            if kl < best_kl:
                best, best_kl = t, kl
        return (best + 0.5) * self.absmax / self.bins


def symmetric_threshold(name: str) -> Union[SymmetricThreshold, KLThreshold]:
    """The observer of a symmetric int8 threshold by name: ncnn2table's ``kl``, or an activation observer's
    (:class:`SymmetricThreshold`). Each has ``passes`` over the data, ``next_pass()`` between them."""
    if name == "kl":
        return KLThreshold()
    return SymmetricThreshold(name)


def make_qconfig(backend: str, observer: str = "histogram", per_channel: bool = True, qat: bool = False,
                 reduce_range: str = "none") -> UnitQConfig:
    """Each unit's QConfig for ``backend``: named activation observer, symmetric int8 weights.

    ``qat=True`` wraps the same observers in fake-quantize modules (weights then use moving-average
    observers, because they change every step), over the same ranges. qnnpack never needs ``reduce_range``.
    """
    check_backend(backend)
    if reduce_range not in REDUCE_RANGES:
        raise ValueError(f"reduce_range is one of {', '.join(REDUCE_RANGES)}, not {reduce_range!r}")
    if reduce_range != "none" and backend == "qnnpack":
        raise UnsupportedBackendError("reduce_range is an x86/fbgemm workaround; qnnpack has no use for it")
    if reduce_range == "saturating-weights":
        return UnitQConfig(_qconfig(observer, per_channel, qat, "none"), _qconfig(observer, per_channel, qat, "weights"),
                           backend)
    return UnitQConfig(_qconfig(observer, per_channel, qat, reduce_range))


def _qconfig(observer: str, per_channel: bool, qat: bool, reduce_range: str) -> tq.QConfig:
    qmin, qmax = _activation_range(reduce_range)
    wmin, wmax = _weight_range(reduce_range)
    act_cls = activation_observer(observer)
    act_kwargs = dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=qmin, quant_max=qmax)
    if per_channel:
        w_cls = tq.MovingAveragePerChannelMinMaxObserver if qat else tq.PerChannelMinMaxObserver
        w_kwargs = dict(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0, quant_min=wmin, quant_max=wmax)
    else:
        w_cls = tq.MovingAverageMinMaxObserver if qat else tq.MinMaxObserver
        w_kwargs = dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=wmin, quant_max=wmax)
    if qat:
        return tq.QConfig(activation=tq.FakeQuantize.with_args(observer=act_cls, **act_kwargs),
                          weight=tq.FakeQuantize.with_args(observer=w_cls, **w_kwargs))
    return tq.QConfig(activation=act_cls.with_args(**act_kwargs), weight=w_cls.with_args(**w_kwargs))


def fuse(model: nn.Module, qat: bool = False) -> nn.Module:
    """A fused copy of ``model`` (Conv-BN(-ReLU) groups from :func:`fdq.models.fusion_groups`).

    PTQ folds BN into the convolution (eval mode); QAT keeps BN as trainable ConvBn modules, which
    needs a model in train mode.
    """
    groups = fusion_groups(model)
    if qat:
        return tq.fuse_modules_qat(copy.deepcopy(model).train(), groups, inplace=True)
    return tq.fuse_modules(copy.deepcopy(model).eval(), groups, inplace=True)


def prepare_ptq(model: nn.Module, qconfig: UnitQConfig) -> nn.Module:
    """Observed copy of a fused eval model; modules whose ``qconfig`` is already None stay float."""
    return tq.prepare(qconfig.assign(copy.deepcopy(model).eval()), inplace=True)


def prepare_qat(model: nn.Module, qconfig: UnitQConfig) -> nn.Module:
    """Fake-quantized trainable copy of a model fused with ``fuse(model, qat=True)``."""
    return tq.prepare_qat(qconfig.assign(copy.deepcopy(model).train()), inplace=True)


def convert(model: nn.Module) -> nn.Module:
    """Integer model (eval mode) from a calibrated or QAT-trained copy, for the current engine."""
    return tq.convert(copy.deepcopy(model).eval(), inplace=True)


#: The intra-op thread count every calibration forward runs at (see :func:`calibration_threads`).
CALIBRATION_THREADS = 1


@contextlib.contextmanager
def calibration_threads() -> Iterator[None]:
    """Run the enclosed float forwards at :data:`CALIBRATION_THREADS` threads, then restore the count.

    A float convolution's summation order, hence the last bits of its output, follows torch's thread
    count; observers, bias correction and distilled inputs read those bits, so without a fixed count the
    same ``fdq quantize`` gave different bundles on machines (or in processes) with different thread
    counts, while the bundle cache keys a bundle by its inputs alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(CALIBRATION_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def freeze_observers(model: nn.Module) -> nn.Module:
    """Stop updating quantization ranges (late QAT epochs)."""
    return model.apply(tq.disable_observer)


@contextlib.contextmanager
def observers_paused(model: nn.Module) -> Iterator[nn.Module]:
    """Fake-quantize ``model`` without updating any observer, then restore each one's previous state."""
    fakes = [m for m in model.modules() if isinstance(m, tq.FakeQuantizeBase)]
    enabled = [bool(m.observer_enabled[0]) for m in fakes]
    model.apply(tq.disable_observer)
    try:
        yield model
    finally:
        for m, on in zip(fakes, enabled):
            if on:
                m.enable_observer()


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """Stop updating BatchNorm running statistics of fused QAT ConvBn modules."""
    return model.apply(nniqat.freeze_bn_stats)


def enable_fake_quant(model: nn.Module) -> nn.Module:
    return model.apply(tq.enable_fake_quant)


def disable_fake_quant(model: nn.Module) -> nn.Module:
    return model.apply(tq.disable_fake_quant)


# ------------------------------------------------------------------------------------------------
# Inspection helpers used by data-free quantization, sensitivity and mixed precision
# ------------------------------------------------------------------------------------------------


def conv_units(model: nn.Module) -> List[str]:
    """Names of the convolution units of a fused (float or prepared) model, in registration order.

    A unit is a fused Conv(+ReLU) module or a lone Conv2d: what becomes one quantized convolution.
    """
    units: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(u + ".") for u in units):
            continue
        if isinstance(module, nni._FusedModule) or isinstance(module, nn.Conv2d):
            units.append(name)
    return units


def unit_conv(module: nn.Module) -> nn.Conv2d:
    """The float convolution inside a unit (the unit itself or the first module of a fused one)."""
    conv = module[0] if isinstance(module, nni._FusedModule) else module
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{type(module).__name__} is not a convolution unit")
    return conv


def fake_quantize_weight(conv: nn.Conv2d, qconfig: UnitQConfig, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``conv``'s weight (or ``weight`` in its place) rounded to the grid ``convert`` will use for it (float tensor)."""
    weight = conv.weight if weight is None else weight
    observer = qconfig.of(conv).weight()
    observer(weight.detach())
    scale, zero_point = observer.calculate_qparams()
    if observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point.to(torch.int32), observer.ch_axis,
                                                      observer.quant_min, observer.quant_max)
    return torch.fake_quantize_per_tensor_affine(weight, float(scale), int(zero_point),
                                                 observer.quant_min, observer.quant_max)


def observers(model: nn.Module) -> Dict[str, nn.Module]:
    """Output observer of every observed module of a prepared model, by module name."""
    return {name: m.activation_post_process for name, m in model.named_modules()
            if hasattr(m, "activation_post_process") and isinstance(m.activation_post_process, tq.ObserverBase)}


def activation_qparams(observer: nn.Module) -> Tuple[float, int, int, int]:
    """(scale, zero point, quant_min, quant_max) of a calibrated activation observer."""
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point), int(observer.quant_min), int(observer.quant_max)


def fake_quantize_activation(x: torch.Tensor, qparams: Tuple[float, int, int, int]) -> torch.Tensor:
    """``x`` rounded to a calibrated grid (simulating one quantized output)."""
    return torch.fake_quantize_per_tensor_affine(x, *qparams)


def copy_observers(src: nn.Module, dst: nn.Module, rename: Mapping[str, str]) -> None:
    """Give ``dst``'s observers the calibrated state of ``src``'s (``rename``: dst name -> src name).

    Lets mixed precision re-use one calibration for every float-island choice.
    """
    source = observers(src)
    modules = dict(dst.named_modules())
    for name in observers(dst):
        key = rename.get(name, name)
        if key not in source:
            raise KeyError(f"no calibrated observer for {name} (looked for {key})")
        modules[name].activation_post_process = copy.deepcopy(source[key])


class FloatIsland(nn.Module):
    """Run one module in float inside a quantized model: dequantize -> module -> quantize.

    Where the neighbour on a side is a float island too, that side's stub is left out, so a run
    of float units passes float activations along instead of rounding them in between.
    """

    def __init__(self, body: nn.Module, dequantize_input: bool = True, quantize_output: bool = True) -> None:
        super().__init__()
        self.dequant = tq.DeQuantStub() if dequantize_input else nn.Identity()
        self.body = body
        self.body.qconfig = None
        self.quant = tq.QuantStub() if quantize_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant(self.body(self.dequant(x)))


def float_islands(model: nn.Module, names: Sequence[str], links: Iterable[Tuple[str, str]] = (),
                  outputs: Iterable[str] = ()) -> Tuple[nn.Module, Dict[str, str]]:
    """Copy of a fused float model with the named units wrapped in :class:`FloatIsland`.

    ``links`` are (producer, consumer) unit pairs where the producer's output feeds only that
    consumer; when both are float, the activation between them stays float. ``outputs`` are units
    whose output only goes to a DeQuantStub (a model output): as islands they return float, which
    the stub passes through. Returns the model and the observer rename map for
    :func:`copy_observers` (an island's quantize stub takes over the observer of the unit it wraps).
    """
    chosen, model_outputs = set(names), set(outputs)
    inner = [(a, b) for a, b in links if a in chosen and b in chosen]
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    rename: Dict[str, str] = {}
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        quantize_output = name not in model_outputs and not any(a == name for a, _ in inner)
        setattr(parent, attr, FloatIsland(modules[name], dequantize_input=not any(b == name for _, b in inner),
                                          quantize_output=quantize_output))
        if quantize_output:
            rename[f"{name}.quant"] = name
    return model, rename


def integer_kernel_error(model: nn.Module, inputs: Iterable[torch.Tensor]) -> Dict[str, int]:
    """Per quantized convolution of a converted ``model``, the largest difference (in output codes) between
    what its int8 kernel returned on ``inputs`` and a float computation from the same int8 operands and
    scales (dequantized input and weights, float convolution and bias, requantized). Rounding makes 1;
    a kernel that saturates (x86/fbgemm's int16 pair sums without VNNI) makes far more."""
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.intrinsic import quantized as nniq
    from torch.nn import functional as F

    worst: Dict[str, int] = {}

    def check(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            x = args[0]
            y = F.conv2d(x.dequantize(), module.weight().dequantize(), module.bias(), module.stride, module.padding,
                         module.dilation, module.groups)
            if isinstance(module, nniq.ConvReLU2d):
                y = torch.relu(y)
            codes = torch.clamp(torch.round(y / out.q_scale()) + out.q_zero_point(), 0, 255)
            diff = int((codes - out.int_repr().float()).abs().max())
            worst[name] = max(worst.get(name, 0), diff)
        return hook

    convs = [n for n, m in model.named_modules() if isinstance(m, nnq.Conv2d)]  # ConvReLU2d is one too
    run_hooked(model, {n: check(n) for n in convs}, inputs)
    return worst


def run_hooked(model: nn.Module, hooks: Mapping[str, Callable[..., None]], inputs: Iterable[torch.Tensor]) -> None:
    """``model`` on every input (no gradients) with a forward hook on each named module, removed afterwards."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in handles:
            h.remove()


def split_input_quantization(model: nn.Module) -> Tuple[nn.Module, Optional[Tuple[float, int]]]:
    """A converted model whose first Quantize is removed, and that step's (scale, zero_point).

    The board then feeds the quint8 input its C kernel writes straight from the camera frame,
    instead of a float blob the model would quantize again. Float models come back unchanged.
    """
    from torch.ao.nn.quantized import Quantize

    quant = getattr(model, "quant", None)
    if not isinstance(quant, Quantize) or quant.dtype != torch.quint8:
        return model, None
    stripped = copy.deepcopy(model)
    stripped.quant = nn.Identity()
    return stripped, (float(quant.scale), int(quant.zero_point))


# ------------------------------------------------------------------------------------------------
# PT2E: torch.export + torchao with the XNNPACK quantizer
# ------------------------------------------------------------------------------------------------


class _TorchaoGpuKernels(logging.Filter):
    """torchao's wheel ships CUDA kernels (``_C_cutlass*.so``, ``_C_mxfp8*.so``) and logs a warning for
    each one a CPU-only torch cannot load; PT2E on CPU uses none of them. Only those lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Failed to load ") and "/torchao/_C_" in message)


def _quiet_torchao_gpu_kernels() -> None:
    logger = logging.getLogger("torchao")
    if not any(isinstance(f, _TorchaoGpuKernels) for f in logger.filters):
        logger.addFilter(_TorchaoGpuKernels())


# Activation observers PT2E takes by name (torchao's classes; ``percentile`` is fdq's range over its
# histogram, here at the 99.999th percentile). The default is measured on the val subset at 320 through
# the PT2E reference model (docs/ACCURACY.md): largest AP drop of slim / rfb / mnet025 with histogram
# 1.34 / 0.46 / -0.05 points, percentile 99.99 1.09 / 1.02 / -0.21, percentile 99.999 0.70 / 0.35 / 0.66.
PT2E_OBSERVERS = ("percentile", "histogram", "minmax")
PT2E_DEFAULT_OBSERVER = "percentile"
PT2E_PERCENTILE = 99.999
# XNNPACK's own configuration floors every scale at 2**-12. For a weight channel that floor is a step
# of 2**-12 whatever the channel holds: after BatchNorm folding and cross-layer equalization many
# channels' largest weight is below 127 * 2**-12 = 0.031 and got a handful of levels (slim: 2.0 AP
# points lost on easy instead of 1.3). Weights take float32's eps instead, as the eager observers do;
# activations keep XNNPACK's floor (a no-op here: no calibrated activation range is that small).
_PT2E_EPS = 2 ** -12
XNNPACK_STOCK_EPS = _PT2E_EPS


def pt2e_activation_observer(name: str) -> Any:
    """The torchao observer constructor of an activation observer name (a one-line error for others)."""
    from torchao.quantization.pt2e import HistogramObserver as AoHistogram, MinMaxObserver as AoMinMax

    if name == "percentile":
        percentile = type("PercentileObserverPT2E", (PercentileRange, AoHistogram), {"__module__": __name__})
        return percentile.with_args(eps=_PT2E_EPS, percentile=PT2E_PERCENTILE)
    classes = {"histogram": AoHistogram, "minmax": AoMinMax}
    if name not in classes:
        raise UnsupportedBackendError(f"PT2E takes the activation observers {', '.join(PT2E_OBSERVERS)}, "
                                      f"not {name!r}")
    return classes[name].with_args(eps=_PT2E_EPS)


def _pt2e_config(per_channel: bool, observer: str, weight_eps: float) -> Any:
    """XNNPACK's static symmetric configuration with ``observer`` for activations, ``weight_eps`` for weights."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import MinMaxObserver as AoMinMax, PerChannelMinMaxObserver as AoPerChannelMinMax
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    base = get_symmetric_quantization_config(is_per_channel=per_channel)
    act, weight = base.input_activation, base.weight
    act = QuantizationSpec(dtype=act.dtype, quant_min=act.quant_min, quant_max=act.quant_max, qscheme=act.qscheme,
                           observer_or_fake_quant_ctr=pt2e_activation_observer(observer))
    weight_observer = (AoPerChannelMinMax if per_channel else AoMinMax).with_args(eps=weight_eps)
    weight = QuantizationSpec(dtype=weight.dtype, quant_min=weight.quant_min, quant_max=weight.quant_max,
                              qscheme=weight.qscheme, ch_axis=weight.ch_axis, observer_or_fake_quant_ctr=weight_observer)
    return QuantizationConfig(act, act, weight, base.bias, False)


def quantize_pt2e_xnnpack(model: nn.Module, example: Tuple[torch.Tensor, ...], dynamic_shapes: Optional[Dict],
                          blobs: Sequence[torch.Tensor], per_channel: bool = True,
                          observer: str = PT2E_DEFAULT_OBSERVER, weight_eps: Optional[float] = None) -> nn.Module:
    """The int8 PT2E model of a float ``model``, calibrated on ``blobs``.

    XNNPACK's symmetric configuration: int8 weights symmetric (per output channel by default),
    int8 activations affine with ranges from ``observer`` (see :data:`PT2E_OBSERVERS`); weight scales
    floored at ``weight_eps`` (default float32's eps; ``2**-12`` is XNNPACK's stock value, which
    ``scripts/bench_pt2e.py`` compares). The result is
    an exported graph with quantize / dequantize nodes around each operator (what ExecuTorch's
    XNNPACK partitioner lowers to int8 kernels); it also runs here in float, for the calibration report.
    """
    _quiet_torchao_gpu_kernels()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    eps = torch.finfo(torch.float32).eps if weight_eps is None else weight_eps
    quantizer = XNNPACKQuantizer().set_global(_pt2e_config(per_channel, observer, eps))
    graph = torch.export.export(copy.deepcopy(model).eval(), example, dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for blob in blobs:
            prepared(blob)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # fdq's report helpers call .eval() on every model
    return converted
