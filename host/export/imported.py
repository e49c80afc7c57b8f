"""Exports of an imported bundle (``fdq import``): its ONNX graph is the float model, so the formats
that start from ONNX are offered, with the decoder's output names and the spec's preprocessing.

* ``onnx-int8``: ONNX Runtime's static quantization of that graph (:func:`fdq.host.export.onnx.quantize_onnx`,
  fdq's settings) on ``--calib`` images preprocessed as the imported detector's runner does it;
* ``mnn`` / ``mnn-int8``: MNN's converter on that graph, and its offline quantization
  (:func:`fdq.host.export.mnn.quantize_mnn`, fdq's settings) on the same images.

The torch-side formats (torchscript, executorch, ncnn through pnnx's torch path, ncnn-int8) need
fdq's own model definitions and are refused in one line.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from fdq.device.bundle import Bundle
from fdq.device.decoders import decoder_class
from fdq.host.bundles import write_bundle
from fdq.host.export.check import max_diffs
from fdq.host.export.inputs import calibration_images, preprocessed
from fdq.host.export.manifest import identity, label

FORMATS = ("onnx-int8", "mnn", "mnn-int8")
INT8_FORMATS = ("onnx-int8", "mnn-int8")
PathLike = Union[str, Path]


def is_imported(bundle: Bundle) -> bool:
    """Whether a bundle's model came from ``fdq import`` (not one of fdq's own models)."""
    return bool((bundle.manifest.get("model") or {}).get("imported"))


def check_request(bundle: Bundle, fmt: str, calib_dir: Optional[PathLike]) -> None:
    """Refuse, in one line, an export an imported bundle cannot have."""
    if fmt not in FORMATS:
        raise ValueError(f"bundle {bundle.path} holds an imported ONNX model: it exports to {', '.join(FORMATS)}, "
                         f"not {fmt} (that format starts from fdq's own PyTorch models)")
    if bundle.runtime != "onnxruntime" or (bundle.manifest.get("backend") or {}).get("dtype") != "fp32":
        raise ValueError(f"export the float bundle fdq import wrote, not {label(bundle)}")
    if fmt in INT8_FORMATS and calib_dir is None:
        raise ValueError(f"{fmt} of imported bundle {bundle.path} needs --calib DIR: its int8 ranges are calibrated "
                         "on those images (see --help)")
    if fmt not in INT8_FORMATS and calib_dir is not None:
        raise ValueError(f"--calib is only used by {', '.join(INT8_FORMATS)}, not {fmt}")


def _names(bundle: Bundle) -> List[str]:
    io = bundle.manifest.get("io") or {}
    roles = decoder_class(bundle.spec.decoder).output_roles(bundle.spec)
    return [str((io.get("outputs") or {}).get(r, r)) for r in roles]


def _ort(path: Path, input_name: str, names: Sequence[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda blob: session.run(list(names), {input_name: blob})


def export_imported(bundle: Bundle, fmt: str, out: PathLike, source: Dict[str, Any], calib_dir: Optional[PathLike],
                    calib_limit: Optional[int], force: bool) -> Path:
    """Write the ``fmt`` export of imported bundle ``bundle`` at ``out``."""
    int8 = fmt in INT8_FORMATS
    long_side, spec = bundle.long_side, bundle.spec
    input_name, names = str((bundle.manifest.get("io") or {}).get("input", "input")), _names(bundle)
    onnx_path = bundle.file("model")
    calib_paths: List[Path] = []
    calib_info: Optional[Dict[str, Any]] = None
    if int8:
        calib_paths, calib_info = calibration_images(calib_dir, calib_limit)  # type: ignore[arg-type]
        calib_info["preprocess"] = f"resize_image(long_side={long_side}) + the spec's network input, as the runner"
    runtime = "mnn" if fmt.startswith("mnn") else "onnxruntime"
    manifest: Dict[str, Any] = {key: bundle.manifest[key] for key in ("model", "input", "io")}
    manifest.update({"runtime": runtime, "backend": {"engine": None, "dtype": "int8" if int8 else "fp32"},
                     "quantization": {"level": {"onnx-int8": "int8-qdq-static", "mnn-int8": "int8-mnn-offline",
                                                "mnn": "float"}[fmt]},
                     "calibration": calib_info, "exported_from": source})
    export: Dict[str, Any] = {"tool": {"onnx-int8": "onnxruntime.quantization.quantize_static",
                                       "mnn": "MNN converter", "mnn-int8": "MNN converter + offline quantization"}[fmt]}
    manifest["export"] = export
    if int8:
        assert calib_info is not None
        identity(manifest, export, f"{'onnxruntime' if fmt == 'onnx-int8' else 'mnn'} calibration",
                 f"calibrated on {calib_info['images']} images of {calib_info['dir']} "
                 f"(list sha256 {calib_info['list_sha256'][:16]}), from the imported float model of {label(bundle)}")
    else:
        identity(manifest, export, None, f"the imported float model of {label(bundle)}")
    float_run = _ort(onnx_path, input_name, names)
    blobs = list(preprocessed(calib_paths, long_side, spec.mean_bgr, spec)) if int8 else []

    def write_files(folder: Path) -> None:
        if fmt == "onnx-int8":
            target = folder / "model.onnx"
            manifest["quantization"].update(_quantize_onnx(onnx_path, target, calib_paths, bundle, input_name))
            run = _ort(target, input_name, names)
        else:
            from fdq.device.runtimes import open_mnn, run_mnn
            from fdq.host.export.mnn import convert_onnx, mnn_version, quantize_mnn

            export["mnn_version"] = mnn_version()
            target = folder / "model.mnn"
            if int8:
                with tempfile.TemporaryDirectory(prefix="fdq-mnn-") as tmp:
                    float_mnn = Path(tmp) / "float.mnn"
                    convert_onnx(onnx_path, float_mnn)
                    manifest["quantization"].update(quantize_mnn(float_mnn, target, blobs, input_name, outputs=names))
            else:
                convert_onnx(onnx_path, target)
            module = open_mnn(str(target), input_name, names, threads=1, fp32=not int8)
            run = lambda blob: run_mnn(module, blob)  # noqa: E731
        manifest["entry"] = {"model": target.name}
        probe = blobs[0] if blobs else _probe_blob(bundle)
        export["max_abs_diff_vs_float" if int8 else "verification_max_abs_diff"] = \
            max_diffs(float_run(probe), run(probe), names)

    return write_bundle(str(out), manifest, write_files, force=force)


def _quantize_onnx(onnx_path: Path, target: Path, calib_paths: List[Path], bundle: Bundle,
                           input_name: str) -> Dict[str, Any]:
    """quantize_static with fdq's settings; a graph below opset 13 (no per-channel DequantizeLinear) is
    converted to fdq's opset first, and the record says so."""
    import onnx
    from onnx import version_converter

    from fdq.host.export.onnx import OPSET, quantize_onnx

    model = onnx.load(str(onnx_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    with tempfile.TemporaryDirectory(prefix="fdq-onnx-") as tmp:
        float_path = Path(tmp) / "float.onnx"  # quant_pre_process writes beside its input
        if opset < 13:
            model = version_converter.convert_version(model, OPSET)
        onnx.save(model, str(float_path))
        record = quantize_onnx(float_path, target, calib_paths, bundle.long_side, bundle.spec.mean_bgr,
                               spec=bundle.spec, input_name=input_name, symbolic_shapes=False)
    return {**record, "opset": {"graph": opset, "quantized": opset if opset >= 13 else OPSET}}


def _probe_blob(bundle: Bundle) -> np.ndarray:
    """A random 8-bit image at the bundle's size, as the network input the runner makes of it."""
    from fdq.device.detector import network_input
    from fdq.device.preprocess import normalize

    side = bundle.long_side
    image = np.random.default_rng(0).integers(0, 256, (max(8, side * 3 // 4), side, 3), dtype=np.uint8)
    multiple = decoder_class(bundle.spec.decoder)(bundle.spec).input_multiple
    return network_input(image, bundle.spec, multiple, normalize)[0]
