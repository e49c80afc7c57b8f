"""The one training loop of fdq: float training (``fdq train``), QAT and distillation (levels 3-4).

* :class:`Stepper` is the training step, the only one: forward under autocast (``--amp``: bfloat16 on
  CPU, float16 on CUDA), the loss in float32, backward through a gradient scaler (enabled for float16
  only), optional gradient clipping, optimizer and learning-rate scheduler step; :func:`fit` steps
  through it.
* :func:`fit` is the loop of every entry point: ``fdq train`` (also ``--qat``) and ``fdq quantize
  --level 3|4`` (:func:`fdq.calibration.qat.finetune`: ``steps`` ends its run, ``out`` None writes
  nothing). It runs epochs over a dataset on one process or under ``torchrun`` (DistributedDataParallel:
  gloo on CPU, nccl on CUDA; a ``DistributedSampler`` splits every epoch). Rank 0 alone logs, shows a
  progress line (:mod:`fdq.calibration.progress`: ETA and running loss) on a terminal, evaluates, and writes the output folder:
  ``checkpoint.pt`` (everything to resume: model, optimizer, scheduler, scaler, RNG states, position in
  the epoch, running loss sums), ``last.pt`` / ``best.pt`` (what the caller's ``export`` makes of the
  model: for float training the plain ``state_dict`` in the pretrained files' layout) and
  ``metrics.jsonl`` (one line per epoch). Every file is replaced atomically.
* Ctrl-C (SIGINT) or SIGTERM stops every rank after the same step; rank 0 saves a resumable checkpoint
  and :class:`TrainingInterrupted` is raised. Resuming on one process with the same data order is bit
  for bit the run that was not interrupted: samples depend on (seed, epoch, index) only, and the
  epoch's remaining batches are those the interrupted run would have drawn.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fdq.device.atomic import atomic_output, atomic_write_text

from .losses import MatchTargets, multibox_loss
from .progress import line as progress_line

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
LossFn = Callable[[Outputs], Dict[str, torch.Tensor]]
Log = Callable[[str], None]

CHECKPOINT = "checkpoint.pt"
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = "fdq.train-checkpoint/1"
SCHEDULES = ("cosine", "step", "constant")


class TrainingInterrupted(RuntimeError):
    """Stopped by SIGINT / SIGTERM after a resumable checkpoint was written (message: where)."""


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run (one line)."""


# --------------------------------------------------------------------------------------------------
# Processes and precision
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: Optional[str] = None) -> Distributed:
    """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    gloo on CPU, nccl on CUDA; multi-node is torchrun's own rendezvous (``--nnodes``, ``--rdzv-*``).
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {kind!r} (choose from: cpu, cuda)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    where = torch.device(f"cuda:{local}") if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(where)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return Distributed(rank, world, where)


class Amp:
    """Mixed precision: bfloat16 autocast on CPU, float16 autocast plus a gradient scaler on CUDA."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.device_type = device.type
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")

    def autocast(self) -> ContextManager[Any]:
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


# --------------------------------------------------------------------------------------------------
# The training step
# --------------------------------------------------------------------------------------------------


