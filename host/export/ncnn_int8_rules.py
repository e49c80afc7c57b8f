"""ncnn's int8 rules applied to an fp32 ncnn model: which layer is int8, its scales, its requantization.

Read from ncnn's ``tools/quantize/ncnn2int8.cpp`` and ``src/layer/convolution*.cpp`` (commit a4d2ea1d):

* quantization is symmetric, ``q = clamp(round(x * s), -127, 127)``; a layer's input scale is
  ``127 / threshold``, its weight scale ``127 / absmax`` per output channel (per group for depthwise);
* param key 8, ``int8_scale_term``: 2 on Convolution, 1 on ConvolutionDepthWise; 100 more where the
  layer requantizes its output to int8 for the int8 convolutions that read it, directly or through a
  Split every consumer of which is one (``fuse_requantize``); the top scale is their bottom scale;
* everything else (Concat, BinaryOp, Interp, the heads' Permute / Reshape / Softmax) stays fp32.

The Winograd choice (docs/ACCURACY.md, "ncnn int8"): ncnn's int8 Winograd F(4,3) for 3x3 stride-1
dilation-1 convolutions needs 6-bit weights (``ncnn2table`` gives those layers ``31 / absmax``).
``winograd_bits`` None (the export's choice): those layers keep 8-bit weights and their own switch
turns Winograd off (param key 31, ``featmask``, bit 6: ``use_winograd_convolution`` off for that
layer only); 6 (or 8, to see what the 6 bits avoid): Winograd on, weights with that many bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .ncnn_model import CONVOLUTIONS, Int8Data, Layer, NcnnModel, scale_count

FEATMASK_KEY = 31
NO_WINOGRAD = 1 << 6
INT8_TERM = {"Convolution": 2, "ConvolutionDepthWise": 1}
REQUANTIZE = 100


@dataclass(frozen=True)
class LayerQuant:
    """How one convolution becomes int8: the |x| its input maps to 127 at, and optionally its weights
    already quantized (the source bundle's int8 values and per-output-channel ncnn scales)."""

    threshold: float
    weight: Optional[np.ndarray] = None
    weight_scales: Optional[np.ndarray] = None


def winograd_shaped(layer: Layer) -> bool:
    """A convolution ncnn may run with int8 Winograd F(4,3): 3x3, stride 1, dilation 1, not depthwise."""
    return layer.type == "Convolution" and layer.kernel == (3, 3) and layer.stride == (1, 1) and \
        layer.dilation == (1, 1)


def symmetric_weights(weight: np.ndarray, groups: int, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    """ncnn's weight quantization: one scale ``qmax / absmax`` per group of rows (an all-zero group gets
    scale 0, which ncnn reads as "output = bias"); returns (int8 values, scales)."""
    qmax = float(2 ** (bits - 1) - 1)
    rows = weight.reshape(groups, -1).astype(np.float64)
    absmax = np.abs(rows).max(axis=1)
    scales = np.divide(qmax, absmax, out=np.zeros_like(absmax), where=absmax > 0)
    q = np.clip(np.round(rows * scales[:, None]), -qmax, qmax).astype(np.int8)
    return q.reshape(-1), scales.astype(np.float32)


def _weights(layer: Layer, quant: LayerQuant, bits: int) -> Tuple[np.ndarray, np.ndarray]:
    groups = scale_count(layer)
    if quant.weight is None or bits != 8:  # 6 bits: ncnn2table's rule, from the layer's fp32 weights
        assert layer.weight is not None
        return symmetric_weights(layer.weight, groups, bits)
    weight = np.asarray(quant.weight, np.int8).reshape(-1)
    scales = np.asarray(quant.weight_scales, np.float32).reshape(-1)
    if weight.size != layer.get(6) or scales.size != groups:
        raise ValueError(f"layer {layer.name}: {weight.size} weights and {scales.size} scales given, ncnn reads "
                         f"{layer.get(6)} and {groups}")
    return weight, scales


def winograd_note(winograd_bits: Optional[int]) -> str:
    """What a model's 3x3 stride-1 int8 layers do, for its manifest."""
    if winograd_bits is None:
        return "off for 3x3 stride-1 int8 convolutions (param 31=64), which keep 8-bit weights"
    return f"on for 3x3 stride-1 int8 convolutions, with {winograd_bits}-bit weights"


def quantize_layer(layer: Layer, quant: LayerQuant, winograd_bits: Optional[int]) -> Dict[str, Any]:
    """Make ``layer`` int8 (not yet requantizing); returns its row of the manifest's layer table."""
    if layer.type not in CONVOLUTIONS or layer.int8 is not None or layer.weight is None:
        raise ValueError(f"layer {layer.name} ({layer.type}) is not an fp32 convolution")
    if not quant.threshold > 0:
        raise ValueError(f"layer {layer.name}: input threshold {quant.threshold} (its input never moved in calibration)")
    shaped = winograd_shaped(layer)
    bits = winograd_bits if shaped and winograd_bits else 8
    weight, scales = _weights(layer, quant, bits)
    layer.int8 = Int8Data(weight, scales, float(np.float32(127.0 / quant.threshold)))
    layer.params[8] = str(INT8_TERM[layer.type])
    if shaped and winograd_bits is None:
        layer.params[FEATMASK_KEY] = str(layer.get(FEATMASK_KEY) | NO_WINOGRAD)
    return {"layer": layer.name, "type": layer.type, "int8": True, "threshold": float(quant.threshold),
            "bottom_scale": layer.int8.bottom_scale, "weight_bits": bits,
            "weight_scales": [float(scales.min()), float(scales.max())],
            "winograd": (winograd_bits is not None) if shaped else None,
            "weights_from": "source bundle" if quant.weight is not None and bits == 8 else "fp32 weights"}


def _int8_readers(model: NcnnModel, blob: str) -> Optional[List[Layer]]:
    """The int8 convolutions that read ``blob``, directly or through one Split; None if anything else does."""
    readers = model.consumers(blob)
    if len(readers) == 1 and readers[0].type == "Split" and readers[0].bottoms == [blob]:
        readers = [r for top in readers[0].tops for r in model.consumers(top)] or [readers[0]]
    if not readers or any(r.int8 is None or len(r.bottoms) != 1 for r in readers):
        return None
    return readers


def fuse_requantize(model: NcnnModel) -> List[str]:
    """Requantize to int8 the outputs that only int8 convolutions read (ncnn2int8's fuse_requantize);
    returns the names of the layers that now do. Readers with different bottom scales (never from one
    calibration of one blob) are left to quantize on their own."""
    fused = []
    for layer in model.layers:
        if layer.int8 is None or len(layer.tops) != 1:
            continue
        readers = _int8_readers(model, layer.tops[0])
        if readers is None or len({r.int8.bottom_scale for r in readers if r.int8}) != 1:
            continue
        layer.int8.top_scale = readers[0].int8.bottom_scale if readers[0].int8 else None
        layer.params[8] = str(INT8_TERM[layer.type] + REQUANTIZE)
        fused.append(layer.name)
    return fused


def to_int8(model: NcnnModel, quant: Dict[str, LayerQuant], winograd_bits: Optional[int]) -> List[Dict[str, Any]]:
    """Rewrite ``model`` in place: the layers of ``quant`` int8, the rest fp32, then requantize fusion.
    Returns the layer table (every convolution, in file order)."""
    rows = []
    for layer in model.layers:
        if layer.type not in CONVOLUTIONS:
            continue
        rows.append(quantize_layer(layer, quant[layer.name], winograd_bits) if layer.name in quant else
                    {"layer": layer.name, "type": layer.type, "int8": False})
    fused = set(fuse_requantize(model))
    for row in rows:
        if row["layer"] in fused:
            row["top_scale"] = model.layer(row["layer"]).int8.top_scale  # type: ignore[union-attr]
    return rows
