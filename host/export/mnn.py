"""MNN bundles: the float model through ONNX and MNN's converter; int8 by MNN's own offline quantization.

* ``mnn``: the float ONNX export of :mod:`fdq.host.export.onnx` (dynamic height and width) converted by
  MNN's converter; checked against PyTorch at three input sizes.
* ``mnn-int8``: that float ``.mnn`` quantized by MNN's calibration tool (ADMM symmetric per-tensor
  activation thresholds, ADMM symmetric per-channel weights, the first convolution, the heads and the
  convolutions the heads read kept in float: :data:`DEFAULT_SETTINGS`) on the calibration images
  given and their horizontal mirrors, each preprocessed exactly as the runner preprocesses it
  (``resize_image`` to the long side + ``normalize``) and handed to the tool as its "sequence" input
  (the tool's own image reader would stretch every image to one size); ADMM takes them in one batch,
  so they are zero-padded (the mean colour) at the bottom and right to the largest of them.

Both tools run in this process through the compiled extension ``_tools`` (``mnnconvert`` /
``mnnquant`` with argv-style lists). fdq never calls MNN's Python command wrappers (``mnnconvert``,
``mnnquant``, ``MNN.tools``): they send usage records with the machine id to a remote logging
service and, when its SDK is missing, run ``pip install``. ``tests/test_runtimes.py`` checks that an
MNN export opens no network connection and starts no process.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from fdq.calibration.progress import line as progress_line
from fdq.device.bundle import Bundle
from fdq.device.runtimes import open_mnn, run_mnn
from fdq.host.bundles import write_bundle
from fdq.host.export.check import OUTPUT_NAMES, max_diffs, torch_outputs, worst_diffs
from fdq.host.export.inputs import preprocessed, verification_inputs
from fdq.host.export.manifest import base_manifest, float_what, identity, label
from fdq.host.export.onnx import export_onnx_float
from fdq.host.native_output import captured_fds, tail

MNN_FILE = "model.mnn"
# The default, from scripts/bench_mnn_int8.py (docs/ACCURACY.md): ADMM activation thresholds and ADMM
# per-channel weights, with the first convolution, the heads (and the in-graph softmax after them) and
# the convolutions the heads read kept in float, calibrated on the images and their mirrors. At 320 it
# lost at most 0.8 / 0.9 / 1.05 AP points (slim / rfb / mnet025) where the same without the mirrors and
# the pre-head convolutions lost 1.0 / 1.7 / 0.9, MNN's EMA 1.1 / 3.2 / 3.4 (it ignores the skip list)
# and KL 14-22; at 640 1.1 / 1.1 / 1.5 (without the mirrors and pre-heads: 0.6 / - / 2.0).
FEATURE_METHOD = "ADMM"
WEIGHT_METHOD = "ADMM"  # symmetric per-channel int8 weights, scales fitted by ADMM
# Ops MNN's tool can keep in float (its ``skip_quant_op_names``), by role: found in the float graph
# (:func:`sensitive_ops`). ROLES: every role it knows; SKIP_ROLES: those the export keeps in float.
ROLES = ("first", "heads", "preheads")
SKIP_ROLES = ("first", "heads", "preheads")
MIRROR = True  # calibrate on each image and its horizontal mirror (rfb's worst loss 1.46 -> 0.90 with it)
DEFAULT_SETTINGS: Dict[str, Any] = {"feature_quantize_method": FEATURE_METHOD, "weight_quantize_method": WEIGHT_METHOD,
                                    "skip": SKIP_ROLES, "mirror": MIRROR}
# What each path of MNN's tool does (EMA: its own quantization-aware module, which takes no weight
# method and no skip list; KL / ADMM: thresholds on the float graph, weights by weight_quantize_method).
SCHEMES = {True: {"activation_scheme": "affine int8, per tensor (EMA of each image's range)",
                  "weight_scheme": "symmetric int8, per channel (max abs)"},
           False: {"activation_scheme": "symmetric int8, per tensor (threshold of the feature method)",
                   "weight_scheme": "symmetric int8, per channel (weight_quantize_method)"}}
PathLike = Union[str, Path]
# Set once MNN's KL or ADMM calibration ran in this process: its tensor callbacks stay registered in the
# extension and the converter's constant folding then calls them on freed memory (it hung, and once
# crashed, in every later conversion here). One export per process (the CLI) never meets it.
_CALLBACKS_LEFT: List[str] = []


def _converter() -> Any:
    """``_tools`` for a conversion, refused with one line where a calibration's callbacks would hang it."""
    if _CALLBACKS_LEFT:
        raise RuntimeError(f"MNN's converter cannot run after its {_CALLBACKS_LEFT[0]} calibration in the same process "
                           f"(the calibration's callbacks outlive it and hang the converter): export in a new process")
    return _tools()


