"""Slim and RFB: the ~1 MB SSD-style face detectors (4 heads at strides 8/16/32/64).

RFB is Slim with a receptive-field block in place of the eighth convolution; everything else,
including the anchors, is shared.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from fdq.device.spec import DetectorSpec

from .blocks import conv_bn, conv_dw, depth_conv2d
from .heads import merge_levels

SLIM_SPEC = DetectorSpec(name="slim", min_sizes=((10, 16, 24), (32, 48), (64, 96), (128, 192, 256)),
                         steps=(8, 16, 32, 64))
RFB_SPEC = DetectorSpec(name="rfb", min_sizes=SLIM_SPEC.min_sizes, steps=SLIM_SPEC.steps)


class BasicConv(nn.Module):
    """Convolution + BatchNorm (+ ReLU) with named members, as in the RFB pretrained file."""

    def __init__(self, inp: int, oup: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, kernel_size, stride, padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(oup, eps=1e-5, momentum=0.01)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BasicRFB(nn.Module):
    """Three dilated branches, concatenated, projected, plus a projected shortcut (scale 1)."""

    def __init__(self, inp: int, oup: int, map_reduce: int = 8, vision: int = 1) -> None:
        super().__init__()
        mid = inp // map_reduce
        self.branch0 = nn.Sequential(
            BasicConv(inp, mid, 1, relu=False),
            BasicConv(mid, 2 * mid, 3, padding=1),
            BasicConv(2 * mid, 2 * mid, 3, padding=vision + 1, dilation=vision + 1, relu=False))
        self.branch1 = nn.Sequential(
            BasicConv(inp, mid, 1, relu=False),
            BasicConv(mid, 2 * mid, 3, padding=1),
            BasicConv(2 * mid, 2 * mid, 3, padding=vision + 2, dilation=vision + 2, relu=False))
        self.branch2 = nn.Sequential(
            BasicConv(inp, mid, 1, relu=False),
            BasicConv(mid, (mid // 2) * 3, 3, padding=1),
            BasicConv((mid // 2) * 3, 2 * mid, 3, padding=1),
            BasicConv(2 * mid, 2 * mid, 3, padding=vision + 4, dilation=vision + 4, relu=False))
        self.ConvLinear = BasicConv(6 * mid, oup, 1, relu=False)
        self.shortcut = BasicConv(inp, oup, 1, relu=False)
        self.cat = FloatFunctional()
        self.add_relu = FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cat.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)
        return self.add_relu.add_relu(self.ConvLinear(out), self.shortcut(x))


class Slim(nn.Module):
    """Slim (``rfb=False``) or RFB (``rfb=True``). Eval mode returns softmax scores, train mode logits."""

    def __init__(self, rfb: bool = False) -> None:
        super().__init__()
        self.spec = RFB_SPEC if rfb else SLIM_SPEC
        self.quant = QuantStub()
        self.dequant = DeQuantStub()
        self.conv1 = conv_bn(3, 16, 2)
        self.conv2 = conv_dw(16, 32, 1)
        self.conv3 = conv_dw(32, 32, 2)
        self.conv4 = conv_dw(32, 32, 1)
        self.conv5 = conv_dw(32, 64, 2)
        self.conv6 = conv_dw(64, 64, 1)
        self.conv7 = conv_dw(64, 64, 1)
        self.conv8 = BasicRFB(64, 64) if rfb else conv_dw(64, 64, 1)
        self.conv9 = conv_dw(64, 128, 2)
        self.conv10 = conv_dw(128, 128, 1)
        self.conv11 = conv_dw(128, 128, 1)
        self.conv12 = conv_dw(128, 256, 2)
        self.conv13 = conv_dw(256, 256, 1)
        self.conv14 = nn.Sequential(
            nn.Conv2d(256, 64, kernel_size=1), nn.ReLU(inplace=True),
            depth_conv2d(64, 256, kernel=3, stride=2, pad=1), nn.ReLU(inplace=True))
        channels = (64, 128, 256)
        anchors = [len(s) for s in self.spec.min_sizes]
        self.loc = self._heads(channels, anchors, 4)
        self.conf = self._heads(channels, anchors, 2)
        self.landm = self._heads(channels, anchors, 10)

    @staticmethod
    def _heads(channels: Tuple[int, ...], anchors: List[int], per_anchor: int) -> nn.Sequential:
        layers: List[nn.Module] = [depth_conv2d(c, a * per_anchor, kernel=3, pad=1)
                                   for c, a in zip(channels, anchors[:3])]
        layers.append(nn.Conv2d(256, anchors[3] * per_anchor, kernel_size=3, padding=1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.quant(x)
        x = self.conv1(x)
        for block in (self.conv2, self.conv3, self.conv4, self.conv5, self.conv6, self.conv7, self.conv8):
            x = block(x)
        f1 = x
        x = self.conv11(self.conv10(self.conv9(x)))
        f2 = x
        x = self.conv13(self.conv12(x))
        f3 = x
        f4 = self.conv14(x)
        features = (f1, f2, f3, f4)
        return merge_levels(
            [self.dequant(head(f)) for head, f in zip(self.loc, features)],
            [self.dequant(head(f)) for head, f in zip(self.conf, features)],
            [self.dequant(head(f)) for head, f in zip(self.landm, features)],
            softmax=not self.training)
