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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from benchlib.data import REPO, Data, add_result_arguments, data_of
from benchlib.docs import write_section
from benchlib.detectors import comparison_table, measure, timed_detector
from benchlib.results import result, write_result

from fdq.device.detector import FaceDetector
from fdq.device.evaluation import SETTINGS as SETTINGS_AP
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.decoders.ssd_priors import split_outputs
from fdq.device.runtimes import open_mnn, run_mnn
from fdq.host.export.check import OUTPUT_NAMES
from fdq.host.export.inputs import calibration_images, preprocessed
from fdq.host.export.mnn import convert_onnx, graph_ops, quantize_mnn
from fdq.host.export.onnx import export_onnx_float as _export_onnx_float
from fdq.host.zoo import resolve_weights
from fdq.models import SPECS, load_model

MARK_BEGIN, MARK_END = "<!-- bench_mnn_int8:begin -->", "<!-- bench_mnn_int8:end -->"
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


def mnn_detector(path: Path, model: str, side: int, fp32: bool) -> Tuple[FaceDetector, List[float]]:
    """The runner's pipeline around one ``.mnn`` file, and the list its inference times (ms) go to."""
    module = open_mnn(str(path), "input", OUTPUT_NAMES, threads=1, fp32=fp32)
    return timed_detector(lambda blob: split_outputs(*run_mnn(module, blob)), SPECS[model], side)


def run(models: List[str], sides: List[int], names: List[str], data: Data, calib_limit: int,
        work: Path) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The rows, and what was calibrated on."""
    gt, images = data.ground_truth(), data.read_val()
    paths, calib_info = calibration_images(data.calib_images, calib_limit or None)
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
    return rows, calib_info


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
    data = data_of(args, "val", "calib")
    with tempfile.TemporaryDirectory(prefix="fdq-bench-mnn-") as tmp:
        rows, calibration = run(args.models.split(","), [int(s) for s in args.long_sides.split(",")], names, data,
                                args.calib_limit, Path(tmp))
    doc = result("bench_mnn_int8", rows, argv=argv, settings={"calibration": calibration, "threads": 1})
    write_result(target, doc)
    if not args.no_docs:
        write_section(REPO / "docs" / "ACCURACY.md", [MARK_BEGIN, f"`{doc['command']}`", "", comparison_table(rows), MARK_END],
                      "MNN int8: which of MNN's calibrations (issue 14)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