def _tools() -> Any:
    try:
        import _tools  # the compiled converter and quantizer of PyPI's MNN wheel
    except ImportError:
        raise RuntimeError("MNN export needs the MNN wheel (pip install 'fdq[mnn]')") from None
    return _tools


def mnn_version() -> Optional[str]:
    try:
        import MNN

        return str(MNN.version())
    except ImportError:
        return None


def convert_onnx(onnx_path: Path, mnn_path: Path) -> None:
    """ONNX -> ``.mnn`` with MNN's converter, in-process."""
    lines: List[str] = []
    with progress_line("fdq: MNN converting"), captured_fds(lines):
        ok = _converter().mnnconvert(["MNNConvert", "-f", "ONNX", "--modelFile", str(onnx_path),
                                      "--MNNModel", str(mnn_path), "--bizCode", "fdq"])
    if not ok or not mnn_path.is_file():
        raise RuntimeError(f"MNN's converter failed on {onnx_path.name}: {tail(lines)}")


def _write_samples(blobs: List[np.ndarray], folder: Path, input_name: str, outputs: Sequence[str]) -> None:
    """One folder per image in the quantizer's "sequence" layout: ``input.json`` (name, shape) and
    ``<input>.txt`` (the values as text, which is what the tool reads)."""
    for index, blob in enumerate(blobs):
        sample = folder / f"{index:05d}"
        sample.mkdir()
        (sample / "input.json").write_text(json.dumps({"inputs": [{"name": input_name, "shape": list(blob.shape)}],
                                                       "outputs": list(outputs)}), encoding="utf-8")
        np.ascontiguousarray(blob, dtype=np.float32).reshape(-1).tofile(str(sample / f"{input_name}.txt"), sep="\n")


_CONVS = ("Convolution", "ConvolutionDepthwise")


def graph_ops(mnn_path: Path) -> List[Dict[str, Any]]:
    """The ops of a ``.mnn`` file (name, type, input and output tensor names), from the converter's JSON dump."""
    lines: List[str] = []
    with tempfile.TemporaryDirectory(prefix="fdq-mnnjson-") as tmp:
        dump = Path(tmp) / "model.json"
        with captured_fds(lines):
            ok = _converter().mnnconvert(["MNNConvert", "-f", "MNN", "--modelFile", str(mnn_path), "--JsonFile", str(dump)])
        if not ok or not dump.is_file():
            raise RuntimeError(f"MNN's converter could not list the ops of {mnn_path.name}: {tail(lines)}")
        net = json.loads(dump.read_text(encoding="utf-8"))
    names = net["tensorName"]
    return [{"name": op.get("name", ""), "type": op.get("type", ""),
             "inputs": [names[i] for i in op.get("inputIndexes", [])],
             "outputs": [names[i] for i in op.get("outputIndexes", [])]} for op in net["oplists"]]


def sensitive_ops(ops: List[Dict[str, Any]], roles: Tuple[str, ...], outputs: Sequence[str] = OUTPUT_NAMES) -> List[str]:
    """Names of the ops in ``roles``: ``first``, the convolutions the input reaches through no other
    convolution; ``heads``, the convolutions whose outputs reach a network output through no other
    convolution, and every op after them (the in-graph softmax and concatenations of the outputs);
    ``preheads``, the convolutions the heads' convolutions read through no other convolution (the
    depthwise halves of slim's and rfb's separable heads, the last body convolution before the
    smallest scale's heads, the last convolutions of mnet025's SSH blocks), and the ops between."""
    producer = {t: op for op in ops for t in op["outputs"]}

    def back_to_convs(tensors: List[str]) -> Tuple[List[str], List[str]]:
        """(nearest convolutions upstream of ``tensors``, the other ops passed on the way)."""
        convs: List[str] = []
        between: List[str] = []
        seen = set()
        stack = list(tensors)
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["name"] in seen:
                continue
            seen.add(op["name"])
            if op["type"] in _CONVS:
                convs.append(op["name"])
            elif op["type"] not in ("Input", "Const"):
                between.append(op["name"])
                stack.extend(op["inputs"])
        return convs, between

    picked: List[str] = []
    if "first" in roles:
        picked += [op["name"] for op in ops if op["type"] in _CONVS and not back_to_convs(op["inputs"])[0]]
    heads, after = back_to_convs([name for name in outputs if name in producer])
    if "heads" in roles:
        picked += heads + after
    if "preheads" in roles:
        by_name = {op["name"]: op for op in ops}
        convs, between = back_to_convs([t for name in heads for t in by_name[name]["inputs"]])
        picked += convs + between
    return sorted(set(picked))


