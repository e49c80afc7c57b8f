"""Running ``fdq-profile --sweep``: the configurations each host can run, each bundle built once (the
bundle cache), the runs already finished under ``--runs`` reused, the rest run by fdq-profile's own
:func:`fdq.host.profiling.run_jobs`, within a time budget.

A sweep stopped by Ctrl-C, a dropped connection or its budget and started again with the same
arguments runs only what is missing: a run counts as finished when a complete document (runs are
written atomically; a stopped runner writes nothing) of the same target, bundle (manifest sha256),
threads, images and run settings is in the runs folder.

An imported model (``--models PATH``, a bundle ``fdq import`` wrote) runs on the formats its export
offers: fp32 on onnxruntime (the import itself, taken at each long side), ncnn and mnn; int8 as
onnx-int8, ncnn-int8 and mnn-int8 calibrated on ``--calib``. TorchScript and ExecuTorch need fdq's own
PyTorch models and are skipped with that reason.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from fdq.device.bundle import MANIFEST, RUNTIME_MODULES, sha256_file
from fdq.device.result import Run

from .bundle_cache import FLOAT, CacheError, exported_bundle, imported_bundle, quantized_bundle, runtime_bundle
from .profiling import Dataset, Job, RunSettings
from .sweep import Config
from .targets import Target

ALL = "all"
RUNTIMES = tuple(RUNTIME_MODULES)   # what --runtimes names; int8 picks ncnn-int8 / mnn-int8 itself
IMPORTED_INT8 = {"onnxruntime": "onnx-int8", "ncnn": "ncnn-int8", "mnn": "mnn-int8"}  # an imported model's int8


class SweepError(ValueError):
    """A sweep that cannot start as asked; one line."""


@dataclass(frozen=True)
class Grid:
    """What ``--sweep`` varies, and how its int8 bundles are made (``fdq-profile``'s own options)."""

    models: Tuple[str, ...]
    runtimes: Optional[Tuple[str, ...]]   # None: the profile's runtimes that the host has; ("all",): every one it has
    precisions: Tuple[str, ...]
    threads: Optional[Tuple[int, ...]]    # None: the target's
    long_sides: Tuple[int, ...]
    backend: Optional[str] = None         # TorchScript's int8 engine (None: the target's, else by its machine)
    level: Optional[int] = None
    calib: Optional[str] = None
    labels: Optional[str] = None
    weights: Optional[str] = None
    iters: Optional[int] = None
    imported: Tuple[Tuple[str, str], ...] = ()  # (model name, folder) of each imported model among ``models``


def host_runtimes(asked: Optional[Sequence[str]], target: Target, modules: Dict[str, Any]) -> List[str]:
    """The runtimes a sweep runs on a host whose Python has ``modules`` (the board's facts, after
    ``--setup`` where given): by default the profile's that are installed there; ``all`` every runtime
    the runner has that is installed there; a list as given, each one installed there or a
    :class:`SweepError`."""
    installed = [r for r in RUNTIMES if modules.get(RUNTIME_MODULES[r])]
    if asked is None:
        return [r for r in target.runtimes if r in installed]
    if list(asked) == [ALL]:
        return installed
    missing = [r for r in asked if r not in installed]
    if missing:
        raise SweepError(f"{target.name}: its Python lacks {', '.join(RUNTIME_MODULES[r] for r in missing)} for "
                         f"--runtimes {','.join(missing)} (install it there, or add --setup with the runtime in the "
                         f"profile's runtimes; installed there: {', '.join(installed) or 'none'})")
    return list(asked)


def int8_backend(grid: Grid, target: Target, machine: str) -> str:
    """TorchScript's int8 engine on a host: --backend, else the profile's engine, else by its machine."""
    return grid.backend or target.engine or ("qnnpack" if machine in ("aarch64", "arm64", "armv7l") else "x86")


def build_bundle(config: Config, grid: Grid, backend: str) -> Path:
    """The bundle that runs ``config`` (made once, then taken from the bundle cache); :class:`CacheError`
    when it cannot be made (MNN int8 without --calib, ...)."""
    imported = dict(grid.imported)
    if config.model in imported:
        return imported_config_bundle(config, imported[config.model], grid.calib)
    level = grid.level if grid.level is not None else (2 if grid.calib else 1)

    def quantized(engine: str, at: int = level) -> Path:
        return quantized_bundle(config.model, engine, at, weights=grid.weights, calib=grid.calib,
                                labels=grid.labels, long_side=config.long_side, iters=grid.iters)

    if config.precision == FLOAT:
        return runtime_bundle(quantized(FLOAT), config.runtime)
    if config.runtime == "executorch":  # ExecuTorch's int8 is PT2E's, calibrated (level 2)
        if not grid.calib:
            raise CacheError("ExecuTorch int8 is calibrated on images (PT2E, level 2): give --calib DIR")
        return runtime_bundle(quantized("xnnpack", 2), "executorch")
    if config.runtime == "mnn":  # MNN's own quantization of the float model, on --calib
        return runtime_bundle(quantized(FLOAT), "mnn-int8", grid.calib)
    runtime = "ncnn-int8" if config.runtime == "ncnn" else config.runtime
    return runtime_bundle(quantized(backend), runtime)


def imported_config_bundle(config: Config, folder: str, calib: Optional[str]) -> Path:
    """The bundle that runs ``config`` of the model ``fdq import`` wrote at ``folder``."""
    if config.runtime not in IMPORTED_INT8:
        raise CacheError(f"{config.runtime} runs fdq's own PyTorch models; an imported model runs on "
                         f"{', '.join(IMPORTED_INT8)}")
    if config.precision != FLOAT and not calib:
        raise CacheError(f"{IMPORTED_INT8[config.runtime]} of an imported model is calibrated on images: give --calib DIR")
    source = imported_bundle(folder, config.long_side)
    if config.precision == FLOAT:
        return runtime_bundle(source, config.runtime)
    return exported_bundle(source, IMPORTED_INT8[config.runtime], calib)


def finished(run: Run, target: Target, manifest_sha256: str, threads: int, dataset: Dataset,
             settings: RunSettings) -> bool:
    """Whether ``run`` is this job's, complete: same target and address, bundle, threads, images, settings."""
    doc = run.doc
    profile, s = doc.get("profile") or {}, doc["settings"]
    return (profile.get("target") == target.name and profile.get("address") == target.address
            and doc["bundle"]["manifest_sha256"] == manifest_sha256 and int(doc["device"]["threads"]) == threads
            and str(doc["source"].get("path", "")).endswith(dataset.images) and bool(doc.get("accuracy"))
            and s.get("frames_asked") == settings.frames and s.get("warmup") == settings.warmup
            and s.get("min_seconds") == settings.min_seconds
            and bool(doc.get("instructions")) == settings.count_instructions)


@dataclass
class Plan:
    """A sweep's jobs: those to run, the runs already finished, the configurations left out and why."""

    todo: List[Job]
    reused: List[Run]
    skipped: List[str]


def plan(hosts: Sequence[Tuple[Target, Dict[str, Any]]], grid: Grid, dataset: Dataset, settings: RunSettings,
         earlier: Sequence[Run], say: Callable[[str], None]) -> Plan:
    """Every host's configurations (``hosts``: each target with its facts) as jobs; each bundle built
    once for all hosts; a job with a finished run among ``earlier`` reused instead of run."""
    from .sweep import configurations

    made: Dict[Tuple[Config, str], Path] = {}
    refused: Dict[Tuple[Config, str], str] = {}   # asked once: another thread count gets the same line
    result = Plan([], [], [])
    for target, facts in hosts:
        runtimes = host_runtimes(grid.runtimes, target, facts["modules"])
        # the runtimes it was asked for count as the target's (deploy refuses a runtime its profile lacks)
        target = replace(target, runtimes=tuple(dict.fromkeys((*target.runtimes, *runtimes))))
        backend = int8_backend(grid, target, facts["machine"])
        for config in configurations(grid.models, runtimes, grid.precisions, grid.threads or (target.threads,),
                                     grid.long_sides):
            key = (replace(config, threads=0), backend)
            if key not in made and key not in refused:
                try:
                    made[key] = build_bundle(config, grid, backend)
                except (CacheError, ValueError, RuntimeError) as exc:  # one line: a bundle it cannot make
                    refused[key] = str(exc).strip().splitlines()[0]
            if key in refused:
                result.skipped.append(f"{target.name}: {config}: {refused[key]}")
                say(f"fdq-profile: skipped {result.skipped[-1]}")
                continue
            bundle = made[key]
            sha = sha256_file(bundle / MANIFEST)
            done = [r for r in earlier if finished(r, target, sha, config.threads, dataset, settings)]
            if done:
                result.reused.append(max(done, key=lambda r: str(r.doc.get("created", ""))))
            else:
                result.todo.append(Job(target, bundle, config.threads))
    return result


def deadline_after(minutes: Optional[float]) -> Callable[[], bool]:
    """``keep_going`` for --budget-minutes: true until that many minutes from now (always, without it)."""
    if minutes is None:
        return lambda: True
    end = time.monotonic() + 60.0 * minutes
    return lambda: time.monotonic() < end
