#!/usr/bin/env python3
"""MNN int8 settings against MNN float: AP on val, calibrated on calib/ only, and inference time.

For each model and long side the float model goes through ONNX and MNN's converter once; every
setting then quantizes that float ``.mnn`` with MNN's offline tool (``quantize_mnn``, the export's own
code) on the calibration images preprocessed as the runner does, and is evaluated through the runner's
pipeline (uint8 resize, normalize, MNN, decode, NMS) on the val split. Time per image: inference only,
1 thread, median over the val images after one untimed pass, every setting (and float) on each image
in turn so that all of them share the moment's load; reported as a ratio to MNN float of the same run.

    python scripts/bench_mnn_int8.py --models slim,rfb,mnet025 --long-sides 320,640

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
from typing import Any, Dict, List

import numpy as np

from fdq.device.evaluation import evaluate, load_ground_truth, to_wider_rows
from fdq.device.images import list_images, read_image
from fdq.device.runtimes import split_outputs
from fdq.host.export import _export_onnx_float, calibration_images, preprocessed
from fdq.host.export_check import OUTPUT_NAMES
from fdq.host.export_mnn import convert_onnx, quantize_mnn
from fdq.device.runtimes import open_mnn, run_mnn
from fdq.device.detector import FaceDetector
from fdq.host.zoo import resolve_weights
from fdq.models import SPECS, load_model

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- bench_mnn_int8:begin -->", "<!-- bench_mnn_int8:end -->"
SETTINGS_AP = ("easy", "medium", "hard")
# name -> (quantize_mnn settings, calibration images: None = all of calib/)
SETTINGS: Dict[str, Dict[str, Any]] = {
    "ema": {"feature_quantize_method": "EMA"},
    "kl": {"feature_quantize_method": "KL"},
    "admm": {"feature_quantize_method": "ADMM"},
    "admm-skip-heads": {"feature_quantize_method": "ADMM", "skip": ("heads",)},
    "admm-skip-first-heads": {"feature_quantize_method": "ADMM", "skip": ("first", "heads")},
    "admm-wadmm-skip-first-heads": {"feature_quantize_method": "ADMM", "weight_quantize_method": "ADMM",
                                    "skip": ("first", "heads")},
    "kl-skip-heads": {"feature_quantize_method": "KL", "skip": ("heads",)},
    "kl-skip-first-heads": {"feature_quantize_method": "KL", "skip": ("first", "heads")},
    "kl-wadmm-skip-first-heads": {"feature_quantize_method": "KL", "weight_quantize_method": "ADMM",
                                  "skip": ("first", "heads")},
}


def mnn_detector(path: Path, model: str, side: int, fp32: bool) -> FaceDetector:
    module = open_mnn(str(path), "input", OUTPUT_NAMES, threads=1, fp32=fp32)
    timed: List[float] = []

    def infer(blob: np.ndarray):
        started = time.perf_counter()
        out = run_mnn(module, blob)
        timed.append(1000 * (time.perf_counter() - started))
        return split_outputs(*out)

    detector = FaceDetector(infer, SPECS[model], side, resize="uint8")
    detector.inference_ms = timed  # type: ignore[attr-defined]
    return detector


def run(models: List[str], sides: List[int], names: List[str], data: Path, calib_limit: int,
        work: Path) -> Dict[str, Any]:
    gt = load_ground_truth(data / "val" / "ground_truth")
    images = [(key, read_image(p)) for key, p in list_images(str(data / "val" / "images"))]
    paths, calib_info = calibration_images(data / "calib" / "images", calib_limit or None)
    # Every conversion before any calibration: after MNN's ADMM or KL the converter cannot run again here.
    for model in models:
        net = load_model(model, resolve_weights(model, None))
        for side in sides:
            _export_onnx_float(net, work / f"{model}-{side}.onnx", side)
            convert_onnx(work / f"{model}-{side}.onnx", work / f"{model}-{side}-float.mnn")
    rows: List[Dict[str, Any]] = []
    for model in models:
        for side in sides:
            float_path = work / f"{model}-{side}-float.mnn"
            blobs = list(preprocessed(paths, side, SPECS[model].mean_bgr))
            detectors = {"float": mnn_detector(float_path, model, side, True)}
            made: Dict[str, Dict[str, Any]] = {}
            for name in names:
                started = time.perf_counter()
                out = work / f"{model}-{side}-{name}.mnn"
                used = quantize_mnn(float_path, out, blobs, settings=SETTINGS[name])
                made[name] = {"quantize_s": round(time.perf_counter() - started, 1), "float_ops": used["float_ops"]}
                detectors[name] = mnn_detector(out, model, side, False)
                print(f"{model} {side} {name}: quantized in {made[name]['quantize_s']} s", flush=True)
            predictions: Dict[str, Dict[str, np.ndarray]] = {k: {} for k in detectors}
            for _ in range(2):  # an untimed pass (first sizes), then the measured one
                for det in detectors.values():
                    det.inference_ms.clear()
                for key, image in images:
                    for name, det in detectors.items():
                        dets = det.detect(image)
                        predictions[name][key] = to_wider_rows(dets.boxes, dets.scores)
            ap = {name: {s: round(100 * evaluate(pred, gt)[s], 3) for s in SETTINGS_AP}
                  for name, pred in predictions.items()}
            median = {name: float(np.median(det.inference_ms)) for name, det in detectors.items()}
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


def write_section(doc: Path, text: str) -> None:
    content = doc.read_text(encoding="utf-8")
    block = f"{MARK_BEGIN}\n{text}\n{MARK_END}"
    if MARK_BEGIN in content:
        head, rest = content.split(MARK_BEGIN, 1)
        content = head + block + rest.split(MARK_END, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(content, encoding="utf-8")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="slim,rfb,mnet025")
    parser.add_argument("--long-sides", default="320,640")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"from: {', '.join(SETTINGS)}")
    parser.add_argument("--calib-limit", type=int, default=0, help="first N calibration images (0: all)")
    parser.add_argument("--data", default=str(Path(os.environ.get("FDQ_SHARED", ROOT.parent / "shared"))
                                               / "data" / "widerface_val_subset"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "bench_mnn_int8.json"))
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the table in docs/ACCURACY.md")
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    bad = [n for n in names if n not in SETTINGS]
    if bad:
        parser.error(f"unknown setting(s) {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="fdq-bench-mnn-") as tmp:
        result = run(args.models.split(","), [int(s) for s in args.long_sides.split(",")], names, Path(args.data),
                     args.calib_limit, Path(tmp))
    result["command"] = "python scripts/bench_mnn_int8.py " + " ".join(argv)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not args.no_docs:
        write_section(ROOT / "docs" / "ACCURACY.md", f"`{result['command']}`\n\n{table(result['rows'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
