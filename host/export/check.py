"""How far an exported model's outputs are from a reference's on the same inputs (every export records it).

The reference is PyTorch's float model, or the source bundle as the runner runs it; an output with
another number of values is :class:`OutputSizeMismatch`, which each format words for its own case.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Union

import numpy as np
import torch
from torch import nn

OUTPUT_NAMES = ("loc", "conf", "landm")
RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


class OutputSizeMismatch(RuntimeError):
    """An output holds another number of values than the reference's; ``input_hw``: the input's
    ``HxW`` where :func:`worst_diffs` met it."""

    def __init__(self, message: str, input_hw: str = "") -> None:
        super().__init__(message)
        self.input_hw = input_hw


def torch_outputs(model: nn.Module, blob: np.ndarray) -> List[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(blob))]


def max_diffs(ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
              names: Sequence[str] = OUTPUT_NAMES) -> Dict[str, float]:
    """Largest absolute difference per output (``names``: theirs, in order); outputs are compared
    flattened (batch axis or not)."""
    out = {}
    for name, r, g in zip(names, ref, got):
        r, g = np.asarray(r, np.float32).reshape(-1), np.asarray(g, np.float32).reshape(-1)
        if r.size != g.size:
            raise OutputSizeMismatch(f"the exported model's {name} has {g.size} values where PyTorch's has {r.size}")
        out[name] = float(np.abs(g - r).max())
    return out


def worst_diffs(reference: Union[nn.Module, RunFn], blobs: Sequence[np.ndarray], run: RunFn,
                names: Sequence[str] = OUTPUT_NAMES) -> Dict[str, float]:
    """Worst :func:`max_diffs` of ``run`` against ``reference`` (a PyTorch model, or ``blob -> outputs``)
    over ``blobs`` (``names``: the outputs', in order)."""
    def ref(blob: np.ndarray) -> Sequence[np.ndarray]:
        return torch_outputs(reference, blob) if isinstance(reference, nn.Module) else reference(blob)

    worst = {n: 0.0 for n in names}
    for blob in blobs:
        try:
            diffs = max_diffs(ref(blob), run(blob), names)
        except OutputSizeMismatch as exc:
            raise OutputSizeMismatch(str(exc), f"{blob.shape[2]}x{blob.shape[3]}") from None
        for name, value in diffs.items():
            worst[name] = max(worst[name], value)
    return worst
