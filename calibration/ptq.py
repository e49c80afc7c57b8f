"""Post-training static quantization: level 1 (no data) and level 2 (a folder of images).

Both levels are one pipeline fed differently: fuse Conv-BN(-ReLU) -> optional cross-layer
equalization -> optional bias correction -> observe activations on the inputs -> convert. Level 1
feeds inputs distilled from the BatchNorm statistics, level 2 the preprocessed calibration images.
Every float forward that decides a quantization parameter runs at a fixed thread count
(:func:`quant_api.calibration_threads`), so the bundle does not depend on the machine's cores.

The calibrated state (:class:`Calibrated`) is kept, not just the integer model, because mixed
precision converts it again with some layers left in float without calibrating twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import quant_api
from .progress import track
from .datafree import DISTILL_STEPS, bias_correct, cross_layer_equalize, distill_inputs, unit_graph


@dataclass(frozen=True)
class PTQOptions:
    """How to quantize; every field goes into the bundle manifest."""

    backend: str
    observer: str = "histogram"
    per_channel: bool = True
    reduce_range: str = "none"         # x86/fbgemm kernels that saturate: see quant_api.REDUCE_RANGES
    cle: bool = True
    bias_correction: bool = False      # opt-in: lower output error, AP within noise (docs/ACCURACY.md)

    def qconfig(self) -> quant_api.UnitQConfig:
        return quant_api.make_qconfig(self.backend, self.observer, self.per_channel, reduce_range=self.reduce_range)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Calibrated:
    """A fused float model (after CLE / bias correction) and its calibrated observed copy."""

    fused: nn.Module
    prepared: nn.Module
    options: PTQOptions
    equalized_pairs: int
    links: List[Tuple[str, str]]
    heads: List[str]

    def convert(self, float_units: Sequence[str] = ()) -> nn.Module:
        """The integer model; ``float_units`` (names from :func:`quant_api.conv_units`) stay float."""
        quant_api.set_engine(self.options.backend)
        if not float_units:
            return quant_api.convert(self.prepared)
        islands, rename = quant_api.float_islands(self.fused, float_units, self.links, self.heads)
        prepared = quant_api.prepare_ptq(islands, self.options.qconfig())
        quant_api.copy_observers(self.prepared, prepared, rename)
        return quant_api.convert(prepared)


def calibrate(model: nn.Module, options: PTQOptions, inputs: Sequence[torch.Tensor]) -> Calibrated:
    """Run the PTQ pipeline on a float eval model (unchanged) with ``inputs`` as calibration data."""
    if not inputs:
        raise ValueError("calibration needs at least one input")
    quant_api.set_engine(options.backend)
    qconfig = options.qconfig()
    with quant_api.calibration_threads():
        fused = quant_api.fuse(model)
        pairs = 0
        if options.cle:
            fused, pairs = cross_layer_equalize(fused, inputs[0])
        if options.bias_correction:
            fused = bias_correct(fused, qconfig, inputs)
        prepared = quant_api.prepare_ptq(fused, qconfig)
        with torch.no_grad():
            for x in track(inputs, "fdq: calibrating"):
                prepared(x)
    return Calibrated(fused, prepared, options, pairs, *unit_graph(fused, inputs[0]))


def calibrate_pt2e(model: nn.Module, inputs: Sequence[torch.Tensor], example: Tuple[torch.Tensor, ...],
                   dynamic_shapes: Dict[str, Any], per_channel: bool = True, cle: bool = True,
                   observer: str = quant_api.PT2E_DEFAULT_OBSERVER,
                   weight_eps: Optional[float] = None) -> Tuple[nn.Module, int]:
    """Level 2 through PT2E for XNNPACK: the same fusion and cross-layer equalization as the eager
    path, then ExecuTorch's XNNPACK quantizer (``observer`` for activations) calibrated on ``inputs``.
    Returns the int8 PT2E model and the number of equalized pairs."""
    if not inputs:
        raise ValueError("calibration needs at least one input")
    with quant_api.calibration_threads():
        fused = quant_api.fuse(model)
        pairs = 0
        if cle:
            fused, pairs = cross_layer_equalize(fused, inputs[0])
        return quant_api.quantize_pt2e_xnnpack(fused, example, dynamic_shapes, inputs, per_channel, observer,
                                               weight_eps), pairs


def calibrate_datafree(model: nn.Module, options: PTQOptions, steps: int = DISTILL_STEPS, seed: int = 0) -> Calibrated:
    """Level 1: calibrate on inputs distilled from the model's own BatchNorm statistics."""
    with quant_api.calibration_threads():
        distilled = distill_inputs(model, model.spec.mean_bgr, steps=steps, seed=seed)
    return calibrate(model, options, list(distilled.split(1)))
