#!/usr/bin/env python3
"""MNN int8 settings against MNN float: AP on val, calibrated on calib/ only, and inference time.

For each model and long side the float model goes through ONNX and MNN's converter once; every
setting then quantizes that float ``.mnn`` with MNN's offline tool (``quantize_mnn``, the export's own
code) on the calibration images preprocessed as the runner does, and is evaluated through the runner's
pipeline (uint8 resize, normalize, MNN, decode, NMS) on the val split. Time per image: inference only,
1 thread, median over the val images after one untimed pass, every setting (and float) on each image
in turn so that all of them share the moment's load; reported as a ratio to MNN float of the same run.

    python scripts/bench_mnn_int8.py --models slim,rfb,mnet025 --long-sides 320,640 --force

Writes docs/results/bench_mnn_int8.json and the table between its markers in docs/ACCURACY.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import write_section  # noqa: E402  (same folder: the docs block)

from fdq.device.atomic import atomic_write_text  # noqa: E402
from fdq.device.detector import FaceDetector  # noqa: E402
from fdq.device.evaluation import evaluate, load_ground_truth, to_wider_rows  # noqa: E402
from fdq.device.images import list_images, read_image  # noqa: E402
from fdq.device.outputs import checked_outputs_or_exit  # noqa: E402
from fdq.device.runtimes import open_mnn, run_mnn, split_outputs  # noqa: E402
from fdq.host.export import _export_onnx_float, calibration_images, preprocessed  # noqa: E402
from fdq.host.export_check import OUTPUT_NAMES  # noqa: E402
from fdq.host.export_mnn import convert_onnx, graph_ops, quantize_mnn  # noqa: E402
from fdq.host.zoo import resolve_weights  # noqa: E402
from fdq.models import SPECS, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- bench_mnn_int8:begin -->", "<!-- bench_mnn_int8:end -->"
SETTINGS_AP = ("easy", "medium", "hard")
# name -> quantize_mnn settings, every key given (the export's default keeps ops in float); "-mirror":
# calibrated on the images and their horizontal mirrors
SETTINGS: Dict[str, Dict[str, Any]] = {
    f"{feature.lower()}{'-wadmm' if weight == 'ADMM' else ''}{'-skip-' + '-'.join(skip) if skip else ''}"
    f"{'-mirror' if mirror else ''}":
        {"feature_quantize_method": feature, "weight_quantize_method": weight, "skip": skip, "mirror": mirror}
    for feature, weight, skip, mirror in [
        ("EMA", "MAX_ABS", (), False), ("KL", "MAX_ABS", (), False), ("KL", "MAX_ABS", ("heads",), False),
        ("KL", "MAX_ABS", ("first", "heads"), False), ("KL", "ADMM", ("first", "heads"), False),
        ("ADMM", "MAX_ABS", (), False), ("ADMM", "MAX_ABS", ("heads",), False),
        ("ADMM", "MAX_ABS", ("first", "heads"), False), ("ADMM", "ADMM", ("first", "heads"), False),
        ("ADMM", "ADMM", ("first", "heads", "preheads"), False), ("ADMM", "MAX_ABS", ("first", "heads", "preheads"), False),
        ("ADMM", "ADMM", ("first", "heads"), True), ("ADMM", "MAX_ABS", ("first", "heads"), True),
        ("ADMM", "ADMM", ("first", "heads", "preheads"), True)]}


def timed_detector(infer: Callable[[np.ndarray], Any], spec: Any, side: int) -> Tuple[FaceDetector, List[float]]:
    """The runner's pipeline (uint8 resize) around ``infer``, and the list its inference times (ms) go to."""
    timed: List[float] = []

    def timed_infer(blob: np.ndarray):
        started = time.perf_counter()
        out = infer(blob)
        timed.append(1000 * (time.perf_counter() - started))
        return out

    return FaceDetector(timed_infer, spec, side, resize="uint8"), timed


def mnn_detector(path: Path, model: str, side: int, fp32: bool) -> Tuple[FaceDetector, List[float]]:
    """The runner's pipeline around one ``.mnn`` file, and the list its inference times (ms) go to."""
    module = open_mnn(str(path), "input", OUTPUT_NAMES, threads=1, fp32=fp32)
    return timed_detector(lambda blob: split_outputs(*run_mnn(module, blob)), SPECS[model], side)


def measure(detectors: Dict[str, Tuple[FaceDetector, List[float]]], images: List[Tuple[str, np.ndarray]],
            gt: Any) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """AP per setting and median inference ms of each detector, all on each image in turn (one load for all)."""
    predictions: Dict[str, Dict[str, np.ndarray]] = {k: {} for k in detectors}
    for _ in range(2):  # an untimed pass (first sizes), then the measured one
        for _, times in detectors.values():
            times.clear()
        for key, image in images:
            for name, (det, _) in detectors.items():
                dets = det.detect(image)
                predictions[name][key] = to_wider_rows(dets.boxes, dets.scores)
    ap = {name: {s: round(100 * evaluate(pred, gt)[s], 3) for s in SETTINGS_AP} for name, pred in predictions.items()}
    return ap, {name: float(np.median(times)) for name, (_, times) in detectors.items()}


