"""``fdq quantize``: a float detector -> a self-describing TorchScript bundle, at a chosen data level.

=====  ==================================================  =======================================
level  data                                                method
=====  ==================================================  =======================================
0      none                                                float32 export (``--fp32``)
1      none                                                fp16 weights (``--fp16``) or int8
                                                           calibrated on BN-distilled inputs
2      a folder of images (no labels)                      int8 post-training static quantization
3      images + labels                                     quantization-aware training
4      images                                              QAT distilled from the float model
=====  ==================================================  =======================================

Everything the user chose is validated before any work starts, so bad input costs one error line
and leaves no bundle behind. Every int8 bundle carries a calibration report (float vs int8 on the
held-back calibration images) and a collapse warning when int8 lost far more than it should.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from fdq.device.cliargs import int_at_least

if TYPE_CHECKING:  # the CLI imports this module at start-up: torch is imported only when a command runs
    import torch
    from torch import nn

    from fdq.calibration.data import CalibrationImages
    from fdq.calibration.ptq import Calibrated
    from fdq.device.evaluation import GroundTruth

EXIT_OK = 0


class QuantizeError(ValueError):
    """Bad ``fdq quantize`` input, reported as one line before anything is written."""


@dataclass
class CalibrationSet:
    """A calibration folder split for calibration and for the float-vs-int8 report."""

    images: CalibrationImages
    calibrate_on: CalibrationImages
    held_back: CalibrationImages
    gt: Optional[GroundTruth]   # of all images, when labels are given and evaluable
    blobs: List[torch.Tensor]   # preprocessed ``calibrate_on`` images (level 1: all images)

    @property
    def in_sample(self) -> bool:
        return self.held_back is self.calibrate_on


def _refuse_imported(model: str) -> None:
    """An imported model (its bundle, or an ONNX file) has no PyTorch definition for the torch backends:
    say in one line which int8 formats it gets instead."""
    from pathlib import Path

    from fdq.device.bundle import BundleError, load_bundle
    from fdq.host.export.imported import FORMATS, INT8_FORMATS, is_imported

    path = Path(model)
    try:
        imported_bundle = path.is_dir() and is_imported(load_bundle(model, verify=False))
    except BundleError:
        imported_bundle = False
    if path.suffix.lower() == ".onnx" or imported_bundle:
        formats = " or ".join(INT8_FORMATS)
        raise QuantizeError(f"{model} is an imported model: fdq quantize's torch backends need fdq's own models; it "
                            f"gets {', '.join(FORMATS)} (int8: fdq export BUNDLE --format {formats} --calib DIR, "
                            f"after fdq import for an .onnx file)")


def _check_args(args: argparse.Namespace) -> None:
    """Option combinations, checked before any file is read."""
    from fdq.calibration.quant_api import activation_observer
    from fdq.calibration.quant_api import PT2E_BACKENDS, check_backend
    from fdq.models import SPECS

    _refuse_imported(args.model)
    if args.model not in SPECS:
        raise QuantizeError(f"unknown model '{args.model}' (choose from: {', '.join(SPECS)})")
    if args.fp32:
        if args.level not in (None, 0):
            raise QuantizeError("--fp32 is level 0; do not combine it with --level")
        args.level = 0
    if args.level is None:
        raise QuantizeError("give --level 0|1|2|3|4 (or --fp32)")
    if args.fp16 and args.level != 1:
        raise QuantizeError("--fp16 is a level-1 (no data) method: use --level 1 --fp16")
    int8 = args.level >= 1 and not args.fp16
    if int8:
        if not args.backend:
            raise QuantizeError("int8 needs --backend (qnnpack for ARM, x86 or fbgemm for Intel/AMD)")
        check_backend(args.backend)
        if args.observer:
            activation_observer(args.observer)
    if int8 and args.backend in PT2E_BACKENDS:
        _check_pt2e_args(args)
    if args.reduce_range not in (None, "none") and args.backend == "qnnpack":
        raise QuantizeError("--reduce-range is an x86/fbgemm workaround; qnnpack has no use for it")
    if args.reduce_range is not None and not int8:
        raise QuantizeError("--[no-]reduce-range applies to int8 levels 1-4")
    if args.level == 0 and args.calib:
        raise QuantizeError("level 0 uses no data: drop --calib")
    if args.level >= 2 and not args.calib:
        raise QuantizeError(f"level {args.level} needs --calib DIR (a folder of images)")
    if args.level == 3 and not args.labels:
        raise QuantizeError("level 3 needs --labels (WIDER ground-truth folder, .json or *_bbx_gt.txt)")
    if args.labels and not args.calib:
        raise QuantizeError("--labels describe the --calib images: give --calib too")
    if args.ap_budget is not None:
        if args.ap_budget < 0:
            raise QuantizeError("--ap-budget is a number of AP points >= 0")
        if not (int8 and args.level in (1, 2) and args.calib):
            raise QuantizeError("--ap-budget needs int8 level 1 or 2 and --calib images to measure the drop on")
    if args.sensitivity and not (int8 and args.level in (1, 2)):
        raise QuantizeError("--sensitivity applies to int8 levels 1 and 2")
    if args.bias_correction is not None and not int8:
        raise QuantizeError("--bias-correction applies to int8 levels 1-4")
    if args.bias_correction and args.level >= 3 and args.cle is False:
        raise QuantizeError("--bias-correction at levels 3-4 corrects the folded level-2 model: drop --no-cle")
    if args.cle is not None and not int8:
        raise QuantizeError("--cle applies to int8 levels 1-4")
    training = {"--warmup-iters": args.warmup_iters, "--lr": args.lr, "--freeze-bn-after": args.freeze_bn_after,
                "--freeze-observers-after": args.freeze_observers_after, "--seed": args.seed}
    given = [flag for flag, value in training.items() if value is not None]
    if given and args.level not in (3, 4):
        raise QuantizeError(f"{', '.join(given)} apply to levels 3 and 4 (fine-tuning)")
    if any(value is not None and value < 0 for value in training.values()):
        raise QuantizeError(f"{', '.join(given)} must be >= 0")
    if args.freeze_bn_after and args.cle is not False:
        raise QuantizeError("--freeze-bn-after N > 0 trains BatchNorm statistics, which cross-layer equalization "
                            "folds into the convolutions first: add --no-cle")
    if args.iters is not None and args.iters < 1:
        raise QuantizeError("--iters must be >= 1")


def add_reduce_range_arguments(p: Any, applies_to: str = "") -> None:
    """``--reduce-range [activations|weights|saturating-weights]`` and ``--no-reduce-range`` (``fdq quantize``,
    ``fdq train --qat``)."""
    from fdq.calibration.quant_api import REDUCE_RANGES

    p.add_argument("--reduce-range", nargs="?", const="activations", choices=REDUCE_RANGES[1:], default=None,
                   help=f"{applies_to}x86/fbgemm, whose int8 kernels sum u8 x s8 pairs in int16 and saturate: 7-bit "
                        "activations; 'weights': 7-bit weights (-64..63) in every convolution; "
                        "'saturating-weights': 7-bit weights only in the convolutions whose kernel saturates on "
                        "this machine (default where a probe finds one that does; recorded in the bundle)")
    p.add_argument("--no-reduce-range", dest="reduce_range", action="store_const", const="none",
                   help=f"{applies_to}x86/fbgemm: 8-bit activations and weights everywhere, for kernels that do not "
                        "saturate")


def _choose_reduce_range(args: argparse.Namespace) -> str:
    """Set ``args.reduce_range`` where the user left it to fdq (by this machine's CPU); the reason, for the manifest."""
    from fdq.calibration.quant_api import choose_reduce_range

    args.reduce_range, why = choose_reduce_range(args.backend, args.reduce_range)
    return why


def _check_pt2e_args(args: argparse.Namespace) -> None:
    """``--backend xnnpack`` is PT2E post-training quantization (level 2), with the observers PT2E has."""
    if args.level != 2:
        raise QuantizeError(f"--backend {args.backend} quantizes through PT2E at level 2 only (calibrated on --calib)")
    from fdq.calibration.quant_api import PT2E_OBSERVERS

    if args.observer and args.observer not in PT2E_OBSERVERS:
        raise QuantizeError(f"--backend {args.backend} (PT2E) takes --observer {'|'.join(PT2E_OBSERVERS)}, "
                            f"not {args.observer}")
    given = [flag for flag, on in (("--[no-]reduce-range", args.reduce_range is not None),
                                   ("--sensitivity", args.sensitivity), ("--ap-budget", args.ap_budget is not None),
                                   ("--bias-correction", args.bias_correction)) if on]
    if given:
        raise QuantizeError(f"{', '.join(given)} apply to the eager backends (qnnpack, x86, fbgemm), not {args.backend}")


def _calibration_set(args: argparse.Namespace, mean_bgr: Tuple[float, ...]) -> Optional[CalibrationSet]:
    """The calibration images (and labels, checked against them), or None without --calib.

    Level 1 calibrates on distilled inputs, so every image of the folder is a report image.
    """
    from fdq.calibration.data import find_images, split_holdout
    from fdq.calibration.labels import ground_truth_of, load_labels

    if not args.calib:
        return None
    images = find_images(args.calib)
    blobs, sizes = images.load(args.long_side, mean_bgr)
    gt = None
    if args.labels:
        load_labels(args.labels, images.keys, sizes, images_dir=args.calib)
        gt = ground_truth_of(args.labels)
    if args.level == 1:
        return CalibrationSet(images, images.subset([]), images, gt, blobs)
    calibrate_on, held_back = split_holdout(images)
    by_key = dict(zip(images.keys, blobs))
    return CalibrationSet(images, calibrate_on, held_back, gt, [by_key[k] for k in calibrate_on.keys])


def _subset_gt(cset: CalibrationSet, images: CalibrationImages) -> Optional[GroundTruth]:
    from fdq.calibration.labels import subset_ground_truth

    return subset_ground_truth(cset.gt, images.keys) if cset.gt is not None else None


def _ptq(args: argparse.Namespace, model: nn.Module, cset: Optional[CalibrationSet],
         report: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
    """Levels 1 (int8) and 2: calibrate, optionally analyse and keep sensitive layers float."""
    from fdq.calibration import ptq
    from fdq.calibration.datafree import DISTILL_STEPS
    from fdq.calibration.quant_api import calibration_threads

    options = ptq.PTQOptions(backend=args.backend, observer=args.observer or "histogram",
                             per_channel=args.per_channel, reduce_range=args.reduce_range, cle=args.cle is not False,
                             bias_correction=bool(args.bias_correction))
    steps = args.iters or DISTILL_STEPS
    if args.level == 1:
        calibrated = ptq.calibrate_datafree(model, options, steps=steps)
    else:
        calibrated = ptq.calibrate(model, options, cset.blobs)
    section: Dict[str, Any] = {"method": "ptq-datafree" if args.level == 1 else "ptq", **options.to_dict(),
                               "equalized_pairs": calibrated.equalized_pairs}
    if args.level == 1:
        section["distill_steps"] = steps
    float_units: List[str] = []
    quantized = calibrated.convert()
    if args.sensitivity or args.ap_budget is not None:
        with calibration_threads():  # the float layers kept follow these measurements
            float_units, quantized = _sensitivity(args, model, cset, calibrated, quantized, report)
    section["ap_budget"] = args.ap_budget
    section["float_units"] = float_units
    return quantized, section


def _pt2e(args: argparse.Namespace, model: nn.Module, cset: CalibrationSet) -> Tuple[nn.Module, Dict[str, Any]]:
    """Level 2 for XNNPACK: PT2E quantization (:func:`fdq.calibration.ptq.calibrate_pt2e`)."""
    from fdq.calibration.ptq import calibrate_pt2e
    from fdq.calibration.quant_api import PT2E_DEFAULT_OBSERVER
    from fdq.host.export.executorch import export_inputs

    example, dynamic, _ = export_inputs(args.long_side)
    cle = args.cle is not False
    observer = args.observer or PT2E_DEFAULT_OBSERVER
    quantized, pairs = calibrate_pt2e(model, cset.blobs, example, dynamic, args.per_channel, cle, observer)
    return quantized, {"method": "ptq-pt2e", "backend": args.backend, "quantizer": "XNNPACKQuantizer",
                       "config": "get_symmetric_quantization_config, weight eps float32", "observer": observer,
                       "per_channel": args.per_channel, "cle": cle, "equalized_pairs": pairs}


def _sensitivity(args: argparse.Namespace, model: nn.Module, cset: CalibrationSet, calibrated: Calibrated,
                 quantized: nn.Module, report: Dict[str, Any]) -> Tuple[List[str], nn.Module]:
    """Per-layer report and, with --ap-budget, mixed precision; measured on every calibration image
    (the AP of a handful of held-back images is too noisy to rank layers by)."""
    from fdq.calibration import report as calib_report
    from fdq.calibration import sensitivity

    spec = model.spec
    gt_all = _subset_gt(cset, cset.images)
    float_dets = calib_report.detect(model, spec, args.long_side, cset.images)
    truth = gt_all if gt_all is not None else calib_report.pseudo_ground_truth(float_dets)
    float_ap = calib_report.ap_points(float_dets, truth)

    def evaluate(candidate: nn.Module) -> Dict[str, float]:
        return calib_report.ap_points(calib_report.detect(candidate, spec, args.long_side, cset.images), truth)

    def drop(candidate: nn.Module) -> float:
        ap = evaluate(candidate)
        return max(float_ap[s] - ap.get(s, 0.0) for s in float_ap)

    ranking = sensitivity.analyse(calibrated, quantized, cset.blobs[:4], evaluate)
    report["sensitivity"] = {"measured_on_images": len(cset.images),
                             "against": "labels" if gt_all is not None else "float detections",
                             "layers": [vars(r) for r in ranking]}
    if args.ap_budget is None:
        return [], quantized
    units, quantized, final_drop, search = sensitivity.choose_float_units(calibrated, ranking, drop, args.ap_budget)
    report["mixed_precision"] = {"ap_budget": args.ap_budget, "ap_drop": round(final_drop, 3),
                                 "met": final_drop <= args.ap_budget, "search": search}
    if final_drop > args.ap_budget:
        _warn(report, f"--ap-budget {args.ap_budget:g} not met: the best mix ({len(units)} float layers) "
                      f"still loses {final_drop:.2f} AP points on the calibration images")
    return units, quantized


def _warn(report: Dict[str, Any], message: str) -> None:
    """Record ``message`` in the bundle report and emit it as a QuantizationCollapseWarning."""
    from fdq.calibration.report import QuantizationCollapseWarning

    report["warnings"].append(message)
    warnings.warn(message, QuantizationCollapseWarning, stacklevel=3)


# What the training run reports about its effective settings (defaults included) for the manifest.
_QAT_MANIFEST_KEYS = ("iters", "statassist", "gradboost", "observer", "per_channel", "gt_loss", "options")


def _qat(args: argparse.Namespace, model: nn.Module, report: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
    """Levels 3 and 4, by :func:`fdq.calibration.qat.run_level`."""
    import torch

    try:
        from fdq.calibration.qat import run_level
    except ImportError as exc:
        raise QuantizeError(f"level {args.level} is not available in this installation ({exc})") from None
    options: Dict[str, Any] = {"backend": args.backend, "long_side": args.long_side,
                               "statassist": args.statassist, "gradboost": args.gradboost,
                               "per_channel": args.per_channel}
    if args.iters:
        options["iters"] = args.iters
    if args.observer:
        options["observer"] = args.observer
    for name in ("cle", "bias_correction", "warmup_iters", "lr", "freeze_bn_after", "freeze_observers_after", "seed"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    options["reduce_range"] = args.reduce_range
    quantized, qat_report = run_level(args.level, args.model, model, args.calib, args.labels, **options)
    report["training"] = qat_report
    effective = {k: qat_report[k] for k in _QAT_MANIFEST_KEYS if k in qat_report}
    # Training's float sums (and the fake-quant ranges that read them) follow torch's thread count: with the
    # seed, what reproduces the bundle bit for bit (OMP_NUM_THREADS=N), as level 2's fixed calibration count does.
    return quantized, {"method": "qat" if args.level == 3 else "qat-distill", **options, **effective,
                       "training_threads": torch.get_num_threads()}


def quantize_command(args: argparse.Namespace) -> Path:
    """Run ``fdq quantize`` and return the bundle path; collapse warnings are emitted, never hidden."""
    from fdq.calibration import report as calib_report
    from fdq.calibration.datafree import to_fp16
    from fdq.calibration.quant_api import PT2E_BACKENDS, narrowed_units
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.host.zoo import resolve_weights
    from fdq.models import SPECS, load_model

    from fdq.device.outputs import check_folder_output

    start = time.perf_counter()
    _check_args(args)
    check_folder_output(args.out, args.force)
    spec = SPECS[args.model]
    weights = resolve_weights(args.model, args.weights)
    cset = _calibration_set(args, spec.mean_bgr)
    model = load_model(args.model, weights)
    int8 = args.level >= 1 and not args.fp16
    report: Dict[str, Any] = {"model": args.model, "level": args.level, "warnings": []}
    section: Dict[str, Any] = {"level": args.level}
    if args.level == 0:
        exported, dtype, engine = model, "fp32", None
        section.update(method="float")
    elif args.fp16:
        exported, dtype, engine = to_fp16(model), "fp16", None
        section.update(method="fp16-weights")
    else:
        engine, dtype = args.backend, "int8"
        if args.backend in PT2E_BACKENDS:
            exported, method = _pt2e(args, model, cset)
        else:
            why = _choose_reduce_range(args)
            exported, method = _ptq(args, model, cset, report) if args.level <= 2 else _qat(args, model, report)
            method["reduce_range_reason"] = why
            if args.reduce_range == "saturating-weights":
                method["reduce_range_units"] = narrowed_units(exported)
        section.update(method)
    if cset is not None and args.level >= 1:
        check = calib_report.compare(model, exported, spec, args.long_side, cset.held_back,
                                     _subset_gt(cset, cset.held_back), cset.in_sample)
        report["calibration_report"] = check
        for message in check["warnings"]:
            _warn(report, message)
    elif int8:
        _warn(report, "int8 model was not checked against float on any image (give --calib images "
                      "to get a float-vs-int8 report)")
    calibration = None
    if cset is not None:
        calibration = {**cset.images.manifest(), "held_back_images": len(cset.held_back),
                       "in_sample_report": cset.in_sample, "labels": bool(args.labels)}
    elif args.level == 1 and int8:
        calibration = {"images": 0, "data": "distilled from BatchNorm statistics"}
    report["seconds"] = round(time.perf_counter() - start, 2)
    if engine in PT2E_BACKENDS:
        from fdq.host.export.executorch import write_executorch_bundle

        return write_executorch_bundle(exported, model, spec, args.long_side, args.out, dtype=dtype,
                                       manifest={"quantization": section, "calibration": calibration},
                                       report=report, force=args.force)
    return save_torchscript_bundle(exported, spec, args.long_side, args.out, engine=engine, dtype=dtype,
                                   quantization=section, calibration=calibration, report=report,
                                   force=args.force)


def _run(args: argparse.Namespace) -> int:
    from fdq.calibration.report import QuantizationCollapseWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizationCollapseWarning)
        path = quantize_command(args)
    collapse = [w for w in caught if issubclass(w.category, QuantizationCollapseWarning)]
    for w in caught:
        if w not in collapse:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for w in collapse:
        print(f"fdq quantize: WARNING: {w.message}", file=sys.stderr)
    print_summary(json.loads((path / "report.json").read_text(encoding="utf-8")), path)
    return EXIT_OK


def print_summary(report: Dict[str, Any], path: Path) -> None:
    """The bundle's own report in a table: float vs quantized on the held-back images, and warnings."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    check = report.get("calibration_report")
    if check:
        where = "in-sample" if check["in_sample"] else "held-back"
        table = Table(title=f"{report['model']} level {report['level']}: float vs quantized on "
                            f"{check['images']} {where} calibration images (long side {check['long_side']})")
        for column in ("measure", "easy", "medium", "hard"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        rows = [("AP float (labels)", check.get("float_ap")), ("AP quantized (labels)", check.get("quantized_ap")),
                ("AP drop (points)", check.get("ap_drop")),
                ("AP against float faces", check["quantized_agreement_ap"])]
        for name, values in rows:
            if values is not None:
                table.add_row(name, *(f"{values[s]:.2f}" if s in values else "-" for s in ("easy", "medium", "hard")))
        console.print(table)
        agreement, error = check["agreement"], check["output_error"]
        recall = "n/a" if agreement["recall"] is None else f"{100 * agreement['recall']:.1f}%"
        console.print(f"faces of float found by the quantized model: {agreement['matched']}/"
                      f"{agreement['float_faces']} ({recall}); output error: box offset {error['box_offset']}, "
                      f"face logit {error['face_logit']} over {error['anchors']} anchors", highlight=False)
    for message in report.get("warnings", []):
        console.print(f"[bold red]WARNING:[/] {message}")
    console.print(f"wrote {path}", highlight=False)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``quantize`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("quantize", help="quantize a detector into a bundle (levels 0-4)",
                              description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--model", required=True, help="slim, rfb or mnet025")
    p.add_argument("--weights", help="weights file or zoo name (default: the model's zoo weights)")
    p.add_argument("--level", type=int, choices=range(5),
                   help="0 float, 1 no data, 2 images, 3 QAT, 4 distillation (required unless --fp32)")
    p.add_argument("--fp32", action="store_true", help="float32 export (same as --level 0)")
    p.add_argument("--fp16", action="store_true", help="level 1 with fp16 weights instead of int8")
    p.add_argument("--backend",
                   help="quantized engine: qnnpack (ARM), x86 or fbgemm (Intel/AMD) (required for int8); xnnpack: "
                        "PT2E, level 2, an ExecuTorch bundle")
    p.add_argument("--calib", help="folder of calibration images (level >= 2; level 1: report only)")
    p.add_argument("--labels", help="ground truth of the --calib images (WIDER .mat folder, .json, *_bbx_gt.txt)")
    p.add_argument("--observer", help="activation observer: minmax, moving-minmax, histogram (the default), "
                                      "percentile (xnnpack: histogram, percentile, minmax)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                         help="per-channel int8 weights (the default)")
    weights.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor int8 weights")
    add_reduce_range_arguments(p)
    p.add_argument("--cle", action=argparse.BooleanOptionalAction, default=None,
                   help="cross-layer equalization before quantizing (default on for int8; levels 3-4 "
                        "then fine-tune the level-2 model)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=None,
                   help="fold the mean error of weight rounding, measured on the calibration images, into the "
                        "biases (int8 levels 1-4; off by default: lower output error, AP within noise)")
    p.add_argument("--iters", type=int, help="level 1: BN-distillation steps (default 200); levels 3-4: QAT iterations")
    p.add_argument("--warmup-iters", type=int, help="levels 3-4: StatAssist float warm-up iterations (default 20)")
    p.add_argument("--lr", type=float, help="levels 3-4: learning rate (default 1e-5, Adam)")
    p.add_argument("--freeze-bn-after", type=int,
                   help="levels 3-4 with --no-cle: QAT iterations before BatchNorm statistics freeze (default 0)")
    p.add_argument("--freeze-observers-after", type=int,
                   help="levels 3-4: QAT iterations before weight observers freeze (default half of --iters)")
    p.add_argument("--seed", type=int, help="levels 3-4: seed of the batch order, augmentation and GradBoost "
                                            "noise (default 0)")
    p.add_argument("--statassist", action=argparse.BooleanOptionalAction, default=True, help="levels 3-4")
    p.add_argument("--gradboost", action=argparse.BooleanOptionalAction, default=True, help="levels 3-4")
    p.add_argument("--sensitivity", action="store_true", help="per-layer sensitivity report (needs --calib)")
    p.add_argument("--ap-budget", type=float, help="keep the most sensitive layers in float until the AP drop "
                                                   "on the calibration images is at most this many points")
    p.add_argument("--long-side", type=int_at_least("--long-side", 32), default=320, help="input long side of the bundle")
    p.add_argument("--out", required=True, help="bundle folder to write (a new path or an empty folder)")
    p.add_argument("--force", action="store_true", help="replace an existing fdq bundle at --out")
    p.set_defaults(func=_run)
    return p
