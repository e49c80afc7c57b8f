"""Levels 3 and 4: quantization-aware fine-tuning, with labels (3) or from the float model alone (4).

The StatAssist warm-up and the fake-quant iterations run through :func:`fdq.calibration.training.fit`,
the loop of ``fdq train`` (one training step, one schedule), and ``fdq train --qat``
(:mod:`fdq.calibration.qat_training`) builds its student, optimizer, warm-up, calibration, schedule
and loss with the helpers below (:func:`level2_student`, :func:`new_optimizer`,
:func:`statassist_warmup`, :func:`start_fake_quant`, :func:`fake_quant_schedule`, :func:`qat_loss_for`).

On a few dozen images QAT must stay close to the float model, so the float model itself is the main
teacher: the loss is :func:`~fdq.calibration.losses.distillation_loss` (its face scores by KL, its box and
landmark regressions by smooth-L1 where it is confident), with ``match_weight`` plus
:func:`~fdq.calibration.losses.output_match_loss` (L1 on the face logit and box offsets of the anchors it
scores >= 0.1: the output error the benchmark measures, as a loss), plus the ground-truth
:func:`~fdq.calibration.losses.multibox_loss` with a small weight (``gt_weight``; 0 for level 4).

One run (:func:`finetune`):

1. images are split: every ``round(1 / holdout)``-th image (sorted keys) is held back for checkpoint
   selection, the rest is trained on; inputs are preprocessed like inference (resize to ``long_side``,
   BGR mean subtraction), lightly augmented (horizontal flip, optional scale jitter, drawn per
   (seed, epoch, index)) and padded to a common size per batch (padded anchors take part in no loss):
   :mod:`fdq.calibration.finetune_data`;
2. the student starts as the level-2 model: BatchNorm folded into the convolutions, cross-layer
   equalized (``cle``) and, with ``bias_correction``, bias-corrected for weight rounding; with
   ``cle=False`` it keeps trainable ConvBn modules, whose statistics freeze after
   ``freeze_bn_after`` iterations. Folded weights see the raw input scale, so the default
   optimizer is Adam (per-element step sizes); SGD needs a far smaller ``lr``;
3. with **StatAssist** the student is first trained in float for ``warmup_iters`` iterations, and the
   same optimizer object, its moments included, continues after ``prepare_qat``
   (:func:`~fdq.calibration.gradboost.carry_optimizer_state` re-points it when preparation copies the
   parameters). A float student equals its teacher, so the warm-up's gradient comes from the
   ground-truth loss (level 3) or, without labels (level 4), from the teacher's own detections used as
   labels (score >= ``agreement_score``). On a few dozen images those updates only drift away from the
   pretrained model, and checkpoint 0 would no longer be the level-2 model, so with ``warmup_restore``
   the weights go back to their pretrained values and only the optimizer state is carried. Without StatAssist the optimizer
   starts fresh at the fake-quant phase;
4. after preparation, one pass over the training images with fake-quant off calibrates the observers
   (histogram-type observers, the default, are then frozen at once: they are too slow to run every
   step). This untrained checkpoint is the level-2 model: the baseline a fine-tuned one must beat;
5. ``iters`` fake-quant iterations at a ``constant`` (or ``cosine``) learning rate; **GradBoost** (if
   on) adds its noise from the first of them (its statistics come from the warm-up; without StatAssist from the first ``warmup_iters`` QAT iterations,
   which then run without noise); its noise decays by ``gradboost_decay`` per iteration, so that the
   last iterations settle. Weight observers freeze after ``freeze_observers_after`` iterations;
6. every ``eval_every`` iterations (one epoch of ``fit``) the model is converted to int8 and scored on
   the held-back images: the distillation loss against the float model (continuous, where the AP of 8 images moves by points
   per face) and their AP (against their labels, or for level 4 against the float model's detections
   with score >= 0.5). With ``select="both"`` (the default) a fine-tuned checkpoint replaces the
   level-2 one only if its AP is at least as high and its distillation loss lower; among those the
   lowest loss wins: on 8 images neither number alone ranks checkpoints reliably, and the level-2
   model stays unless both agree. The chosen checkpoint's int8 model is returned.

The distillation loss treats every anchor the float model scores >= ``confident`` (0.05, about the
evaluation's own threshold) as a face to copy: matching only confident faces (0.5) left the mid-score
anchors, which decide medium and hard AP, free to drift.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fdq.device.detector import FaceDetector
from fdq.device.evaluation import SETTINGS, GroundTruth, evaluate, to_wider_rows
from fdq.device.postprocess import postprocess
from fdq.device.spec import DetectorSpec
from fdq.host.torch_inference import torch_inference

from . import quant_api
from .datafree import bias_correct, cross_layer_equalize
from .finetune_data import FinetuneData, Sample, load_samples, make_batch
from .gradboost import GradBoost, carry_optimizer_state
from .labels import LabelSource, ground_truth_of, load_labels, subset_ground_truth
from .losses import MatchTargets, distillation_loss, match, multibox_loss, output_match_loss, stack_targets
from .training import SCHEDULES, Distributed, FitConfig, LossFn, fit

Log = Optional[Callable[[str], None]]

#: Observers that are too slow to update at every training step: calibrated once, then frozen.
SLOW_OBSERVERS = ("histogram", "percentile")

#: Fake-quant iterations of a default run (batch 4): slim at long side 320 on the 32 calibration images
#: finishes in well under 10 minutes on 2 CPU cores; pass ``iters`` for longer runs.
DEFAULT_ITERS = 100

#: Checkpoint selection rules (:attr:`FinetuneOptions.select`).
SELECTIONS = ("both", "distill", "ap")

#: Learning rates that keep a few dozen images from pulling the model away from its pretrained weights.
DEFAULT_LR = {"sgd": 5e-4, "adam": 1e-5}


@dataclass
class FinetuneOptions:
    """Everything about a fine-tuning run besides model, data, backend and the four headline switches.

    The defaults run slim at long side 320 on the 32 calibration images in a few minutes on 2 CPU cores.
    """

    warmup_iters: int = 20              # float warm-up (StatAssist) / GradBoost statistics iterations
    warmup_restore: bool = True         # undo the warm-up's weight updates, keep the optimizer state
    optimizer: str = "adam"             # "adam" or "sgd" (momentum; folded weights need a tiny lr)
    lr: Optional[float] = None          # None: 5e-4 for SGD, 1e-5 for Adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 4
    gt_weight: float = 0.1              # multibox loss weight: ground truth (level 3), pseudo labels in
                                        # the float warm-up (level 4)
    distill_weight: float = 1.0         # teacher (float model) loss weight
    match_weight: float = 1.0           # L1 output matching on the anchors the teacher scores >= match_score
                                        # (the report's out err as a loss), added to the KL and smooth-L1
                                        # terms (docs/ACCURACY.md: 21 % lower face-logit error, slim qnnpack)
    match_score: float = 0.1
    confident: float = 0.05             # teacher face score above which its boxes are soft targets
    temperature: float = 1.0
    match_threshold: float = 0.35
    neg_pos_ratio: int = 3
    cle: bool = True                    # start from the level-2 model: BN folded, cross-layer equalized
    bias_correction: bool = False       # ... with its biases corrected for weight rounding (needs cle)
    freeze_bn_after: int = 0            # QAT iterations before BatchNorm statistics freeze (0: frozen;
                                        # > 0 keeps trainable ConvBn modules and needs cle=False)
    freeze_observers_after: Optional[int] = None   # default: half of ``iters``
    schedule: str = "constant"          # learning rate over the fake-quant iterations: or "cosine" (to 0)
    eval_every: int = 25
    holdout: float = 0.25               # fraction of the images held back for checkpoint selection
    select: str = "both"                # checkpoint choice on them: "distill" (int8 vs float), "ap", or "both":
                                        # lowest distillation loss among those whose AP >= the level-2 model's
    flip: bool = True
    scale_jitter: float = 0.0           # random downscale by up to this fraction
    min_face: float = 2.0               # label boxes smaller than this (original pixels) are dropped
    agreement_score: float = 0.5        # float detections above this are the level-4 pseudo ground truth
    gradboost_decay: float = 0.05
    gradboost_beta: float = 0.9
    gradboost_clip: float = 1.0
    reduce_range: str = "none"          # x86/fbgemm kernels that saturate: see quant_api.REDUCE_RANGES
    seed: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "FinetuneOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown fine-tuning option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def logits_mode(model: nn.Module) -> nn.Module:
    """Training mode (the detectors then return logits) with every BatchNorm on running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _freeze_activation_observers(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if name.endswith("activation_post_process"):
            quant_api.freeze_observers(m)


def teacher_boxes(teacher_out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], priors: np.ndarray,
                  valid: torch.Tensor, spec: DetectorSpec, size: Tuple[int, int],
                  min_score: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The teacher's detections (score >= ``min_score``, after NMS) per image of a batch, as pseudo labels.

    Returns (boxes (M, 4), landmarks (M, 10)) normalised to the padded ``size`` (width, height).
    """
    loc, logits, landm = (t.detach() for t in teacher_out)
    scores = torch.softmax(logits, dim=-1)[..., 1] * valid
    width, height = size
    scale = np.array([width, height] * 5, dtype=np.float32)
    out = []
    for n in range(loc.shape[0]):
        d = postprocess(loc[n].numpy(), scores[n].numpy(), landm[n].numpy(), priors, spec.variance,
                        (width, height), 1.0, score_threshold=min_score)
        out.append((d.boxes / scale[:4], d.landmarks / scale))
    return out


def heldout_distillation(model: nn.Module, teacher: nn.Module, held: Sequence[Sample], spec: DetectorSpec,
                         opts: "FinetuneOptions") -> float:
    """Mean distillation loss of a fake-quantized model against the float teacher on held-back images.

    A continuous measure of how far int8 strays from float, far less noisy on a handful of images than
    their AP (one face of 8 images moves AP by several points). Observers are paused: held-back images
    must not calibrate the model.
    """
    rng = np.random.default_rng(0)
    losses = []
    with torch.no_grad(), quant_api.observers_paused(model):
        logits_mode(model)
        for s in held:
            x, _, valid, _ = make_batch([s], spec, rng, flip=False, scale_jitter=0.0)
            losses.append(float(teacher_loss(model(x), teacher(x), valid, opts)))
    model.eval()
    return float(np.mean(losses))


def _detector(model: nn.Module, spec: DetectorSpec, long_side: int) -> FaceDetector:
    return FaceDetector(torch_inference(model), spec, long_side=long_side)


def predict(model: nn.Module, samples: Sequence[Sample], spec: DetectorSpec, long_side: int) -> Dict[str, np.ndarray]:
    """Official-format rows per key of an eval-mode model (float or int8) on original images."""
    det = _detector(model, spec, long_side)
    out = {}
    for s in samples:
        d = det.detect(s.original)
        out[s.key] = to_wider_rows(d.boxes, d.scores)
    return out


def pseudo_ground_truth(predictions: Dict[str, np.ndarray], min_score: float) -> GroundTruth:
    """Detections with score >= ``min_score`` as a ground truth in which every box counts in every setting."""
    keys = sorted(predictions)
    boxes = [predictions[k][predictions[k][:, 4] >= min_score, :4] for k in keys]
    idx = [np.arange(1, len(b) + 1) for b in boxes]
    return GroundTruth(keys=keys, boxes=boxes, easy=idx, medium=idx, hard=idx)


def _score(predictions: Dict[str, np.ndarray], gt: GroundTruth) -> Dict[str, float]:
    r = evaluate(predictions, gt)
    out = {s: float(r[s]) for s in SETTINGS}
    # An image subset can lack faces of a setting (AP nan): average the settings that have faces.
    finite = [out[s] for s in SETTINGS if np.isfinite(out[s])]
    out["mean"] = float(np.mean(finite)) if finite else 0.0
    return out


# --------------------------------------------------------------------------------------------------
# Student, loss, optimizer: shared by finetune (fdq quantize --level 3|4) and train_qat (fdq train --qat)
# --------------------------------------------------------------------------------------------------


def level2_student(float_model: nn.Module, inputs: Sequence[torch.Tensor], backend: str, observer: str,
                   per_channel: bool, opts: "FinetuneOptions") -> nn.Module:
    """The float student QAT starts from: the level-2 model's folded, equalized (and, with
    ``bias_correction``, bias-corrected on ``inputs``) network; with ``cle=False`` trainable ConvBn modules."""
    if opts.cle:
        if opts.freeze_bn_after > 0:
            raise ValueError("freeze_bn_after > 0 trains BatchNorm statistics, which cross-layer equalization "
                             "folds away: pass cle=False with it")
        student, _ = cross_layer_equalize(quant_api.fuse(float_model), inputs[0])
        if opts.bias_correction:  # measured on the training images, as level 2 does on its calibration images
            qconfig = quant_api.make_qconfig(backend, observer, per_channel, reduce_range=opts.reduce_range)
            student = bias_correct(student, qconfig, inputs)
        return logits_mode(student)
    if opts.bias_correction:
        raise ValueError("bias correction needs the folded level-2 student: pass cle=True, or bias_correction=False")
    return quant_api.fuse(float_model, qat=True)


def new_optimizer(model: nn.Module, opts: "FinetuneOptions", lr: float, gradboost: bool,
                  generator: torch.Generator) -> Any:
    """Adam or SGD over the trainable parameters, wrapped in GradBoost when asked for."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        inner: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=opts.momentum,
                                                       weight_decay=opts.weight_decay)
    elif opts.optimizer == "adam":
        inner = torch.optim.Adam(params, lr=lr, weight_decay=opts.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {opts.optimizer!r} (choose from: sgd, adam)")
    if gradboost:
        return GradBoost(inner, decay=opts.gradboost_decay, beta=opts.gradboost_beta, clip=opts.gradboost_clip,
                         generator=generator)
    return inner


def start_fake_quant(student: nn.Module, qconfig: Any, optimizer: Any, inputs: Sequence[torch.Tensor],
                     observer: str, opts: "FinetuneOptions",
                     make_optimizer: Callable[[nn.Module], Any]) -> Tuple[nn.Module, Any, str]:
    """Prepare the student for QAT, carry a warm-up optimizer over (StatAssist) or make a fresh one,
    and calibrate the observers on ``inputs`` with fake-quant off: the result is the level-2 model.

    Returns (prepared model, optimizer, how the optimizer state was carried).
    """
    before = dict(student.named_parameters())
    prepared = quant_api.prepare_qat(student, qconfig)
    if optimizer is not None:
        carry = carry_optimizer_state(optimizer, before, prepared)
    else:
        optimizer, carry = make_optimizer(prepared), "fresh"
    quant_api.disable_fake_quant(prepared)
    prepared.eval()
    with torch.no_grad():
        for x in inputs:
            prepared(x)
    quant_api.enable_fake_quant(prepared)
    if observer in SLOW_OBSERVERS:
        _freeze_activation_observers(prepared)
    if opts.freeze_bn_after <= 0:
        quant_api.freeze_bn_stats(prepared)
    return prepared, optimizer, carry


def pseudo_targets(teacher_out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], priors: np.ndarray,
                   valid: torch.Tensor, spec: DetectorSpec, size: Tuple[int, int],
                   opts: "FinetuneOptions") -> MatchTargets:
    """The teacher's detections as anchor targets (the float warm-up without labels).

    A float student still equals its teacher: distillation has no gradient and the warm-up would leave
    StatAssist's momentum and GradBoost's statistics at zero.
    """
    pseudo = teacher_boxes(teacher_out, priors, valid, spec, size, opts.agreement_score)
    prior_t = torch.from_numpy(np.array(priors))
    return stack_targets([match(torch.from_numpy(b), prior_t, opts.match_threshold, landmarks=torch.from_numpy(pts))
                          for b, pts in pseudo])