def run(models: List[str], sides: List[int], names: List[str], data: Path, calib_limit: int,
        work: Path) -> Dict[str, Any]:
    gt = load_ground_truth(data / "val" / "ground_truth")
    images = [(key, read_image(p)) for key, p in list_images(str(data / "val" / "images"))]
    paths, calib_info = calibration_images(data / "calib" / "images", calib_limit or None)
    # Every conversion (and op listing) before any calibration: after MNN's ADMM or KL the converter
    # cannot run again here.
    graphs: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for model in models:
        net = load_model(model, resolve_weights(model, None))
        for side in sides:
            _export_onnx_float(net, work / f"{model}-{side}.onnx", side)
            convert_onnx(work / f"{model}-{side}.onnx", work / f"{model}-{side}-float.mnn")
            graphs[model, side] = graph_ops(work / f"{model}-{side}-float.mnn")
    rows: List[Dict[str, Any]] = []
    for model in models:
        for side in sides:
            float_path = work / f"{model}-{side}-float.mnn"
            blobs = list(preprocessed(paths, side, SPECS[model].mean_bgr))
            detectors = {"float": mnn_detector(float_path, model, side, True)}  # name -> (detector, times)
            made: Dict[str, Dict[str, Any]] = {}
            for name in names:
                started = time.perf_counter()
                out = work / f"{model}-{side}-{name}.mnn"
                used = quantize_mnn(float_path, out, blobs, settings=SETTINGS[name], ops=graphs[model, side])
                made[name] = {"quantize_s": round(time.perf_counter() - started, 1), "float_ops": used["float_ops"]}
                detectors[name] = mnn_detector(out, model, side, False)
                print(f"{model} {side} {name}: quantized in {made[name]['quantize_s']} s", flush=True)
            ap, median = measure(detectors, images, gt)
            for name in detectors:
                row = {"model": model, "long_side": side, "setting": name, "ap": ap[name],
                       "ap_minus_float": {s: round(ap[name][s] - ap["float"][s], 3) for s in SETTINGS_AP},
                       "inference_ms_p50": round(median[name], 3),
                       "inference_vs_float": round(median[name] / median["float"], 3),
                       **({"settings": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in SETTINGS[name].items()}, **made[name]} if name in made else {})}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"calibration": calib_info, "rows": rows}


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model | side | setting | easy | medium | hard | worst vs float | inference vs float |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        worst = min(r["ap_minus_float"].values())
        lines.append(f"| {r['model']} | {r['long_side']} | {r['setting']} | "
                     + " | ".join(f"{r['ap'][s]:.2f}" for s in SETTINGS_AP)
                     + f" | {worst:+.2f} | {r['inference_vs_float']:.2f}x |")
    return "\n".join(lines)


def add_result_arguments(parser: argparse.ArgumentParser, option: str, result: str) -> None:
    """The options of every int8 comparison here: ``--data`` (the WIDER FACE subset), the result file
    ``option`` (default ``docs/results/RESULT``), ``--no-docs`` and ``--force``."""
    parser.add_argument("--data", default=str(Path(os.environ.get("FDQ_SHARED", ROOT.parent / "shared"))
                                               / "data" / "widerface_val_subset"))
    parser.add_argument(option, default=str(ROOT / "docs" / "results" / result))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/ACCURACY.md")
    parser.add_argument("--force", action="store_true", help=f"replace an existing {option}")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="slim,rfb,mnet025")
    parser.add_argument("--long-sides", default="320,640")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"from: {', '.join(SETTINGS)}")
    parser.add_argument("--calib-limit", type=int, default=0, help="first N calibration images (0: all)")
    add_result_arguments(parser, "--out", "bench_mnn_int8.json")
    args = parser.parse_args(argv)
    target, = checked_outputs_or_exit("bench_mnn_int8", args.force, ("--out", args.out))
    names = [n for n in args.settings.split(",") if n]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        parser.error(f"unknown setting(s) {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="fdq-bench-mnn-") as tmp:
        result = run(args.models.split(","), [int(s) for s in args.long_sides.split(",")], names, Path(args.data),
                     args.calib_limit, Path(tmp))
    result["command"] = "python scripts/bench_mnn_int8.py " + " ".join(argv)
    atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    if not args.no_docs:
        write_section(str(ROOT / "docs" / "ACCURACY.md"),
                      [MARK_BEGIN, f"`{result['command']}`", "", table(result["rows"]), MARK_END],
                      "MNN int8: which of MNN's calibrations (issue 14)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
