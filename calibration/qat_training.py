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

from . import quant_api
from .qat import (FinetuneOptions, fake_quant_schedule, level2_student, logits_mode, new_optimizer, qat_loss_for,
                  start_fake_quant, statassist_warmup)
from .training import Distributed, FitConfig, LossFn, fit
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
    qconfig = quant_api.make_qconfig(qs.backend, qs.observer, qs.per_channel, qat=True,
                                      reduce_range=opts.reduce_range)
    spec = dataset.spec
    plain = WiderFaceTraining(dataset.items, spec, dataset.size, augment=False, min_face=dataset.min_face)
    inputs = [plain[i]["image"][None] for i in range(min(len(plain), CALIBRATION_IMAGES))]
    teacher = logits_mode(quant_api.fuse(float_model, qat=False))
    for p in teacher.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed + 1)
    student = level2_student(float_model, inputs, qs.backend, qs.observer, qs.per_channel, opts)
    lr = float(opts.lr)

    def loss_for(phase: str) -> Callable[[Dict[str, torch.Tensor]], LossFn]:
        return qat_loss_for(teacher, spec, opts, phase, qs.distill, qs.labelled, dataset.priors)

    optimizer: Any = None
    warm_done = 0
    if qs.statassist and qs.warmup_iters > 0:
        optimizer = new_optimizer(student, opts, lr, qs.gradboost, gen)
        # StatAssist keeps the optimizer state, not the weights
        warm_done = statassist_warmup(student, dataset, loss_for("float"), optimizer, qs.warmup_iters,
                                      config.batch_size, config.seed, env, restore=True)
        say(f"float warm-up (StatAssist): {warm_done} steps")
    prepared, optimizer, carry = start_fake_quant(student, qconfig, optimizer, inputs, qs.observer, opts,
                                                  lambda m: new_optimizer(m, opts, lr, qs.gradboost, gen))
    del student
    total = config.epochs * -(-len(dataset) // (config.batch_size * env.world_size))
    boost_from = 0 if warm_done else (qs.warmup_iters if qs.gradboost else 0)
    on_step = fake_quant_schedule(prepared, optimizer, boost_from, opts.freeze_bn_after, total // 2)
    result = fit(prepared, dataset, loss_for("qat"), optimizer, config, env, out,
                 export=lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()},
                 evaluate=(lambda m: evaluate(quant_api.convert(m.cpu()))) if evaluate else None,
                 on_step=on_step, resume=resume, extra_state=extra_state, log=log)
    int8 = quant_api.convert(result.model.cpu())
    report = {"method": "qat-distill" if qs.distill else "qat", "backend": qs.backend, "observer": qs.observer,
              "per_channel": qs.per_channel, "reduce_range": opts.reduce_range, "statassist": qs.statassist,
              "gradboost": qs.gradboost, "distill": qs.distill, "gt_loss": qs.labelled, "warmup_iters_done": warm_done,
              "optimizer_carry": carry, "lr": lr, "epochs": result.epochs_done, "steps": result.steps,
              "calibration_images": len(inputs), "metrics": result.metrics}
    return int8, report
