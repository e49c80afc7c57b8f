#!/usr/bin/env python3
"""Every runtime, float and int8, end to end at 1 thread, with AP, and YuNet-n in the same run.

For each model, long side and configuration: AP (easy / medium / hard) on the val split and the
p50 / p90 latency per image of the runner's whole pipeline from the original image (uint8 resize,
normalize, inference, decode, NMS: ``FaceDetector.detect`` of ``bundle_detector``), each image
detected once untimed first (a new input size costs extra the first time), then timed. YuNet-n runs
as in ``bench_peers.py`` at its 320 and 400 operating points, timed the same way (its uint8 resize included).
On a shared machine only ratios within one run mean something: every configuration (YuNet-n's included)
runs on each image in turn, so all of them are timed under the same moments' load, which is recorded.

Bundles (``benchlib.recipes.CONFIGS``) are made per long side (calibrated at that size) under ``--work``
and reused when present;
``--build-long-side N`` makes each bundle once, at N, and runs it at every long side (an ExecuTorch
program made at N takes sides up to 2N):

    python scripts/bench_runtimes.py --models slim,rfb,mnet025 --long-sides 320,640 --force

Writes docs/results/bench_runtimes.json and the table between its markers in docs/SPEED.md.
Goals it reports: the fastest int8 configuration of each model at 320 at most 0.7x its fastest float
one; at each YuNet-n operating point an int8 fdq configuration at least as accurate (medium) and faster.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

from benchlib.data import REPO, add_data_argument, data_of, peer_model
from benchlib.docs import write_section
from benchlib.peers import yunet_detect
from benchlib.recipes import CONFIGS, build_config, config_dir, config_dtype
from benchlib.results import machine, result, write_result

from fdq.device.bundle import load_bundle
from fdq.device.evaluation import evaluate, to_wider_rows
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.preprocess import resize_ratio
from fdq.device.runtimes import bundle_detector

MARK_BEGIN, MARK_END = "<!-- bench_runtimes:begin -->", "<!-- bench_runtimes:end -->"
YUNET_POINTS = (320, 400)
# image -> (official-format rows in original pixels, end-to-end ms, inference ms or nan)
Timer = Callable[[np.ndarray], Tuple[np.ndarray, float, float]]


def fdq_timer(bundle_path: Path, side: int) -> Tuple[Timer, str]:
    """The runner's pipeline of one bundle (``FaceDetector.detect`` of ``bundle_detector``), and its kernels."""
    detector = bundle_detector(load_bundle(str(bundle_path)), threads=1, long_side=side)

    def run(image: np.ndarray) -> Tuple[np.ndarray, float, float]:
        dets = detector.detect(image)
        return (to_wider_rows(dets.boxes, dets.scores), detector.last_timings_ms["total"],
                detector.last_timings_ms["inference"])
    return run, detector.kernels


def yunet_timer(detect, side: int) -> Timer:
    """YuNet-n timed like the fdq rows: from the original image, its uint8 resize included."""
    def run(image: np.ndarray) -> Tuple[np.ndarray, float, float]:
        ratio = resize_ratio(image.shape[0], image.shape[1], side)
        t = time.perf_counter()
        resized = cv2.resize(image, None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR)
        boxes, scores = detect(resized)
        ms = (time.perf_counter() - t) * 1e3
        return to_wider_rows(boxes / np.float32(ratio), scores), ms, float("nan")
    return run


