#!/usr/bin/env python
"""Benchmark every quantization level: WIDER val AP, bundle size and 1-thread latency.

Every row is a real bundle written by ``fdq quantize`` (the product path: a recipe of
``benchlib.recipes``, run in a process of its own at 1 thread), loaded back with the device loader
and scored on the val images with the official protocol at each long side (a bundle per long side:
calibration sees the resolution it will run at). Latency: median over ``--runs`` calls after
``--warmup`` calls on one thread, for every bundle built at long side 320 and for the float model in
eager PyTorch, all in this one process. Each gets the input its own
preprocessing makes of one 320x240 uint8 frame, as on the board: an int8 bundle the quint8
channels-last blob of the C kernel, the others (and eager) the float32 NCHW blob.

Writes ``--json`` (every number) and ``--markdown`` (tables and the goal checks).

Example (the full run)::

    python scripts/bench_quant.py --force --json docs/results/bench_quant.json --markdown docs/results/bench_quant.md

Rows of one method only (``--only``, with ``fp32`` for the drop columns), one run per backend merged
by ``--from-json``, as the entropy rows of docs/HISTORY.md were made (docs/results/raw/bench_quant_entropy*.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchlib.data import Data, add_data_argument, data_of
from benchlib.recipes import RECIPES, build, fdq_args
from benchlib.results import read_result, result, write_result
from benchlib.scoring import score
from benchlib.timing import paired_median_ms

from fdq.calibration.data import find_images
from fdq.calibration.quant_api import OBSERVER_NAMES
from fdq.calibration.report import output_error
from fdq.device.atomic import atomic_write_text
from fdq.device.bundle import load_bundle
from fdq.device.evaluation import SETTINGS
from fdq.device.images import list_images, read_image
from fdq.device.kernels import normalize_c
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.preprocess import resize_image
from fdq.device.runtimes import bundle_detector
from fdq.host.torch_inference import torch_inference
from fdq.host.zoo import resolve_weights
from fdq.models import MODEL_NAMES, SPECS, load_model

LATENCY_HW = (240, 320)
GOAL_AP_POINTS = 1.0
GOAL_QAT_AP_POINTS = 0.5
GOAL_LATENCY_RATIO = 0.25
GOAL_SIZE_RATIO = 0.40


LEVELS = ("fp32", "fp16", "l1", "l2", "l3", "l4")


def rows_for(levels: Sequence[str], observers: Sequence[str]) -> List[str]:
    """The recipes (benchlib.recipes) of these --levels groups, level-2 observer rows of ``observers`` only."""
    return [key for level in levels for key, r in RECIPES.items()
            if r.row == level and (r.observer is None or r.observer in observers)]


def level_available(level: int) -> bool:
    """Levels 3/4 come from another module; skip them cleanly where it is missing."""
    import importlib

    module = {3: "fdq.calibration.qat", 4: "fdq.calibration.qat"}.get(level)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def latency_frame(val_images: str) -> Tuple[np.ndarray, str]:
    """The frame every latency is measured on, as a camera delivers it (uint8 BGR, exactly
    LATENCY_HW), so each runtime is timed on the input its own preprocessing makes: the first val
    image resized to that long side, centred, cropped or zero-padded. Returns it and its key."""
    key, path = list_images(val_images)[0]
    resized, _ = resize_image(read_image(path), max(LATENCY_HW))
    resized = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    (out_h, out_w), (in_h, in_w) = LATENCY_HW, resized.shape[:2]
    h, w = min(in_h, out_h), min(in_w, out_w)
    top, left, y, x = (in_h - h) // 2, (in_w - w) // 2, (out_h - h) // 2, (out_w - w) // 2
    frame = np.zeros((out_h, out_w, 3), np.uint8)
    frame[y:y + h, x:x + w] = resized[top:top + h, left:left + w]
    return frame, key


def run(args: argparse.Namespace, data: Data) -> Dict[str, Any]:
    torch.set_num_threads(1)
    val_images, gt = str(data.val_images), data.ground_truth()
    keys = [k for k in rows_for(args.levels, args.observers)
            if level_available(RECIPES[k].level) and (not args.only or k in args.only)]
    skipped = sorted({r for r in args.levels if r in ("l3", "l4")} - {RECIPES[k].row for k in keys})
    frame, frame_key = latency_frame(val_images)
    results: List[Dict[str, Any]] = []
    eager: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_quant.") as tmp:
        work = Path(tmp)
        for model in args.models:
            float_model = load_model(model, resolve_weights(model, None)).eval()
            eager_infer = torch_inference(float_model)
            val_blobs = {ls: [b.numpy() for b in find_images(val_images).load(ls, SPECS[model].mean_bgr)[0]]
                         for ls in args.long_sides}
            eager_blob = normalize_c(frame, SPECS[model].mean_bgr)
            eager_times: List[float] = []
            for key in keys:
                recipe = RECIPES[key]
                for backend in (args.backends if recipe.per_backend else [None]):
                    entry: Dict[str, Any] = {"model": model, "row": key, "label": recipe.label, "level": recipe.level,
                                             "backend": backend, "ap": {}, "warnings": {}}
                    for long_side in args.long_sides:
                        made = (key, model, long_side, work, data, backend, args.qat_iters, args.seed)
                        bundle = load_bundle(str(build(*made, threads=1)))
                        report = json.loads(bundle.file("report").read_text())
                        scored = bundle_detector(bundle, threads=1).infer  # takes float blobs too
                        entry["ap"][str(long_side)] = score(scored, model, long_side, val_images, gt)
                        entry["warnings"][str(long_side)] = report["warnings"]  # QuantizationCollapseWarning's
                        entry.setdefault("output_error", {})[str(long_side)] = output_error(
                            eager_infer, scored, val_blobs[long_side])
                        entry.setdefault("quantize_seconds", {})[str(long_side)] = report.get("seconds")
                        entry.setdefault("commands", []).append(" ".join(["fdq", *fdq_args(*made)]))
                        if long_side == min(args.long_sides):
                            entry["model_bytes"] = bundle.file("model").stat().st_size
                            # A fresh load: x86 (oneDNN) int8 convolutions keep a fast path for the first
                            # input shape they see only, and scoring just fed them every val image's shape.
                            timed = bundle_detector(bundle, threads=1)
                            blob = timed.normalize(frame, bundle.spec.mean_bgr)
                            entry["latency_input"] = str(blob.dtype)
                            entry["eager_ms"], entry["latency_ms"] = paired_median_ms(
                                lambda: eager_infer(eager_blob), lambda: timed.infer(blob), args.warmup, args.runs)
                            entry["latency_vs_eager"] = round(entry["latency_ms"] / entry["eager_ms"], 3)
                            eager_times.append(entry["eager_ms"])
                    results.append(entry)
                    print(json.dumps({k: entry.get(k) for k in ("model", "row", "backend", "ap", "latency_ms",
                                                                "eager_ms")}), flush=True)
            eager[model] = round(statistics.median(eager_times), 3)
    return result("bench_quant", results,
                  settings={"threads": 1, "latency_input_hw": list(LATENCY_HW), "latency_image": frame_key},
                  summary={"eager_fp32_ms": eager, "skipped_levels": skipped})


def add_goals(doc: Dict[str, Any]) -> None:
    """Each row's AP drop vs FP32 (per setting and long side), size ratio and the goal verdicts."""
    fp32 = {r["model"]: r for r in doc["rows"] if r["row"] == "fp32"}
    for r in doc["rows"]:
        ref = fp32.get(r["model"])
        if ref is None:
            continue
        r["ap_drop"] = {ls: {s: round(ref["ap"][ls][s] - ap[s], 2) for s in SETTINGS}
                        for ls, ap in r["ap"].items() if ls in ref["ap"]}
        r["max_ap_drop"] = max((d for per in r["ap_drop"].values() for d in per.values()), default=None)
        if "ap_runs" in r:
            r["max_ap_drop_runs"] = [round(max(ref["ap"][ls][s] - run[ls][s] for ls in run for s in SETTINGS), 2)
                                     for run in r["ap_runs"]]
        r["size_vs_fp32"] = round(r["model_bytes"] / ref["model_bytes"], 3)
        if r["row"] == "l2-histogram":
            r["goals"] = {"ap_within_1pt": r["max_ap_drop"] <= GOAL_AP_POINTS,
                          "size_le_40pct": r["size_vs_fp32"] <= GOAL_SIZE_RATIO}
            if r["backend"] == "x86":
                r["goals"]["latency_le_0.25x_eager"] = r["latency_vs_eager"] <= GOAL_LATENCY_RATIO
        if r["row"] == "l3":   # a user gets one run: with several, every one must be within the goal
            r["goals"] = {"ap_within_0.5pt": max(r.get("max_ap_drop_runs", [r["max_ap_drop"]])) <= GOAL_QAT_AP_POINTS}


