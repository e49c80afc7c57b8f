#!/usr/bin/env python3
"""fdq bundles against YuNet, the tiny detector users would pick instead: AP and latency, one run.

For each model, runtime and long side: AP (easy/medium/hard) on the val split and the p50 latency per
image at 1 thread, end to end from the resized image (fdq: normalize, inference, decode, NMS; YuNet:
its whole ``FaceDetectorYN.detect`` call). YuNet runs as its README says is fair: score threshold
0.02, NMS 0.3, top-k 5000, input size set to the resized image. YuNet also runs through fdq itself:
``fdq import`` (decoder ``yunet``, NMS 0.3) and fdq's runner, float and ``onnx-int8`` (calibrated on
the calib split), so every detector is measured through one path; OpenCV's rows stay as the reference.

    python scripts/bench_peers.py --force

Writes docs/results/bench_peers.json, docs/results/peers_ap_latency.svg, and the table in docs/SPEED.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

from benchlib.data import REPO, add_data_argument, data_of, peer_model
from benchlib.docs import write_section
from benchlib.peers import yunet_detect
from benchlib.recipes import build_config
from benchlib.results import result, write_result

from fdq.device.atomic import atomic_output
from fdq.device.bundle import load_bundle
from fdq.device.evaluation import evaluate, to_wider_rows
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.preprocess import resize_image, resize_ratio
from fdq.device.runtimes import bundle_detector

MARK_BEGIN, MARK_END = "<!-- bench_peers:begin -->", "<!-- bench_peers:end -->"
# the runtime configurations (benchlib.recipes.CONFIGS) compared, each made once at long side BUILT_AT
CONFIGS = ("torchscript-fp32", "torchscript-int8-x86", "onnx-fp32", "onnx-int8", "ncnn-fp32")
BUILT_AT = 320


def run_split(detect: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]], images, long_side: int,
              gt, resize_float: bool) -> Dict[str, float]:
    """AP over the split and p50 latency of ``detect(resized) -> (boxes_xyxy, scores)`` in resized pixels.

    fdq resizes a float32 image (its reference protocol), YuNet a uint8 one (its own usage); the
    resize is outside the timed call for both.
    """
    predictions, times = {}, []
    for key, image in images:
        if resize_float:
            resized, ratio = resize_image(image, long_side)
        else:
            ratio = resize_ratio(image.shape[0], image.shape[1], long_side)
            resized = cv2.resize(image, None, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_LINEAR)
        detect(resized)  # warm-up at this size
        t = time.perf_counter()
        boxes, scores = detect(resized)
        times.append((time.perf_counter() - t) * 1e3)
        predictions[key] = to_wider_rows(boxes / np.float32(ratio), scores)
    ap = evaluate(predictions, gt)
    return {"easy": ap["easy"], "medium": ap["medium"], "hard": ap["hard"], "p50_ms": statistics.median(times)}


def fdq_detect(bundle_path: Path, long_side: int) -> Callable:
    bundle = load_bundle(str(bundle_path))
    detector = bundle_detector(bundle, threads=1, long_side=long_side)
    def detect(resized: np.ndarray):
        blob, input_size = detector.preprocess(resized)
        dets = detector.decoder.decode(detector.infer(blob), input_size, 1.0, detector.score_threshold,
                                       detector.nms_threshold)
        return dets.boxes, dets.scores
    return detect


def imported_peer(peer: str, work: Path, data) -> Dict[str, Path]:
    """YuNet through ``fdq import`` (made once under ``work``) and its onnx-int8 export: runtime -> bundle."""
    from fdq.host.export import export_bundle
    from fdq.host.importer import ImportOptions, import_onnx

    float_path, int8_path = work / f"{peer}-import", work / f"{peer}-import-onnx-int8"
    if not (float_path / "manifest.yaml").is_file():
        import_onnx(str(peer_model(peer)), ImportOptions(decoder="yunet", name=peer, nms_iou=0.3,
                                                         licence="Apache-2.0 (libfacedetection.train)"), str(float_path))
    if not (int8_path / "manifest.yaml").is_file():
        export_bundle(float_path, "onnx-int8", int8_path, data.calib_images)
    return {"fdq onnx-fp32": float_path, "fdq onnx-int8": int8_path}


def frontier(rows: List[dict]) -> List[dict]:
    """For each YuNet-n operating point (OpenCV's, the reference): the fastest fdq row at least as accurate (medium AP)."""
    out = []
    for peer in (r for r in rows if r["detector"] == "yunet_n" and r["runtime"] == "opencv-dnn"):
        ok = [r for r in rows if r["detector"].startswith("fdq") and r["medium"] >= peer["medium"]
              and r["p50_ms"] <= peer["p50_ms"]]
        best = min(ok, key=lambda r: r["p50_ms"]) if ok else None
        out.append({"yunet_n_long_side": peer["long_side"], "yunet_n_medium": peer["medium"],
                    "yunet_n_p50_ms": peer["p50_ms"], "reached": best is not None, "fdq": best})
    return out


def write_outputs(rows: List[dict], args: argparse.Namespace) -> None:
    front = frontier(rows)
    doc = result("bench_peers", rows, settings={"threads": 1, "bundles_built_at_long_side": BUILT_AT},
                 summary={"frontier": front})
    write_result(args.json, doc)
    command = doc["command"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=100)
    for name in sorted({(r["detector"], r["runtime"]) for r in rows}):
        pts = sorted((r["p50_ms"], r["medium"]) for r in rows if (r["detector"], r["runtime"]) == name)
        style = ("k--o" if name[1] == "opencv-dnn" else "k:s") if name[0].startswith("yunet") else "-o"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{name[0]} {name[1]}", markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per image, ms (1 thread, from the resized image)")
    ax.set_ylabel("medium AP (val split)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_output(args.plot) as tmp:
        fig.savefig(tmp, format=Path(args.plot).suffix.lstrip(".") or "svg")
    plt.close(fig)

    lines = [MARK_BEGIN, f"`{command}` (1 thread; points at long sides {args.long_sides}):", "",
             "| detector | runtime | long side | easy | medium | hard | p50 ms |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['runtime']} | {r['long_side']} | {r['easy']:.4f} | {r['medium']:.4f} "
                     f"| {r['hard']:.4f} | {r['p50_ms']:.2f} |")
    lines += ["", "Against YuNet-n, operating point by operating point (fastest fdq configuration at least as "
              "accurate on medium AP and no slower):", ""]
    for f in front:
        if f["reached"]:
            b = f["fdq"]
            lines.append(f"- YuNet-n @ {f['yunet_n_long_side']} (medium {f['yunet_n_medium']:.4f}, "
                         f"{f['yunet_n_p50_ms']:.2f} ms): reached by {b['detector']} {b['runtime']} @ {b['long_side']} "
                         f"(medium {b['medium']:.4f}, {b['p50_ms']:.2f} ms)")
        else:
            lines.append(f"- YuNet-n @ {f['yunet_n_long_side']} (medium {f['yunet_n_medium']:.4f}, "
                         f"{f['yunet_n_p50_ms']:.2f} ms): **not reached** by any fdq configuration")
    lines += ["", f"![AP versus latency]({os.path.relpath(args.plot, Path(args.markdown).parent)})", MARK_END]
    write_section(args.markdown, lines, "Against YuNet (peers)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--models", default="slim,rfb,mnet025")
    ap.add_argument("--long-sides", default="320,480,640")
    ap.add_argument("--work", default=str(REPO / "out" / "bench_peers"), help="bundles are built here once")
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_peers.json"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "results" / "peers_ap_latency.svg"))
    ap.add_argument("--markdown", default=str(REPO / "docs" / "SPEED.md"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json and --plot")
    args = ap.parse_args()
    checked_outputs_or_exit("bench_peers", args.force, ("--json", args.json), ("--plot", args.plot))

    data = data_of(args, "val", "calib")
    cv2.setNumThreads(1)
    gt, images = data.ground_truth(), data.read_val()
    long_sides = [int(v) for v in args.long_sides.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    rows = []
    for peer in ("yunet_n", "yunet_s"):
        detect = yunet_detect(peer_model(peer))
        for side in long_sides:
            rows.append({"detector": peer, "runtime": "opencv-dnn", "long_side": side,
                         **run_split(detect, images, side, gt, resize_float=False)})
            print(rows[-1], flush=True)
        for runtime, path in imported_peer(peer, work, data).items():
            for side in long_sides:  # uint8 resize, as OpenCV's rows: the same inputs
                rows.append({"detector": peer, "runtime": runtime, "long_side": side,
                             **run_split(fdq_detect(path, side), images, side, gt, resize_float=False)})
                print(rows[-1], flush=True)
    for model in args.models.split(","):
        for config in CONFIGS:
            path = build_config(config, model, BUILT_AT, work, data)
            for side in long_sides:
                detect = fdq_detect(path, side)
                rows.append({"detector": f"fdq {model}", "runtime": config, "long_side": side,
                             **run_split(detect, images, side, gt, resize_float=True)})
                print(rows[-1], flush=True)
    write_outputs(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
