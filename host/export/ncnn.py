"""``ncnn``: the float model traced and converted by pnnx (fp32 weights), for NCNN.

Of a non-fp32 bundle only when asked (``float_ok``): it is the float model the bundle came from. Two
example inputs of different sizes make every reshape size-generic; the result is checked against
PyTorch at other sizes, and only if that fails is the model converted for one fixed 4:3 input
(``input.fixed_hw``).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from fdq.calibration.progress import line as progress_line
from fdq.device.bundle import Bundle
from fdq.host.bundles import write_bundle
from fdq.host.export.check import OUTPUT_NAMES, OutputSizeMismatch, worst_diffs
from fdq.host.export.inputs import example_hw, verification_inputs
from fdq.host.export.manifest import base_manifest, float_what, identity

NCNN_PARAM = "model.ncnn.param"
NCNN_BIN = "model.ncnn.bin"
PathLike = Union[str, Path]


def _pnnx_executable() -> str:
    try:
        import pnnx  # the pip package ships the converter binary

        exe = getattr(pnnx, "EXEC_PATH", None)
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("pnnx")
    if exe:
        return exe
    raise RuntimeError("ncnn export needs pnnx (pip install pnnx)")


def pnnx_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("pnnx")
    except Exception:
        return None


def run_pnnx(model: nn.Module, folder: Path, work: Path, shape: Tuple[int, int],
             shape2: Optional[Tuple[int, int]], channels: int = 3) -> None:
    """Trace ``model`` at ``shape`` (``channels`` in) and convert it; the ncnn files land in ``folder``, the rest in ``work``."""
    traced_path = work / "model.pt"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), torch.zeros(1, channels, *shape), check_trace=False)
    traced.save(str(traced_path))
    convert_with_pnnx(traced_path, folder, work, shape, shape2, channels)


def convert_with_pnnx(source: Path, folder: Path, work: Path, shape: Tuple[int, int],
                      shape2: Optional[Tuple[int, int]], channels: int = 3) -> None:
    """pnnx on a TorchScript or ONNX file in ``work`` (pnnx writes its intermediates beside it), with
    example inputs ``shape`` and ``shape2``; the ncnn pair lands in ``folder``."""
    for name in (NCNN_PARAM, NCNN_BIN):
        (folder / name).unlink(missing_ok=True)
    cmd = [_pnnx_executable(), str(source), f"inputshape=[1,{channels},{shape[0]},{shape[1]}]f32", "fp16=0",
           f"ncnnparam={folder / NCNN_PARAM}", f"ncnnbin={folder / NCNN_BIN}",
           f"ncnnpy={work / 'model_ncnn.py'}", f"pnnxparam={work / 'model.pnnx.param'}",
           f"pnnxbin={work / 'model.pnnx.bin'}", f"pnnxpy={work / 'model_pnnx.py'}",
           f"pnnxonnx={work / 'model.pnnx.onnx'}"]
    if shape2:
        cmd.append(f"inputshape2=[1,{channels},{shape2[0]},{shape2[1]}]f32")
    with progress_line(f"fdq: pnnx converting to ncnn at {shape[0]}x{shape[1]}"):
        proc = subprocess.run(cmd, cwd=str(work), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (folder / NCNN_PARAM).is_file() or not (folder / NCNN_BIN).is_file():
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"pnnx failed (exit {proc.returncode}): {tail}")


def ncnn_blob_names(param_path: Path, n_outputs: int = len(OUTPUT_NAMES)) -> Tuple[str, List[str]]:
    """(input blob, output blobs in order) of an ncnn .param: the Input layer's blob, and the
    ``n_outputs`` blobs that no layer consumes (pnnx names them out0, out1, ... in the model's output order)."""
    lines = param_path.read_text(encoding="utf-8").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise RuntimeError(f"{param_path} is not an ncnn param file")
    produced: List[str] = []
    consumed = set()
    inputs: List[str] = []
    for line in lines[2:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        kind, n_in, n_out = fields[0], int(fields[2]), int(fields[3])
        bottoms = fields[4:4 + n_in]
        tops = fields[4 + n_in:4 + n_in + n_out]
        consumed.update(bottoms)
        produced.extend(tops)
        if kind == "Input":
            inputs.extend(tops)
    outputs = [b for b in produced if b not in consumed and b not in inputs]

    def order(name: str) -> Tuple[int, str]:
        digits = "".join(ch for ch in name if ch.isdigit())
        return (int(digits) if digits else 1 << 30, name)

    outputs.sort(key=order)
    if len(inputs) != 1 or len(outputs) != n_outputs:
        raise RuntimeError(f"{param_path}: expected 1 input and {n_outputs} outputs, found "
                           f"inputs {inputs} and outputs {outputs}")
    return inputs[0], outputs


def _ncnn_outputs(folder: Path, blob: np.ndarray, input_name: str, outputs: List[str]) -> Tuple[np.ndarray, ...]:
    from fdq.device.runtimes import open_ncnn, run_ncnn

    net = open_ncnn(str(folder / NCNN_PARAM), str(folder / NCNN_BIN), threads=1, fp32=True)
    return tuple(run_ncnn(net, input_name, outputs, blob))


def _verify_ncnn(model: nn.Module, folder: Path, blobs: List[np.ndarray], input_name: str,
                 outputs: List[str]) -> Optional[Dict[str, float]]:
    """Max abs differences vs PyTorch over ``blobs``; None if some output size is wrong."""
    try:
        return worst_diffs(model, blobs, lambda blob: _ncnn_outputs(folder, blob, input_name, outputs))
    except OutputSizeMismatch:
        return None


def export_ncnn(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
                source: Dict[str, Any], force: bool) -> Path:
    """The ncnn bundle of the float ``model`` at ``out``: size-generic if pnnx allows, else for one input size."""
    import ncnn

    h, w = example_hw(long_side)
    shape2 = (2 * h, 2 * w)  # every pyramid level gets a different cell count, so no reshape stays fixed
    manifest = base_manifest(bundle, "ncnn", "fp32", long_side)
    export: Dict[str, Any] = {"tool": "pnnx", "pnnx_version": pnnx_version(), "ncnn_version": str(ncnn.__version__),
                              "torch_version": str(torch.__version__), "fp16_weights": False,
                              "example_inputs": [[1, 3, h, w], [1, 3, *shape2]]}
    io: Dict[str, Any] = {}

    def write_files(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="fdq-pnnx-") as tmp:
            work = Path(tmp)
            run_pnnx(model, folder, work, (h, w), shape2)
            input_name, outputs = ncnn_blob_names(folder / NCNN_PARAM)
            blobs = verification_inputs(long_side)
            diffs = _verify_ncnn(model, folder, blobs, input_name, outputs)
            if diffs is None:  # some reshape stayed size-specific: convert for one input size instead
                run_pnnx(model, folder, work, (h, w), None)
                input_name, outputs = ncnn_blob_names(folder / NCNN_PARAM)
                blobs = blobs[:1]
                diffs = _verify_ncnn(model, folder, blobs, input_name, outputs)
                if diffs is None:
                    raise RuntimeError("pnnx output sizes differ from PyTorch even at the traced input size")
                manifest["input"]["fixed_hw"] = [h, w]
                export["example_inputs"] = [[1, 3, h, w]]
            else:
                manifest["input"]["dynamic_hw"] = True
        for name in (NCNN_PARAM, NCNN_BIN):  # nothing but the ncnn pair belongs to the bundle
            if not (folder / name).is_file():
                raise RuntimeError(f"pnnx did not write {name}")
        io.update({"input": input_name, "outputs": dict(zip(OUTPUT_NAMES, outputs))})
        export["verification"] = {"inputs": [list(b.shape) for b in blobs], "max_abs_diff_vs_torch": diffs}

    manifest.update({"quantization": {"level": "float", "weights": weights_info}, "calibration": None,
                     "io": io, "exported_from": source, "export": export,
                     "entry": {"param": NCNN_PARAM, "model": NCNN_BIN}})
    identity(manifest, export, None, float_what(bundle))
    # ``io`` and ``export`` are filled while the files are written, before write_bundle dumps the manifest.
    return write_bundle(str(out), manifest, write_files, force=force)
