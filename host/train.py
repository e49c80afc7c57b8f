"""``fdq train``: train a detector on WIDER-format data, on one process or many (torchrun).

One process::

    fdq train --model slim --images DIR --labels FILE_OR_DIR [--val-images DIR --val-gt DIR] --out runs/slim

Several processes on this machine (DistributedDataParallel; gloo on CPU, nccl on CUDA)::

    torchrun --nproc_per_node=2 -m fdq.host.train --model slim --images DIR --labels FILE --out runs/slim

Two machines: the same command on each, with torchrun's own rendezvous (``--nnodes=2 --node_rank=0|1
--rdzv-backend=c10d --rdzv-endpoint=FIRST_HOST:29400``). ``--qat --backend B`` trains the int8 model
with fake quantization (the level-3 loop of ``fdq quantize``; ``--distill`` adds the float model as
teacher, and without ``--labels`` is level 4) and writes an int8 bundle to ``OUT/bundle``.

``--out`` is checked before any work: a new path or an empty folder; an earlier ``fdq train`` output
only with ``--force``; ``--resume OUT`` continues that output in place with its own settings.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # the CLI imports this module at start-up: torch is imported only when a command runs
    from torch import nn

    from fdq.calibration.training import Distributed

EXIT_INTERRUPTED = 130
COMMAND_FILE = "command.json"
OUTPUT_KIND = "fdq.train"

#: Option defaults, applied after parsing so that ``--resume`` can tell which options were given.
DEFAULTS: Dict[str, Any] = {
    "epochs": 10, "batch_size": 16, "lr": None, "momentum": 0.9, "weight_decay": None, "warmup_epochs": 1.0,
    "schedule": "cosine", "clip_grad": None, "size": 320, "min_face": 2.0, "seed": 0, "workers": 2,
    "optimizer": None, "amp": False, "device": None,
    "qat": False, "backend": None, "statassist": False, "gradboost": False, "distill": False,
    "warmup_iters": 20, "observer": "histogram", "per_channel": True, "gt_weight": None, "reduce_range": "none",
    "holdout": None, "freeze_bn": None,
}
#: Options a resumed run may change (everything else comes from the checkpoint).
RESUME_MAY_CHANGE = ("epochs", "workers", "device")
#: Learning rate and optimizer: SGD as the reference for float training; Adam for QAT (folded weights).
#: Every run starts from trained weights (the zoo's or --weights), so the float default is a fine-tuning
#: rate, not the reference's from-scratch 1e-3, which took a pretrained slim 3.0 points (easy) down on val in
#: 3 epochs on the 32 calib images (docs/ACCURACY.md, "Fine-tuning a pretrained detector").
FINETUNE_LR, QAT_LR = 1e-4, 1e-5
#: BatchNorm statistics stay as trained (--freeze-bn, the default): with them following 3 epochs of 24 images
#: even lr 1e-5 lost 2.8 points (easy) on val.
#: Without --val-images, this share of the training images is held back: best.pt is kept by their loss.
HOLDOUT = 0.25
FLOAT_WEIGHT_DECAY = 5e-4   # the reference's; QAT: none (a few epochs near the pretrained weights)


class TrainError(ValueError):
    """Bad ``fdq train`` input, reported as one line before any work starts."""


def _given(args: argparse.Namespace) -> List[str]:
    return [k for k in DEFAULTS if getattr(args, k) is not None]


def _settings(args: argparse.Namespace) -> argparse.Namespace:
    """The effective settings: the checkpoint's with ``--resume``, otherwise the options and defaults."""
    from fdq.calibration.training import CHECKPOINT, load_checkpoint
    from fdq.device.outputs import is_fdq_output

    if args.resume:
        folder = Path(args.resume)
        folder = folder.parent if folder.is_file() else folder
        if not (folder / CHECKPOINT).is_file() or not is_fdq_output(folder):
            raise TrainError(f"--resume {args.resume}: no fdq train checkpoint there (expected {CHECKPOINT} in "
                             "an 'fdq train' output folder)")
        state = load_checkpoint(folder / CHECKPOINT)
        stored = dict(state["extra"]["settings"])
        others = [k for k in _given(args) if k not in RESUME_MAY_CHANGE]
        others += [k for k in ("model", "weights", "images", "labels", "val_images", "val_gt", "out")
                   if getattr(args, k) is not None]
        if others:
            raise TrainError(f"--resume continues with the checkpoint's settings: drop --{others[0].replace('_', '-')}"
                             f" (only {', '.join('--' + k for k in RESUME_MAY_CHANGE)} may change)")
        for k in RESUME_MAY_CHANGE:
            if getattr(args, k) is not None:
                stored[k] = getattr(args, k)
        settings = argparse.Namespace(**stored)
        settings.out, settings.resume_state = str(folder), state
        return settings
    settings = copy.copy(args)
    for k, v in DEFAULTS.items():
        if getattr(settings, k) is None:
            setattr(settings, k, v)
    settings.optimizer = settings.optimizer or ("adam" if settings.qat else "sgd")
    settings.lr = settings.lr if settings.lr is not None else (QAT_LR if settings.qat else FINETUNE_LR)
    if settings.freeze_bn is None:
        settings.freeze_bn = not settings.qat
    if settings.holdout is None:
        settings.holdout = 0.0 if settings.val_images or settings.qat else HOLDOUT
    if settings.weight_decay is None:
        settings.weight_decay = 0.0 if settings.qat else FLOAT_WEIGHT_DECAY
    settings.reduce_range_reason = None
    if settings.qat and settings.backend:
        from fdq.calibration.quant_api import choose_reduce_range

        settings.reduce_range, settings.reduce_range_reason = choose_reduce_range(settings.backend, args.reduce_range)
    settings.resume_state = None
    return settings


