"""A torch int8 bundle's TorchScript graph, rewritten node by node as an ONNX QDQ model.

Why not ``torch.onnx.export`` or ``onnxruntime.quantization``: the first does not trace a loaded
quantized TorchScript module, and the second calibrates scales of its own, which makes another
model. Here every quantized tensor keeps the scale and zero point torch computed with, and every
convolution the int8 weights, per-channel weight scales and int32 bias torch runs:

* ``quantized::conv2d[_relu]`` -> DequantizeLinear -> Conv (int8 weight and int32 bias, each behind
  its DequantizeLinear) [-> Relu] -> QuantizeLinear with the op's output scale and zero point;
  ONNX Runtime fuses the pattern into ``QLinearConv``;
* ``quantized::add[_relu]`` / ``quantized::cat``, and ReLU / nearest upsampling on quantized
  tensors: the same dequantize -> float op -> quantize pattern with torch's output parameters;
* float ops after ``aten::dequantize`` (the head reshapes, concatenation, the two-way softmax):
  their ONNX equivalents, shape-generic (``aten::size`` becomes ``Shape`` + ``Gather``).

The integers are the same; what can differ is the last rounding of a requantization: both runtimes
scale the int32 accumulator in float32, with multipliers rounded differently, so a value within
~1e-6 of a .5 tie occasionally rounds the other way (and propagates). docs/ACCURACY.md measures what
that does to AP. An unsupported node is an error naming it, never a silently different model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

OPSET = 17


@dataclass(frozen=True)
class _Q:
    """A quantized (uint8) ONNX tensor and the affine parameters torch gave it."""

    name: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class _F:
    """A float32 ONNX tensor."""

    name: str


@dataclass(frozen=True)
class _I:
    """An int64 tensor of shape [1] (one dimension of a runtime shape)."""

    name: str


@dataclass(frozen=True)
class QuantConv:
    """One int8 convolution as the graph holds it, in graph (execution) order: what
    :func:`quantized_convs` reads for exports that keep torch's numbers outside ONNX (ncnn-int8)."""

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    weight: np.ndarray          # int8 values, (out, in / groups, kh, kw)
    weight_scales: np.ndarray   # float32, one per output channel
    weight_zero_points: np.ndarray
    bias: Optional[np.ndarray]  # float32, as torch adds it
    relu: bool


class UnsupportedGraph(RuntimeError):
    """The TorchScript graph holds an op this converter does not translate."""


