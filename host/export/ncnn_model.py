"""An ncnn model (.param text + .bin weights) read into layers and written back, for the int8 rewrite.

Only what the rewrite needs is decoded: each layer's type, name, blobs and ``key=value`` params (the
values kept as written, so a layer left alone is written back byte for byte), and the weights and
biases of Convolution / ConvolutionDepthWise, the only layers with weights that pnnx writes for fdq's
models: fp32, or int8 with their scales. A layer type with weights that is not decoded here is an
error, never a .bin read out of step. An int8 convolution is read and written in ncnn's layout: the weight blob tagged ``0x000D4B38``
(int8, padded to 4 bytes), the fp32 bias, the weight scales (one per output channel, one per group
for depthwise), the bottom blob scale and, for a requantizing layer (``8=`` above 100), the top one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

MAGIC = "7767517"
CONVOLUTIONS = ("Convolution", "ConvolutionDepthWise")
# Layer types that read nothing from the .bin (the ones pnnx writes for fdq's three models, and kin).
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "BinaryOp", "ReLU", "Sigmoid", "Softmax", "Permute", "Reshape",
                        "Slice", "Interp", "Pooling", "Flatten", "Clip", "Eltwise", "Crop", "Padding", "Noop",
                        "UnaryOp", "Swish", "HardSwish", "HardSigmoid", "TanH", "ELU", "Squeeze", "ExpandDims"})
INT8_TAG = 0x000D4B38
_PARAM = re.compile(r'(-?\d+)=("[^"]*"|\S+)')


class NcnnFormatError(ValueError):
    """A .param/.bin pair this reader cannot take apart; one line."""


@dataclass
class Int8Data:
    """The int8 payload of a convolution: what ncnn loads after its bias."""

    weight: np.ndarray           # int8, the layer's weight_data_size values in ncnn order
    weight_scales: np.ndarray    # float32: num_output values, or group for depthwise
    bottom_scale: float
    top_scale: Optional[float] = None  # requantize the output to int8 with it (8= above 100)


@dataclass
class Layer:
    """One line of the .param, and the weights it reads from the .bin."""

    type: str
    name: str
    bottoms: List[str]
    tops: List[str]
    params: Dict[int, str]
    weight: Optional[np.ndarray] = None   # float32, flat
    bias: Optional[np.ndarray] = None     # float32
    int8: Optional[Int8Data] = None

    def get(self, key: int, default: int = 0) -> int:
        return int(self.params[key]) if key in self.params else default

    @property
    def num_output(self) -> int:
        return self.get(0)

    @property
    def kernel(self) -> Tuple[int, int]:
        """(kh, kw)."""
        kw = self.get(1)
        return self.get(11, kw), kw

    @property
    def stride(self) -> Tuple[int, int]:
        sw = self.get(3, 1)
        return self.get(13, sw), sw

    @property
    def dilation(self) -> Tuple[int, int]:
        dw = self.get(2, 1)
        return self.get(12, dw), dw

    @property
    def groups(self) -> int:
        return self.get(7, 1) if self.type == "ConvolutionDepthWise" else 1

    def weight_shape(self) -> Tuple[int, int, int, int]:
        """(out, in / groups, kh, kw), PyTorch's layout, which ncnn's flat weight follows."""
        kh, kw = self.kernel
        return self.num_output, self.get(6) // (self.num_output * kh * kw), kh, kw


@dataclass
class NcnnModel:
    """A whole model: its layers in file order and the blob count of the header."""

    layers: List[Layer] = field(default_factory=list)
    blob_count: int = 0

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def consumers(self, blob: str) -> List[Layer]:
        return [layer for layer in self.layers if blob in layer.bottoms]


def _read_param(path: Path) -> NcnnModel:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != MAGIC:
        raise NcnnFormatError(f"{path} is not an ncnn param file")
    model = NcnnModel(blob_count=int(lines[1].split()[1]))
    for line in lines[2:]:
        head = line.split(None, 4)
        if len(head) < 4:
            continue
        kind, name, n_in, n_out = head[0], head[1], int(head[2]), int(head[3])
        rest = line.split(None, 4 + n_in + n_out)
        blobs = rest[4:4 + n_in + n_out]
        tail = rest[4 + n_in + n_out] if len(rest) > 4 + n_in + n_out else ""
        params = {int(k): v for k, v in _PARAM.findall(tail)}
        model.layers.append(Layer(kind, name, blobs[:n_in], blobs[n_in:], params))
    return model


def _floats(data: bytes, offset: int, count: int, what: str) -> Tuple[np.ndarray, int]:
    end = offset + 4 * count
    if end > len(data):
        raise NcnnFormatError(f"the .bin ends inside {what}")
    return np.frombuffer(data, np.float32, count, offset).copy(), end


def scale_count(layer: Layer) -> int:
    """How many weight scales ncnn reads: one per output channel, one per group for depthwise."""
    return layer.get(7, 1) if layer.type == "ConvolutionDepthWise" else layer.num_output


def read_model(param: Path, weights: Path) -> NcnnModel:
    """The layers of an ncnn model with their convolution weights: fp32, or int8 with their scales."""
    model = _read_param(Path(param))
    data, offset = Path(weights).read_bytes(), 0
    for layer in model.layers:
        if layer.type in WEIGHTLESS:
            continue
        if layer.type not in CONVOLUTIONS or layer.get(19):
            raise NcnnFormatError(f"layer {layer.name} ({layer.type}) has weights this reader does not decode")
        size = layer.get(6)
        tag = int(np.frombuffer(data, np.uint32, 1, offset)[0]) if offset + 4 <= len(data) else None
        if tag == INT8_TAG and layer.get(8):
            if offset + 4 + size > len(data):
                raise NcnnFormatError(f"the .bin ends inside {layer.name}'s weights")
            int8_weight = np.frombuffer(data, np.int8, size, offset + 4).copy()
            offset += 4 + size + (-size % 4)
        elif tag == 0 and not layer.get(8):
            layer.weight, offset = _floats(data, offset + 4, size, f"{layer.name}'s weights")
        else:
            raise NcnnFormatError(f"layer {layer.name}: weights stored with tag {tag}, int8_scale_term {layer.get(8)} "
                                  f"(read here: fp32 weights of a float layer, int8 ones of an int8 layer)")
        if layer.get(5):
            layer.bias, offset = _floats(data, offset, layer.num_output, f"{layer.name}'s bias")
        if layer.get(8):
            scales, offset = _floats(data, offset, scale_count(layer) + 1, f"{layer.name}'s scales")
            top = None
            if layer.get(8) > 100:
                top, offset = _floats(data, offset, 1, f"{layer.name}'s top scale")
            layer.int8 = Int8Data(int8_weight, scales[:-1], float(scales[-1]), None if top is None else float(top[0]))
    if offset != len(data):
        raise NcnnFormatError(f"{weights} holds {len(data) - offset} bytes after the last layer's weights")
    return model


def _param_line(layer: Layer) -> str:
    params = " ".join(f"{k}={v}" for k, v in layer.params.items())
    return (f"{layer.type:<24} {layer.name:<24} {len(layer.bottoms)} {len(layer.tops)} "
            f"{' '.join(layer.bottoms + layer.tops)}" + (f" {params}" if params else ""))


def _layer_bytes(layer: Layer) -> bytes:
    parts: List[bytes] = []
    if layer.int8 is None:
        if layer.weight is None:
            return b""
        parts += [np.uint32(0).tobytes(), layer.weight.astype("<f4").tobytes()]
    else:
        raw = layer.int8.weight.astype(np.int8).tobytes()
        parts += [np.uint32(INT8_TAG).tobytes(), raw + b"\0" * (-len(raw) % 4)]
    if layer.bias is not None:
        parts.append(layer.bias.astype("<f4").tobytes())
    if layer.int8 is not None:
        parts += [layer.int8.weight_scales.astype("<f4").tobytes(), np.float32(layer.int8.bottom_scale).tobytes()]
        if layer.int8.top_scale is not None:
            parts.append(np.float32(layer.int8.top_scale).tobytes())
    return b"".join(parts)


def write_model(model: NcnnModel, param: Path, weights: Path) -> None:
    """The .param and .bin of ``model``: its layers' params as they are, int8 payloads where set."""
    lines = [MAGIC, f"{len(model.layers)} {model.blob_count}"] + [_param_line(layer) for layer in model.layers]
    Path(param).write_text("\n".join(lines) + "\n", encoding="utf-8")
    Path(weights).write_bytes(b"".join(_layer_bytes(layer) for layer in model.layers))