def _check(s: argparse.Namespace) -> None:
    """Option combinations and values, checked before any file is read."""
    from fdq.models import SPECS

    if s.model is None or s.model not in SPECS:
        raise TrainError(f"give --model (choose from: {', '.join(SPECS)})")
    if not s.out:
        raise TrainError("give --out DIR (a new or empty folder; see --help)")
    if not s.images:
        raise TrainError("give --images DIR (a WIDER-layout folder EVENT/NAME.jpg)")
    if not s.labels and not (s.qat and s.distill):
        raise TrainError("give --labels FILE_OR_DIR (wider_face_*_bbx_gt.txt, .mat folder or label.txt); "
                         "only --qat --distill trains without labels")
    if bool(s.val_images) != bool(s.val_gt):
        raise TrainError("--val-images and --val-gt go together (images and their ground truth)")
    for name, value, low in (("--epochs", s.epochs, 1), ("--batch-size", s.batch_size, 1), ("--size", s.size, 32),
                             ("--workers", s.workers, 0),
                             ("--warmup-iters", s.warmup_iters, 0)):
        if value < low:
            raise TrainError(f"{name} must be at least {low} (see --help)")
    if s.lr <= 0 or s.weight_decay < 0 or s.min_face < 0 or s.warmup_epochs < 0:
        raise TrainError("--lr must be > 0; --weight-decay, --min-face and --warmup-epochs >= 0")
    if s.freeze_bn and s.qat:
        raise TrainError("--freeze-bn applies to float training (--qat folds BatchNorm into the convolutions)")
    if s.holdout and (s.val_images or s.qat):
        raise TrainError("--holdout applies to float training without --val-images (those pick best.pt then)")
    if s.clip_grad is not None and s.clip_grad <= 0:
        raise TrainError("--clip-grad must be > 0")
    if s.optimizer not in ("sgd", "adam"):
        raise TrainError(f"unknown --optimizer {s.optimizer!r} (choose from: sgd, adam)")
    qat_only = [f"--{k.replace('_', '-')}" for k in ("backend", "statassist", "gradboost", "distill", "reduce_range")
                if getattr(s, k) not in (None, False, "none")]
    if not s.qat and qat_only:
        raise TrainError(f"{', '.join(qat_only)} {'applies' if len(qat_only) == 1 else 'apply'} to --qat "
                         "(quantization-aware training)")
    if s.qat:
        from fdq.calibration.quant_api import activation_observer
        from fdq.calibration.quant_api import check_backend

        if not s.backend:
            raise TrainError("--qat needs --backend (qnnpack for ARM, x86 or fbgemm for Intel/AMD)")
        check_backend(s.backend)
        if s.reduce_range != "none" and s.backend == "qnnpack":
            raise TrainError("--reduce-range is an x86/fbgemm workaround; qnnpack has no use for it")
        activation_observer(s.observer)
        if s.amp:
            raise TrainError("--amp applies to float training; fake-quantized training runs in float32")


