"""Export a bundle's model to the other board runtimes: ONNX Runtime (fp32, int8 QDQ) and NCNN (fp32).

:func:`export_bundle` writes each export as its own verified bundle (``fdq.host.bundles.write_bundle``)
that ``python -m fdq.device.run`` measures like any other. Every export says what it is: its manifest's
``runtime`` and ``backend.dtype``, ``quantization.params_from`` (``source bundle``, ``onnxruntime
calibration`` or None for a float model) and ``export.summary``, the line ``fdq export`` prints.

* ``torchscript``: the bundle's files re-saved under a new bundle (same manifest, ``exported_from`` added).
* ``onnx``: the FLOAT model, opset 17, input ``input`` (1, 3, H, W) with dynamic H and W, outputs
  ``loc`` / ``conf`` (softmax) / ``landm``. Of an fp16 or int8 bundle only when asked (``float_ok``):
  it is the float model the bundle came from, not the bundle's model.
* ``onnx-int8`` of an int8 bundle: that bundle's own TorchScript int8 graph rewritten as QDQ ONNX
  (:mod:`fdq.host.onnx_qdq`): the same int8 weights, weight scales, activation scales and zero
  points, checked against the bundle on three input sizes.
* ``onnx-int8`` of a float bundle: the float ONNX model quantized by ``onnxruntime.quantization.
  quantize_static``, QDQ format, per-channel uint8 weights, uint8 activations calibrated (MinMax) on
  ``calib_dir`` images preprocessed exactly like inference (``resize_image`` + ``normalize``); the
  manifest records their count and the sha256 of their list.
* ``ncnn``: the float model traced and converted by pnnx (fp32 weights), the same rule as ``onnx``
  for non-fp32 bundles. Two example inputs of different sizes make every reshape size-generic; the
  result is checked against PyTorch at other sizes, and only if that fails is the model converted
  for one fixed 4:3 input (``input.fixed_hw``).

The float model comes from the weights the bundle records (``quantization.weights``: a path and/or
sha256), else from the zoo (``fdq.host.zoo.resolve_weights``); ``weights=`` overrides both.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from fdq.device.bundle import MANIFEST, Bundle, BundleError, load_bundle, sha256_file
from fdq.device.images import list_images, read_image
from fdq.device.preprocess import normalize, resize_image
from fdq.device.outputs import check_folder_output
from fdq.host.bundles import write_bundle

FORMATS = ("torchscript", "onnx", "onnx-int8", "ncnn", "ncnn-int8", "mnn", "mnn-int8", "executorch")
FLOAT_FORMATS = ("onnx", "ncnn", "mnn", "executorch")  # the float model, whatever the bundle's precision
_ALIASES = {"onnx_int8": "onnx-int8", "onnx:int8": "onnx-int8", "onnx-qdq": "onnx-int8", "onnx_qdq": "onnx-int8"}
ONNX_FILE = "model.onnx"
NCNN_PARAM = "model.ncnn.param"
NCNN_BIN = "model.ncnn.bin"
OPSET = 17
OUTPUT_NAMES = ("loc", "conf", "landm")
_MANIFEST_OWN = ("schema", "files", "fdq_version", "created")
PathLike = Union[str, Path]


def _fail(message: str) -> ValueError:
    return ValueError(message)


# --------------------------------------------------------------------------------------------------
# Inputs: the float model and the calibration images
# --------------------------------------------------------------------------------------------------


def _recorded_weights(bundle: Bundle) -> Tuple[Optional[str], Optional[str]]:
    q = bundle.manifest.get("quantization")
    w = q.get("weights") if isinstance(q, dict) else None
    if isinstance(w, str):
        return w, None
    if isinstance(w, dict):
        return (str(w["path"]) if w.get("path") else None), (str(w["sha256"]) if w.get("sha256") else None)
    return None, None


def float_weights(bundle: Bundle, weights: Optional[PathLike] = None) -> Tuple[Path, Dict[str, Any]]:
    """The float weights file for ``bundle`` and a record of where it came from."""
    from fdq.host import zoo

    name = str(bundle.manifest["model"]["name"])
    if weights is not None:
        path = zoo.resolve_weights(name, str(weights))
        return path, {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "source": "argument"}
    rec_path, rec_sha = _recorded_weights(bundle)
    if rec_path and Path(rec_path).is_file():
        digest = sha256_file(Path(rec_path))
        if rec_sha and digest != rec_sha:
            raise _fail(f"weights {rec_path} recorded in bundle {bundle.path} no longer match their sha256 {rec_sha}")
        return Path(rec_path), {"path": str(Path(rec_path).resolve()), "sha256": digest, "source": "bundle manifest"}
    if rec_sha:
        for entry in zoo.ZOO.values():
            if entry.sha256 == rec_sha:
                path = zoo.fetch(entry.name)
                return path, {"path": str(path), "sha256": rec_sha, "source": f"zoo {entry.name} (by sha256)"}
        raise _fail(f"bundle {bundle.path} records weights {rec_path or ''} sha256 {rec_sha[:12]}... that are "
                    f"neither on disk nor in the zoo; pass weights=")
    if rec_path:
        raise _fail(f"weights {rec_path} recorded in bundle {bundle.path} not found; pass weights=")
    path = zoo.resolve_weights(name, None)
    return path, {"path": str(path), "sha256": sha256_file(path), "source": f"zoo {name}"}


def float_model(bundle: Bundle, weights: Optional[PathLike] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The float eager model a bundle was made from (its spec must match the bundle's)."""
    from fdq.models import SPECS, load_model

    name = str(bundle.manifest["model"]["name"])
    if name not in SPECS:
        raise _fail(f"bundle {bundle.path} holds model {name!r}, which fdq.models does not define")
    if SPECS[name].to_dict() != bundle.spec.to_dict():
        raise _fail(f"bundle {bundle.path}: its {name} spec differs from fdq.models' (anchors or steps changed)")
    path, info = float_weights(bundle, weights)
    return load_model(name, path), info


