"""Building blocks shared by the detectors, laid out so that their state_dict keys match the
public pretrained files, and so that every Conv-BN(-ReLU) run can be fused for quantization."""
from __future__ import annotations

from typing import List

from torch import nn


def conv_bn(inp: int, oup: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """3x3 convolution + BatchNorm (+ ReLU)."""
    layers: List[nn.Module] = [nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_bn_1x1(inp: int, oup: int) -> nn.Sequential:
    """1x1 convolution + BatchNorm + ReLU (FPN laterals)."""
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    """Depthwise-separable block: depthwise 3x3-BN-ReLU, pointwise 1x1-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True),
    )


def depth_conv2d(inp: int, oup: int, kernel: int = 1, stride: int = 1, pad: int = 0) -> nn.Sequential:
    """Depthwise conv (with bias) + ReLU + pointwise conv (with bias): the Slim/RFB heads."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, kernel_size=kernel, stride=stride, padding=pad, groups=inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, kernel_size=1),
    )


def fusion_groups(model: nn.Module) -> List[List[str]]:
    """Names of every Conv2d-BatchNorm2d(-ReLU) and Conv2d-ReLU run among siblings, in order.

    Only direct siblings are grouped, so a ReLU that follows an add or a cat in the forward
    pass (registered after the branch modules) is never fused into the wrong convolution.
    """
    groups: List[List[str]] = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        prefix = f"{parent_name}." if parent_name else ""
        i = 0
        while i < len(children):
            name, module = children[i]
            group = [prefix + name]
            if isinstance(module, nn.Conv2d):
                j = i + 1
                if j < len(children) and isinstance(children[j][1], nn.BatchNorm2d):
                    group.append(prefix + children[j][0])
                    j += 1
                if j < len(children) and isinstance(children[j][1], nn.ReLU):
                    group.append(prefix + children[j][0])
                    j += 1
                if len(group) > 1:
                    groups.append(group)
                    i = j
                    continue
            i += 1
    return groups