def teacher_loss(out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 teacher_out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], valid: torch.Tensor,
                 opts: "FinetuneOptions") -> torch.Tensor:
    """The loss against the float teacher, in training and in held-back checkpoint selection alike:
    :func:`~fdq.calibration.losses.distillation_loss` plus ``match_weight`` x
    :func:`~fdq.calibration.losses.output_match_loss`."""
    total = distillation_loss(out, teacher_out, confident=opts.confident, temperature=opts.temperature,
                              valid=valid)["total"]
    if opts.match_weight > 0:
        total = total + opts.match_weight * output_match_loss(out, teacher_out, opts.match_score, valid)["total"]
    return total


def qat_loss(teacher_out: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], valid: torch.Tensor,
             targets: Optional[MatchTargets], opts: "FinetuneOptions", key: str = "gt"):
    """The fine-tuning loss of a student's outputs: ``distill_weight`` x distillation from the teacher
    (when given) + ``gt_weight`` x the multibox loss against ``targets`` (when given, reported as ``key``)."""

    def loss(out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
        parts: Dict[str, torch.Tensor] = {}
        total = out[0].sum() * 0.0
        if teacher_out is not None:
            parts["distill"] = teacher_loss(out, teacher_out, valid, opts)
            total = total + opts.distill_weight * parts["distill"]
        if targets is not None and opts.gt_weight > 0:
            parts[key] = multibox_loss(out[0], out[1], out[2], targets, opts.neg_pos_ratio, valid)["total"]
            total = total + opts.gt_weight * parts[key]
        parts["total"] = total
        return parts

    return loss


def qat_loss_for(teacher: nn.Module, spec: DetectorSpec, opts: "FinetuneOptions", phase: str, distill: bool,
                 labelled: bool, priors: Optional[torch.Tensor] = None) -> Callable[[Dict[str, torch.Tensor]], LossFn]:
    """``fit``'s ``loss_for`` in a QAT run's ``phase`` ("float": the StatAssist warm-up, or "qat").

    With ``distill`` the :func:`qat_loss` of the teacher plus ``gt_weight`` x the multibox loss,
    without it the multibox loss alone; ``labelled`` batches carry anchor targets, otherwise the
    float phase learns from the teacher's detections (:func:`pseudo_targets`). ``priors`` are those of
    every batch (fixed-size training), or None: each batch's own (:class:`FinetuneData`).
    """
    weights = opts if distill else replace(opts, gt_weight=1.0)

    def make(batch: Dict[str, torch.Tensor]) -> LossFn:
        x, valid = batch["image"], batch["valid"]
        t_out = None
        if distill or (phase == "float" and not labelled):
            with torch.no_grad():
                t_out = teacher(x)
        targets: Optional[MatchTargets] = None
        key = "gt"
        if labelled:
            targets = MatchTargets(batch["loc"], batch["labels"], batch["landm"], batch["landm_valid"])
        elif phase == "float" and weights.gt_weight > 0:
            anchors = (batch["priors"] if priors is None else priors).cpu().numpy()
            targets, key = pseudo_targets(t_out, anchors, valid, spec, (x.shape[3], x.shape[2]), opts), "pseudo"
        return qat_loss(t_out if distill else None, valid, targets, weights, key)

    return make


def statassist_warmup(student: nn.Module, dataset: Dataset, loss_for: Callable[[Dict[str, torch.Tensor]], LossFn],
                      optimizer: Any, steps: int, batch_size: int, seed: int, env: Distributed, restore: bool,
                      collate: Optional[Callable[[List[Any]], Dict[str, torch.Tensor]]] = None) -> int:
    """StatAssist: ``steps`` float steps of ``student`` (through ``fit``: DDP under torchrun), whose
    optimizer state (momentum, GradBoost's statistics) the fake-quant phase inherits; with
    ``restore`` the weights go back to where they started. Returns the steps done."""
    start = {k: v.clone() for k, v in student.state_dict().items()} if restore else None
    config = FitConfig(epochs=1, batch_size=batch_size, workers=0, seed=seed, warmup_epochs=0, schedule="constant",
                       steps=steps)
    result = fit(student, dataset, loss_for, optimizer, config, env, None, train_mode=logits_mode, collate=collate,
                 what="fdq: float warm-up (StatAssist)")
    if start is not None:
        student.load_state_dict(start)
    return result.steps


def fake_quant_schedule(prepared: nn.Module, optimizer: Any, boost_from: int, freeze_bn_after: int,
                        freeze_observers_after: int) -> Callable[[int], None]:
    """``fit``'s ``on_step`` of the fake-quant phase: GradBoost's noise from step ``boost_from``,
    BatchNorm statistics frozen at ``freeze_bn_after`` (when > 0; else they were from the start),
    observers at ``freeze_observers_after``."""

    def on_step(step: int) -> None:
        if isinstance(optimizer, GradBoost) and step >= boost_from and not optimizer.boosting:
            optimizer.start_boost()
        if step == freeze_bn_after and step > 0:
            quant_api.freeze_bn_stats(prepared)
        if step == freeze_observers_after:
            quant_api.freeze_observers(prepared)

    return on_step


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def finetune(model_name: str, float_model: nn.Module, images_dir: str, labels: Optional[LabelSource] = None, *,
             backend: str = "x86", long_side: int = 320, iters: int = DEFAULT_ITERS, statassist: bool = True,
             gradboost: bool = True, observer: str = "histogram", per_channel: bool = True,
             use_gt_loss: bool = True, options: Optional[FinetuneOptions] = None,
             log: Log = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Fine-tune a fake-quantized copy of ``float_model`` and return (int8 model, report).

    ``labels`` (a ground-truth folder, .json, *_bbx_gt.txt or GroundTruth) are used for the
    ground-truth loss when ``use_gt_loss`` (level 3) and for held-back AP; without labels the loss is
    distillation only and held-back AP is agreement with the float model. Checkpoints are chosen by
    held-back distillation loss and AP (``select``, see the module docstring).
    ``float_model`` itself is left untouched.
    """
    opts = options or FinetuneOptions()
    say = log or (lambda msg: None)
    t_start = time.perf_counter()
    if iters < 0 or opts.warmup_iters < 0:
        raise ValueError("iters and warmup_iters must be >= 0")
    if opts.select not in SELECTIONS:
        raise ValueError(f"unknown checkpoint selection {opts.select!r} (choose from: {', '.join(SELECTIONS)})")
    if opts.optimizer not in DEFAULT_LR:
        raise ValueError(f"unknown optimizer {opts.optimizer!r} (choose from: {', '.join(DEFAULT_LR)})")
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {opts.schedule!r} (choose from: {', '.join(SCHEDULES)})")
    if use_gt_loss and labels is None:
        raise ValueError("the ground-truth loss needs labels")
    quant_api.set_engine(backend)
    qconfig = quant_api.make_qconfig(backend, observer, per_channel, qat=True, reduce_range=opts.reduce_range)
    spec: DetectorSpec = getattr(float_model, "spec", None) or _spec_of(model_name)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed + 1)

    # ---- data ---------------------------------------------------------------------------------
    train, held, sizes = load_samples(images_dir, long_side, opts.holdout)
    samples = train + held
    gt_eval: Optional[GroundTruth] = None
    if labels is not None:
        boxes = load_labels(labels, [s.key for s in samples], sizes, min_size=opts.min_face, images_dir=images_dir)
        for s in samples:
            s.boxes = boxes[s.key] * np.float32(s.ratio)
        gt_eval = ground_truth_of(labels)
        if gt_eval is None:   # a text file: every usable box counts in every setting
            keys = [s.key for s in samples]
            xywh = [np.concatenate([boxes[k][:, :2], boxes[k][:, 2:] - boxes[k][:, :2]], 1) for k in keys]
            idx = [np.arange(1, len(b) + 1) for b in xywh]
            gt_eval = GroundTruth(keys=keys, boxes=xywh, easy=idx, medium=idx, hard=idx)
    say(f"{len(train)} training images, {len(held)} held back for checkpoint selection")

    # The teacher runs with BatchNorm folded (same outputs, fewer operations) in logits mode.
    teacher = logits_mode(quant_api.fuse(float_model, qat=False))
    for p in teacher.parameters():
        p.requires_grad_(False)
    float_eval = copy.deepcopy(float_model).eval()
    selection = "none"
    held_gt: Optional[GroundTruth] = None
    float_metric: Optional[Dict[str, float]] = None
    if held:
        float_pred = predict(float_eval, held, spec, long_side)
        if gt_eval is not None:
            held_gt = subset_ground_truth(gt_eval, [s.key for s in held])
            selection = "heldout_ap"
        else:
            held_gt = pseudo_ground_truth(float_pred, opts.agreement_score)
            selection = "float_agreement"
        if opts.select != "ap":
            selection = f"heldout_{opts.select}"
        float_metric = _score(float_pred, held_gt)
    del float_eval

    # ---- student, optimizer, warm-up ----------------------------------------------------------
    inputs = [make_batch([s], spec, rng, flip=False, scale_jitter=0.0)[0] for s in train]
    student = level2_student(float_model, inputs, backend, observer, per_channel, opts)
    optimizer: Any = None
    lr = opts.lr if opts.lr is not None else DEFAULT_LR.get(opts.optimizer, DEFAULT_LR["sgd"])
    env = Distributed(0, 1, torch.device("cpu"))
    batch_size = min(opts.batch_size, len(train))
    history: List[Dict[str, float]] = []

    def loss_for(phase: str) -> Callable[[Dict[str, torch.Tensor]], LossFn]:
        make = qat_loss_for(teacher, spec, opts, phase, distill=True, labelled=use_gt_loss)

        def recorded(batch: Dict[str, torch.Tensor]) -> LossFn:
            loss = make(batch)

            def record(out: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Dict[str, torch.Tensor]:
                parts = loss(out)
                history.append({"phase_qat": float(phase == "qat"), **{k: float(v.detach()) for k, v in parts.items()}})
                return parts
            return record
        return recorded

    t_warm = time.perf_counter()
    warm_done = 0
    if statassist and opts.warmup_iters > 0:
        optimizer = new_optimizer(student, opts, lr, gradboost, gen)
        warm = FinetuneData(train, spec, batch_size, opts.warmup_iters, opts)
        warm_done = statassist_warmup(student, warm, loss_for("float"), optimizer, opts.warmup_iters, batch_size,
                                      opts.seed, env, opts.warmup_restore, collate=warm.collate)
        say(f"float warm-up: {warm_done} iterations, loss {history[-1]['total']:.4f}")
    prepared, optimizer, carry = start_fake_quant(student, qconfig, optimizer, inputs, observer, opts,
                                                  lambda m: new_optimizer(m, opts, lr, gradboost, gen))
    del student
    t_warm = time.perf_counter() - t_warm

    checkpoints: List[Dict[str, Any]] = []
    best: Dict[str, Any] = {"metric": None, "model": None, "iter": None}
    period = max(1, min(opts.eval_every, iters))

    def checkpoint(it: int) -> Dict[str, float]:
        prepared.eval()
        int8 = quant_api.convert(prepared)
        entry: Dict[str, Any] = {"iter": it}
        if held_gt is not None:
            entry.update(_score(predict(int8, held, spec, long_side), held_gt))
            entry["distill"] = heldout_distillation(prepared, teacher, held, spec, opts)
            metric = entry["mean"] if opts.select == "ap" else -entry["distill"]
            if opts.select == "both" and checkpoints and entry["mean"] < checkpoints[0]["mean"]:
                metric = None    # worse held-back AP than the level-2 model: not a candidate
        else:
            metric = float(it)   # nothing held back: the last checkpoint wins
        checkpoints.append(entry)
        # ties keep the earlier (closer to the float model) one
        if metric is not None and (best["metric"] is None or metric > best["metric"]):
            best.update(metric=metric, model=int8, iter=it)
        say(f"checkpoint {it}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "iter"))
        return {"mean": float(entry.get("mean", it))}

    checkpoint(0)

    # ---- fake-quant fine-tuning: fit's epochs, one checkpoint after each -------------------------
    freeze_obs = opts.freeze_observers_after if opts.freeze_observers_after is not None else iters // 2
    boost_from = 0 if warm_done else (opts.warmup_iters if gradboost else 0)
    t_qat = time.perf_counter()
    if iters:
        data = FinetuneData(train, spec, batch_size, period, opts)
        config = FitConfig(epochs=1, batch_size=batch_size, workers=0, seed=opts.seed, warmup_epochs=0,
                           schedule=opts.schedule, steps=iters)
        fit(prepared, data, loss_for("qat"), optimizer, config, env, None,
            evaluate=lambda m: checkpoint(min(iters, period * len(checkpoints))),
            on_step=fake_quant_schedule(prepared, optimizer, boost_from, opts.freeze_bn_after, freeze_obs),
            collate=data.collate, what="fdq: fake-quant fine-tuning")
    t_qat = time.perf_counter() - t_qat

    int8_model = best["model"]
    report: Dict[str, Any] = {
        "model": model_name, "backend": backend, "long_side": long_side, "iters": iters,
        "statassist": statassist, "gradboost": gradboost, "observer": observer, "per_channel": per_channel,
        "gt_loss": bool(use_gt_loss and opts.gt_weight > 0),
        "options": {**asdict(opts), "lr": lr}, "lr": lr,
        "train_images": len(train), "heldout_images": len(held), "heldout_keys": [s.key for s in held],
        "selection": selection, "float_heldout": float_metric,
        "checkpoints": checkpoints, "best_iter": best["iter"], "best_heldout": _entry(checkpoints, best["iter"]),
        "warmup_iters_done": warm_done, "optimizer_carry": carry,
        "gradboost_boost_steps": optimizer.t if isinstance(optimizer, GradBoost) else 0,
        "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None,
        "seconds": {"warmup": t_warm, "qat": t_qat, "total": time.perf_counter() - t_start},
    }
    say(f"best checkpoint: iteration {best['iter']} ({selection}); {report['seconds']['total']:.0f} s")
    return int8_model, report


def _entry(checkpoints: List[Dict[str, Any]], it: Optional[int]) -> Optional[Dict[str, Any]]:
    return next((c for c in checkpoints if c["iter"] == it), None)


def _spec_of(model_name: str) -> DetectorSpec:
    from fdq.models import SPECS
    return SPECS[model_name]


def run_level(level: int, model_name: str, float_model: nn.Module, images_dir: str,
              labels: Optional[LabelSource] = None, backend: str = "x86", long_side: int = 320,
              iters: int = DEFAULT_ITERS, statassist: bool = True, gradboost: bool = True,
              observer: str = "histogram", per_channel: bool = True, log: Log = None,
              **options: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Level 3 or 4 of ``fdq quantize``: the int8 model of the best held-back checkpoint, and a JSON-able report.

    Level 3 is QAT with labels: distillation from the float model plus the small-weight multibox loss.
    Level 4 is the same loop without the ground-truth loss, on any folder of unlabelled images: the
    float model's scores and boxes are the soft targets (in the StatAssist float warm-up, where the
    student still equals the teacher and distillation has no gradient, the teacher's detections are
    the labels, weighed by ``gt_weight``). Its best checkpoint is chosen by agreement with the float
    model on held-back images (AP of the int8 detections against the float model's detections with
    score >= ``agreement_score``), or by AP when ``labels`` are given: they then serve selection only.

    ``options`` are :class:`FinetuneOptions` fields (``warmup_iters``, ``lr``, ``gt_weight``, ...).
    """
    if level not in (3, 4):
        raise ValueError(f"fine-tuning levels are 3 and 4, not {level}")
    if level == 3 and labels is None:
        raise ValueError("level 3 needs labels (a WIDER ground-truth folder, .json or *_bbx_gt.txt)")
    opts = FinetuneOptions.from_kwargs(**options)
    model, report = finetune(model_name, float_model, images_dir, labels, backend=backend, long_side=long_side,
                             iters=iters, statassist=statassist, gradboost=gradboost, observer=observer,
                             per_channel=per_channel, use_gt_loss=level == 3, options=opts, log=log)
    report["level"] = level
    return model, report