def padded_to_common_size(blobs: List[np.ndarray]) -> List[np.ndarray]:
    """The blobs zero-padded at the bottom and right to the largest height and width among them: MNN's
    ADMM takes every image in one batch of one size, and zero is the mean colour after ``normalize``."""
    height, width = (max(b.shape[axis] for b in blobs) for axis in (2, 3))
    return [np.pad(b, ((0, 0), (0, 0), (0, height - b.shape[2]), (0, width - b.shape[3]))) for b in blobs]


def quantize_mnn(float_path: Path, out_path: Path, blobs: List[np.ndarray], input_name: str = "input",
                 settings: Optional[Dict[str, Any]] = None,
                 ops: Optional[List[Dict[str, Any]]] = None, outputs: Sequence[str] = OUTPUT_NAMES) -> Dict[str, Any]:
    """Quantize a float ``.mnn`` on preprocessed ``blobs`` with MNN's offline tool; the settings used.

    ``settings`` overrides :data:`DEFAULT_SETTINGS`: ``feature_quantize_method`` (EMA, KL, ADMM),
    ``weight_quantize_method`` (MAX_ABS, ADMM), ``skip`` (roles of :data:`ROLES` kept in float),
    ``mirror`` (calibrate on each image and its horizontal mirror: twice the data, same distribution).
    ``ops``: :func:`graph_ops` of ``float_path`` listed beforehand (the listing runs the converter, which
    cannot run after a calibration in this process: several calibrations in one process pass it).
    ``outputs``: the graph's output names (the heads are found from them)."""
    chosen = {**DEFAULT_SETTINGS, **(settings or {})}
    unknown = set(chosen["skip"]) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown MNN skip role(s) {', '.join(sorted(unknown))} (choose from: {', '.join(ROLES)})")
    if chosen["skip"] and chosen["feature_quantize_method"] == "EMA":
        # measured: the EMA path writes the same file with or without skip_quant_op_names
        raise ValueError("MNN's EMA calibration quantizes every convolution: keeping ops in float needs KL or ADMM")
    skipped = sensitive_ops(ops or graph_ops(float_path), tuple(chosen["skip"]), outputs) if chosen["skip"] else []
    if chosen["mirror"]:
        blobs = blobs + [np.ascontiguousarray(b[..., ::-1]) for b in blobs]
    if chosen["feature_quantize_method"] == "ADMM":
        blobs = padded_to_common_size(blobs)
    config = {"feature_quantize_method": chosen["feature_quantize_method"],
              "weight_quantize_method": chosen["weight_quantize_method"],
              "feature_clamp_value": 127, "weight_clamp_value": 127, "quant_bits": 8,
              "batch_size": 1,  # EMA: images of different sizes, one a step (ADMM takes them all at once)
              "skip_quant_op_names": skipped}
    lines: List[str] = []
    with tempfile.TemporaryDirectory(prefix="fdq-mnnquant-") as tmp:
        samples = Path(tmp) / "samples"
        samples.mkdir()
        _write_samples(blobs, samples, input_name, outputs)
        config_path = Path(tmp) / "quant.json"
        config_path.write_text(json.dumps({"path": str(samples), "used_sample_num": len(blobs),
                                           "input_type": "sequence", **config}), encoding="utf-8")
        if chosen["feature_quantize_method"] != "EMA":
            _CALLBACKS_LEFT.append(chosen["feature_quantize_method"])
        with progress_line(f"fdq: MNN quantizing ({chosen['feature_quantize_method']}) on {len(blobs)} "
                           f"calibration inputs"), captured_fds(lines):
            ok = _tools().mnnquant(["quantized.out", str(float_path), str(out_path), str(config_path)])
    if not ok or not out_path.is_file():
        raise RuntimeError(f"MNN's quantizer failed: {tail(lines)}")
    record = {k: v for k, v in config.items() if k != "skip_quant_op_names"}
    return {"tool": "MNN offline quantization (_tools.mnnquant, in-process)", **record,
            "float_roles": list(chosen["skip"]), "float_ops": len(skipped), "mirrored": bool(chosen["mirror"]),
            **SCHEMES[chosen["feature_quantize_method"] == "EMA"]}