def _prepare_out(s: argparse.Namespace, env: "Distributed") -> Path:
    """The output folder, ready on rank 0 (a fresh run: checked, an old fdq output swapped out)."""
    from fdq.device.atomic import atomic_write_text
    from fdq.device.outputs import check_folder_output, write_marker

    out = Path(s.out).absolute()
    if s.resume_state is not None or not env.main:
        return out
    target = check_folder_output(s.out, s.force)
    if target.is_dir() and any(target.iterdir()):   # an fdq output and --force: moved away, then removed
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / "previous")
        shutil.rmtree(old, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    write_marker(target, {"kind": OUTPUT_KIND})
    record = {"argv": sys.argv, "world_size": env.world_size,
              "settings": {k: v for k, v in vars(s).items() if k not in ("func", "resume_state")}}
    atomic_write_text(target / COMMAND_FILE, json.dumps(record, indent=1, default=str) + "\n")
    return target


def _heldback_loss(held: Any, batch_size: int) -> Any:
    """The mean multibox loss on held-back images, unaugmented (rank 0): ``mean`` is its negative, so
    that :func:`~fdq.calibration.training.fit` keeps the weights with the lowest loss as best.pt."""
    import torch

    from fdq.calibration.qat import logits_mode
    from fdq.calibration.training import detection_loss

    def evaluate(model: "nn.Module") -> Dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        was_training = model.training
        with torch.no_grad():
            for start in range(0, len(held), batch_size):
                samples = [held[i] for i in range(start, min(start + batch_size, len(held)))]
                batch = {k: torch.stack([x[k] for x in samples]).to(device) for k in samples[0]}
                total += float(detection_loss(batch)(logits_mode(model)(batch["image"]))["total"]) * len(samples)
                count += len(samples)
        model.train(was_training)
        loss = total / count
        return {"heldback_loss": loss, "heldback_images": count, "mean": -loss}

    return evaluate


def _evaluator(s: argparse.Namespace, held: Any = None) -> Optional[Any]:
    """AP on --val-images (rank 0, a CPU copy of the model, the reference protocol at --size); else the
    loss on the held-back training images, if any."""
    if not s.val_images:
        return _heldback_loss(held, s.batch_size) if held is not None and len(held) else None
    from fdq.device.detector import FaceDetector
    from fdq.device.evaluation import SETTINGS, load_ground_truth
    from fdq.host.evaluate import evaluate_detector
    from fdq.host.torch_inference import torch_inference
    from fdq.models import SPECS

    gt = load_ground_truth(s.val_gt)

    def evaluate(model: "nn.Module") -> Dict[str, float]:
        detector = FaceDetector(torch_inference(copy.deepcopy(model).cpu()), SPECS[s.model], long_side=s.size)
        result = evaluate_detector(detector, s.val_images, gt)
        ap = {k: float(result[k]) for k in SETTINGS}
        return {**ap, "mean": sum(ap.values()) / len(ap)}

    return evaluate


def train_command(args: argparse.Namespace) -> Path:
    """Run ``fdq train``; returns the output folder."""
    import torch

    from fdq.calibration.finetune_data import held_indices
    from fdq.calibration.qat import logits_mode
    from fdq.calibration.training import FitConfig, detection_loss, fit, init_distributed
    from fdq.calibration.widerface_data import WiderFaceTraining, labelled_images
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    s = _settings(args)
    _check(s)
    if s.resume_state is None and os.environ.get("RANK", "0") == "0":   # rank 0 alone makes the folder
        from fdq.device.outputs import check_folder_output

        check_folder_output(s.out, s.force)
    env = init_distributed(s.device)
    spec = SPECS[s.model]
    items = labelled_images(s.images, s.labels)
    held_idx = held_indices(len(items), s.holdout)
    if len(held_idx) == len(items):
        raise TrainError(f"--holdout {s.holdout:g} leaves no training image of {len(items)}")
    dataset = WiderFaceTraining([x for i, x in enumerate(items) if i not in held_idx], spec, s.size, seed=s.seed,
                                min_face=s.min_face)
    held = WiderFaceTraining([items[i] for i in sorted(held_idx)], spec, s.size, augment=False, min_face=s.min_face)
    evaluate = _evaluator(s, held)
    if held_idx and env.main:
        print(f"fdq train: {len(dataset)} training images, {len(held)} held back: best.pt is kept by their loss, "
              "the starting weights first", file=sys.stderr)
    model = load_model(s.model, resolve_weights(s.model, s.weights))
    out = _prepare_out(s, env)
    if env.world_size > 1:
        torch.distributed.barrier()
    config = FitConfig(epochs=s.epochs, batch_size=s.batch_size, workers=s.workers, seed=s.seed,
                       warmup_epochs=s.warmup_epochs, schedule=s.schedule, clip_grad=s.clip_grad, amp=s.amp)
    torch.manual_seed(s.seed)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    settings = {k: v for k, v in vars(s).items() if k not in ("func", "resume_state", "resume", "force")}
    if s.qat:
        return _train_qat(s, model, dataset, config, env, out, evaluate, log, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        optimizer: Any = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    fit(model, dataset, detection_loss, optimizer, config, env, out,
        export=lambda m: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()},
        evaluate=evaluate, resume=s.resume_state, extra_state={"settings": settings}, log=log,
        start_is_candidate=True, **({"train_mode": logits_mode} if s.freeze_bn else {}))
    return out


def _train_qat(s: argparse.Namespace, model: "nn.Module", dataset: Any, config: Any, env: "Distributed", out: Path,
               evaluate: Any, log: Any, settings: Dict[str, Any]) -> Path:
    """``--qat``: the fake-quant epochs, then the int8 bundle ``OUT/bundle`` with its float-vs-int8 report
    (on the validation images, or in-sample on up to 32 training images without them)."""
    from fdq.calibration import report as calib_report
    from fdq.calibration.data import find_images
    from fdq.calibration.labels import ground_truth_of, subset_ground_truth
    from fdq.calibration.qat import FinetuneOptions
    from fdq.calibration.qat_training import QATSettings, train_qat
    from fdq.calibration.quant_api import narrowed_units
    from fdq.host.artifacts import save_torchscript_bundle

    qs = QATSettings(backend=s.backend, observer=s.observer, per_channel=s.per_channel, statassist=s.statassist,
                     gradboost=s.gradboost, distill=s.distill, labelled=bool(s.labels), warmup_iters=s.warmup_iters)
    opts = FinetuneOptions(optimizer=s.optimizer, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                           gt_weight=0.1 if s.gt_weight is None else s.gt_weight, reduce_range=s.reduce_range,
                           seed=s.seed)
    int8, report = train_qat(model, dataset, qs, opts, config, env, out, evaluate=evaluate,
                             resume=s.resume_state, extra_state={"settings": settings}, log=log)
    if not env.main:
        return out
    images, gt = (find_images(s.val_images), ground_truth_of(s.val_gt)) if s.val_images else \
        (find_images(s.images), ground_truth_of(s.labels) if s.labels else None)
    in_sample = not s.val_images
    if in_sample:
        images = images.subset(range(min(len(images), 32)))
    gt = subset_ground_truth(gt, images.keys) if gt is not None else None
    check = calib_report.compare(model, int8, dataset.spec, s.size, images, gt, in_sample)
    level = 4 if s.distill and not s.labels else 3
    section = {"level": level, **{k: v for k, v in report.items() if k != "metrics"},
               "reduce_range_reason": getattr(s, "reduce_range_reason", None)}
    if s.reduce_range == "saturating-weights":
        section["reduce_range_units"] = narrowed_units(int8)
    calibration = {**images.manifest(), "held_back_images": len(images), "in_sample_report": in_sample,
                   "labels": bool(s.labels)}
    save_torchscript_bundle(int8, dataset.spec, s.size, str(out / "bundle"), engine=s.backend, dtype="int8",
                            quantization=section, calibration=calibration, force=True,
                            report={"model": s.model, "level": level, "training": report,
                                    "calibration_report": check, "warnings": check["warnings"]})
    for message in check["warnings"]:
        print(f"fdq train: WARNING: {message}", file=sys.stderr)
    return out


def _run(args: argparse.Namespace) -> int:
    from fdq.calibration.training import TrainingInterrupted

    try:
        out = train_command(args)
    except TrainingInterrupted as exc:
        print(f"fdq train: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {out}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fdq train`` (defaults in :data:`DEFAULTS`, applied after parsing)."""
    from fdq.device.cliargs import probability
    from fdq.host.quantize import add_reduce_range_arguments

    d = DEFAULTS
    p.add_argument("--model", help="slim, rfb or mnet025")
    p.add_argument("--weights", help="initial weights: file (a last.pt / best.pt too) or zoo name "
                                     "(default: the model's pretrained zoo weights)")
    p.add_argument("--images", help="training images, WIDER layout EVENT/NAME.jpg")
    p.add_argument("--labels", help="their faces: wider_face_*_bbx_gt.txt, a folder of the official .mat files, "
                                    "or a RetinaFace label.txt with landmarks")
    p.add_argument("--val-images", help="validation images (AP after every epoch and of the starting weights; "
                                        "picks best.pt)")
    p.add_argument("--holdout", type=probability("--holdout"), help=f"without --val-images: the share of --images held back, whose "
                                                 f"loss picks best.pt, the starting weights first (default "
                                                 f"{HOLDOUT:g}; 0: train on all, best.pt by training loss)")
    p.add_argument("--val-gt", help="their ground truth (.mat folder or .json)")
    p.add_argument("--epochs", type=int, help=f"epochs (default {d['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"images per step and process (default {d['batch_size']})")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="default sgd (float), adam (--qat)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {FINETUNE_LR:g}, fine-tuning trained "
                                            f"weights; --qat {QAT_LR:g}; the reference trains from scratch at 1e-3)")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d['momentum']})")
    p.add_argument("--weight-decay", type=float, help=f"default {FLOAT_WEIGHT_DECAY:g} as the reference; --qat 0")
    p.add_argument("--warmup-epochs", type=float, help=f"linear learning-rate warm-up (default {d['warmup_epochs']})")
    p.add_argument("--schedule", choices=("cosine", "step"), help="after warm-up: cosine (default) or step "
                                                                  "(x0.1 at 76 %% and 88 %% of the run)")
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this (default: no clipping)")
    p.add_argument("--size", type=int, help=f"square training input (default {d['size']}; also the val long side)")
    p.add_argument("--min-face", type=float, help=f"faces smaller than this at the training size (pixels) take "
                                                  f"part in no loss (default {d['min_face']:g})")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep every BatchNorm's running statistics as the starting weights have them (the default, "
                        "as torchvision's detection references freeze them: on a few images the batches' "
                        "statistics cost AP whatever the lr); --no-freeze-bn lets them follow the batches")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: bfloat16 autocast on CPU, float16 and a gradient scaler on CUDA")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default cuda if available")
    p.add_argument("--workers", type=int, help=f"DataLoader workers per process (default {d['workers']})")
    p.add_argument("--seed", type=int, help="data order, augmentation and (QAT) GradBoost noise (default 0)")
    p.add_argument("--resume", metavar="OUT", help="continue an interrupted run in place (its folder or checkpoint.pt)")
    p.add_argument("--out", help="output folder: checkpoint.pt, last.pt, best.pt, metrics.jsonl, command.json")
    p.add_argument("--force", action="store_true", help="replace an earlier fdq train output at --out")
    q = p.add_argument_group("quantization-aware training")
    q.add_argument("--qat", action="store_true", default=None, help="train the fake-quantized int8 model "
                                                                    "(starts from the level-2 model)")
    q.add_argument("--backend", help="--qat: qnnpack (ARM), x86 or fbgemm")
    q.add_argument("--statassist", action="store_true", default=None,
                   help="--qat: float warm-up whose optimizer state carries into fake-quant training")
    q.add_argument("--gradboost", action="store_true", default=None, help="--qat: GradBoost gradient noise")
    q.add_argument("--distill", action="store_true", default=None,
                   help="--qat: the float model is the teacher (without --labels: level 4, distillation only)")
    q.add_argument("--warmup-iters", type=int, help="--qat --statassist: float warm-up steps (default 20)")
    q.add_argument("--observer", help="--qat: activation observer (default histogram)")
    q.add_argument("--per-tensor", dest="per_channel", action="store_false", default=None,
                   help="--qat: per-tensor int8 weights (default per-channel)")
    q.add_argument("--gt-weight", type=float, help="--qat --distill: weight of the labels' loss (default 0.1)")
    add_reduce_range_arguments(q, applies_to="--qat, ")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("train", help="train a detector (float, QAT, distillation; torchrun for more "
                                            "processes)", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=_run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m fdq.host.train`` / ``torchrun ... -m fdq.host.train``: the same command as ``fdq train``."""
    from fdq.host.commands import fdq_parser, run_program  # the CLI's own parsing and 'fdq: error: ...'

    return run_program(fdq_parser([register]), ["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
