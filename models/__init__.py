"""fdq.models: the three face detectors, quantization-ready, loading the public pretrained weights.

Every model has ``spec`` (anchors, steps, variances: the one place these live), QuantStub /
DeQuantStub at its boundaries, FloatFunctional for every add and cat, and a list of
Conv-BN(-ReLU) groups to fuse (:func:`fusion_groups`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from fdq.device.spec import DetectorSpec

from .blocks import fusion_groups
from .retinaface import MNET025_SPEC, RetinaFaceMnet
from .slim import RFB_SPEC, SLIM_SPEC, Slim

_BUILDERS: Dict[str, Callable[[], nn.Module]] = {
    "slim": lambda: Slim(rfb=False),
    "rfb": lambda: Slim(rfb=True),
    "mnet025": RetinaFaceMnet,
}
SPECS: Dict[str, DetectorSpec] = {"slim": SLIM_SPEC, "rfb": RFB_SPEC, "mnet025": MNET025_SPEC}
MODEL_NAMES = tuple(_BUILDERS)

__all__ = ["MODEL_NAMES", "SPECS", "build_model", "load_model", "fusion_groups", "UnknownModelError"]


class UnknownModelError(ValueError):
    """Raised for a model name fdq does not know."""


def build_model(name: str) -> nn.Module:
    """An untrained model in eval mode."""
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model '{name}' (choose from: {', '.join(MODEL_NAMES)})")
    return _BUILDERS[name]().eval()


def load_model(name: str, weights: Union[str, Path, Dict[str, torch.Tensor]],
               strict: bool = True) -> nn.Module:
    """A model with pretrained weights (a file path or a state_dict), in eval mode.

    Loading is strict: a key or shape that differs from the public file is an error, never a
    silently random layer.
    """
    model = build_model(name)
    state: Optional[Dict[str, torch.Tensor]]
    if isinstance(weights, dict):
        state = weights
    else:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model.load_state_dict(state, strict=strict)
    return model.eval()
