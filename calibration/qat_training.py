"""``fdq train --qat``: level 3 (and, with ``--distill`` and no labels, level 4) in the training loop.

The student, the StatAssist warm-up, the calibration that makes it the level-2 model, GradBoost and the
loss are those of :func:`fdq.calibration.qat.finetune` (``fdq quantize --level 3|4``); the epochs are
:func:`fdq.calibration.training.fit`'s, so QAT gets the WIDER data, augmentation, torchrun,
checkpoints, ``--resume`` and ``metrics.jsonl`` of float training. The loss is the multibox loss
(plain QAT) or, with ``distill``, the distillation from the float model plus ``gt_weight`` x the
multibox loss (0 without labels).

A resumed run rebuilds the student the same way (same weights, same calibration images, same
warm-up batches: all deterministic), then loads the checkpoint's fake-quant state and optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from . import quant_api
from .gradboost import GradBoost
from .losses import MatchTargets
from .qat import (FinetuneOptions, level2_student, logits_mode, new_optimizer, pseudo_targets, qat_loss,
                  start_fake_quant)
from .training import Distributed, FitConfig, LossFn, Stepper, fit
from .widerface_data import WiderFaceTraining

#: Unaugmented training images that calibrate the observers before fake-quant training (level 2 uses
#: the whole calibration folder; 32 keeps a large training set from costing minutes here).
CALIBRATION_IMAGES = 32


@dataclass
class QATSettings:
    backend: str
    observer: str = "histogram"
    per_channel: bool = True
    statassist: bool = False
    gradboost: bool = False
    distill: bool = False
    labelled: bool = True
    warmup_iters: int = 20


def train_qat(float_model: nn.Module, dataset: WiderFaceTraining, qs: QATSettings, opts: FinetuneOptions,
              config: FitConfig, env: Distributed, out: Path, *,
              evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
              resume: Optional[Dict[str, Any]] = None, extra_state: Optional[Dict[str, Any]] = None,
              log: Optional[Callable[[str], None]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Fake-quant training of ``float_model``'s level-2 int8 model; returns (int8 model, report)."""
    say = log if (log is not None and env.main) else (lambda msg: None)
    quant_api.set_engine(qs.backend)
    qconfig = quant_api.make_qconfig(qs.backend, qs.observer, qs.per_channel, qat=True)
    spec = dataset.spec
    plain = WiderFaceTraining(dataset.items, spec, dataset.size, augment=False, min_face=dataset.min_face)
    inputs = [plain[i]["image"][None] for i in range(min(len(plain), CALIBRATION_IMAGES))]
    teacher = logits_mode(quant_api.fuse(float_model, qat=False))
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed + 1)
    student = level2_student(float_model, inputs, qs.backend, qs.observer, qs.per_channel, opts)
    lr = float(opts.lr)
    priors = dataset.priors.numpy()
    size = (dataset.size, dataset.size)

    def loss_for(phase: str) -> Callable[[Dict[str, torch.Tensor]], LossFn]:
        def make(batch: Dict[str, torch.Tensor]) -> LossFn:
            x, valid = batch["image"], batch["valid"]
            t_out = None
            if qs.distill or (phase == "float" and not qs.labelled):
                with torch.no_grad():
                    t_out = teacher(x)
            targets: Optional[MatchTargets] = None
            key = "gt"
            if qs.labelled:
                targets = MatchTargets(batch["loc"], batch["labels"], batch["landm"], batch["landm_valid"])
            elif phase == "float":
                targets, key = pseudo_targets(t_out, priors, valid, spec, size, opts), "pseudo"
            weights = opts if qs.distill else FinetuneOptions(**{**opts.__dict__, "gt_weight": 1.0})
            return qat_loss(t_out if qs.distill else None, valid, targets, weights, key)
        return make

    optimizer: Any = None
    warm_done = 0
    if qs.statassist and qs.warmup_iters > 0:
        optimizer = new_optimizer(student, opts, lr, qs.gradboost, gen)
        net: nn.Module = student
        if env.world_size > 1:   # one optimizer state on every rank
            net = nn.parallel.DistributedDataParallel(student)
        stepper = Stepper(net, optimizer)
        start = {k: v.clone() for k, v in student.state_dict().items()}
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed))
        shard = Subset(dataset, order[env.rank::env.world_size].tolist())
        make = loss_for("float")
        while warm_done < qs.warmup_iters:
            for batch in DataLoader(shard, batch_size=config.batch_size, num_workers=0):
                if warm_done == qs.warmup_iters:
                    break
                logits_mode(student)
                stepper.step(batch["image"], make(batch))
                warm_done += 1
        student.load_state_dict(start)   # StatAssist keeps the optimizer state, not the weights
        say(f"float warm-up (StatAssist): {warm_done} steps")
    prepared, optimizer, carry = start_fake_quant(student, qconfig, optimizer, inputs, qs.observer, opts,
                                                  lambda m: new_optimizer(m, opts, lr, qs.gradboost, gen))
    del student
    total = config.epochs * -(-len(dataset) // (config.batch_size * env.world_size))
    boost_from = 0 if warm_done else (qs.warmup_iters if qs.gradboost else 0)

    def on_step(step: int) -> None:
        if isinstance(optimizer, GradBoost) and step >= boost_from and not optimizer.boosting:
            optimizer.start_boost()
        if step == total // 2:
            quant_api.freeze_observers(prepared)

    result = fit(prepared, dataset, loss_for("qat"), optimizer, config, env, out,
                 export=lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()},
                 evaluate=(lambda m: evaluate(quant_api.convert(m.cpu()))) if evaluate else None,
                 on_step=on_step, resume=resume, extra_state=extra_state, log=log)
    int8 = quant_api.convert(result.model.cpu())
    report = {"method": "qat-distill" if qs.distill else "qat", "backend": qs.backend, "observer": qs.observer,
              "per_channel": qs.per_channel, "statassist": qs.statassist, "gradboost": qs.gradboost,
              "distill": qs.distill, "gt_loss": qs.labelled, "warmup_iters_done": warm_done,
              "optimizer_carry": carry, "lr": lr, "epochs": result.epochs_done, "steps": result.steps,
              "calibration_images": len(inputs), "metrics": result.metrics}
    return int8, report
