"""RetinaFace with a MobileNetV1-0.25 backbone, FPN and SSH context modules (strides 8/16/32)."""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization import DeQuantStub, QuantStub

from fdq.device.spec import DetectorSpec

from .blocks import conv_bn, conv_bn_1x1, conv_dw
from .heads import merge_levels

MNET025_SPEC = DetectorSpec(name="mnet025", min_sizes=((10, 20), (32, 64), (128, 256)), steps=(8, 16, 32))


class MobileNetV1(nn.Module):
    """MobileNetV1 at width 0.25, cut after the three stages RetinaFace reads."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2), conv_dw(8, 16, 1), conv_dw(16, 32, 2),
                                    conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    """Top-down feature pyramid: nearest upsampling and quantization-safe adds."""

    def __init__(self, in_channels: Tuple[int, int, int], out_channels: int) -> None:
        super().__init__()
        self.output1 = conv_bn_1x1(in_channels[0], out_channels)
        self.output2 = conv_bn_1x1(in_channels[1], out_channels)
        self.output3 = conv_bn_1x1(in_channels[2], out_channels)
        self.merge1 = conv_bn(out_channels, out_channels)
        self.merge2 = conv_bn(out_channels, out_channels)
        self.add1 = FloatFunctional()
        self.add2 = FloatFunctional()

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        o1 = self.output1(features[0])
        o2 = self.output2(features[1])
        o3 = self.output3(features[2])
        o2 = self.merge2(self.add2.add(o2, F.interpolate(o3, size=o2.shape[-2:], mode="nearest")))
        o1 = self.merge1(self.add1.add(o1, F.interpolate(o2, size=o1.shape[-2:], mode="nearest")))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 and 7x7 receptive fields, concatenated."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3X3 = conv_bn(channels, channels // 2, relu=False)
        self.conv5X5_1 = conv_bn(channels, channels // 4)
        self.conv5X5_2 = conv_bn(channels // 4, channels // 4, relu=False)
        self.conv7X7_2 = conv_bn(channels // 4, channels // 4)
        self.conv7x7_3 = conv_bn(channels // 4, channels // 4, relu=False)
        self.cat = FloatFunctional()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        out = self.cat.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1)
        return self.relu(out)


class _Head(nn.Module):
    """One 1x1 prediction convolution (kept as a module so the pretrained key names match)."""

    def __init__(self, channels: int, outputs: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(channels, outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x)


class RetinaFaceMnet(nn.Module):
    """RetinaFace-MobileNet0.25. Eval mode returns softmax scores, train mode logits."""

    def __init__(self, out_channels: int = 64) -> None:
        super().__init__()
        self.spec = MNET025_SPEC
        self.quant = QuantStub()
        self.dequant = DeQuantStub()
        self.body = MobileNetV1()
        self.fpn = FPN((64, 128, 256), out_channels)
        self.ssh1 = SSH(out_channels)
        self.ssh2 = SSH(out_channels)
        self.ssh3 = SSH(out_channels)
        anchors = [len(s) for s in self.spec.min_sizes]
        self.ClassHead = nn.ModuleList([_Head(out_channels, a * 2) for a in anchors])
        self.BboxHead = nn.ModuleList([_Head(out_channels, a * 4) for a in anchors])
        self.LandmarkHead = nn.ModuleList([_Head(out_channels, a * 10) for a in anchors])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p1, p2, p3 = self.fpn(self.body(self.quant(x)))
        features = (self.ssh1(p1), self.ssh2(p2), self.ssh3(p3))
        return merge_levels(
            [self.dequant(head(f)) for head, f in zip(self.BboxHead, features)],
            [self.dequant(head(f)) for head, f in zip(self.ClassHead, features)],
            [self.dequant(head(f)) for head, f in zip(self.LandmarkHead, features)],
            softmax=not self.training)
