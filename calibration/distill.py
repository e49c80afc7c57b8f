"""Level 4: fine-tuning distilled from the float model on any folder of unlabelled images.

The same loop as level 3 (:func:`fdq.calibration.qat.finetune`) without the ground-truth loss: the
float model's scores and boxes are the soft targets. (The StatAssist float warm-up, where the student
still equals the teacher and distillation has no gradient, uses the teacher's detections as labels.) The best checkpoint is chosen by agreement with
the float model on held-back images (AP of the int8 detections against the float model's detections
with score >= ``agreement_score``), or by AP when ``labels`` are given (they are then used for
selection only, never for the loss).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import nn

from .labels import LabelSource
from .qat import DEFAULT_ITERS, FinetuneOptions, Log, finetune


def run_level4(model_name: str, float_model: nn.Module, images_dir: str, labels: Optional[LabelSource] = None,
               backend: str = "x86", long_side: int = 320, iters: int = DEFAULT_ITERS, statassist: bool = True,
               gradboost: bool = True, observer: str = "histogram", per_channel: bool = True,
               log: Log = None, **options: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Level 4: distillation-only QAT; returns (int8 model of the best checkpoint, report).

    ``options`` are :class:`~fdq.calibration.qat.FinetuneOptions` fields; ``gt_weight`` weighs the
    pseudo-label loss of the float warm-up only.
    """
    opts = FinetuneOptions.from_kwargs(**options)
    model, report = finetune(model_name, float_model, images_dir, labels, backend=backend, long_side=long_side,
                             iters=iters, statassist=statassist, gradboost=gradboost, observer=observer,
                             per_channel=per_channel, use_gt_loss=False, options=opts, log=log)
    report["level"] = 4
    return model, report