def measure_interleaved(timers: Dict[str, Timer], images, gt,
                        latency_images: int = 0) -> Tuple[Dict[str, Dict[str, float]], List[float]]:
    """AP and p50 / p90 per configuration, every configuration run on each image in turn (the order
    rotating from image to image) so that all of them share the machine's load of the same moments;
    each timed image is detected once untimed first (a new input size costs extra the first time).
    ``latency_images`` > 0: only the first that many images are timed, the others detected once for AP.
    Returns the rows and the 1-minute load average sampled at every image."""
    names = list(timers)
    predictions: Dict[str, dict] = {n: {} for n in names}
    total: Dict[str, List[float]] = {n: [] for n in names}
    inference: Dict[str, List[float]] = {n: [] for n in names}
    load: List[float] = []
    for index, (key, image) in enumerate(images):
        load.append(os.getloadavg()[0])
        timed = not latency_images or index < latency_images
        for name in names[index % len(names):] + names[:index % len(names)]:
            if timed:
                timers[name](image)
            rows, ms, infer_ms = timers[name](image)
            predictions[name][key] = rows
            if timed:
                total[name].append(ms)
                inference[name].append(infer_ms)
    out = {}
    for name in names:
        ap = evaluate(predictions[name], gt)
        out[name] = {"easy": ap["easy"], "medium": ap["medium"], "hard": ap["hard"],
                     "p50_ms": float(np.percentile(total[name], 50)), "p90_ms": float(np.percentile(total[name], 90))}
        if not np.isnan(inference[name]).all():  # YuNet's call has no separate inference time
            out[name]["inference_p50_ms"] = float(np.percentile(inference[name], 50))
    return out, load


def goals(rows: List[dict]) -> Dict[str, object]:
    """The issue's two goals, computed from the rows of this run."""
    out: Dict[str, object] = {"int8_over_float_at_320": {}, "against_yunet_n": []}
    fdq_rows = [r for r in rows if r["detector"].startswith("fdq")]
    for model in sorted({r["detector"] for r in fdq_rows}):
        at = [r for r in fdq_rows if r["detector"] == model and r["long_side"] == 320]
        best = {d: min((r for r in at if r["dtype"] == d), key=lambda r: r["p50_ms"], default=None)
                for d in ("fp32", "int8")}
        if best["fp32"] and best["int8"]:
            ratio = best["int8"]["p50_ms"] / best["fp32"]["p50_ms"]
            out["int8_over_float_at_320"][model] = {
                "fastest_int8": best["int8"]["runtime"], "fastest_float": best["fp32"]["runtime"],
                "ratio": round(ratio, 3), "met": ratio <= 0.7}
    for peer in (r for r in rows if r["detector"] == "yunet_n"):
        ok = [r for r in fdq_rows if r["dtype"] == "int8" and r["medium"] >= peer["medium"]
              and r["p50_ms"] < peer["p50_ms"]]
        best = min(ok, key=lambda r: r["p50_ms"], default=None)
        out["against_yunet_n"].append({"yunet_n_long_side": peer["long_side"], "yunet_n_medium": peer["medium"],
                                       "yunet_n_p50_ms": peer["p50_ms"], "met": best is not None, "fdq": best})
    return out


