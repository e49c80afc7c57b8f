"""``onnx`` and ``onnx-int8``: bundles for ONNX Runtime.

* ``onnx``: the FLOAT model, opset 17, input ``input`` (1, 3, H, W) with dynamic H and W, outputs
  ``loc`` / ``conf`` (softmax) / ``landm``. Of an fp16 or int8 bundle only when asked (``float_ok``):
  it is the float model the bundle came from, not the bundle's model.
* ``onnx-int8`` of an int8 bundle: that bundle's own TorchScript int8 graph rewritten as QDQ ONNX
  (:mod:`fdq.host.export.onnx_qdq`): the same int8 weights, weight scales, activation scales and zero
  points, checked against the bundle on three input sizes.
* ``onnx-int8`` of a float bundle: the float ONNX model quantized by ``onnxruntime.quantization.
  quantize_static``, QDQ format, per-channel uint8 weights, uint8 activations calibrated (MinMax) on
  ``calib_dir`` images preprocessed exactly like inference (``resize_image`` + ``normalize``); the
  manifest records their count and the sha256 of their list.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from fdq.calibration.progress import Line, line as progress_line
from fdq.device.bundle import Bundle
from fdq.device.spec import DetectorSpec
from fdq.host.bundles import write_bundle
from fdq.host.export.check import OUTPUT_NAMES, OutputSizeMismatch, max_diffs, torch_outputs, worst_diffs
from fdq.host.export.inputs import calibration_images, example_hw, image_inputs, preprocessed, verification_inputs
from fdq.host.export.manifest import base_manifest, float_what, identity, label

ONNX_FILE = "model.onnx"
OPSET = 17
PathLike = Union[str, Path]


def export_onnx_float(model: nn.Module, path: Path, long_side: int) -> None:
    """The float ``model`` as ONNX at ``path``: opset :data:`OPSET`, dynamic height and width."""
    h, w = example_hw(long_side)
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
    """Max abs differences between the float ONNX model and PyTorch's on the verification inputs."""
    session = _ort_session(path)
    blobs = verification_inputs(long_side)
    try:
        worst = worst_diffs(model, blobs, lambda blob: session.run(list(OUTPUT_NAMES), {"input": blob}))
    except OutputSizeMismatch as exc:
        raise RuntimeError(f"ONNX export of {path.name} gives other output sizes than PyTorch at input "
                           f"{exc.input_hw}") from None
    return {"inputs": [list(b.shape) for b in blobs], "max_abs_diff_vs_torch": worst}


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over preprocessed calibration images."""

    def __init__(self, paths: List[Path], long_side: int, mean_bgr, spec: Optional[DetectorSpec],
                 input_name: str, progress: Line) -> None:
        self._make = lambda: preprocessed(paths, long_side, mean_bgr, spec)
        self._it = self._make()
        self._input_name = input_name
        self._progress = progress

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        blob = next(self._it, None)
        if blob is not None:
            self._progress.advance()
        return None if blob is None else {self._input_name: blob}

    def rewind(self) -> None:
        self._it = self._make()
        self._progress.update(completed=0)


def quantize_onnx(float_path: Path, out_path: Path, paths: List[Path], long_side: int, mean_bgr,
                  overrides: Optional[Dict[str, Any]] = None, *, spec: Optional[DetectorSpec] = None,
                  input_name: str = "input", symbolic_shapes: bool = True) -> Dict[str, Any]:
    """``quantize_static`` with fdq's settings; ``overrides`` (quantize_static keywords) replace some of
    them, for ``scripts/bench_ort_int8.py``'s comparison of the alternatives. ``spec``: calibrate on
    that spec's network inputs (an imported model's padding, std, channels; see ``preprocessed``).
    ``symbolic_shapes=False`` skips the pre-processing's symbolic shape inference, which fails on some
    imported graphs (YuNet's) and then leaves its temporary files in the working directory."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    reader_cls = type("FdqCalibrationReader", (_Reader, CalibrationDataReader), {})
    pre_processed = False
    try:  # shape inference + graph optimisation first, as onnxruntime recommends for static quantization
        from onnxruntime.quantization import quant_pre_process

        pre_path = float_path.with_name(float_path.stem + ".pre.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(float_path), str(pre_path), skip_symbolic_shape=not symbolic_shapes)
        float_path, pre_processed = pre_path, True
    except Exception:  # an optional step: quantize the plain export if it fails
        pass
    # uint8 weights and activations: ONNX Runtime's x86 kernels for int8 ones (s8s8, u8s8) sum pairs of
    # products in saturating int16 on AVX2 CPUs without VNNI and lose whole AP points; u8u8 is exact.
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    settings.update(overrides or {})
    with warnings.catch_warnings(), progress_line("fdq: ONNX Runtime calibrating", total=len(paths)) as progress:
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(out_path), reader_cls(paths, long_side, mean_bgr, spec, input_name, progress),
                        **settings)
    return {"tool": "onnxruntime.quantization.quantize_static", "pre_processed": pre_processed,
            "format": settings["quant_format"].name, "per_channel": settings["per_channel"],
            "reduce_range": settings["reduce_range"], "activation_type": settings["activation_type"].name,
            "weight_type": settings["weight_type"].name, "calibrate_method": settings["calibrate_method"].name}


def _verify_against_bundle(bundle: Bundle, path: Path, long_side: int) -> Dict[str, Any]:
    """Max abs differences between the ONNX model and the source bundle as the runner runs it."""
    from fdq.device.decoders.ssd_priors import split_outputs
    from fdq.device.runtimes import load_inference

    reference, session = load_inference(bundle, threads=1), _ort_session(path)
    blobs = image_inputs(long_side, bundle.spec.mean_bgr)
    try:
        worst = worst_diffs(reference, blobs,
                            lambda blob: split_outputs(*session.run(list(OUTPUT_NAMES), {"input": blob})))
    except OutputSizeMismatch as exc:
        raise RuntimeError(f"the ONNX int8 model gives other output sizes than bundle {bundle.path} at input "
                           f"{exc.input_hw}") from None
    # A face score off by a tenth is another model, not rounding (the two runtimes' int8 kernels round
    # near-ties differently, which moves scores by up to ~0.03 on real images): refuse to write it.
    if worst["conf"] > 0.1:
        raise RuntimeError(f"the ONNX int8 model's face scores differ from bundle {bundle.path}'s by up to "
                           f"{worst['conf']:.3f}; not written")
    return {"inputs": [list(b.shape) for b in blobs], "max_abs_diff_vs_source_bundle": worst,
            "note": "outputs as the runner reads them: loc, face score, landmarks"}


def export_onnx_of_int8(bundle: Bundle, out: PathLike, long_side: int, source: Dict[str, Any],
                        force: bool) -> Path:
    """The int8 bundle's own TorchScript graph as QDQ ONNX: its scales, zero points, int8 weights."""
    import onnx
    import onnxruntime

    from fdq.calibration.quant_api import set_engine
    from fdq.device.runtimes import input_quantization
    from fdq.host.export.onnx_qdq import OPSET as QDQ_OPSET
    from fdq.host.export.onnx_qdq import graph_to_qdq

    set_engine(str(bundle.engine))
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; reading it is all we do
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(bundle.file("model")), map_location="cpu")
    model = graph_to_qdq(module, input_quantization(bundle), OUTPUT_NAMES)
    manifest = base_manifest(bundle, "onnxruntime", "int8", long_side)
    manifest["input"]["dynamic_hw"] = True
    manifest["io"] = {"input": "input", "outputs": {n: n for n in OUTPUT_NAMES}}
    export: Dict[str, Any] = {
        "tool": "fdq.host.export.onnx_qdq (the bundle's TorchScript int8 graph rewritten as ONNX QDQ)",
        "opset": QDQ_OPSET,
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
    identity(manifest, export, "source bundle",
             f"the int8 model of {label(bundle)}, with its own scales and zero points (QDQ)")

    def write_files(folder: Path) -> None:
        onnx.save(model, str(folder / ONNX_FILE))
        export["verification"] = _verify_against_bundle(bundle, folder / ONNX_FILE, long_side)

    return write_bundle(str(out), manifest, write_files, force=force)


def export_onnx(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
                source: Dict[str, Any], calib_dir: Optional[PathLike], calib_limit: Optional[int],
                force: bool) -> Path:
    """The float ONNX bundle of ``model`` at ``out``, or with ``calib_dir`` its int8 QDQ bundle calibrated
    by ONNX Runtime on those images."""
    import onnxruntime

    int8 = calib_dir is not None
    calib_paths: List[Path] = []
    calib_info: Optional[Dict[str, Any]] = None
    if int8:
        calib_paths, calib_info = calibration_images(calib_dir, calib_limit)  # type: ignore[arg-type]
        calib_info["preprocess"] = f"resize_image(long_side={long_side}) + normalize(mean_bgr), as the runner"
    manifest = base_manifest(bundle, "onnxruntime", "int8" if int8 else "fp32", long_side)
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
        identity(manifest, export, "onnxruntime calibration",
                 f"recalibrated by ONNX Runtime (MinMax) on {calib_info['images']} images of {calib_info['dir']} "
                 f"(list sha256 {calib_info['list_sha256'][:16]}), from the float weights of {label(bundle)}")
    else:
        identity(manifest, export, None, float_what(bundle))

    def write_files(folder: Path) -> None:
        target = folder / ONNX_FILE
        if not int8:
            export_onnx_float(model, target, long_side)
            export["verification"] = _verify_onnx(model, target, long_side)
            return
        with tempfile.TemporaryDirectory(prefix="fdq-onnx-") as tmp:
            float_path = Path(tmp) / "float.onnx"
            export_onnx_float(model, float_path, long_side)
            export["float_verification"] = _verify_onnx(model, float_path, long_side)
            quant.update(quantize_onnx(float_path, target, calib_paths, long_side, bundle.spec.mean_bgr))
        # How far int8 moved the outputs, on the first calibration image (noise would exaggerate it).
        blob = next(preprocessed(calib_paths[:1], long_side, bundle.spec.mean_bgr))
        try:
            diffs = max_diffs(torch_outputs(model, blob), _ort_session(target).run(list(OUTPUT_NAMES), {"input": blob}))
        except OutputSizeMismatch:
            raise RuntimeError("the quantized ONNX model gives other output sizes than the float model") from None
        export["int8_max_abs_diff_vs_float"] = {"image": calib_paths[0].name, **diffs}

    return write_bundle(str(out), manifest, write_files, force=force)
