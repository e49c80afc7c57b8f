"""GradBoost and StatAssist: the two QAT aids of Shin et al., "Towards efficient quantization-aware
training of lightweight networks" (StatAssist and GradBoost), as used by :mod:`fdq.calibration.qat`.

**StatAssist**: the fake-quant phase starts with the optimizer state (momentum, Adam moments) of a
float warm-up instead of zeros. :func:`carry_optimizer_state` keeps the SAME optimizer object across
``prepare_qat``: if the prepared model still holds the very parameter tensors the optimizer steps,
nothing changes; if preparation swapped them (a copying prepare), the optimizer's parameter lists and
per-parameter state are re-pointed to the new tensors matched by name (fused ``X.0`` / ``X.1`` ->
QAT ``X`` / ``X.bn``) and shape.

**GradBoost** (:class:`GradBoost`, wraps any ``torch.optim.Optimizer``): while not boosting it tracks,
for every element of every gradient, a moving minimum and maximum of ``|g|``::

    max <- max(|g|, beta * max + (1 - beta) * |g|)      (jumps to a new peak, relaxes by EMA)
    min <- min(|g|, beta * min + (1 - beta) * |g|)      (first step: min = max = |g|)

After :meth:`GradBoost.start_boost` (the switch to fake-quant) the statistics are frozen, and at boost
step ``t = 0, 1, ...`` each gradient element gets::

    g += sign(g) * m * min(|L| * (max - min) * (1 - decay) ** t, clip * max),
    L ~ Laplace(0, 1),  m ~ Bernoulli(mask_prob)

i.e. noise in the gradient's own direction (zero where ``g == 0``), on a random half of the elements,
proportional to the spread of that element's gradient magnitudes, decaying geometrically, and never
larger than ``clip`` times the largest gradient magnitude seen for that element.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

Optim = Union[torch.optim.Optimizer, "GradBoost"]


class GradBoost:
    """Optimizer wrapper adding GradBoost noise after warm-up (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float = 0.01, beta: float = 0.9,
                 clip: float = 1.0, mask_prob: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"GradBoost decay must lie in [0, 1), got {decay}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"GradBoost beta must lie in [0, 1), got {beta}")
        self.optimizer = optimizer
        self.decay = float(decay)
        self.beta = float(beta)
        self.clip = float(clip)
        self.mask_prob = float(mask_prob)
        self.generator = generator
        self.boosting = False
        self.t = 0                      # boost steps taken
        self.tracked_steps = 0
        self.stats: Dict[nn.Parameter, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_noise: Dict[nn.Parameter, torch.Tensor] = {}

    # -- the optimizer interface the training loop uses ------------------------------------------
    @property
    def param_groups(self) -> List[dict]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Dict[nn.Parameter, dict]:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def step(self, closure: Optional[Callable[[], float]] = None):
        """Track (before boosting) or add noise (while boosting), then the wrapped optimizer's step."""
        if self.boosting:
            self.add_noise()
        else:
            self.track()
        return self.optimizer.step(closure)

    # -- GradBoost proper -------------------------------------------------------------------------
    def _params(self) -> Iterable[nn.Parameter]:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield p

    @torch.no_grad()
    def track(self) -> None:
        """Update the per-element moving min / max of |grad| from the current gradients."""
        for p in self._params():
            g = p.grad.detach().abs()
            if p not in self.stats:
                self.stats[p] = (g.clone(), g.clone())
                continue
            lo, hi = self.stats[p]
            ema_hi = hi.mul(self.beta).add_(g, alpha=1.0 - self.beta)
            ema_lo = lo.mul(self.beta).add_(g, alpha=1.0 - self.beta)
            self.stats[p] = (torch.minimum(g, ema_lo), torch.maximum(g, ema_hi))
        self.tracked_steps += 1

    def start_boost(self) -> None:
        """Freeze the statistics and add noise from the next :meth:`step` on (boost step t = 0)."""
        self.boosting = True
        self.t = 0

    def stop_boost(self) -> None:
        self.boosting = False

    def scale(self) -> float:
        """The decay factor ``(1 - decay) ** t`` of the next boost step."""
        return (1.0 - self.decay) ** self.t

    @torch.no_grad()
    def add_noise(self) -> None:
        """Add this step's noise to every gradient with statistics (and remember it in ``last_noise``)."""
        factor = self.scale()
        self.last_noise = {}
        for p in self._params():
            if p not in self.stats:
                continue
            lo, hi = self.stats[p]
            g = p.grad
            laplace = torch.empty_like(g).exponential_(1.0, generator=self.generator)   # |Laplace(0, 1)|
            coin = torch.bernoulli(torch.full_like(g, self.mask_prob), generator=self.generator)
            magnitude = torch.minimum(laplace * (hi - lo) * factor, hi * self.clip)
            noise = torch.sign(g) * coin * magnitude
            g.add_(noise)
            self.last_noise[p] = noise
        self.t += 1

    def rebind(self, mapping: Mapping[nn.Parameter, nn.Parameter]) -> None:
        """Move the statistics from old to new parameter tensors (after a copying prepare)."""
        self.stats = {mapping.get(p, p): s for p, s in self.stats.items()}


def base_optimizer(optimizer: Optim) -> torch.optim.Optimizer:
    """The torch optimizer inside a (possibly) GradBoost-wrapped one."""
    return optimizer.optimizer if isinstance(optimizer, GradBoost) else optimizer


def _candidates(name: str) -> List[str]:
    """Names a parameter of a prepared (QAT) model may have had in the fused float model."""
    out = [name]
    parts = name.split(".")
    if len(parts) >= 3 and parts[-2] == "bn":                       # X.bn.weight <- X.1.weight
        out.append(".".join(parts[:-2] + ["1", parts[-1]]))
    if len(parts) >= 2:                                              # X.weight <- X.0.weight
        out.append(".".join(parts[:-1] + ["0", parts[-1]]))
    return out


def carry_optimizer_state(optimizer: Optim, before: Mapping[str, nn.Parameter], model: nn.Module) -> str:
    """Keep ``optimizer`` (and its state) stepping ``model``'s parameters after ``prepare_qat``.

    ``before`` is ``dict(fused_float_model.named_parameters())`` taken before preparation. Returns
    ``"same"`` when the prepared model holds the same tensors (nothing to do) or ``"remapped"`` when the
    optimizer's parameter lists and per-parameter state were re-pointed by name. Raises RuntimeError
    if a parameter the optimizer steps cannot be found in the prepared model.
    """
    inner = base_optimizer(optimizer)
    stepped = [p for g in inner.param_groups for p in g["params"]]
    now = dict(model.named_parameters())
    now_ids = {id(p) for p in now.values()}
    if all(id(p) in now_ids for p in stepped):
        return "same"
    old_by_id = {id(p): n for n, p in before.items()}
    mapping: Dict[nn.Parameter, nn.Parameter] = {}
    used = set()
    new_for_old_name: Dict[str, nn.Parameter] = {}
    for new_name, new_p in now.items():
        for cand in _candidates(new_name):
            if cand in before and cand not in used and before[cand].shape == new_p.shape:
                new_for_old_name[cand] = new_p
                used.add(cand)
                break
    for p in stepped:
        old_name = old_by_id.get(id(p))
        if old_name is None or old_name not in new_for_old_name:
            raise RuntimeError(f"StatAssist: the optimizer's parameter {old_name or '?'} has no counterpart "
                               "in the prepared model; cannot carry the optimizer state")
        mapping[p] = new_for_old_name[old_name]
    for group in inner.param_groups:
        group["params"] = [mapping[p] for p in group["params"]]
    new_state: Dict[nn.Parameter, dict] = defaultdict(dict)
    for p, s in inner.state.items():
        new_state[mapping.get(p, p)] = s
    inner.state = new_state
    if isinstance(optimizer, GradBoost):
        optimizer.rebind(mapping)
    return "remapped"
