"""``ncnn-int8`` bundles: pnnx's fp32 ncnn model rewritten as ncnn int8 with fdq's own scales.

No ncnn tool runs (no wheel ships ``ncnn2table`` / ``ncnn2int8``): the fp32 model that
:func:`fdq.host.export._export_ncnn` makes (pnnx, verified against PyTorch) is read back
(:mod:`fdq.host.export.ncnn_model`) and its convolutions made int8 by ncnn's rules (:mod:`fdq.host.export.ncnn_int8_rules`).

* Of an int8 bundle: the same model. pnnx converts the fused float model with every convolution's
  weights and bias replaced by the bundle's own (its int8 values times its scales: cross-layer
  equalization and bias correction included), so each ncnn layer is found by its weights, and gets
  the bundle's int8 values, its per-channel weight scales (ncnn's scale is the inverse of torch's)
  and the input range torch calibrated, converted to ncnn's symmetric int8: a uint8 range
  ``[lo, hi]`` becomes the threshold ``max(|lo|, |hi|)``, the input scale ``127 / threshold``.
* Of a float bundle: cross-layer equalized (as ``fdq quantize`` does by default) and calibrated here
  on ``--calib`` images preprocessed as the runner does, with
  fdq's own activation observer (torch's histogram by default, the one ``fdq quantize`` uses) fitted to
  ncnn's symmetric grid (:class:`fdq.calibration.quant_api.SymmetricThreshold`) over every int8 layer's
  input blob, read from the fp32 ncnn model's extractor; weights by ncnn's rule (``127 / absmax`` per
  output channel).

``keep_float`` names layers (ncnn names such as ``convrelu_3``, or the PyTorch unit names the
manifest lists beside them) that stay fp32. Requantization is fused wherever ncnn allows it. The
manifest records runtime ``ncnn``, dtype ``int8``, where the scales came from and the layer table.
"""
from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from fdq.device.bundle import Bundle, load_bundle
from fdq.host.export.ncnn_int8_rules import LayerQuant, to_int8, winograd_note
from fdq.host.export.ncnn_model import CONVOLUTIONS, NcnnModel, read_model, write_model

PathLike = Union[str, Path]
OBSERVER = "histogram"  # fdq quantize's default activation observer
# Winograd for 3x3 stride-1 int8 convolutions: off, 8-bit weights (docs/ACCURACY.md, "ncnn int8", measures it).
WINOGRAD_BITS = None
SCALES_NOTE = ("converted to ncnn's symmetric int8: torch's uint8 input range [lo, hi] -> threshold max(|lo|, |hi|), "
               "input scale 127 / threshold; weight scale 1 / torch's per-channel scale, torch's int8 values")


def check_request(bundle: Bundle, calib_dir: Optional[PathLike]) -> None:
    """Refuse, in one line, an ncnn-int8 export that has no scales or two sources of them."""
    from fdq.host.export.manifest import precision

    if precision(bundle) == "int8":
        if calib_dir is not None:
            raise ValueError(f"ncnn-int8 of int8 bundle {bundle.path} carries that bundle's own scales: drop --calib "
                             "(nothing is recalibrated)")
    elif calib_dir is None:
        raise ValueError(f"ncnn-int8 of {precision(bundle)} bundle {bundle.path} needs --calib DIR: a float bundle "
                         "holds no activation ranges to carry over (see --help)")


# --------------------------------------------------------------------------------------------------
# The float model pnnx converts, and which ncnn layer is which unit
# --------------------------------------------------------------------------------------------------