def calibration_images(calib_dir: PathLike, limit: Optional[int] = None) -> Tuple[List[Path], Dict[str, Any]]:
    """Sorted calibration image paths and their record (count, sha256 of the sorted list and contents)."""
    try:
        items = list_images(str(calib_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(f"calibration: {exc}") from None
    if limit is not None:
        if limit < 1:
            raise _fail(f"calibration image limit must be >= 1, got {limit}")
        items = items[:limit]
    root = Path(calib_dir)
    rel = [p.relative_to(root).as_posix() for _, p in items]
    content = hashlib.sha256()
    for _, p in items:
        content.update(bytes.fromhex(sha256_file(p)))
    info = {"images": len(items), "dir": str(root.resolve()),
            "list_sha256": hashlib.sha256("\n".join(rel).encode("utf-8")).hexdigest(),
            "content_sha256": content.hexdigest(),
            "list_note": "sha256 of the sorted relative paths joined by newlines; content: of the files' sha256s in that order"}
    return [p for _, p in items], info


def preprocessed(paths: List[Path], long_side: int, mean_bgr) -> Iterator[np.ndarray]:
    """Network inputs exactly as the runner makes them (resize to the long side, subtract the mean, NCHW)."""
    for path in paths:
        resized, _ = resize_image(read_image(path), long_side)
        yield normalize(resized, mean_bgr)


# --------------------------------------------------------------------------------------------------
# Per-format writers
# --------------------------------------------------------------------------------------------------


def _example_hw(long_side: int) -> Tuple[int, int]:
    return max(8, long_side * 3 // 4), long_side


def _check_shapes(ref: Tuple[np.ndarray, ...], got: Tuple[np.ndarray, ...]) -> bool:
    return all(np.asarray(g).reshape(-1).size == np.asarray(r).reshape(-1).size for r, g in zip(ref, got))


def _max_diffs(ref: Tuple[np.ndarray, ...], got: Tuple[np.ndarray, ...]) -> Dict[str, float]:
    return {n: float(np.abs(np.asarray(g, np.float32).reshape(-1) - np.asarray(r, np.float32).reshape(-1)).max())
            for n, r, g in zip(OUTPUT_NAMES, ref, got)}


def _torch_outputs(model: nn.Module, blob: np.ndarray) -> Tuple[np.ndarray, ...]:
    with torch.inference_mode():
        return tuple(t.numpy() for t in model(torch.from_numpy(blob)))


def _verification_inputs(long_side: int) -> List[np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = _example_hw(long_side)
    shapes = [(h, w), (w, max(8, w * 2 // 3)), (max(8, h - 37), max(8, w - 13))]
    return [(rng.standard_normal((1, 3, a, b)) * 60).astype(np.float32) for a, b in shapes]


def _export_onnx_float(model: nn.Module, path: Path, long_side: int) -> None:
    h, w = _example_hw(long_side)
    dynamic = {"input": {2: "height", 3: "width"}}
    dynamic.update({name: {1: "anchors"} for name in OUTPUT_NAMES})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs: Dict[str, Any] = dict(input_names=["input"], output_names=list(OUTPUT_NAMES), opset_version=OPSET,
                                      dynamic_axes=dynamic, do_constant_folding=True)
        try:
            torch.onnx.export(model.eval(), (torch.zeros(1, 3, h, w),), str(path), dynamo=False, **kwargs)
        except TypeError:  # torch < 2.5 has no ``dynamo`` argument (and uses this exporter anyway)
            torch.onnx.export(model.eval(), (torch.zeros(1, 3, h, w),), str(path), **kwargs)


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _verify_onnx(model: nn.Module, path: Path, long_side: int) -> Dict[str, Any]:
    session = _ort_session(path)
    worst: Dict[str, float] = {n: 0.0 for n in OUTPUT_NAMES}
    for blob in _verification_inputs(long_side):
        ref = _torch_outputs(model, blob)
        got = tuple(session.run(list(OUTPUT_NAMES), {"input": blob}))
        if not _check_shapes(ref, got):
            raise RuntimeError(f"ONNX export of {path.name} gives other output sizes than PyTorch at input "
                               f"{blob.shape[2]}x{blob.shape[3]}")
        for k, v in _max_diffs(ref, got).items():
            worst[k] = max(worst[k], v)
    return {"inputs": [list(b.shape) for b in _verification_inputs(long_side)], "max_abs_diff_vs_torch": worst}


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over preprocessed calibration images."""

    def __init__(self, paths: List[Path], long_side: int, mean_bgr) -> None:
        self._make = lambda: preprocessed(paths, long_side, mean_bgr)
        self._it = self._make()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        blob = next(self._it, None)
        return None if blob is None else {"input": blob}

    def rewind(self) -> None:
        self._it = self._make()


def _quantize_onnx(float_path: Path, out_path: Path, paths: List[Path], long_side: int, mean_bgr,
                   overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``quantize_static`` with fdq's settings; ``overrides`` (quantize_static keywords) replace some of
    them, for ``scripts/bench_ort_int8.py``'s comparison of the alternatives."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    reader_cls = type("FdqCalibrationReader", (_Reader, CalibrationDataReader), {})
    reader = reader_cls(paths, long_side, mean_bgr)
    pre_processed = False
    try:  # shape inference + graph optimisation first, as onnxruntime recommends for static quantization
        from onnxruntime.quantization import quant_pre_process

        pre_path = float_path.with_name(float_path.stem + ".pre.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(pre_path))
        float_path, pre_processed = pre_path, True
    except Exception:  # an optional step: quantize the plain export if it fails
        pass
    # uint8 weights and activations: ONNX Runtime's x86 kernels for int8 ones (s8s8, u8s8) sum pairs of
    # products in saturating int16 on AVX2 CPUs without VNNI and lose whole AP points; u8u8 is exact.
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    settings.update(overrides or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(out_path), reader, **settings)
    return {"tool": "onnxruntime.quantization.quantize_static", "pre_processed": pre_processed,
            "format": settings["quant_format"].name, "per_channel": settings["per_channel"],
            "reduce_range": settings["reduce_range"], "activation_type": settings["activation_type"].name,
            "weight_type": settings["weight_type"].name, "calibrate_method": settings["calibrate_method"].name}


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


def _pnnx_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("pnnx")
    except Exception:
        return None


def _run_pnnx(model: nn.Module, folder: Path, work: Path, shape: Tuple[int, int],
              shape2: Optional[Tuple[int, int]]) -> None:
    """Trace ``model`` at ``shape`` and convert it; the ncnn files land in ``folder``, the rest in ``work``."""
    for name in (NCNN_PARAM, NCNN_BIN):
        (folder / name).unlink(missing_ok=True)
    traced_path = work / "model.pt"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, *shape), check_trace=False)
    traced.save(str(traced_path))
    cmd = [_pnnx_executable(), str(traced_path), f"inputshape=[1,3,{shape[0]},{shape[1]}]f32", "fp16=0",
           f"ncnnparam={folder / NCNN_PARAM}", f"ncnnbin={folder / NCNN_BIN}",
           f"ncnnpy={work / 'model_ncnn.py'}", f"pnnxparam={work / 'model.pnnx.param'}",
           f"pnnxbin={work / 'model.pnnx.bin'}", f"pnnxpy={work / 'model_pnnx.py'}",
           f"pnnxonnx={work / 'model.pnnx.onnx'}"]
    if shape2:
        cmd.append(f"inputshape2=[1,3,{shape2[0]},{shape2[1]}]f32")
    proc = subprocess.run(cmd, cwd=str(work), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (folder / NCNN_PARAM).is_file() or not (folder / NCNN_BIN).is_file():
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"pnnx failed (exit {proc.returncode}): {tail}")


def ncnn_blob_names(param_path: Path) -> Tuple[str, List[str]]:
    """(input blob, output blobs in order) of an ncnn .param: the Input layer's blob, and the blobs
    that no layer consumes (pnnx names them out0, out1, ... in the model's output order)."""
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
    if len(inputs) != 1 or len(outputs) != len(OUTPUT_NAMES):
        raise RuntimeError(f"{param_path}: expected 1 input and {len(OUTPUT_NAMES)} outputs, found "
                           f"inputs {inputs} and outputs {outputs}")
    return inputs[0], outputs


def _ncnn_outputs(folder: Path, blob: np.ndarray, input_name: str, outputs: List[str]) -> Tuple[np.ndarray, ...]:
    from fdq.device.runtimes import open_ncnn, run_ncnn

    net = open_ncnn(str(folder / NCNN_PARAM), str(folder / NCNN_BIN), threads=1, fp32=True)
    return tuple(run_ncnn(net, input_name, outputs, blob))


def _verify_ncnn(model: nn.Module, folder: Path, blobs: List[np.ndarray], input_name: str,
                 outputs: List[str]) -> Optional[Dict[str, float]]:
    """Max abs differences vs PyTorch over ``blobs``; None if some output size is wrong."""
    worst = {n: 0.0 for n in OUTPUT_NAMES}
    for blob in blobs:
        ref = tuple(r[0] for r in _torch_outputs(model, blob))
        got = _ncnn_outputs(folder, blob, input_name, outputs)
        if not _check_shapes(ref, got):
            return None
        for k, v in _max_diffs(ref, got).items():
            worst[k] = max(worst[k], v)
    return worst


# --------------------------------------------------------------------------------------------------
# What an export is: runtime, precision, where its quantization parameters came from
# --------------------------------------------------------------------------------------------------


def precision(bundle: Bundle) -> str:
    """The arithmetic a bundle's model computes in: ``fp32``, ``fp16`` or ``int8``."""
    return str((bundle.manifest.get("backend") or {}).get("dtype") or "fp32")


def _label(bundle: Bundle) -> str:
    engine = f" ({bundle.engine})" if bundle.engine else ""
    return f"{precision(bundle)} {bundle.runtime} bundle {bundle.path.resolve()}{engine}"


def _identity(manifest: Dict[str, Any], export: Dict[str, Any], params_from: Optional[str], what: str) -> None:
    """Record what the export is, where a reader looks first: the one-line summary the CLI prints,
    and ``quantization.params_from`` (``source bundle``, ``onnxruntime calibration`` or None for float)."""
    manifest["quantization"]["params_from"] = params_from
    export["summary"] = f"{manifest['runtime']} {manifest['backend']['dtype']}: {what}"


def summary(bundle_dir: PathLike) -> str:
    """The one line an export's manifest records about what it is."""
    return str(load_bundle(str(bundle_dir), verify=False).manifest["export"]["summary"])


# --------------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------------


def _base_manifest(bundle: Bundle, runtime: str, dtype: str, long_side: int) -> Dict[str, Any]:
    spec = bundle.spec
    return {
        "model": {"name": bundle.manifest["model"]["name"], "spec": spec.to_dict()},
        "input": {"long_side": int(long_side), "mean_bgr": list(spec.mean_bgr), "color": "BGR", "layout": "NCHW"},
        "runtime": runtime,
        "backend": {"engine": None, "dtype": dtype},
    }


def _source_record(bundle: Bundle) -> Dict[str, Any]:
    backend = bundle.manifest.get("backend") or {}
    return {"path": str(bundle.path.resolve()), "runtime": bundle.runtime, "dtype": backend.get("dtype"),
            "engine": backend.get("engine"),
            "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest()}


def _check_request(bundle: Bundle, fmt: str, calib_dir: Optional[PathLike], float_ok: bool) -> None:
    """Refuse, in one line, an export that would not be the model it says it is."""
    source = precision(bundle)
    if fmt in FLOAT_FORMATS and source != "fp32" and not float_ok:
        better = "use --format onnx-int8 for the int8 model, or " if source == "int8" else ""
        raise _fail(f"bundle {bundle.path} is {source}: --format {fmt} writes an fp32 model (the float weights it "
                    f"came from), not this model; {better}add --float to export that float model (see --help)")
    if float_ok and fmt not in FLOAT_FORMATS:
        raise _fail(f"--float applies to the float formats {', '.join(FLOAT_FORMATS)}, not {fmt} (see --help)")
    if fmt == "ncnn-int8":
        from fdq.host.export_ncnn_int8 import check_request

        return check_request(bundle, calib_dir)
    if fmt == "mnn-int8":
        if calib_dir is None:
            raise _fail("mnn-int8 export needs --calib DIR: MNN calibrates its int8 ranges on those images "
                        "(see --help)")
        return
    if fmt == "onnx-int8" and source == "int8":
        if calib_dir is not None:
            raise _fail(f"onnx-int8 of int8 bundle {bundle.path} carries that bundle's own scales and zero points: "
                        "drop --calib (nothing is recalibrated)")
    elif fmt == "onnx-int8" and calib_dir is None:
        raise _fail(f"onnx-int8 of {source} bundle {bundle.path} needs --calib DIR: ONNX Runtime calibrates "
                    "its int8 scales on those images (see --help)")
    elif fmt != "onnx-int8" and calib_dir is not None:
        raise _fail(f"--calib is only used by onnx-int8, ncnn-int8 and mnn-int8, not {fmt}")


def export_bundle(bundle_dir: PathLike, fmt: str, out: PathLike, calib_dir: Optional[PathLike] = None, *,
                  weights: Optional[PathLike] = None, calib_limit: Optional[int] = None, force: bool = False,
                  float_ok: bool = False, keep_float: Sequence[str] = ()) -> Path:
    """Export the model of bundle ``bundle_dir`` as a new ``fmt`` bundle at ``out``; returns its path.

    ``fmt``: ``torchscript`` (a copy), ``onnx`` or ``ncnn`` (fp32; of a non-fp32 bundle only with
    ``float_ok``, since that is the float model it came from) or ``onnx-int8`` (of an int8 bundle: its
    own scales and zero points, no ``calib_dir``; of a float bundle: recalibrated by ONNX Runtime on
    ``calib_dir``). ``weights`` overrides the float weights the bundle records; ``calib_limit`` uses
    only the first N calibration images (sorted). Bad input raises ``ValueError`` with one line,
    before anything is written. The manifest's ``export.summary`` says what the export is. ``mnn`` and
    ``mnn-int8`` (on ``calib_dir``): :mod:`fdq.host.export_mnn`; ``executorch`` (fp32 XNNPACK program):
    :mod:`fdq.host.export_executorch`; ``ncnn-int8`` (``keep_float``: layers left fp32):
    :mod:`fdq.host.export_ncnn_int8`.
    """
    fmt_key = _ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if fmt_key not in FORMATS:
        raise _fail(f"unknown export format {fmt!r} (choose from: {', '.join(FORMATS)})")
    try:
        bundle = load_bundle(str(bundle_dir))
    except BundleError as exc:
        raise _fail(str(exc)) from None
    if Path(out).resolve() == bundle.path.resolve():
        raise _fail(f"export target {out} is the source bundle itself")
    _check_request(bundle, fmt_key, calib_dir, float_ok)
    if keep_float and fmt_key != "ncnn-int8":
        raise _fail(f"--keep-float applies to ncnn-int8, not {fmt_key}")
    check_folder_output(out, force)
    long_side = bundle.long_side
    source = _source_record(bundle)

    if fmt_key == "torchscript":
        return _resave(bundle, out, source, force)
    if fmt_key == "onnx-int8" and precision(bundle) == "int8":
        return _export_onnx_of_int8(bundle, out, long_side, source, force)
    model, weights_info = float_model(bundle, weights)
    if fmt_key in ("mnn", "mnn-int8"):
        from fdq.host.export_mnn import export_mnn

        calib = calibration_images(calib_dir, calib_limit) if fmt_key == "mnn-int8" else None  # type: ignore[arg-type]
        return export_mnn(bundle, model, weights_info, out, long_side, source, calib, force)
    if fmt_key == "ncnn-int8":
        from fdq.host.export_ncnn_int8 import export_ncnn_int8

        calib = calibration_images(calib_dir, calib_limit) if calib_dir is not None else None
        return export_ncnn_int8(bundle, model, weights_info, out, long_side, source, calib, keep_float, force)
    if fmt_key == "executorch":
        from fdq.host.export_executorch import export_executorch

        return export_executorch(bundle, model, weights_info, out, long_side, source, force)
    if fmt_key in ("onnx", "onnx-int8"):
        return _export_onnx(bundle, model, weights_info, out, long_side, source,
                            calib_dir if fmt_key == "onnx-int8" else None, calib_limit, force)
    return _export_ncnn(bundle, model, weights_info, out, long_side, source, force)


def _float_what(bundle: Bundle) -> str:
    if precision(bundle) == "fp32":
        return f"the float model of {_label(bundle)}"
    return f"float model of {_label(bundle)} (its float weights, not its {precision(bundle)} model)"


def _resave(bundle: Bundle, out: PathLike, source: Dict[str, Any], force: bool) -> Path:
    manifest = {k: v for k, v in bundle.manifest.items() if k not in _MANIFEST_OWN}
    manifest["quantization"] = dict(manifest.get("quantization") or {})
    manifest["exported_from"] = source
    export: Dict[str, Any] = {"tool": "copy"}
    manifest["export"] = export
    int8 = precision(bundle) == "int8"
    _identity(manifest, export, "source bundle" if int8 else None,
              f"a verified copy of {_label(bundle)}" + (", with its own scales and zero points" if int8 else ""))
    names = list((bundle.manifest.get("files") or {}).keys())

    def write_files(folder: Path) -> None:
        for name in names:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle.path / name, target)

    return write_bundle(str(out), manifest, write_files, force=force)


def _image_inputs(long_side: int, mean_bgr) -> List[np.ndarray]:
    """Blobs of random 8-bit images at the verification sizes: integer-valued like every real input,
    so both models quantize the input identically (noise would flip input roundings at ties)."""
    rng = np.random.default_rng(0)
    return [normalize(rng.integers(0, 256, (b.shape[2], b.shape[3], 3), dtype=np.uint8), mean_bgr)
            for b in _verification_inputs(long_side)]


def _verify_against_bundle(bundle: Bundle, path: Path, long_side: int) -> Dict[str, Any]:
    """Max abs differences between the ONNX model and the source bundle as the runner runs it."""
    from fdq.device.runtimes import load_inference, split_outputs

    reference, session = load_inference(bundle, threads=1), _ort_session(path)
    worst = {n: 0.0 for n in OUTPUT_NAMES}
    blobs = _image_inputs(long_side, bundle.spec.mean_bgr)
    for blob in blobs:
        ref = reference(blob)
        got = split_outputs(*session.run(list(OUTPUT_NAMES), {"input": blob}))
        if not _check_shapes(ref, got):
            raise RuntimeError(f"the ONNX int8 model gives other output sizes than bundle {bundle.path} at input "
                               f"{blob.shape[2]}x{blob.shape[3]}")
        for k, v in _max_diffs(ref, got).items():
            worst[k] = max(worst[k], v)
    # A face score off by a tenth is another model, not rounding (the two runtimes' int8 kernels round
    # near-ties differently, which moves scores by up to ~0.03 on real images): refuse to write it.
    if worst["conf"] > 0.1:
        raise RuntimeError(f"the ONNX int8 model's face scores differ from bundle {bundle.path}'s by up to "
                           f"{worst['conf']:.3f}; not written")
    return {"inputs": [list(b.shape) for b in blobs], "max_abs_diff_vs_source_bundle": worst,
            "note": "outputs as the runner reads them: loc, face score, landmarks"}


def _export_onnx_of_int8(bundle: Bundle, out: PathLike, long_side: int, source: Dict[str, Any],
                         force: bool) -> Path:
    """The int8 bundle's own TorchScript graph as QDQ ONNX: its scales, zero points, int8 weights."""
    import onnx
    import onnxruntime

    from fdq.calibration.quant_api import set_engine
    from fdq.device.runtimes import input_quantization
    from fdq.host.onnx_qdq import OPSET as QDQ_OPSET
    from fdq.host.onnx_qdq import graph_to_qdq

    set_engine(str(bundle.engine))
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; reading it is all we do
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(bundle.file("model")), map_location="cpu")
    model = graph_to_qdq(module, input_quantization(bundle), OUTPUT_NAMES)
    manifest = _base_manifest(bundle, "onnxruntime", "int8", long_side)
    manifest["input"]["dynamic_hw"] = True
    manifest["io"] = {"input": "input", "outputs": {n: n for n in OUTPUT_NAMES}}
    export: Dict[str, Any] = {
        "tool": "fdq.host.onnx_qdq (the bundle's TorchScript int8 graph rewritten as ONNX QDQ)", "opset": QDQ_OPSET,
        "format": "QDQ", "activations": "uint8, torch's per-tensor scale and zero point of every quantized op",
        "weights": "torch's int8 values and scales, stored as uint8 with zero point + 128 (the same numbers; "
                   "ONNX Runtime's u8s8 x86 kernels saturate without VNNI, its u8u8 ones do not)",
        "bias": "int32 at input_scale * weight_scale, as the int8 kernels add it",
        "torch_version": str(torch.__version__), "onnx_version": str(onnx.__version__),
        "onnxruntime_version": str(onnxruntime.__version__)}
    quant = {"level": (bundle.manifest.get("quantization") or {}).get("level"), "source": bundle.manifest.get(
        "quantization")}
    manifest.update({"quantization": quant, "calibration": bundle.manifest.get("calibration"),
                     "exported_from": source, "export": export, "entry": {"model": ONNX_FILE}})
    _identity(manifest, export, "source bundle",
              f"the int8 model of {_label(bundle)}, with its own scales and zero points (QDQ)")

    def write_files(folder: Path) -> None:
        onnx.save(model, str(folder / ONNX_FILE))
        export["verification"] = _verify_against_bundle(bundle, folder / ONNX_FILE, long_side)

    return write_bundle(str(out), manifest, write_files, force=force)


def _export_onnx(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
                 source: Dict[str, Any], calib_dir: Optional[PathLike], calib_limit: Optional[int],
                 force: bool) -> Path:
    import onnxruntime

    int8 = calib_dir is not None
    calib_paths: List[Path] = []
    calib_info: Optional[Dict[str, Any]] = None
    if int8:
        calib_paths, calib_info = calibration_images(calib_dir, calib_limit)  # type: ignore[arg-type]
        calib_info["preprocess"] = f"resize_image(long_side={long_side}) + normalize(mean_bgr), as the runner"
    manifest = _base_manifest(bundle, "onnxruntime", "int8" if int8 else "fp32", long_side)
    manifest["input"]["dynamic_hw"] = True
    manifest["io"] = {"input": "input", "outputs": {n: n for n in OUTPUT_NAMES}}
    quant: Dict[str, Any] = {"level": "int8-qdq-static" if int8 else "float", "weights": weights_info}
    export: Dict[str, Any] = {"tool": "torch.onnx.export (TorchScript-based exporter)", "opset": OPSET,
                              "torch_version": str(torch.__version__),
                              "onnxruntime_version": str(onnxruntime.__version__)}
    manifest.update({"quantization": quant, "calibration": calib_info, "exported_from": source,
                     "export": export, "entry": {"model": ONNX_FILE}})
    if int8:
        assert calib_info is not None
        _identity(manifest, export, "onnxruntime calibration",
                  f"recalibrated by ONNX Runtime (MinMax) on {calib_info['images']} images of {calib_info['dir']} "
                  f"(list sha256 {calib_info['list_sha256'][:16]}), from the float weights of {_label(bundle)}")
    else:
        _identity(manifest, export, None, _float_what(bundle))

    def write_files(folder: Path) -> None:
        target = folder / ONNX_FILE
        if not int8:
            _export_onnx_float(model, target, long_side)
            export["verification"] = _verify_onnx(model, target, long_side)
            return
        with tempfile.TemporaryDirectory(prefix="fdq-onnx-") as tmp:
            float_path = Path(tmp) / "float.onnx"
            _export_onnx_float(model, float_path, long_side)
            export["float_verification"] = _verify_onnx(model, float_path, long_side)
            quant.update(_quantize_onnx(float_path, target, calib_paths, long_side, bundle.spec.mean_bgr))
        # How far int8 moved the outputs, on the first calibration image (noise would exaggerate it).
        blob = next(preprocessed(calib_paths[:1], long_side, bundle.spec.mean_bgr))
        ref = _torch_outputs(model, blob)
        got = tuple(_ort_session(target).run(list(OUTPUT_NAMES), {"input": blob}))
        if not _check_shapes(ref, got):
            raise RuntimeError("the quantized ONNX model gives other output sizes than the float model")
        export["int8_max_abs_diff_vs_float"] = {"image": calib_paths[0].name, **_max_diffs(ref, got)}

    return write_bundle(str(out), manifest, write_files, force=force)


def _export_ncnn(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
                 source: Dict[str, Any], force: bool) -> Path:
    import ncnn

    h, w = _example_hw(long_side)
    shape2 = (2 * h, 2 * w)  # every pyramid level gets a different cell count, so no reshape stays fixed
    manifest = _base_manifest(bundle, "ncnn", "fp32", long_side)
    export: Dict[str, Any] = {"tool": "pnnx", "pnnx_version": _pnnx_version(), "ncnn_version": str(ncnn.__version__),
                              "torch_version": str(torch.__version__), "fp16_weights": False,
                              "example_inputs": [[1, 3, h, w], [1, 3, *shape2]]}
    io: Dict[str, Any] = {}

    def write_files(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="fdq-pnnx-") as tmp:
            work = Path(tmp)
            _run_pnnx(model, folder, work, (h, w), shape2)
            input_name, outputs = ncnn_blob_names(folder / NCNN_PARAM)
            blobs = _verification_inputs(long_side)
            diffs = _verify_ncnn(model, folder, blobs, input_name, outputs)
            if diffs is None:  # some reshape stayed size-specific: convert for one input size instead
                _run_pnnx(model, folder, work, (h, w), None)
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
    _identity(manifest, export, None, _float_what(bundle))
    # ``io`` and ``export`` are filled while the files are written, before write_bundle dumps the manifest.
    return write_bundle(str(out), manifest, write_files, force=force)