def merge(docs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One document from runs split over processes (one per backend, one per ``--seed``): each float
    row once per model; an int8 row built by several runs gets their mean AP and keeps every run's AP
    (``ap_runs``); the eager time of a model is the median over every run's rows."""
    rows: List[Dict[str, Any]] = []
    for doc in docs:
        for r in doc["rows"]:
            same = next((q for q in rows if (q["model"], q["row"], q["backend"]) == (r["model"], r["row"], r["backend"])),
                        None)
            if same is None:
                rows.append({**r, "ap_runs": [r["ap"]], "error_runs": [r.get("output_error")]})
            elif r["backend"] is not None:
                same["ap_runs"].append(r["ap"])
                same["error_runs"].append(r.get("output_error"))
    for r in rows:
        runs, errors = r.pop("ap_runs"), r.pop("error_runs")
        if len(errors) > 1 and all(errors):
            r["output_error"] = {ls: {**errors[0][ls], **{k: round(statistics.mean(e[ls][k] for e in errors), 4)
                                                          for k in ("box_offset", "face_logit")}}
                                 for ls in errors[0]}
        if len(runs) > 1:
            r["ap_runs"] = runs
            r["ap"] = {ls: {s: round(statistics.mean(run[ls][s] for run in runs), 2) for s in SETTINGS}
                       for ls in runs[0]}
    eager = {m: round(statistics.median(r["eager_ms"] for r in rows if r["model"] == m and "eager_ms" in r), 3)
             for m in dict.fromkeys(r["model"] for r in rows)}
    skipped = sorted({s for d in docs for s in d["summary"]["skipped_levels"]})
    return {**docs[0], "created": max(d["created"] for d in docs), "command": " and ".join(d["command"] for d in docs),
            "rows": rows, "summary": {"eager_fp32_ms": eager, "skipped_levels": skipped}}


NOTES = [
    "## Defaults and why", "",
    "* **Activations: histogram observer** (torch's L2-optimal clipping). Min-max lets a few extreme "
    "activations stretch the grid; percentile is close to histogram but less consistent across models. "
    "There is no entropy (KL) observer: done as TensorRT does it, it lost up to 1.5 points on qnnpack, "
    "no better than min-max (docs/HISTORY.md), and was removed.",
    "* **Weights: per-channel symmetric int8 on every backend.** torch 2.13's qnnpack runs per-channel "
    "convolutions, depthwise included (checked by converting and running both), so the per-tensor default of "
    "its qconfig is not needed; per-tensor weights collapse mnet025 (two folded depthwise layers have "
    "per-channel ranges 62x and 27x their median).",
    "* **Cross-layer equalization on by default** (`--no-cle` to disable): "
    "without it, per-tensor weights collapse mnet025 (row `L2 histogram, per-tensor, no CLE` above); with "
    "it they do not (checked by `tests/test_calibration.py`). It also evens activation ranges before per-channel int8.",
    "* **Bias correction off by default** (`--bias-correction` opts in, levels 1-4): taking the mean "
    "error of weight rounding out of each convolution's bias lowers the `out err` of every model "
    "(row `L2 histogram, bias correction`), but its AP drops are no smaller within what the choice of "
    "calibration images alone moves them (`scripts/bench_ap_resolution.py`, docs/ACCURACY.md).",
    "* **No reduce_range**: 7-bit activations cost AP points; they only protect x86/fbgemm CPUs without "
    "VNNI from int16 saturation. `--reduce-range` opts in for AVX2-only targets.",
    "* **Levels 3 and 4 fine-tune the level-2 model** (BatchNorm folded, CLE, histogram activations frozen "
    "after calibration) with Adam at 1e-5: distillation from the float model on every anchor it scores >= "
    "0.05 (plus the ground-truth multibox loss at weight 0.1 for level 3). StatAssist's float warm-up fills "
    "the optimizer state and its weight updates are undone; GradBoost's noise decays by 5 % per iteration. "
    "The checkpoint kept (the untrained level-2 one included) has the lowest distillation loss on the "
    "held-back quarter of the calibration images.",
    "* Every int8 bundle's `report.json` compares float and int8 on held-back calibration images and "
    "warns (QuantizationCollapseWarning, `warnings` list) when int8 loses more than 5 AP points or 20% of "
    "the float faces.",
    "",
]


def markdown(doc: Dict[str, Any]) -> str:
    long_sides = sorted({ls for r in doc["rows"] for ls in r["ap"]}, key=int)
    machine, settings, summary = doc["machine"], doc["settings"], doc["summary"]
    lines = ["# Quantization results", "",
             f"Generated by `scripts/bench_quant.py` on {doc['created']} (torch {machine['torch']}, "
             f"{machine['cpu']}, 1 thread). Command: `{doc['command']}`.", "",
             "AP: WIDER FACE val subset (64 images), official protocol, points. A bundle per long side "
             "(calibrated at that side). Size: the bundle's model file. Latency: median ms of one "
             f"{settings['latency_input_hw'][1]}x{settings['latency_input_hw'][0]} inference, 1 thread, after warm-up; "
             "each runtime gets the input its preprocessing produces from the same uint8 frame "
             f"(`{settings['latency_image']}`, centred): int8 bundles the quint8 channels-last blob straight from "
             "the C kernel, the others and eager the float32 NCHW blob. "
             "`/eager` is the ratio to the float model in eager PyTorch, timed alternately with the bundle "
             "(so load from other processes affects both alike). `out err`: mean |bundle - eager float| of the "
             "box offsets / of the face logit over the val anchors float scores >= 0.1 (thousands of anchors: "
             "steady where the AP of 64 images is not, see `scripts/bench_ap_resolution.py`).", ""]
    if any("ap_runs" in r for r in doc["rows"]):
        lines += ["Rows built by several runs (one per `--seed`) show their mean AP; `max drop` is that of the "
                  "mean, followed by each run's own.", ""]
    if summary["skipped_levels"]:
        lines += [f"Skipped (not available in this installation): {', '.join(summary['skipped_levels'])}.", ""]
    head = ["method", "backend"] + [f"{s} @{ls}" for ls in long_sides for s in ("easy", "med", "hard")] + \
        ["max drop", f"out err @{long_sides[0]}", "size KB", "size/FP32", "ms", "/eager", "warnings"]
    for model in dict.fromkeys(r["model"] for r in doc["rows"]):
        lines += [f"## {model}", "", f"FP32 eager: {summary['eager_fp32_ms'][model]:.2f} ms (median over rows)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in doc["rows"] if r["model"] == model):
            cells = [r["label"], r["backend"] or "-"]
            cells += [f"{r['ap'][ls][s]:.2f}" if ls in r["ap"] else "" for ls in long_sides for s in SETTINGS]
            warn = sum(len(v) for v in r["warnings"].values())
            drop = f"{r.get('max_ap_drop', 0):.2f}"
            if "max_ap_drop_runs" in r:
                drop += " (runs: " + " / ".join(f"{d:.2f}" for d in r["max_ap_drop_runs"]) + ")"
            err = (r.get("output_error") or {}).get(long_sides[0])
            cells += [drop, f"{err['box_offset']:.3f} / {err['face_logit']:.3f}" if err and err["anchors"] else "",
                      f"{r['model_bytes'] / 1024:.0f}",
                      f"{r.get('size_vs_fp32', 1):.2f}", f"{r['latency_ms']:.2f}", f"{r['latency_vs_eager']:.2f}",
                      str(warn) if warn else ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += NOTES
    goals = [(r["model"], r["label"], r["backend"], g, ok) for r in doc["rows"] for g, ok in r.get("goals", {}).items()]
    if goals:
        lines += ["## Goals (level 2 with default options: histogram, per-channel, CLE; level 3 with "
                  "StatAssist + GradBoost)", "", "| model | row | backend | goal | met |", "|---|---|---|---|---|"]
        lines += [f"| {m} | {row} | {b} | {g} | {'yes' if ok else '**no**'} |" for m, row, b, g, ok in goals]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="run nothing: merge these --json outputs (e.g. one per backend) into --json/--markdown")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODEL_NAMES))
    p.add_argument("--backends", type=lambda s: s.split(","), default=["x86", "qnnpack"])
    p.add_argument("--levels", type=lambda s: s.split(","), default=list(LEVELS),
                   help="rows: fp32,fp16,l1,l2,l3,l4 (fp32 is needed for the drop columns)")
    p.add_argument("--observers", type=lambda s: s.split(","), default=list(OBSERVER_NAMES))
    p.add_argument("--long-sides", type=lambda s: [int(v) for v in s.split(",")], default=[320, 640])
    p.add_argument("--only", type=lambda s: s.split(","), help="keep only these row keys of --levels (e.g. fp32,l3)")
    p.add_argument("--qat-iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="seed of the level-3/4 rows; runs with other seeds merge "
                                                       "(--from-json) into one row with every run's drop")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--json", default="docs/results/bench_quant.json")
    p.add_argument("--markdown", default="docs/results/bench_quant.md")
    p.add_argument("--force", action="store_true", help="replace an existing --json and --markdown")
    args = p.parse_args(argv)
    target, page = checked_outputs_or_exit("bench_quant", args.force, ("--json", args.json),
                                           ("--markdown", args.markdown))
    unknown = sorted(set(args.levels) - set(LEVELS))
    if unknown:
        p.error(f"unknown rows: {', '.join(unknown)}")
    if args.from_json:
        doc = merge([read_result(path, "bench_quant") for path in args.from_json])
    else:
        doc = run(args, data_of(args, "val", "calib"))
    add_goals(doc)
    write_result(target, doc)
    atomic_write_text(page, markdown(doc) + "\n")
    print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