def _units_in_order(fused: nn.Module, long_side: int) -> List[str]:
    """The fused model's convolution units in the order its forward pass runs them (the graph's order)."""
    from fdq.calibration.quant_api import conv_units

    modules = dict(fused.named_modules())
    order: List[str] = []
    handles = [modules[name].register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
               for name in conv_units(fused)]
    try:
        with torch.inference_mode():
            fused(torch.zeros(1, 3, max(8, long_side * 3 // 4), long_side))
    finally:
        for handle in handles:
            handle.remove()
    if len(set(order)) != len(order):
        raise RuntimeError("a convolution unit runs twice in one forward pass; ncnn-int8 cannot map it")
    return order


def _with_bundle_weights(fused: nn.Module, units: List[str], convs: Sequence[Any]) -> None:
    """Give each unit of ``fused`` the weights and bias torch runs its int8 convolution with."""
    from fdq.calibration.quant_api import unit_conv

    if len(units) != len(convs):
        raise RuntimeError(f"the int8 model has {len(convs)} convolutions, the float model {len(units)}")
    modules = dict(fused.named_modules())
    for name, qc in zip(units, convs):
        conv = unit_conv(modules[name])
        if tuple(conv.weight.shape) != qc.weight.shape:
            raise RuntimeError(f"convolution {name}: weight {tuple(conv.weight.shape)} in the float model, "
                               f"{qc.weight.shape} in the int8 one")
        if np.any(qc.weight_zero_points != 0):
            raise RuntimeError(f"convolution {name} has asymmetric int8 weights; ncnn's are symmetric")
        scales = qc.weight_scales.reshape(-1, *([1] * (qc.weight.ndim - 1)))
        conv.weight.data = torch.from_numpy((qc.weight.astype(np.float32) * scales).astype(np.float32))
        if qc.bias is not None:
            conv.bias = nn.Parameter(torch.from_numpy(qc.bias.copy()))


def _layer_units(model: NcnnModel, fused: nn.Module, units: List[str]) -> Dict[str, str]:
    """ncnn layer name -> unit name, each layer found by its weights (pnnx copies them unchanged)."""
    from fdq.calibration.quant_api import unit_conv

    modules = dict(fused.named_modules())
    weights = {name: unit_conv(modules[name]).weight.detach().numpy().reshape(-1) for name in units}
    found: Dict[str, str] = {}
    for layer in model.layers:
        if layer.type not in CONVOLUTIONS:
            continue
        hits = [n for n, w in weights.items() if w.size == layer.weight.size and n not in found.values() and
                np.allclose(w, layer.weight, rtol=1e-5, atol=1e-7)]
        if len(hits) != 1:
            raise RuntimeError(f"ncnn layer {layer.name} matches {len(hits)} convolutions of the model by its weights")
        found[layer.name] = hits[0]
    return found


# --------------------------------------------------------------------------------------------------
# Scales: carried over from an int8 bundle, or calibrated here
# --------------------------------------------------------------------------------------------------


def threshold_of_range(scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> float:
    """ncnn's symmetric threshold for torch's affine range: max(|lo|, |hi|)."""
    return max(abs((qmin - zero_point) * scale), abs((qmax - zero_point) * scale))


def _bundle_quant(bundle: Bundle, convs: Sequence[Any], units: List[str],
                  layer_units: Dict[str, str]) -> Dict[str, LayerQuant]:
    """Each layer's quantization from the int8 convolution of its unit; the calibrated range of a
    ``reduce_range`` bundle's activations (x86 without VNNI) is 0..127, not 0..255."""
    narrowed = (bundle.manifest.get("quantization") or {}).get("reduce_range")
    qmax = 127 if narrowed in (True, "activations") else 255  # True: bundles made before "weights" existed
    by_unit = dict(zip(units, convs))
    quant = {}
    for layer, unit in layer_units.items():
        qc = by_unit[unit]
        quant[layer] = LayerQuant(threshold_of_range(qc.input_scale, qc.input_zero_point, qmax=qmax), qc.weight,
                                  (1.0 / qc.weight_scales.astype(np.float64)).astype(np.float32))
    return quant


def calibrated_quant(folder: Path, io: Dict[str, Any], model: NcnnModel, blobs: Sequence[np.ndarray],
                     observer: str = OBSERVER) -> Dict[str, LayerQuant]:
    """Each convolution's input threshold from ``observer`` over ``blobs`` run through the fp32 model in ``folder``."""
    from fdq.calibration.progress import track
    from fdq.calibration.quant_api import symmetric_threshold
    from fdq.device.runtimes import open_ncnn, run_ncnn
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM

    layers = [layer for layer in model.layers if layer.type in CONVOLUTIONS]
    watched = list(dict.fromkeys(layer.bottoms[0] for layer in layers))
    observers = {blob: symmetric_threshold(observer) for blob in watched}
    passes = next(iter(observers.values())).passes
    net = open_ncnn(str(folder / NCNN_PARAM), str(folder / NCNN_BIN), threads=1, fp32=True)
    net.opt.lightmode = False  # keep every blob of a pass: lightmode frees them, and a later extract then fails
    for step in range(passes):
        if step:
            for each in observers.values():
                each.next_pass()
        label = "fdq: ncnn int8 calibrating" + (f" (pass {step + 1}/{passes})" if passes > 1 else "")
        for blob in track(blobs, label):
            for name, value in zip(watched, run_ncnn(net, io["input"], watched, blob)):
                observers[name](torch.from_numpy(np.ascontiguousarray(value)))
    quant = {}
    for layer in layers:
        quant[layer.name] = LayerQuant(observers[layer.bottoms[0]].threshold())
    return quant


def _kept_float(keep_float: Sequence[str], layer_units: Dict[str, str]) -> List[str]:
    """The ncnn layer names ``keep_float`` asks for; an unknown name is one line listing the known ones."""
    by_unit = {unit: layer for layer, unit in layer_units.items()}
    kept = []
    for name in keep_float:
        layer = name if name in layer_units else by_unit.get(name)
        if layer is None:
            raise ValueError(f"--keep-float: no convolution {name!r} in this model (its layers: "
                             f"{', '.join(layer_units)})")
        kept.append(layer)
    return kept


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------


def _int8_graph(bundle: Bundle) -> List[Any]:
    from fdq.calibration.quant_api import set_engine
    from fdq.device.runtimes import input_quantization
    from fdq.host.export.onnx_qdq import quantized_convs

    set_engine(str(bundle.engine))
    with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; reading it is all we do
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(bundle.file("model")), map_location="cpu")
    return quantized_convs(module, input_quantization(bundle))


def _runner_diffs(reference: Any, folder: Path, io: Dict[str, Any], blobs: Sequence[np.ndarray]) -> Dict[str, float]:
    """Worst output differences of the int8 model in ``folder`` against ``reference`` (blob -> outputs),
    as the runner reads them (loc, face score, landmarks)."""
    from fdq.device.decoders.ssd_priors import split_outputs
    from fdq.device.runtimes import open_ncnn, run_ncnn
    from fdq.host.export.check import OUTPUT_NAMES, max_diffs
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM

    net = open_ncnn(str(folder / NCNN_PARAM), str(folder / NCNN_BIN), threads=1, fp32=True, int8=True)
    names = [io["outputs"][n] for n in OUTPUT_NAMES]
    worst = {n: 0.0 for n in OUTPUT_NAMES}
    for blob in blobs:
        got = split_outputs(*run_ncnn(net, io["input"], names, blob))
        for name, value in max_diffs(reference(blob), got).items():
            worst[name] = max(worst[name], value)
    return worst


@dataclass
class Prepared:
    """What every int8 model of one source is written from: the source, the verified fp32 ncnn conversion
    (in a work folder), its layers, their units and their quantization; :func:`write_int8` makes one
    model of it (the export, or a variant of it for a benchmark)."""

    bundle: Bundle
    model: nn.Module
    weights_info: Dict[str, Any]
    source: Dict[str, Any]
    calib: Optional[Tuple[List[Path], Dict[str, Any]]]
    fp32: Bundle
    layers: NcnnModel
    layer_units: Dict[str, str]
    quant: Dict[str, LayerQuant]
    equalized_pairs: int
    observer: str = OBSERVER

    @property
    def from_bundle(self) -> bool:
        return self.calib is None


def prepare(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], long_side: int, source: Dict[str, Any],
            calib: Optional[Tuple[List[Path], Dict[str, Any]]], work: Path, observer: str = OBSERVER) -> Prepared:
    """The fp32 conversion in ``work`` and every convolution's quantization: the int8 bundle's own
    (``calib`` None), or calibrated on ``calib`` (images and their record) after cross-layer equalization."""
    from fdq.calibration.datafree import cross_layer_equalize
    from fdq.calibration.quant_api import fuse
    from fdq.host.export.inputs import preprocessed
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM, export_ncnn

    convs = _int8_graph(bundle) if calib is None else []
    fused, pairs = fuse(model), 0
    units = _units_in_order(fused, long_side)
    blobs = [] if calib is None else list(preprocessed(calib[0], long_side, bundle.spec.mean_bgr))
    if calib is None:
        _with_bundle_weights(fused, units, convs)
    else:  # as fdq quantize does by default: one weight range per layer pair, for per-tensor activations
        fused, pairs = cross_layer_equalize(fused, torch.from_numpy(blobs[0]))
    fp32_dir = export_ncnn(bundle, fused, weights_info, work / "fp32", long_side, source, False)
    layers = read_model(fp32_dir / NCNN_PARAM, fp32_dir / NCNN_BIN)
    layer_units = _layer_units(layers, fused, units)
    fp32 = load_bundle(str(fp32_dir))
    quant = (_bundle_quant(bundle, convs, units, layer_units) if calib is None else
             calibrated_quant(fp32_dir, fp32.manifest["io"], layers, blobs, observer))
    return Prepared(bundle, model, weights_info, source, calib, fp32, layers, layer_units, quant, pairs, observer)


def _observer_note(name: str) -> str:
    if name == "kl":
        return "ncnn2table's default threshold (KL divergence of |x|'s 2048-bin histogram against its 128-level quantization)"
    return f"{name} observer of |x| on half of ncnn's symmetric int8 grid (128 levels over [0, threshold])"


def _manifest(prep: Prepared, rows: List[Dict[str, Any]], winograd_bits: Optional[int]) -> Dict[str, Any]:
    from fdq.host.export.manifest import base_manifest, identity, label
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM

    bundle, fp32_export = prep.bundle, prep.fp32.manifest["export"]
    manifest = base_manifest(bundle, "ncnn", "int8", bundle.long_side)
    manifest["input"].update({k: v for k, v in prep.fp32.manifest["input"].items() if k in ("dynamic_hw", "fixed_hw")})
    int8_count = sum(1 for row in rows if row["int8"])
    quantization: Dict[str, Any] = {
        "level": "ncnn-int8", "weights": "the source bundle's int8 weights" if prep.from_bundle else prep.weights_info,
        "cle": "in the source bundle's weights" if prep.from_bundle else True, "equalized_pairs": prep.equalized_pairs,
        "scales": SCALES_NOTE if prep.from_bundle else f"calibrated by fdq: {_observer_note(prep.observer)} for each "
        "int8 layer's input blob in the fp32 ncnn model; weights 127 / absmax per output channel",
        **({} if prep.from_bundle else {"observer": prep.observer}),
        "winograd": winograd_note(winograd_bits),
        "int8_layers": int8_count, "float_layers": [row["layer"] for row in rows if not row["int8"]],
        "requantized": [row["layer"] for row in rows if "top_scale" in row], "layers": rows}
    export: Dict[str, Any] = {"tool": "fdq.host.export.ncnn_int8 (pnnx fp32 model rewritten as ncnn int8)",
                              **{k: fp32_export[k] for k in ("pnnx_version", "ncnn_version", "torch_version",
                                                              "example_inputs")},
                              "fp32_verification": fp32_export["verification"]}
    calibration = bundle.manifest.get("calibration") if prep.calib is None else prep.calib[1]
    manifest.update({"quantization": quantization, "calibration": calibration, "io": prep.fp32.manifest["io"],
                     "exported_from": prep.source, "export": export, "entry": {"param": NCNN_PARAM, "model": NCNN_BIN}})
    kept_note = f", {len(rows) - int8_count} convolution(s) kept fp32" if len(rows) > int8_count else ""
    if prep.calib is None:
        identity(manifest, export, "source bundle (scales converted to ncnn's symmetric int8)",
                  f"the int8 model of {label(bundle)}, its own weights and scales{kept_note}")
    else:
        identity(manifest, export, "fdq calibration",
                  f"calibrated by fdq ({prep.observer}) on {prep.calib[1]['images']} images of {prep.calib[1]['dir']}, "
                  f"from the float weights of {label(bundle)}{kept_note}")
    return manifest


def write_int8(prep: Prepared, out: PathLike, keep_float: Sequence[str] = (),
               winograd_bits: Optional[int] = WINOGRAD_BITS, force: bool = False) -> Path:
    """The int8 bundle of ``prep`` at ``out``: ``keep_float`` layers fp32, Winograd as
    :func:`fdq.host.export.ncnn_int8_rules.to_int8` takes it; checked against the fp32 model and the source."""
    from fdq.device.decoders.ssd_priors import split_outputs
    from fdq.device.runtimes import load_inference
    from fdq.host.bundles import write_bundle
    from fdq.host.export.check import torch_outputs
    from fdq.host.export.inputs import image_inputs
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM

    kept = _kept_float(keep_float, prep.layer_units)
    layers = copy.deepcopy(prep.layers)
    rows = to_int8(layers, {k: v for k, v in prep.quant.items() if k not in kept}, winograd_bits)
    for row in rows:
        row["unit"] = prep.layer_units[row["layer"]]
        if row["layer"] in kept:
            row["reason"] = "--keep-float"
    manifest = _manifest(prep, rows, winograd_bits)
    export, io, spec = manifest["export"], manifest["io"], prep.bundle.spec

    def write_files(folder: Path) -> None:
        write_model(layers, folder / NCNN_PARAM, folder / NCNN_BIN)
        checks = image_inputs(prep.bundle.long_side, spec.mean_bgr)
        verification = export["verification"] = {
            "inputs": [list(b.shape) for b in checks],
            "max_abs_diff_vs_fp32_ncnn": _runner_diffs(load_inference(prep.fp32), folder, io, checks),
            "note": "outputs as the runner reads them: loc, face score, landmarks"}
        if prep.from_bundle:
            verification["max_abs_diff_vs_source_bundle"] = _runner_diffs(
                load_inference(prep.bundle, threads=1), folder, io, checks)
        else:
            verification["max_abs_diff_vs_float_model"] = _runner_diffs(
                lambda blob: split_outputs(*torch_outputs(prep.model, blob)), folder, io, checks)

    return write_bundle(str(out), manifest, write_files, force=force)


def int8_files(fp32_folder: Path, input_blob: str, blobs: Sequence[np.ndarray], out_folder: Path,
               winograd_bits: Optional[int] = WINOGRAD_BITS) -> List[Dict[str, Any]]:
    """The ncnn int8 files of any fp32 ncnn model (not only a detector's bundle) in ``out_folder``:
    every convolution calibrated on ``blobs`` fed to ``input_blob``, by the export's own rules; returns
    the layer table. For models outside fdq's detectors (scripts/bench_mobilenet_a72.py)."""
    from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM

    layers = read_model(fp32_folder / NCNN_PARAM, fp32_folder / NCNN_BIN)
    quant = calibrated_quant(fp32_folder, {"input": input_blob}, layers, blobs)
    rows = to_int8(layers, quant, winograd_bits)
    out_folder.mkdir(parents=True, exist_ok=True)
    write_model(layers, out_folder / NCNN_PARAM, out_folder / NCNN_BIN)
    return rows


def prepare_bundle(bundle_dir: PathLike, calib_dir: Optional[PathLike], work: Path, observer: str = OBSERVER) -> Prepared:
    """:func:`prepare` for a bundle folder, the way ``fdq export --format ncnn-int8`` prepares it: for the
    benchmarks, which write several models of one preparation."""
    from fdq.host.export.inputs import calibration_images, float_model
    from fdq.host.export.manifest import source_record

    bundle = load_bundle(str(bundle_dir))
    check_request(bundle, calib_dir)
    model, weights_info = float_model(bundle)
    calib = calibration_images(calib_dir) if calib_dir is not None else None
    return prepare(bundle, model, weights_info, bundle.long_side, source_record(bundle), calib, work, observer)


def export_ncnn_int8(bundle: Bundle, model: nn.Module, weights_info: Dict[str, Any], out: PathLike, long_side: int,
                     source: Dict[str, Any], calib: Optional[Tuple[List[Path], Dict[str, Any]]],
                     keep_float: Sequence[str], force: bool) -> Path:
    """Write the ncnn int8 bundle of ``bundle`` at ``out`` (``calib``: images and their record, for a
    float bundle; an int8 bundle brings its scales)."""
    with tempfile.TemporaryDirectory(prefix="fdq-ncnn-int8-") as tmp:
        prep = prepare(bundle, model, weights_info, long_side, source, calib, Path(tmp))
        return write_int8(prep, out, keep_float, force=force)
