"""Every bundle a benchmark makes, as one table of ``fdq`` command lines, and the one way to make them.

A recipe is the ``fdq quantize`` or ``fdq export`` command a user would type, with ``{fields}``
:func:`build` fills in: ``{model}``, ``{side}`` (the long side), ``{backend}`` (an int8 recipe's
engine, given per build), ``{calib}`` and ``{labels}`` (the ``--data`` calibration split),
``{iters}`` and ``{seed}`` (levels 3 and 4), and ``{source}``: the bundle of the recipe an export
starts from, made first for the same model, side and backend. bench_quant's rows are the recipes
with a ``row``; :data:`CONFIGS` names the runtime configurations bench_runtimes, bench_peers and
bench_instructions compare.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchlib.data import Data

from fdq.calibration.quant_api import OBSERVER_NAMES


@dataclass(frozen=True)
class Recipe:
    """How one bundle is made: ``fdq`` arguments without ``--out``, as templates."""

    label: str
    dtype: str                      # fp32, fp16 or int8
    argv: Tuple[str, ...]
    row: Optional[str] = None       # bench_quant's --levels group (fp32, fp16, l1 ... l4); None: an export
    level: int = 0
    source: Optional[str] = None    # the recipe whose bundle {source} names
    observer: Optional[str] = None  # the level-2 rows bench_quant --observers selects

    @property
    def per_backend(self) -> bool:
        """Made once per int8 backend: it takes ``--backend``, or exports a bundle that does."""
        return "{backend}" in self.argv or (self.source is not None and RECIPES[self.source].per_backend)


def _quantize(*options: str) -> Tuple[str, ...]:
    return ("quantize", "--model", "{model}", "--long-side", "{side}", *options)


def _export(fmt: str, *options: str) -> Tuple[str, ...]:
    return ("export", "{source}", "--format", fmt, *options)


_INT8 = ("--backend", "{backend}")
_CALIB = ("--calib", "{calib}", "--labels", "{labels}")
_QAT = (*_INT8, *_CALIB, "--iters", "{iters}", "--seed", "{seed}")

RECIPES: Dict[str, Recipe] = {
    "fp32": Recipe("FP32", "fp32", _quantize("--fp32"), "fp32", 0),
    "fp16": Recipe("fp16 weights", "fp16", _quantize("--level", "1", "--fp16"), "fp16", 1),
    "l1": Recipe("L1 data-free int8", "int8", _quantize("--level", "1", *_INT8), "l1", 1),
    **{f"l2-{o}": Recipe(f"L2 {o}", "int8", _quantize("--level", "2", "--observer", o, *_INT8, *_CALIB), "l2", 2,
                         observer=o) for o in OBSERVER_NAMES},
    "l2-histogram-bc": Recipe("L2 histogram, bias correction", "int8",
                              _quantize("--level", "2", "--bias-correction", *_INT8, *_CALIB), "l2", 2),
    "l2-histogram-per-tensor-nocle": Recipe("L2 histogram, per-tensor, no CLE", "int8",
                                            _quantize("--level", "2", "--per-tensor", "--no-cle", *_INT8, *_CALIB),
                                            "l2", 2),
    "l3": Recipe("L3 QAT + StatAssist + GradBoost", "int8", _quantize("--level", "3", *_QAT), "l3", 3),
    "l3-bc": Recipe("L3 QAT + StatAssist + GradBoost, bias correction", "int8",
                    _quantize("--level", "3", "--bias-correction", *_QAT), "l3", 3),
    "l3-plain": Recipe("L3 QAT (no StatAssist, no GradBoost)", "int8",
                       _quantize("--level", "3", "--no-statassist", "--no-gradboost", *_QAT), "l3", 3),
    "l4": Recipe("L4 distillation QAT", "int8", _quantize("--level", "4", *_QAT), "l4", 4),
    "onnx-fp32": Recipe("ONNX float", "fp32", _export("onnx"), source="fp32"),
    "onnx-int8": Recipe("ONNX int8, calibrated by ONNX Runtime", "int8", _export("onnx-int8", "--calib", "{calib}"),
                        source="fp32"),
    "onnx-int8-l2": Recipe("ONNX int8, the level-2 bundle's own scales", "int8", _export("onnx-int8"),
                           source="l2-histogram"),
    "ncnn-fp32": Recipe("ncnn float", "fp32", _export("ncnn"), source="fp32"),
    "ncnn-int8": Recipe("ncnn int8, calibrated by fdq", "int8", _export("ncnn-int8", "--calib", "{calib}"),
                        source="fp32"),
    "ncnn-int8-l2": Recipe("ncnn int8, the level-2 bundle's own scales", "int8", _export("ncnn-int8"),
                           source="l2-histogram"),
    "mnn-fp32": Recipe("MNN float", "fp32", _export("mnn"), source="fp32"),
    "mnn-int8": Recipe("MNN int8, MNN's calibration", "int8", _export("mnn-int8", "--calib", "{calib}"), source="fp32"),
    "executorch-fp32": Recipe("ExecuTorch float", "fp32", _export("executorch"), source="fp32"),
}

#: runtime configuration -> (recipe, backend): what the runtime benchmarks call each bundle
CONFIGS: Dict[str, Tuple[str, Optional[str]]] = {
    "torchscript-fp32": ("fp32", None),
    "torchscript-int8-x86": ("l2-histogram", "x86"),
    "torchscript-int8-qnnpack": ("l2-histogram", "qnnpack"),
    "onnx-fp32": ("onnx-fp32", None),
    "onnx-int8": ("onnx-int8", None),
    "ncnn-fp32": ("ncnn-fp32", None),
    "ncnn-int8": ("ncnn-int8", None),
    "ncnn-int8-qnnpack": ("ncnn-int8-l2", "qnnpack"),
    "mnn-fp32": ("mnn-fp32", None),
    "mnn-int8": ("mnn-int8", None),
    "executorch-fp32": ("executorch-fp32", None),
    "executorch-int8": ("l2-histogram", "xnnpack"),
}


def config_dtype(config: str) -> str:
    """fp32 or int8: the precision of a runtime configuration's bundle."""
    return RECIPES[CONFIGS[config][0]].dtype