class Stepper:
    """One optimisation step of a model on a batch with a caller-given loss (see the module docstring).

    ``optimizer`` may be a :class:`~fdq.calibration.gradboost.GradBoost`; ``scheduler`` (optional)
    steps once per step.
    """

    def __init__(self, model: nn.Module, optimizer: Any, amp: Optional[Amp] = None,
                 clip_grad: Optional[float] = None, scheduler: Any = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.amp = amp or Amp(False, torch.device("cpu"))
        self.clip_grad = clip_grad
        self.scheduler = scheduler

    def step(self, inputs: torch.Tensor, loss_fn: LossFn) -> Dict[str, float]:
        """Forward, loss (``{"total": ..., parts}``), backward, step; the losses as floats."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast():
            outputs = self.model(inputs)
        losses = loss_fn(tuple(o.float() for o in outputs))
        scaler = self.amp.scaler
        scaler.scale(losses["total"]).backward()
        if self.clip_grad:
            scaler.unscale_(_torch_optimizer(self.optimizer))
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.clip_grad)
        scaler.step(self.optimizer)
        scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items()}


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The ``torch.optim.Optimizer`` itself (GradBoost wraps one)."""
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer


def detection_loss(batch: Dict[str, torch.Tensor], neg_pos_ratio: int = 3) -> LossFn:
    """The multibox loss against a batch's anchor targets (:class:`~fdq.calibration.widerface_data.WiderFaceTraining`)."""
    targets = MatchTargets(batch["loc"], batch["labels"], batch["landm"], batch["landm_valid"])

    def loss(outputs: Outputs) -> Dict[str, torch.Tensor]:
        return multibox_loss(outputs[0], outputs[1], outputs[2], targets, neg_pos_ratio, batch["valid"])

    return loss


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    """The loop's settings; recorded in the checkpoint (a resumed run continues with them)."""

    epochs: int = 10
    batch_size: int = 16
    workers: int = 2
    seed: int = 0
    warmup_epochs: float = 1.0      # linear learning-rate warm-up (the reference warms up for 5 of 250)
    schedule: str = "cosine"        # or "step": x gamma at each of ``milestones`` (fractions of the run),
                                    # or "constant" (after the warm-up; the short QAT runs of fdq quantize)
    milestones: Tuple[float, ...] = (0.76, 0.88)   # the reference's epochs 190 and 220 of 250
    gamma: float = 0.1
    clip_grad: Optional[float] = None
    amp: bool = False
    steps: Optional[int] = None     # stop after this many steps (the last epoch ends early; ``epochs`` then
                                    # follows from it): fdq quantize's ``--iters``

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones: Sequence[float],
              gamma: float) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warm-up, then cosine or step decay (or none)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return gamma ** sum(step >= m * total for m in milestones)


# --------------------------------------------------------------------------------------------------
# Stop requests, RNG state, files
# --------------------------------------------------------------------------------------------------


class StopRequest:
    """SIGINT / SIGTERM set a flag that the loop reads between steps (never inside one)."""

    def __init__(self, install: bool = True) -> None:
        self.requested = False
        self.install = install
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if not self.install:   # nothing to save: Ctrl-C stays a KeyboardInterrupt
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, env: Distributed) -> bool:
        """True on every rank as soon as one rank was asked to stop."""
        if env.world_size == 1:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def _ignore_sigint(_: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops between steps."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` under a temporary name, renamed into place."""
    with atomic_output(path) as tmp:
        torch.save(obj, str(tmp))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A full training checkpoint (``checkpoint.pt``), checked for its format."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ResumeError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} is not an fdq training checkpoint (expected {CHECKPOINT} of 'fdq train')")
    return state


