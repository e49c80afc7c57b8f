"""Medians of timed calls: one function alone, or two timed alternately (one method for every latency)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> Dict[str, float]:
    """Median and 90th percentile in ms of ``repeats`` calls after ``warmup`` untimed ones, each
    call timed alone with ``time.perf_counter``."""
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return {"median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3)}


def paired_median_ms(reference: Callable[[], Any], candidate: Callable[[], Any], warmup: int, runs: int,
                     block: int = 10) -> Tuple[float, float]:
    """Median ms of ``reference`` and ``candidate``, timed in alternating blocks of ``block`` calls:
    load from other processes on a shared machine hits both alike, and within a block each model
    runs with its own weights in cache."""
    times: Tuple[List[float], List[float]] = ([], [])
    for _ in range(warmup):
        reference()
        candidate()
    while len(times[1]) < runs:
        for fn, out in ((reference, times[0]), (candidate, times[1])):
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times[0]), 3), round(statistics.median(times[1]), 3)
