"""Exports of an imported bundle (``fdq import``): its ONNX graph is the float model, so the formats
that start from ONNX are offered, with the decoder's output names and the spec's preprocessing.

* ``onnx-int8``: ONNX Runtime's static quantization of that graph (:func:`fdq.host.export.onnx.quantize_onnx`,
  fdq's settings) on ``--calib`` images preprocessed as the imported detector's runner does it;
* ``mnn`` / ``mnn-int8``: MNN's converter on that graph, and its offline quantization
  (:func:`fdq.host.export.mnn.quantize_mnn`, fdq's settings) on the same images;
* ``ncnn``: pnnx reading that ONNX graph (:func:`fdq.host.export.ncnn.convert_with_pnnx`, as for fdq's
  own models' TorchScript) with two example inputs, so its reshapes stay size-generic; pnnx names the
  outputs out0, out1, ... in the graph's output order, and ``io.outputs`` maps each decoder role to one;
* ``ncnn-int8``: that fp32 ncnn model made int8 by the ncnn-int8 export's rules
  (:func:`fdq.host.export.ncnn_int8.int8_files`: fdq's histogram observer on the same images).

The torch-side formats (torchscript, executorch) need fdq's own model definitions and are refused in one line.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from fdq.device.bundle import Bundle
from fdq.device.decoders import decoder_class
from fdq.host.bundles import write_bundle
from fdq.host.export.check import worst_diffs
from fdq.host.export.inputs import calibration_images, example_hw, preprocessed
from fdq.host.export.manifest import identity, label

FORMATS = ("onnx-int8", "mnn", "mnn-int8", "ncnn", "ncnn-int8")
INT8_FORMATS = ("onnx-int8", "mnn-int8", "ncnn-int8")
PathLike = Union[str, Path]


def is_imported(bundle: Bundle) -> bool:
    """Whether a bundle's model came from ``fdq import`` (not one of fdq's own models)."""
    return bool((bundle.manifest.get("model") or {}).get("imported"))


def check_request(bundle: Bundle, fmt: str, calib_dir: Optional[PathLike], keep_float: Sequence[str] = ()) -> None:
    """Refuse, in one line, an export an imported bundle cannot have."""
    if fmt not in FORMATS:
        raise ValueError(f"bundle {bundle.path} holds an imported ONNX model: it exports to {', '.join(FORMATS)}, "
                         f"not {fmt} (that format starts from fdq's own PyTorch models)")
    if bundle.runtime != "onnxruntime" or (bundle.manifest.get("backend") or {}).get("dtype") != "fp32":
        raise ValueError(f"export the float bundle fdq import wrote, not {label(bundle)}")
    if bundle.fixed_hw is not None:
        raise ValueError(f"imported bundle {bundle.path} takes a fixed {bundle.fixed_hw[1]}x{bundle.fixed_hw[0]} input: "
                         "its exports calibrate and check at other sizes, so fdq export does not take it yet "
                         "(it runs as imported, on onnxruntime)")
    if fmt in INT8_FORMATS and calib_dir is None:
        raise ValueError(f"{fmt} of imported bundle {bundle.path} needs --calib DIR: its int8 ranges are calibrated "
                         "on those images (see --help)")
    if fmt not in INT8_FORMATS and calib_dir is not None:
        raise ValueError(f"--calib is only used by {', '.join(INT8_FORMATS)}, not {fmt}")
    if keep_float:
        raise ValueError("--keep-float is for fdq's own models' ncnn-int8; an imported model's ncnn-int8 makes "
                         "every convolution int8")


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
    runtime = fmt.split("-")[0] if fmt.startswith(("mnn", "ncnn")) else "onnxruntime"
    manifest: Dict[str, Any] = {key: bundle.manifest[key] for key in ("model", "input", "io")}
    manifest.update({"runtime": runtime, "backend": {"engine": None, "dtype": "int8" if int8 else "fp32"},
                     "quantization": {"level": {"onnx-int8": "int8-qdq-static", "mnn-int8": "int8-mnn-offline",
                                                "mnn": "float", "ncnn": "float", "ncnn-int8": "ncnn-int8"}[fmt]},
                     "calibration": calib_info, "exported_from": source})
    export: Dict[str, Any] = {"tool": {"onnx-int8": "onnxruntime.quantization.quantize_static",
                                       "mnn": "MNN converter", "mnn-int8": "MNN converter + offline quantization",
                                       "ncnn": "pnnx (ONNX)", "ncnn-int8": "pnnx (ONNX) + fdq's ncnn int8 rules"}[fmt]}
    manifest["export"] = export
    if int8:
        assert calib_info is not None
        identity(manifest, export, {"onnx-int8": "onnxruntime", "mnn-int8": "mnn", "ncnn-int8": "fdq"}[fmt] + " calibration",
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
        elif runtime == "ncnn":
            run = _write_ncnn(bundle, folder, manifest, blobs if int8 else None)
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
        if runtime != "ncnn":
            manifest["entry"] = {"model": target.name}
        probes = blobs[:1] if blobs else [_probe_blob(bundle), _probe_blob(bundle, bundle.long_side * 2)]
        export["max_abs_diff_vs_float" if int8 else "verification_max_abs_diff"] = \
            worst_diffs(float_run, probes, run, names)
        export["verification_inputs"] = [list(p.shape) for p in probes]

    return write_bundle(str(out), manifest, write_files, force=force)


def _write_ncnn(bundle: Bundle, folder: Path, manifest: Dict[str, Any],
                calib_blobs: Optional[List[np.ndarray]]) -> Callable[[np.ndarray], List[np.ndarray]]:
    """The ncnn pair of the imported graph in ``folder`` (int8 when ``calib_blobs`` are given, calibrated on
    them); fills the manifest's io, entry and export record, and returns the model as the runner runs it."""
    import ncnn
    import onnx

    from fdq.device.runtimes import open_ncnn, run_ncnn
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM, pnnx_version, convert_with_pnnx, ncnn_blob_names
    from fdq.host.export.ncnn_int8 import int8_files

    roles = decoder_class(bundle.spec.decoder).output_roles(bundle.spec)
    graph_outputs = [o.name for o in onnx.load(str(bundle.file("model")), load_external_data=False).graph.output]
    multiple = decoder_class(bundle.spec.decoder)(bundle.spec).input_multiple
    h, w = (-(-side // multiple) * multiple for side in example_hw(bundle.long_side))
    shapes = [[1, 3, h, w], [1, 3, 2 * h, 2 * w]]  # two sizes: pnnx keeps every reshape size-generic
    with tempfile.TemporaryDirectory(prefix="fdq-pnnx-") as tmp:
        work = Path(tmp)
        shutil.copyfile(bundle.file("model"), work / "model.onnx")  # pnnx writes beside its input
        fp32 = work / "fp32" if calib_blobs is not None else folder
        fp32.mkdir(exist_ok=True)
        convert_with_pnnx(work / "model.onnx", fp32, work, (h, w), (2 * h, 2 * w))
        input_name, outputs = ncnn_blob_names(fp32 / NCNN_PARAM, len(graph_outputs))
        if calib_blobs is not None:
            rows = int8_files(fp32, input_name, calib_blobs, folder)
            manifest["quantization"].update({
                "scales": "calibrated by fdq: histogram observer of |x| on ncnn's symmetric int8 grid for each "
                          "int8 layer's input blob in the fp32 ncnn model; weights 127 / absmax per output channel",
                "int8_layers": sum(1 for row in rows if row["int8"]),
                "float_layers": [row["layer"] for row in rows if not row["int8"]], "layers": rows})
    by_name = dict(zip(graph_outputs, outputs))
    names = [by_name[name] for name in _names(bundle)]
    manifest["io"] = {"input": input_name, "outputs": dict(zip(roles, names))}
    manifest["input"] = {**manifest["input"], "dynamic_hw": True}
    manifest["entry"] = {"param": NCNN_PARAM, "model": NCNN_BIN}
    manifest["export"].update({"pnnx_version": pnnx_version(), "ncnn_version": str(ncnn.__version__),
                               "fp16_weights": False, "example_inputs": shapes})
    net = open_ncnn(str(folder / NCNN_PARAM), str(folder / NCNN_BIN), threads=1, fp32=True,
                    int8=calib_blobs is not None)
    return lambda blob: run_ncnn(net, input_name, names, blob)


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


def _probe_blob(bundle: Bundle, side: Optional[int] = None) -> np.ndarray:
    """A random 8-bit image at the bundle's size (or long side ``side``), as the network input the runner makes of it."""
    from fdq.device.detector import network_input
    from fdq.device.preprocess import normalize

    side = side or bundle.long_side
    image = np.random.default_rng(0).integers(0, 256, (max(8, side * 3 // 4), side, 3), dtype=np.uint8)
    multiple = decoder_class(bundle.spec.decoder)(bundle.spec).input_multiple
    return network_input(image, bundle.spec, multiple, normalize)[0]