def parameters_digest(model: nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on two ranks iff their weights are identical."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _replicas_identical(model: nn.Module, env: Distributed) -> Optional[bool]:
    if env.world_size == 1:
        return None
    digests: List[Optional[str]] = [None] * env.world_size
    dist.all_gather_object(digests, parameters_digest(model))
    return len(set(digests)) == 1


# --------------------------------------------------------------------------------------------------
# Epochs
# --------------------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can start an epoch after its first ``skip`` samples."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


@dataclass
class FitResult:
    model: nn.Module
    epochs_done: int
    steps: int
    metrics: List[Dict[str, Any]] = field(default_factory=list)


def _sums_to_means(sums: Dict[str, float], count: float, env: Distributed) -> Dict[str, float]:
    keys = sorted(sums)
    values = torch.tensor([count] + [sums[k] for k in keys], dtype=torch.float64)
    if env.world_size > 1:
        dist.all_reduce(values)
    n = max(1.0, float(values[0]))
    return {k: float(v) / n for k, v in zip(keys, values[1:].tolist())}


def fit(model: nn.Module, dataset: Dataset, loss_for: Callable[[Dict[str, torch.Tensor]], LossFn],
        optimizer: Any, config: FitConfig, env: Distributed, out: Optional[Path], *,
        export: Callable[[nn.Module], Any] = lambda m: m.state_dict(),
        evaluate: Optional[Callable[[nn.Module], Dict[str, float]]] = None,
        train_mode: Callable[[nn.Module], Any] = lambda m: m.train(),
        on_step: Optional[Callable[[int], None]] = None,
        collate: Optional[Callable[[List[Any]], Dict[str, torch.Tensor]]] = None,
        resume: Optional[Dict[str, Any]] = None, extra_state: Optional[Dict[str, Any]] = None,
        log: Optional[Log] = None, progress: bool = True, what: str = "fdq: training",
        start_is_candidate: bool = False) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs, or ``config.steps`` steps (from ``resume``, a loaded
    checkpoint, if given).

    ``loss_for(batch)`` gives the loss function of a batch's outputs; ``evaluate(model)`` (rank 0, after
    each epoch) returns metrics whose ``"mean"`` picks ``best.pt`` (without it: the lowest epoch loss);
    ``on_step(step)`` runs before each step (QAT freezes observers there). ``extra_state`` is stored in
    the checkpoint as is (the caller's own resume information). ``collate`` makes a batch of samples
    (default: stacking). ``out`` None writes nothing and leaves Ctrl-C alone (fine-tuning inside
    ``fdq quantize``, and the StatAssist warm-up, have nothing to resume). ``start_is_candidate``
    evaluates the starting weights first (metrics' epoch 0) and makes them ``best.pt`` until an epoch
    beats them, so that fine-tuning a trained model never ends with a best.pt worse than where it began.
    ``progress``: a progress line named ``what`` (steps, loss, time left) on rank 0 while a terminal watches.
    """
    say = log if (log is not None and env.main) else (lambda msg: None)
    model.to(env.device)
    net: nn.Module = model
    if env.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda"
                                                  else None)
    sampler = ResumableSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=config.seed)
    steps_per_epoch = math.ceil(sampler.num_samples / config.batch_size)
    epochs = config.epochs if config.steps is None else math.ceil(config.steps / steps_per_epoch)
    total = steps_per_epoch * epochs if config.steps is None else config.steps
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r} (choose from: {', '.join(SCHEDULES)})")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        _torch_optimizer(optimizer),
        lambda s: lr_factor(s, total, warmup, config.schedule, config.milestones, config.gamma))
    amp = Amp(config.amp, env.device)
    stepper = Stepper(net, optimizer, amp, config.clip_grad, scheduler)

    epoch, batch_in_epoch, step = 0, 0, 0
    sums: Dict[str, float] = {}
    count = 0.0
    best: Optional[float] = None
    metrics: List[Dict[str, Any]] = []
    if resume is not None:
        if resume["batch"] and resume["world_size"] != env.world_size:
            raise ResumeError(f"the checkpoint stopped inside epoch {resume['epoch'] + 1} of a run on "
                              f"{resume['world_size']} process(es); resume it on as many")
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        amp.scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        epoch, batch_in_epoch, step = resume["epoch"], resume["batch"], resume["step"]
        sums, count, best = dict(resume["sums"]), resume["count"], resume["best"]
        metrics = list(resume["metrics"])
        say(f"resumed at epoch {epoch + 1}, batch {batch_in_epoch}, step {step}")

    def checkpoint(next_epoch: int, next_batch: int) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "epoch": next_epoch, "batch": next_batch, "step": step,
                "world_size": env.world_size, "config": asdict(config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": amp.scaler.state_dict(), "rng": rng_state(), "sums": sums, "count": count,
                "best": best, "metrics": metrics, "extra": extra_state or {}}

    if start_is_candidate and evaluate is not None and resume is None and env.main:
        start = {"epoch": 0, "step": 0, "val": evaluate(model), "best": True}
        best = start["val"]["mean"]
        metrics.append(start)
        if out is not None:
            save_atomic(export(model), out / BEST)
            atomic_write_text(out / METRICS, json.dumps(start) + "\n")
        say(_epoch_line(start, epochs))
    with StopRequest(install=out is not None) as stop, \
            progress_line(what, total=total, show=env.main and progress) as bar:
        bar.update(completed=step)
        while epoch < epochs:
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            sampler.skip = batch_in_epoch * config.batch_size
            loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                                worker_init_fn=_ignore_sigint if config.workers else None,
                                pin_memory=env.device.type == "cuda", collate_fn=collate)
            train_mode(model)
            t0 = time.perf_counter()
            images = 0
            bar.update(description=f"{what}, epoch {epoch + 1}/{epochs}")
            for batch in loader:
                if step == total:
                    break
                if stop.agreed(env):
                    if env.main:
                        save_atomic(checkpoint(epoch, batch_in_epoch), out / CHECKPOINT)
                    raise TrainingInterrupted(f"interrupted at epoch {epoch + 1}, step {step}: resumable "
                                              f"checkpoint {out / CHECKPOINT} (continue with --resume {out})")
                if on_step is not None:
                    on_step(step)
                batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
                losses = stepper.step(batch["image"], loss_for(batch))
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                step += 1
                batch_in_epoch += 1
                images += int(batch["image"].shape[0])
                bar.advance(note=f"loss {losses['total']:.4f}")
            stop.requested = stop.agreed(env)   # a stop during the last batch: the epoch completes first
            seconds = time.perf_counter() - t0
            means = _sums_to_means(sums, count, env)
            record: Dict[str, Any] = {"epoch": epoch + 1, "step": step, "loss": means.pop("total", float("nan")),
                                      **means, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3),
                                      "images": images * env.world_size,
                                      "images_per_s": round(images * env.world_size / max(seconds, 1e-9), 3),
                                      "world_size": env.world_size, "amp": config.amp}
            identical = _replicas_identical(model, env)
            if identical is not None:
                record["replicas_identical"] = identical
            improved = False
            if env.main:
                if evaluate is not None:
                    record["val"] = evaluate(model)
                    score = record["val"]["mean"]
                    improved = best is None or score > best
                else:
                    score = -record["loss"]
                    improved = best is None or score > best
                if improved:
                    best = score
                record["best"] = improved
            metrics.append(record)
            epoch += 1
            batch_in_epoch = 0
            sums, count = {}, 0.0
            if env.main and out is not None:
                exported = export(model)
                save_atomic(exported, out / LAST)
                if improved:
                    save_atomic(exported, out / BEST)
                atomic_write_text(out / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
                save_atomic(checkpoint(epoch, 0), out / CHECKPOINT)
            say(_epoch_line(record, epochs))
            if env.world_size > 1:
                dist.barrier()
            if stop.requested and epoch < epochs:
                raise TrainingInterrupted(f"interrupted after epoch {epoch}: resumable checkpoint "
                                          f"{out / CHECKPOINT} (continue with --resume {out})")
    return FitResult(model, epoch, step, metrics)


def _epoch_line(record: Dict[str, Any], epochs: int) -> str:
    if record["epoch"] == 0:
        parts = ["start (the weights before training)"]
    else:
        parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.4f}"]
        parts += [f"{k} {record[k]:.4f}" for k in ("loc", "conf", "landm") if k in record]
        parts += [f"lr {record['lr']:.2e}", f"{record['images_per_s']:.1f} img/s"]
    val = record.get("val", {})
    if "easy" in val:
        parts.append("val AP " + " / ".join(f"{val[s]:.4f}" for s in ("easy", "medium", "hard") if s in val))
    if "heldback_loss" in val:
        parts.append(f"held-back loss {val['heldback_loss']:.4f}")
    if record.get("best"):
        parts.append("best so far")
    return ", ".join(parts)
