"""Bundles made on demand for ``fdq-profile``, cached by their inputs so a second call quantizes nothing.

A bundle lives under ``$FDQ_HOME/bundles/NAME-KEY``, KEY being the sha256 of everything that
decides its content: model, weights sha256, level, backend, calibration images (by content),
options, fdq and torch versions. Quantization goes through ``fdq quantize``'s own code (its parser
gives the defaults), exports through :func:`fdq.host.export.export_bundle`. An imported model (a bundle
``fdq import`` wrote) is taken at each long side by :func:`fdq.host.importer.at_long_side`, keyed by the
imported bundle's manifest and the side, and exported from there like any float bundle; an import of fixed
input size only at its own side (another is refused in one line, which the sweep reports as a skip).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from fdq.device.bundle import MANIFEST, BundleError, load_bundle, sha256_file

FLOAT = "fp32"
# What --runtime takes: every format the runner runs (an export of the bundle, made on the fly).
RUNTIMES = ("torchscript", "onnxruntime", "ncnn", "ncnn-int8", "mnn", "mnn-int8", "executorch")
_FLOAT_ONLY = {"ncnn": ", or --runtime ncnn-int8", "mnn": ", or --runtime mnn-int8 with --calib DIR",
               "executorch": ", or --backend xnnpack (ExecuTorch's own int8)"}


class CacheError(ValueError):
    """A combination that cannot make a bundle; one line."""


def folder_digest(files: Dict[str, Path]) -> str:
    """sha256 of ``relative name -> file`` by content: the same images give the same key."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{sha256_file(files[name])}\n".encode("utf-8"))
    return digest.hexdigest()


def _tree(folder: Optional[str]) -> Optional[str]:
    if not folder:
        return None
    root = Path(folder)
    if not root.exists():
        raise CacheError(f"{folder}: not found")
    if root.is_file():
        return sha256_file(root)
    return folder_digest({p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()})