def mnn_runner(path: Path, fp32: bool):
    """``blob -> outputs`` through the runner's own MNN code, for verification."""
    module = open_mnn(str(path), "input", OUTPUT_NAMES, threads=1, fp32=fp32)
    return lambda blob: run_mnn(module, blob)


def write_mnn_files(folder: Path, model: nn.Module, onnx_path: Path, verify_blobs: List[np.ndarray],
                    calib_blobs: Optional[List[np.ndarray]], export: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Write ``model.mnn`` into ``folder`` (float, or int8 with ``calib_blobs``); fill ``export`` with
    the checks; return the quantization settings for int8."""
    target = folder / MNN_FILE
    if calib_blobs is None:
        convert_onnx(onnx_path, target)
        export["verification"] = {"inputs": [list(b.shape) for b in verify_blobs],
                                  "max_abs_diff_vs_torch": worst_diffs(model, verify_blobs, mnn_runner(target, True))}
        return None
    with tempfile.TemporaryDirectory(prefix="fdq-mnn-") as tmp:
        float_path = Path(tmp) / "float.mnn"
        convert_onnx(onnx_path, float_path)
        export["float_verification"] = {
            "inputs": [list(b.shape) for b in verify_blobs],
            "max_abs_diff_vs_torch": worst_diffs(model, verify_blobs, mnn_runner(float_path, True))}
        settings = quantize_mnn(float_path, target, calib_blobs)
    # How far int8 moved the outputs, on the first calibration image (noise would exaggerate it).
    export["int8_max_abs_diff_vs_float"] = max_diffs(torch_outputs(model, calib_blobs[0]),
                                                     mnn_runner(target, False)(calib_blobs[0]))
    return settings


def export_mnn(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
               source: Dict[str, Any], calib: Optional[Tuple[List[Path], Dict[str, Any]]], force: bool) -> Path:
    """Write the ``mnn`` (``calib`` None) or ``mnn-int8`` bundle at ``out``; ``calib``: the calibration
    images and their record, from :func:`fdq.host.export.inputs.calibration_images`."""
    _converter()  # a missing MNN wheel (or a converter that would hang) is one line before any work
    int8 = calib is not None
    manifest = base_manifest(bundle, "mnn", "int8" if int8 else "fp32", long_side)
    manifest["input"]["dynamic_hw"] = True
    quant: Dict[str, Any] = {"level": "int8-mnn-offline" if int8 else "float", "weights": weights_info}
    calib_info = None
    if int8:
        calib_info = {**calib[1], "preprocess": f"resize_image(long_side={long_side}) + normalize(mean_bgr), "
                                                f"as the runner"}
        recorded = (bundle.manifest.get("calibration") or {}).get("file_list_sha256")
        if recorded:  # an int8 source: say whether MNN calibrated on the same images
            calib_info["same_images_as_source"] = recorded == calib_info["list_sha256"]
    export: Dict[str, Any] = {"tool": "torch.onnx.export + MNN converter (_tools.mnnconvert, in-process)",
                              "mnn_version": mnn_version(), "torch_version": str(torch.__version__)}

    def write_files(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="fdq-onnx-") as tmp:
            onnx_path = Path(tmp) / "float.onnx"
            export_onnx_float(model, onnx_path, long_side)
            blobs = list(preprocessed(calib[0], long_side, bundle.spec.mean_bgr)) if int8 else None
            settings = write_mnn_files(folder, model, onnx_path, verification_inputs(long_side), blobs, export)
        if settings:
            quant.update(settings)

    manifest.update({"quantization": quant, "calibration": calib_info, "exported_from": source, "export": export,
                     "io": {"input": "input", "outputs": {n: n for n in OUTPUT_NAMES}}, "entry": {"model": MNN_FILE}})
    if int8:
        identity(manifest, export, "mnn calibration",
                 f"calibrated by MNN's offline quantization ({FEATURE_METHOD}, {', '.join(SKIP_ROLES)} in float) "
                 f"on {calib_info['images']} images{' and their mirrors' if MIRROR else ''} of "
                 f"{calib_info['dir']} (list sha256 {calib_info['list_sha256'][:16]}), from the float weights of "
                 f"{label(bundle)}")
    else:
        identity(manifest, export, None, float_what(bundle))
    return write_bundle(str(out), manifest, write_files, force=force)
