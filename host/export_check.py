"""How far an exported model's outputs are from PyTorch's, on the same inputs (every export records it)."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

OUTPUT_NAMES = ("loc", "conf", "landm")
RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


def torch_outputs(model: nn.Module, blob: np.ndarray) -> List[np.ndarray]:
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(blob))]


def max_diffs(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Dict[str, float]:
    """Largest absolute difference per output; outputs are compared flattened (batch axis or not)."""
    out = {}
    for name, r, g in zip(OUTPUT_NAMES, ref, got):
        r, g = np.asarray(r, np.float32).reshape(-1), np.asarray(g, np.float32).reshape(-1)
        if r.size != g.size:
            raise RuntimeError(f"the exported model's {name} has {g.size} values where PyTorch's has {r.size}")
        out[name] = float(np.abs(g - r).max())
    return out


def worst_diffs(model: nn.Module, blobs: Sequence[np.ndarray], run: RunFn) -> Dict[str, float]:
    """Worst :func:`max_diffs` of ``run`` against ``model`` over ``blobs``."""
    worst = {n: 0.0 for n in OUTPUT_NAMES}
    for blob in blobs:
        for name, value in max_diffs(torch_outputs(model, blob), run(blob)).items():
            worst[name] = max(worst[name], value)
    return worst