def _key(fields: Dict[str, Any]) -> str:
    import torch

    from fdq.host.bundles import FDQ_VERSION

    blob = json.dumps({**fields, "fdq_version": FDQ_VERSION, "torch": str(torch.__version__)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _cached(path: Path) -> Optional[Path]:
    """``path`` when it holds a complete, verified bundle."""
    if not (path / MANIFEST).is_file():
        return None
    try:
        return load_bundle(str(path)).path
    except BundleError:
        return None  # damaged: made again below, over it (it is fdq's own folder)


def quantize_args(argv: List[str]) -> argparse.Namespace:
    """``fdq quantize ARGV`` as parsed by its own parser, so its defaults stay in one place."""
    from fdq.host.commands import fdq_parser
    from fdq.host.quantize import register

    return fdq_parser([register]).parse_args(["quantize", *argv])


def quantized_bundle(model: str, backend: str, level: int, *, weights: Optional[str] = None,
                     calib: Optional[str] = None, labels: Optional[str] = None, long_side: int = 320,
                     iters: Optional[int] = None) -> Path:
    """The bundle ``fdq quantize`` makes for these inputs (``backend`` ``fp32``: the float bundle)."""
    from fdq.calibration.quant_api import default_reduce_range
    from fdq.calibration.report import QuantizationCollapseWarning
    from fdq.host.quantize import quantize_command
    from fdq.host.zoo import fdq_home, resolve_weights

    weights_file = resolve_weights(model, weights)
    if backend == FLOAT:
        argv, level, calib, labels, iters = ["--fp32"], 0, None, None, None
    else:
        argv = ["--level", str(level), "--backend", backend]
    argv += ["--model", model, "--weights", str(weights_file), "--long-side", str(long_side)]
    for flag, value in (("--calib", calib), ("--labels", labels), ("--iters", iters)):
        if value is not None:
            argv += [flag, str(value)]
    # fdq quantize chooses x86's 7-bit operand by this machine's CPU: a bundle made with another choice is another bundle
    narrowed = default_reduce_range(backend)[0] if backend != FLOAT else "none"
    key = _key({"model": model, "weights": sha256_file(weights_file), "level": level, "backend": backend,
                "calib": _tree(calib), "labels": _tree(labels), "long_side": long_side, "iters": iters,
                "reduce_range": narrowed})
    path = fdq_home() / "bundles" / f"{model}-{backend}-l{level}-{key}"
    if _cached(path):
        return path
    what = "float" if backend == FLOAT else f"{backend} int8, level {level}" + ("" if calib else " (data-free)")
    print(f"fdq: quantizing {model} ({what}) into {path}", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizationCollapseWarning)
        done = quantize_command(quantize_args(argv + ["--out", str(path), "--force"]))
    for w in caught:
        if issubclass(w.category, QuantizationCollapseWarning):
            print(f"fdq: WARNING: {w.message}", file=sys.stderr)
    return done


def known_runtime(runtime: str) -> str:
    """``runtime`` if ``--runtime`` takes it; :class:`CacheError` otherwise."""
    if runtime not in RUNTIMES:
        raise CacheError(f"unknown runtime {runtime!r} (choose from: {', '.join(RUNTIMES)})")
    return runtime


def check_runtime(runtime: str, int8: bool, calib: Optional[str], backend: Optional[str] = None) -> None:
    """Raise :class:`CacheError` unless an (``int8`` or float) bundle can be exported for ``runtime``
    (``backend``: the one it is quantized for, when known)."""
    known_runtime(runtime)
    if runtime in _FLOAT_ONLY and int8 and not (runtime == "executorch" and backend == "xnnpack"):
        raise CacheError(f"{runtime} bundles are float: use --backend fp32 with --runtime {runtime}{_FLOAT_ONLY[runtime]}")
    if runtime == "mnn-int8" and int8:
        raise CacheError("mnn-int8 is MNN's own quantization of the float model: use --backend fp32 with "
                         "--runtime mnn-int8 --calib DIR")
    if runtime in ("ncnn-int8", "mnn-int8") and not int8 and not calib:
        raise CacheError(f"--runtime {runtime} of a float bundle calibrates its int8 ranges on images: give --calib DIR")


def export_format(runtime: str, int8: bool) -> str:
    """The ``fdq export`` format that makes a bundle for ``runtime``: int8 bundles carry their own scales
    to onnx-int8 and ncnn-int8."""
    if runtime == "onnxruntime":
        return "onnx-int8" if int8 else "onnx"
    return runtime


def runtime_bundle(bundle: Path, runtime: str, calib: Optional[str] = None) -> Path:
    """``bundle`` for ``runtime``: itself for its own runtime, else its export (cached)."""
    source = load_bundle(str(bundle))
    if runtime == source.runtime:
        return source.path
    int8 = (source.manifest.get("backend") or {}).get("dtype") == "int8"
    check_runtime(runtime, int8, calib)
    fmt = export_format(runtime, int8)
    calib = calib if fmt in ("ncnn-int8", "mnn-int8") and not int8 else None  # an int8 bundle brings its scales
    return exported_bundle(source.path, fmt, calib)


def exported_bundle(bundle: Path, fmt: str, calib: Optional[str] = None) -> Path:
    """The ``fdq export --format fmt`` of ``bundle`` (on ``calib``), cached by the source's manifest."""
    from fdq.host.export import export_bundle
    from fdq.host.zoo import fdq_home

    key = _key({"source": sha256_file(bundle / MANIFEST), "format": fmt, "calib": _tree(calib)})
    path = fdq_home() / "bundles" / f"{bundle.name}-{fmt}-{key}"
    if _cached(path):
        return path
    print(f"fdq: exporting {bundle.name} as {fmt} into {path}", file=sys.stderr)
    if fmt == "mnn-int8":
        return _export_in_child(bundle, fmt, path, calib)
    return export_bundle(bundle, fmt, path, calib, force=True)


def _export_in_child(bundle: Path, fmt: str, path: Path, calib: Optional[str]) -> Path:
    """``fdq export`` in a child process: MNN's calibration leaves callbacks in its process that hang every
    later MNN conversion there (:mod:`fdq.host.export.mnn`), and a sweep converts again after it."""
    import subprocess

    argv = [sys.executable, "-m", "fdq.host.cli", "export", str(bundle), "--format", fmt, "--out", str(path),
            "--force", "--quiet", *(["--calib", str(calib)] if calib else [])]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"fdq export exited with {done.returncode}"]
        raise CacheError(lines[-1].removeprefix("fdq: error: "))
    return path


def imported_bundle(folder: str, long_side: int) -> Path:
    """Imported float bundle ``folder`` at input long side ``long_side``: itself at its own side, else the
    same import at that side (cached)."""
    from fdq.host.export.imported import is_imported
    from fdq.host.importer import at_long_side, refuse_fixed
    from fdq.host.zoo import fdq_home

    try:
        source = load_bundle(folder)
    except BundleError as exc:
        raise CacheError(str(exc)) from None
    if not is_imported(source) or source.runtime != "onnxruntime":
        raise CacheError(f"{folder}: not a float bundle written by fdq import")
    if source.long_side == long_side:
        return source.path
    refuse_fixed(source, long_side)
    key = _key({"source": sha256_file(source.path / MANIFEST), "long_side": long_side})
    path = fdq_home() / "bundles" / f"{source.path.name}-at{long_side}-{key}"
    if _cached(path):
        return path
    print(f"fdq: taking imported {source.path.name} at long side {long_side} into {path}", file=sys.stderr)
    return at_long_side(source, long_side, str(path), force=True)
