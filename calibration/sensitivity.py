"""Per-layer quantization sensitivity, and mixed precision that keeps the worst layers in float.

For every convolution unit (a fused Conv(+ReLU), i.e. one integer convolution):

* ``sqnr_db``: SQNR of its output in the fully quantized model against the float model, on the
  calibration inputs (accumulated error up to that layer);
* ``alone``: the model in float with only this unit quantized (weights rounded per the qconfig and
  the output rounded to its calibrated grid, simulated with fake quantization): the SQNR of the
  network outputs and the AP change on the evaluation images.

:func:`choose_float_units` then adds units to float islands in order of sensitivity until the AP
drop on the evaluation images is within the budget. ``fdq quantize`` evaluates on every
calibration image: a handful of held-back images is too noisy to rank layers by.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import torch
from torch import nn

from . import quant_api
from .ptq import Calibrated
from .report import output_sqnr_db

Evaluate = Callable[[nn.Module], Dict[str, float]]
"""Model -> AP points per setting on the evaluation images."""


def _unit_outputs(model: nn.Module, names: Sequence[str],
                  inputs: Sequence[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    outputs: Dict[str, List[torch.Tensor]] = {n: [] for n in names}

    def keep(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, __: object, out: torch.Tensor) -> None:
            outputs[name].append(out.dequantize() if out.is_quantized else out.detach().clone())
        return hook

    quant_api.run_hooked(model, {n: keep(n) for n in names}, inputs)
    return outputs


def layer_sqnr(calibrated: Calibrated, quantized: nn.Module, inputs: Sequence[torch.Tensor]) -> Dict[str, float]:
    """SQNR (dB) of each unit's output in ``quantized`` against the fused float model."""
    names = quant_api.conv_units(calibrated.fused)
    ref = _unit_outputs(calibrated.fused, names, inputs)
    got = _unit_outputs(quantized, names, inputs)
    return {n: output_sqnr_db(torch.cat([r.flatten() for r in ref[n]]), torch.cat([g.flatten() for g in got[n]]))
            for n in names}


@contextmanager
def only_quantized(model: nn.Module, calibrated: Calibrated, name: str) -> Iterator[nn.Module]:
    """``model`` (a copy of ``calibrated.fused``) with unit ``name`` fake-quantized, restored on exit."""
    unit = dict(model.named_modules())[name]
    conv = quant_api.unit_conv(unit)
    qparams = quant_api.activation_qparams(quant_api.observers(calibrated.prepared)[name])
    original = conv.weight.data.clone()
    conv.weight.data = quant_api.fake_quantize_weight(conv, calibrated.options.qconfig(), original)
    handle = unit.register_forward_hook(lambda _m, _i, out: quant_api.fake_quantize_activation(out, qparams))
    try:
        yield model
    finally:
        handle.remove()
        conv.weight.data = original


def _outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> List[Tuple[torch.Tensor, ...]]:
    with torch.no_grad():
        return [tuple(model(x)) for x in inputs]


def _min_output_sqnr(ref: List[Tuple[torch.Tensor, ...]], got: List[Tuple[torch.Tensor, ...]]) -> float:
    per_output = zip(*[zip(r, g) for r, g in zip(ref, got)])
    return min(output_sqnr_db(torch.cat([r.flatten() for r, _ in pairs]), torch.cat([g.flatten() for _, g in pairs]))
               for pairs in map(list, per_output))


@dataclass
class LayerSensitivity:
    """One unit's sensitivity (see the module docstring); ``alone_ap_drop`` in points per setting."""

    name: str
    sqnr_db: float
    alone_output_sqnr_db: float
    alone_ap_drop: Dict[str, float]

    @property
    def worst_drop(self) -> float:
        return max(self.alone_ap_drop.values(), default=0.0)


def analyse(calibrated: Calibrated, quantized: nn.Module, inputs: Sequence[torch.Tensor],
            evaluate: Evaluate) -> List[LayerSensitivity]:
    """Sensitivity of every unit, most sensitive first (largest AP drop alone, then lowest SQNR)."""
    sqnr = layer_sqnr(calibrated, quantized, inputs)
    model = copy.deepcopy(calibrated.fused).eval()
    ref_outputs = _outputs(model, inputs)
    float_ap = evaluate(model)
    result = []
    for name in quant_api.conv_units(model):
        with only_quantized(model, calibrated, name) as simulated:
            ap = evaluate(simulated)
            out_sqnr = _min_output_sqnr(ref_outputs, _outputs(simulated, inputs))
        drop = {s: round(float_ap[s] - ap.get(s, 0.0), 3) for s in float_ap}
        result.append(LayerSensitivity(name, sqnr[name], out_sqnr, drop))
    return sorted(result, key=lambda r: (-r.worst_drop, r.alone_output_sqnr_db))


def choose_float_units(calibrated: Calibrated, ranking: Sequence[LayerSensitivity],
                       measure_drop: Callable[[nn.Module], float], budget: float
                       ) -> Tuple[List[str], nn.Module, float, List[Dict[str, object]]]:
    """Fewest most-sensitive units to keep in float so that ``measure_drop(int8 model) <= budget``.

    Returns the float units, the converted model, its drop and the search log (drop after each
    step). If no mix meets the budget, the one with the smallest drop is returned.
    """
    chosen: List[str] = []
    model = calibrated.convert()
    drop = measure_drop(model)
    steps: List[Dict[str, object]] = [{"float_units": 0, "ap_drop": round(drop, 3)}]
    best = (drop, [], model)
    for layer in ranking:
        if drop <= budget:
            break
        chosen.append(layer.name)
        model = calibrated.convert(chosen)
        drop = measure_drop(model)
        steps.append({"float_units": len(chosen), "added": layer.name, "ap_drop": round(drop, 3)})
        if drop < best[0]:
            best = (drop, list(chosen), model)
    if drop <= budget:
        return chosen, model, drop, steps
    return best[1], best[2], best[0], steps