class _Builder:
    """Collects ONNX nodes and initializers; one tensor name per value."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self._count = 0
        self._qparams: Dict[Tuple[float, int], Tuple[str, str]] = {}
        self._dequantized: Dict[str, str] = {}
        self.convs: List[QuantConv] = []

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def qparams(self, scale: float, zero_point: int) -> Tuple[str, str]:
        key = (float(np.float32(scale)), int(zero_point))
        if key not in self._qparams:
            self._qparams[key] = (self.const(np.array(key[0], np.float32), "scale"),
                                  self.const(np.array(key[1], np.uint8), "zero_point"))
        return self._qparams[key]

    def quantize(self, x: str, scale: float, zero_point: int) -> _Q:
        return _Q(self.node("QuantizeLinear", [x, *self.qparams(scale, zero_point)], "q"), float(scale),
                  int(zero_point))

    def dequantize(self, q: _Q) -> str:
        if q.name not in self._dequantized:
            self._dequantized[q.name] = self.node("DequantizeLinear", [q.name, *self.qparams(q.scale, q.zero_point)],
                                                  "dq")
        return self._dequantized[q.name]

    def int64(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), np.int64), hint)


def _uint8_qparams(scale: Any, zero_point: Any) -> Tuple[float, int]:
    zp = int(zero_point)
    if not 0 <= zp <= 255:
        raise UnsupportedGraph(f"activation zero point {zp} is not a uint8 (quint8) value")
    return float(scale), zp


# ------------------------------------------------------------------------------------------ ops


def _weight(b: _Builder, weight: torch.Tensor) -> Tuple[str, np.ndarray]:
    """DequantizeLinear of the int8 weight; returns its output and the per-output-channel scales."""
    if weight.dtype != torch.qint8:
        raise UnsupportedGraph(f"weight dtype {weight.dtype} (expected qint8)")
    # Stored as uint8 = int8 + 128 with zero point zp + 128: the same values. ONNX Runtime's x86
    # u8s8 kernels (AVX2 without VNNI) sum u8*s8 pairs in saturating int16 and lose whole AP points;
    # its u8u8 kernels widen first and compute exactly.
    values = (weight.int_repr().numpy().astype(np.int16) + 128).astype(np.uint8)
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if weight.q_per_channel_axis() != 0:
            raise UnsupportedGraph("per-channel weights quantized along an axis other than 0")
        scales = weight.q_per_channel_scales().numpy().astype(np.float32)
        zps = (weight.q_per_channel_zero_points().numpy() + 128).astype(np.uint8)
        dq = b.node("DequantizeLinear", [b.const(values, "w"), b.const(scales, "w_scale"), b.const(zps, "w_zp")],
                    "w_dq", axis=0)
        return dq, scales
    scale = np.float32(weight.q_scale())
    dq = b.node("DequantizeLinear", [b.const(values, "w"), b.const(np.array(scale), "w_scale"),
                                     b.const(np.array(weight.q_zero_point() + 128, np.uint8), "w_zp")], "w_dq")
    return dq, np.full(values.shape[0], scale, np.float32)


def _conv(b: _Builder, args: List[Any], relu: bool) -> _Q:
    x, packed, out_scale, out_zp = args
    if not isinstance(x, _Q):
        raise UnsupportedGraph("quantized convolution of a float tensor")
    if packed.transpose():
        raise UnsupportedGraph("transposed quantized convolution")
    weight, bias = packed.unpack()
    w_dq, w_scales = _weight(b, weight)
    zero_points = (weight.q_per_channel_zero_points().numpy() if weight.qscheme() in (
        torch.per_channel_affine, torch.per_channel_symmetric) else np.full(len(w_scales), weight.q_zero_point()))
    b.convs.append(QuantConv(x.scale, x.zero_point, *_uint8_qparams(out_scale, out_zp), weight.int_repr().numpy(),
                             w_scales, zero_points.astype(np.int64),
                             None if bias is None else bias.detach().numpy().astype(np.float32), relu))
    inputs = [b.dequantize(x), w_dq]
    if bias is not None:  # int32 at scale input_scale * weight_scale, as the int8 kernels add it
        bias_scale = (np.float32(x.scale) * w_scales).astype(np.float32)
        q_bias = np.round(bias.detach().numpy().astype(np.float64) / bias_scale).astype(np.int32)
        inputs.append(b.node("DequantizeLinear", [b.const(q_bias, "bias"), b.const(bias_scale, "bias_scale"),
                                                  b.const(np.zeros_like(q_bias), "bias_zp")], "bias_dq", axis=0))
    ph, pw = packed.padding()
    y = b.node("Conv", inputs, "conv", kernel_shape=list(weight.shape[2:]), strides=list(packed.stride()),
               pads=[ph, pw, ph, pw], dilations=list(packed.dilation()), group=int(packed.groups()))
    if relu:
        y = b.node("Relu", [y], "relu")
    return b.quantize(y, *_uint8_qparams(out_scale, out_zp))


def _binary(b: _Builder, args: List[Any], relu: bool) -> _Q:
    x, y, scale, zp = args
    out = b.node("Add", [b.dequantize(x), b.dequantize(y)], "add")
    if relu:
        out = b.node("Relu", [out], "relu")
    return b.quantize(out, *_uint8_qparams(scale, zp))


def _qcat(b: _Builder, args: List[Any]) -> _Q:
    items, dim, scale, zp = args
    out = b.node("Concat", [b.dequantize(q) for q in items], "concat", axis=int(dim))
    return b.quantize(out, *_uint8_qparams(scale, zp))


def _same_params(b: _Builder, x: Any, op: Callable[[str], str]) -> Any:
    """A float op on a quantized tensor whose output keeps the input's scale and zero point."""
    if isinstance(x, _Q):
        return b.quantize(op(b.dequantize(x)), x.scale, x.zero_point)
    return _F(op(x.name))