def bundle_dir(key: str, model: str, side: int, work: Path, backend: Optional[str] = None) -> Path:
    """Where :func:`build` puts the bundle of ``key`` (one folder per model, side, recipe and backend)."""
    if RECIPES[key].per_backend and not backend:
        raise ValueError(f"recipe {key} is made per backend: give one")
    return work / f"{model}-{side}-{key}{'-' + backend if RECIPES[key].per_backend else ''}"


def config_dir(config: str, model: str, side: int, work: Path) -> Path:
    """Where the bundle of a runtime configuration is made."""
    key, backend = CONFIGS[config]
    return bundle_dir(key, model, side, work, backend)


def fdq_args(key: str, model: str, side: int, work: Path, data: Data, backend: Optional[str] = None,
             iters: int = 100, seed: int = 0, source: Optional[Path] = None) -> List[str]:
    """The ``fdq`` arguments that make the bundle of ``key``, ``--out`` included."""
    fields = {"model": model, "side": side, "backend": backend, "calib": data.calib_images,
              "labels": data.calib_labels, "iters": iters, "seed": seed, "source": source}
    return [a.format(**fields) for a in RECIPES[key].argv] + ["--out", str(bundle_dir(key, model, side, work, backend))]


def fdq(*args: str, threads: Optional[int] = None) -> None:
    """``fdq ARGS`` in a process of its own, as a user runs it (after an MNN int8 calibration MNN's
    converter cannot run again in the same process); ``threads``: torch's threads there."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "fdq.host.cli", *args], check=True, stdout=subprocess.DEVNULL, env=env)


def build(key: str, model: str, side: int, work: Path, data: Data, backend: Optional[str] = None,
          iters: int = 100, seed: int = 0, threads: Optional[int] = None) -> Path:
    """The bundle of recipe ``key`` under ``work``: made by ``fdq`` (its source first), or reused when
    a complete one is already there."""
    path = bundle_dir(key, model, side, work, backend)
    if not (path / "manifest.yaml").is_file():
        source = RECIPES[key].source
        made = None if source is None else build(source, model, side, work, data, backend, iters, seed, threads)
        started = time.perf_counter()
        fdq(*fdq_args(key, model, side, work, data, backend, iters, seed, made), threads=threads)
        print(f"built {path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def build_config(config: str, model: str, side: int, work: Path, data: Data) -> Path:
    """The bundle of a runtime configuration (:data:`CONFIGS`)."""
    key, backend = CONFIGS[config]
    return build(key, model, side, work, data, backend)
