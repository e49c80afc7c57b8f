"""ExecuTorch bundles: a float or PT2E-int8 model lowered to the XNNPACK delegate, as a ``.pte`` program.

``torch.export`` with dynamic height and width (from :data:`MIN_SIDE` to twice the long side: the
program's memory plan holds the largest), then ``to_edge_transform_and_lower`` with
``XnnpackPartitioner``. The int8 model comes from :func:`fdq.calibration.quant_api.quantize_pt2e_xnnpack`
(``fdq quantize --level 2 --backend xnnpack``); the float one from ``fdq export --format executorch``.
Every program is checked through the runner's own ExecuTorch code: float against PyTorch, int8
against the PT2E model it was lowered from (the same arithmetic in reference form) and against float.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from fdq.calibration.progress import line as progress_line
from fdq.device.bundle import Bundle
from fdq.device.spec import DetectorSpec
from fdq.host.bundles import write_bundle
from fdq.host.export.check import max_diffs, torch_outputs, worst_diffs
from fdq.host.export.inputs import verification_inputs
from fdq.host.export.manifest import float_what

PTE_FILE = "model.pte"
REPORT_FILE = "report.json"
# torch.export proves the model's shapes for sides above 64 only: the stride-64 level must have two cells.
MIN_SIDE = 65
PathLike = Union[str, Path]


def executorch_version() -> Optional[str]:
    try:
        from executorch.version import __version__

        return str(__version__)
    except ImportError:
        return None


def export_inputs(long_side: int) -> Tuple[Tuple[torch.Tensor, ...], Dict[str, Any], Tuple[int, int]]:
    """(example input, dynamic shapes, (min side, max side)) of a program for ``long_side``."""
    from torch.export import Dim

    high = max(MIN_SIDE + 1, 2 * int(long_side))
    height, width = Dim("height", min=MIN_SIDE, max=high), Dim("width", min=MIN_SIDE, max=high)
    example = (torch.zeros(1, 3, max(MIN_SIDE, long_side * 3 // 4), max(MIN_SIDE, long_side)),)
    return example, {"x": {2: height, 3: width}}, (MIN_SIDE, high)


def lower(model: nn.Module, long_side: int) -> bytes:
    """The ``.pte`` program of ``model`` (float, or a PT2E int8 graph) on the XNNPACK delegate."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise RuntimeError(f"ExecuTorch export needs executorch and torchao (install fdq's executorch extra, "
                           f"see scripts/install_runtimes.sh): {exc}") from None
    example, dynamic, _ = export_inputs(long_side)
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _pte_runner(path: Path):
    from fdq.device.runtimes import open_executorch

    method = open_executorch(str(path), threads=1)
    return lambda blob: [t.numpy() for t in method.execute([torch.from_numpy(np.ascontiguousarray(blob))])]


def write_executorch_bundle(program_model: nn.Module, float_model: nn.Module, spec: DetectorSpec, long_side: int,
                            out: PathLike, *, dtype: str, manifest: Dict[str, Any],
                            report: Optional[Dict[str, Any]] = None, summary: Optional[str] = None,
                            force: bool = False) -> Path:
    """Lower ``program_model`` and write it as an ``executorch`` bundle; ``manifest`` adds its own fields
    (quantization, calibration, provenance) to the common ones; ``summary``: the line ``fdq export`` prints."""
    _, _, (low, high) = export_inputs(long_side)
    check: Dict[str, Any] = {"tool": "torch.export + executorch.exir.to_edge_transform_and_lower (XnnpackPartitioner)",
                             "executorch_version": executorch_version(), "torch_version": str(torch.__version__),
                             "summary": summary}

    def write_files(folder: Path) -> None:
        target = folder / PTE_FILE
        with progress_line("fdq: ExecuTorch: torch.export and lowering to XNNPACK"):
            target.write_bytes(lower(program_model, long_side))
        with progress_line("fdq: ExecuTorch: checking the program against PyTorch"):
            blobs = verification_inputs(long_side)
            run = _pte_runner(target)
            check["verification"] = {"inputs": [list(b.shape) for b in blobs],
                                     "max_abs_diff_vs_torch": worst_diffs(program_model, blobs, run)}
            if dtype == "int8":  # the PT2E graph above is the int8 arithmetic; this is how far it is from float
                check["int8_max_abs_diff_vs_float"] = max_diffs(torch_outputs(float_model, blobs[0]), run(blobs[0]))
        (folder / REPORT_FILE).write_text(json.dumps(report or {}, indent=2) + "\n", encoding="utf-8")

    full = {
        "model": {"name": spec.name, "spec": spec.to_dict()},
        "input": {"long_side": int(long_side), "mean_bgr": list(spec.mean_bgr), "color": "BGR", "layout": "NCHW",
                  "dynamic_hw": True, "min_hw": low, "max_hw": high},
        "runtime": "executorch",
        "backend": {"engine": "xnnpack", "dtype": dtype},
        **manifest,
        "torch_version": str(torch.__version__),
        "export": check,
        "entry": {"model": PTE_FILE, "report": REPORT_FILE},
    }
    return write_bundle(str(out), full, write_files, force=force)


def export_executorch(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike,
                      long_side: int, source: Dict[str, Any], force: bool) -> Path:
    """``fdq export --format executorch``: the bundle's float model as an XNNPACK fp32 program."""
    manifest = {"quantization": {"level": "float", "weights": weights_info, "params_from": None},
                "calibration": None, "exported_from": source}
    return write_executorch_bundle(model.eval(), model, bundle.spec, long_side, out, dtype="fp32",
                                   manifest=manifest, summary=f"executorch fp32: {float_what(bundle)}", force=force)