def write_outputs(rows: List[dict], goals_met: Dict[str, object], load: List[float], skipped: List[str],
                  args: argparse.Namespace) -> None:
    spread = {"min": min(load), "median": float(np.median(load)), "max": max(load)} if load else {}
    doc = result("bench_runtimes", rows, machine_facts=machine(load_average_1m_run=spread),
                 settings={"threads": 1, "interleaved": True, "latency_images": args.latency_images or "all"},
                 summary={"goals": goals_met, "skipped": skipped})
    write_result(args.json, doc)
    load_text = (f"1-minute load average over the run {spread['min']:.1f} / {spread['median']:.1f} / "
                 f"{spread['max']:.1f} (min / median / max) on {os.cpu_count()} cores") if load else "load n/a"
    lines = [MARK_BEGIN, f"`{doc['command']}` (1 thread, end to end from the original val image, uint8 resize; every "
             f"configuration run on each image in turn; "
             f"{'latency on the first %d images, AP on all; ' % args.latency_images if args.latency_images else ''}"
             f"{load_text}):", "",
             "| detector | runtime | dtype | long side | built at | easy | medium | hard | p50 ms | p90 ms | inference p50 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['runtime']} | {r['dtype']} | {r['long_side']} | "
                     f"{r.get('built_at_long_side', '')} | {r['easy']:.4f} | "
                     f"{r['medium']:.4f} | {r['hard']:.4f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r.get('inference_p50_ms', float('nan')):.2f} |")
    if skipped:
        lines += ["", f"Not built, so not measured (`--reuse-only`): {', '.join(skipped)}."]
    lines += ["", f"Goals in this run: `{json.dumps(goals_met['int8_over_float_at_320'])}`; against YuNet-n: " +
              "; ".join(f"@{g['yunet_n_long_side']}: {'met by ' + g['fdq']['detector'] + ' ' + g['fdq']['runtime'] if g['met'] else 'not met'}"
                        for g in goals_met["against_yunet_n"]), MARK_END]
    write_section(args.markdown, lines, "Every runtime, float and int8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-sides", default="320,640")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--work", default=str(REPO / "out" / "bench_runtimes"), help="bundles are built here once")
    ap.add_argument("--build-long-side", type=int, default=0,
                    help="make every bundle once, at this long side (int8: calibrated there), and run it at each "
                         "--long-sides (default: a bundle per long side)")
    ap.add_argument("--latency-images", type=int, default=0,
                    help="time only the first N val images (AP still on all of them; default: time every image)")
    ap.add_argument("--reuse-only", default="", help="configurations measured only where their bundle is already "
                                                     "under --work (ExecuTorch lowering takes minutes a bundle)")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_runtimes.json"))
    ap.add_argument("--markdown", default=str(REPO / "docs" / "SPEED.md"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    checked_outputs_or_exit("bench_runtimes", args.force, ("--json", args.json))
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration {unknown[0]!r} (choose from: {', '.join(CONFIGS)})")

    sides = [int(v) for v in args.long_sides.split(",")]
    if args.build_long_side and any(c.startswith("executorch") for c in configs) and max(sides) > 2 * args.build_long_side:
        ap.error(f"an ExecuTorch program made at long side {args.build_long_side} takes sides up to "
                 f"{2 * args.build_long_side}: raise --build-long-side or drop the larger --long-sides")
    data = data_of(args, "val", "calib")
    cv2.setNumThreads(1)
    gt, images = data.ground_truth(), data.read_val()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    plan = [(m, s, c) for m in args.models.split(",") for s in sides for c in configs]
    built_at = {key: args.build_long_side or key[1] for key in plan}  # the side each bundle is made (calibrated) at
    reuse_only = set(filter(None, args.reuse_only.split(",")))
    skipped = sorted({f"{m}-{built_at[m, s, c]}-{c}" for m, s, c in plan
                      if c in reuse_only and not (config_dir(c, m, built_at[m, s, c], work) / "manifest.yaml").is_file()})
    for name in skipped:
        print(f"skipped {name}: not built under {work} (--reuse-only)", flush=True)
    plan = [(m, s, c) for m, s, c in plan if f"{m}-{built_at[m, s, c]}-{c}" not in skipped]
    # all builds first: the timings come in one stretch
    bundles = {(m, s, c): build_config(c, m, built_at[m, s, c], work, data) for m, s, c in plan}

    detect = yunet_detect(peer_model("yunet_n"))
    timers: Dict[str, Timer] = {f"yunet_n@{side}": yunet_timer(detect, side) for side in YUNET_POINTS}
    meta: Dict[str, dict] = {f"yunet_n@{side}": {"detector": "yunet_n", "runtime": "opencv-dnn", "dtype": "fp32",
                                                 "long_side": side} for side in YUNET_POINTS}
    for (model, side, config), path in bundles.items():
        name = f"{model}@{side}/{config}"
        timers[name], kernels = fdq_timer(path, side)
        meta[name] = {"detector": f"fdq {model}", "runtime": config, "dtype": config_dtype(config), "long_side": side,
                      "built_at_long_side": built_at[model, side, config], "kernels": kernels}
    measured, load = measure_interleaved(timers, images, gt, args.latency_images)
    rows = [{**meta[name], **measured[name]} for name in timers]
    for row in rows:
        print(row, flush=True)
    goals_met = goals(rows)
    write_outputs(rows, goals_met, load, skipped, args)
    print(json.dumps(goals_met, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
