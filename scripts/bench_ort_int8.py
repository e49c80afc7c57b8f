#!/usr/bin/env python3
"""Why ONNX Runtime's int8 model is slower than its float model on this CPU: kernels and alternatives.

The float ONNX export of a model and int8 versions of it made by fdq's own ``quantize_static`` call
(``fdq.host.export._quantize_onnx``) with one setting changed at a time: fdq's export (QDQ, uint8
weights and activations), int8 weights (u8s8), int8 weights with 7-bit range (no int16 saturation on
AVX2), the QOperator format and per-tensor weights. Each runs
in its own 1-thread session on one synthetic input of the long side's 4:3 size; the sessions take turns
(rounds of one run each, medians of the rounds: the ratios to fp32 are the measurement), then ONNX
Runtime's profiler splits each variant's time, in a session of its own run after the others (so its
absolute milliseconds carry that moment's load), by operator and convolution kind (depthwise 3x3, full 3x3, 1x1), and the optimized graph shows
which kernels it picked (QLinearConv, NCHWc float Conv, layout transposes). AP on the val split
(the runner's pipeline, uint8 resize) says what each variant costs in accuracy.

    python scripts/bench_ort_int8.py --model slim --long-side 320

Writes docs/results/bench_ort_int8.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from benchlib.data import REPO, Data, add_data_argument, data_of
from benchlib.results import machine, result, write_result
from benchlib.scoring import score_detector

from fdq.device.images import list_images

# variant -> quantize_static keywords over fdq's settings (None: the float model itself)
VARIANTS: Dict[str, Any] = {
    "fp32": None,
    "fdq-u8u8-qdq": {},
    "u8s8": {"weight_type": "QInt8"},
    "u8s8-reduce-range": {"weight_type": "QInt8", "reduce_range": True},
    "u8s8-qoperator": {"weight_type": "QInt8", "quant_format": "QOperator"},
    "u8s8-per-tensor": {"weight_type": "QInt8", "per_channel": False},
}


def _overrides(spec: Dict[str, Any]) -> Dict[str, Any]:
    from onnxruntime.quantization import QuantFormat, QuantType

    out: Dict[str, Any] = {}
    for key, value in spec.items():
        if key == "weight_type":
            out[key] = QuantType[value]
        elif key == "quant_format":
            out[key] = QuantFormat[value]
        else:
            out[key] = value
    return out


def _group(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _kind(node: Any) -> str:
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), [])
    return ("depthwise " if _group(node) > 1 else "") + "x".join(map(str, kernel))


def _session(path: Path, **options: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def profile(path: Path, blob: np.ndarray, work: Path, runs: int) -> Dict[str, Any]:
    """Milliseconds a run per (operator, convolution kind) from ONNX Runtime's profiler, and the
    operators of the graph it optimized."""
    import onnx

    optimized = work / f"{path.stem}.optimized.onnx"
    session = _session(path, enable_profiling=True, profile_file_prefix=str(work / path.stem),
                       optimized_model_filepath=str(optimized))
    for _ in range(runs):
        session.run(None, {"input": blob})
    events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    graph = onnx.load(str(optimized)).graph
    kinds = {n.name: _kind(n) for n in graph.node if "Conv" in n.op_type}
    spent: Dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"][:-len("_kernel_time")]
            label = event["args"]["op_name"] + (f" {kinds[node]}" if node in kinds else "")
            spent[label] += event["dur"] / 1e3 / runs
    return {"ms_by_op": {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])},
            "optimized_ops": dict(collections.Counter(n.op_type for n in graph.node))}


def val_ap(session: Any, spec: Any, long_side: int, data: Data) -> Dict[str, float]:
    """AP (points) on the val split through the runner's pipeline around one session (uint8 resize)."""
    from fdq.device.detector import FaceDetector
    from fdq.device.decoders.ssd_priors import split_outputs

    def infer(blob: np.ndarray):
        return split_outputs(*session.run(["loc", "conf", "landm"], {"input": np.ascontiguousarray(blob)}))

    return score_detector(FaceDetector(infer, spec, long_side, resize="uint8"), data.val_images, data.ground_truth())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    ap.add_argument("--model", default="slim")
    ap.add_argument("--long-side", type=int, default=320)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench_ort_int8.json"))
    ap.add_argument("--force", action="store_true", help="replace an existing --json")
    args = ap.parse_args()
    from fdq.device.outputs import checked_outputs_or_exit

    target, = checked_outputs_or_exit("bench_ort_int8", args.force, ("--json", args.json))
    data = data_of(args, "val", "calib")

    import onnxruntime as ort

    from fdq.host.export.onnx import export_onnx_float as _export_onnx_float
    from fdq.host.export.onnx import quantize_onnx as _quantize_onnx
    from fdq.models import SPECS, load_model

    from fdq.host.zoo import resolve_weights

    spec = SPECS[args.model]
    model = load_model(args.model, resolve_weights(args.model, None)).eval()
    calib = [p for _, p in list_images(str(data.calib_images))]
    height, width = args.long_side * 3 // 4, args.long_side
    blob = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="fdq-ort-int8-") as tmp:
        work = Path(tmp)
        float_path = work / "fp32.onnx"
        _export_onnx_float(model, float_path, args.long_side)
        paths: Dict[str, Path] = {}
        settings: Dict[str, Any] = {}
        for name, spec_ in VARIANTS.items():
            if spec_ is None:
                paths[name] = float_path
                continue
            paths[name] = work / f"{name}.onnx"
            settings[name] = _quantize_onnx(float_path, paths[name], calib, args.long_side, spec.mean_bgr,
                                            _overrides(spec_))
        sessions = {name: _session(path) for name, path in paths.items()}
        for session in sessions.values():
            for _ in range(5):
                session.run(None, {"input": blob})
        times: Dict[str, List[float]] = {name: [] for name in sessions}
        load = []
        for _ in range(args.rounds):
            load.append(os.getloadavg()[0])
            for name, session in sessions.items():
                t = time.perf_counter()
                session.run(None, {"input": blob})
                times[name].append((time.perf_counter() - t) * 1e3)
        fp32 = float(np.median(times["fp32"]))
        rows = {name: {"p50_ms": round(float(np.median(t)), 3), "over_fp32": round(float(np.median(t)) / fp32, 3),
                       "ap": val_ap(sessions[name], spec, args.long_side, data), "settings": settings.get(name),
                       **profile(paths[name], blob, work, 20)}
                for name, t in times.items()}
    write_result(target, result(
        "bench_ort_int8", [{"variant": name, **row} for name, row in rows.items()],
        machine_facts=machine(onnxruntime=ort.__version__, load_average_1m_run={"min": min(load), "max": max(load)}),
        settings={"model": args.model, "input_hw": [height, width], "threads": 1, "rounds": args.rounds}))
    for name, row in rows.items():
        top = ", ".join(f"{k} {v}" for k, v in list(row["ms_by_op"].items())[:4])
        print(f"{name:18s} {row['p50_ms']:7.2f} ms  x{row['over_fp32']:.2f} fp32  AP {row['ap']}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
