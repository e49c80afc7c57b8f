"""Time per operator, where the runtime can tell: the first question after "it is slow on the board".

A separate pass after the timed frames (profilers slow every operator down, so the latency numbers
never include them): TorchScript through ``torch.profiler`` around the whole detector, ONNX Runtime
through its own session profiling on the blobs the detector fed to the model. NCNN's Python binding
has no per-layer timing, and says so.

Result: ``{"available": True, "tool": ..., "frames": n, "by_type": [...], "slowest": [...]}`` with
milliseconds per frame, or ``{"available": False, "reason": ...}``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

TOP = 10


def _table(times_us: Dict[str, Tuple[str, float, int]], frames: int, key: str) -> List[Dict[str, Any]]:
    """Rows sorted by time: ``key`` -> name, op type, ms per frame, calls per frame, share of the total."""
    total = sum(t for _, t, _ in times_us.values()) or 1.0
    rows = sorted(times_us.items(), key=lambda item: -item[1][1])
    return [{key: name, "op": op, "ms_per_frame": t / 1000.0 / frames, "calls_per_frame": calls / frames,
             "share": t / total} for name, (op, t, calls) in rows]


def _torchscript(detector: Any, images: List[Any]) -> Dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for image in images:
            detector.detect(image)
    by_type = {e.key: (e.key, float(e.self_cpu_time_total), int(e.count)) for e in prof.key_averages()
               if e.self_cpu_time_total > 0}
    slowest = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_cpu_time_total > 0:
            shapes = [list(s) for s in (e.input_shapes or []) if s]
            slowest[f"{e.key} {shapes[0] if shapes else ''}".strip()] = (e.key, float(e.self_cpu_time_total),
                                                                          int(e.count))
    return {"available": True, "tool": f"torch.profiler (torch {torch.__version__}), self CPU time",
            "frames": len(images), "by_type": _table(by_type, len(images), "op")[:TOP],
            "slowest": _table(slowest, len(images), "name")[:TOP],
            "note": "slowest: operator and its first input's shape (TorchScript keeps no layer names)"}


def _onnxruntime(bundle: Any, detector: Any, images: List[Any], threads: int) -> Dict[str, Any]:
    import onnxruntime as ort

    from .runtimes import _io_names

    blobs: List[Any] = []
    infer = detector.infer
    detector.infer = lambda blob: (blobs.append(blob.copy()), infer(blob))[1]
    try:
        for image in images:
            detector.detect(image)
    finally:
        detector.infer = infer
    with tempfile.TemporaryDirectory(prefix="fdq-perop-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(str(bundle.file("model")), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        input_name, _ = _io_names(bundle)
        for blob in [blobs[0], *blobs]:  # the first run pays one-off allocations: not counted
            session.run(None, {input_name: np.ascontiguousarray(blob, dtype=np.float32)})
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    after_first = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    events = [e for e in events if e.get("ts", 0) >= after_first]
    types: Dict[str, Tuple[str, float, int]] = {}
    layers: Dict[str, Tuple[str, float, int]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = str((event.get("args") or {}).get("op_name", "?"))
        name = str(event["name"])[: -len("_kernel_time")]
        for table, key in ((types, op), (layers, name)):
            _, spent, calls = table.get(key, (op, 0.0, 0))
            table[key] = (op, spent + float(event.get("dur", 0)), calls + 1)
    return {"available": True, "tool": f"onnxruntime {ort.__version__} session profiling, kernel time",
            "frames": len(blobs), "by_type": _table(types, len(blobs), "op")[:TOP],
            "slowest": _table(layers, len(blobs), "name")[:TOP]}


def profile_ops(bundle: Any, detector: Any, images: Iterable[Any], threads: int) -> Dict[str, Any]:
    """Per-operator times of ``detector`` (built from ``bundle``) on ``images``."""
    images = list(images)
    if bundle.runtime == "torchscript":
        return _torchscript(detector, images)
    if bundle.runtime == "onnxruntime":
        return _onnxruntime(bundle, detector, images, threads)
    return {"available": False, "reason": f"the {bundle.runtime} runtime cannot time single operators from Python"}