def _ints(b: _Builder, value: Any) -> str:
    """An int64 1-D tensor from a list of python ints and runtime dimensions."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return b.int64(value, "shape")
    parts = [v.name if isinstance(v, _I) else b.int64([int(v)]) for v in value]
    return b.node("Concat", parts, "shape", axis=0)


def _tensor(value: Any) -> str:
    if isinstance(value, _F):
        return value.name
    raise UnsupportedGraph(f"expected a float tensor, got {value!r}")


def _upsample(b: _Builder, args: List[Any]) -> Any:
    x, size = args[0], args[1]
    if size is None:
        raise UnsupportedGraph("upsampling by scale factors (only by output size is translated)")

    def resize(name: str) -> str:
        batch_channels = b.node("Slice", [b.node("Shape", [name], "shape"), b.int64([0]), b.int64([2])], "nc")
        sizes = b.node("Concat", [batch_channels, _ints(b, size)], "sizes", axis=0)
        return b.node("Resize", [name, "", "", sizes], "resize", mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    return _same_params(b, x, resize)


def _size(b: _Builder, args: List[Any]) -> _I:
    x, dim = args
    return _I(b.node("Gather", [b.node("Shape", [x.name], "shape"), b.int64([int(dim)])], "dim", axis=0))


def _scalar(b: _Builder, value: Any) -> str:
    return value.name if isinstance(value, _F) else b.const(np.array(float(value), np.float32), "c")


def _sub(b: _Builder, args: List[Any], reverse: bool) -> _F:
    x, other, alpha = args
    if float(alpha) != 1.0:
        raise UnsupportedGraph(f"sub with alpha {alpha}")
    a, c = _tensor(x), _scalar(b, other)
    return _F(b.node("Sub", [c, a] if reverse else [a, c], "sub"))


def _stack(b: _Builder, args: List[Any]) -> _F:
    items, dim = args
    axes = b.int64([int(dim)])
    return _F(b.node("Concat", [b.node("Unsqueeze", [_tensor(t), axes], "unsq") for t in items], "stack",
                     axis=int(dim)))


_OPS: Dict[str, Callable[[_Builder, List[Any]], Any]] = {
    "quantized::conv2d": lambda b, a: _conv(b, a, relu=False),
    "quantized::conv2d_relu": lambda b, a: _conv(b, a, relu=True),
    "quantized::add": lambda b, a: _binary(b, a, relu=False),
    "quantized::add_relu": lambda b, a: _binary(b, a, relu=True),
    "quantized::cat": _qcat,
    "aten::quantize_per_tensor": lambda b, a: b.quantize(_tensor(a[0]), *_uint8_qparams(a[1], a[2])),
    "aten::dequantize": lambda b, a: _F(b.dequantize(a[0])) if isinstance(a[0], _Q) else a[0],
    "aten::relu": lambda b, a: _same_params(b, a[0], lambda n: b.node("Relu", [n], "relu")),
    "aten::relu_": lambda b, a: _same_params(b, a[0], lambda n: b.node("Relu", [n], "relu")),
    "aten::upsample_nearest2d": _upsample,
    "aten::size": _size,
    "aten::permute": lambda b, a: _F(b.node("Transpose", [_tensor(a[0])], "transpose", perm=list(a[1]))),
    "aten::reshape": lambda b, a: _F(b.node("Reshape", [_tensor(a[0]), _ints(b, a[1])], "reshape")),
    "aten::cat": lambda b, a: _F(b.node("Concat", [_tensor(t) for t in a[0]], "concat", axis=int(a[1]))),
    "aten::select": lambda b, a: _F(b.node("Gather", [_tensor(a[0]), b.const(np.array(int(a[2]), np.int64), "i")],
                                           "select", axis=int(a[1]))),
    "aten::sub": lambda b, a: _sub(b, a, reverse=False),
    "aten::rsub": lambda b, a: _sub(b, a, reverse=True),
    "aten::sigmoid": lambda b, a: _F(b.node("Sigmoid", [_tensor(a[0])], "sigmoid")),
    "aten::softmax": lambda b, a: _F(b.node("Softmax", [_tensor(a[0])], "softmax", axis=int(a[1]))),
    "aten::stack": _stack,
}


def _translate(module: torch.jit.ScriptModule, input_quant: Optional[Tuple[float, int]]) -> Tuple[_Builder, List[Any]]:
    """The ONNX nodes of ``module``'s graph and the values it returns."""
    graph = module.graph
    inputs = list(graph.inputs())[1:]
    if len(inputs) != 1:
        raise UnsupportedGraph(f"the model takes {len(inputs)} inputs, expected one")
    b = _Builder()
    env: Dict[torch.Value, Any] = {inputs[0]: (b.quantize("input", *_uint8_qparams(*input_quant))
                                               if input_quant else _F("input"))}
    outputs: List[Any] = []
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            env[node.output()] = node.output().toIValue()
        elif kind == "prim::ListConstruct":
            env[node.output()] = [env[v] for v in node.inputs()]
        elif kind == "prim::TupleConstruct":
            outputs = [env[v] for v in node.inputs()]
        elif kind in _OPS:
            args = list(node.inputs())
            env[node.output()] = _OPS[kind](b, [env[v] for v in args])
            if kind.endswith("_"):  # in place (relu_): later readers of the input see the result
                env[args[0]] = env[node.output()]
        else:
            raise UnsupportedGraph(f"no ONNX translation for TorchScript op {kind}")
    return b, outputs


def quantized_convs(module: torch.jit.ScriptModule, input_quant: Optional[Tuple[float, int]]) -> List[QuantConv]:
    """Every int8 convolution of ``module`` with the scales and zero points torch runs it with, in graph order."""
    return _translate(module, input_quant)[0].convs


def graph_to_qdq(module: torch.jit.ScriptModule, input_quant: Optional[Tuple[float, int]],
                 output_names: Sequence[str]) -> Any:
    """An ``onnx.ModelProto`` computing what ``module`` (a frozen int8 TorchScript model) computes.

    ``input_quant``: the (scale, zero point) of the quint8 input the bundle's model takes (its first
    Quantize split off); the ONNX model takes the float blob and quantizes it with them.
    """
    from onnx import TensorProto, checker, helper

    b, outputs = _translate(module, input_quant)
    if len(outputs) != len(output_names):
        raise UnsupportedGraph(f"the model returns {len(outputs)} tensors, expected {len(output_names)}")
    for value, name in zip(outputs, output_names):
        b.nodes.append(helper.make_node("Identity", [_tensor(value)], [name], name=f"output_{name}"))
    graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "anchors", f"{n}_values"])
                     for n in output_names]
    onnx_graph = helper.make_graph(b.nodes, "fdq_int8", [graph_input], graph_outputs, b.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fdq")
    model.ir_version = min(model.ir_version, 8)  # readable by older onnxruntime builds (boards)
    checker.check_model(model)
    return model
