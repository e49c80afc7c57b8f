#!/usr/bin/env python
"""How an int8 TorchScript bundle's speed at 320x240 depends on the first input shape it saw.

x86 (oneDNN) int8 convolutions keep a fast path for the first input shape only. This loads the
bundle twice: one copy first sees 320x240, the other first sees 320x213 (an image of another
aspect ratio); both are then timed at 320x240 alternately (medians after warm-up, 1 thread). It
also profiles the first copy and reports the share of time in the quantized convolutions.

    python scripts/bench_first_shape.py --bundle out/slim-int8 [--json docs/results/bench_first_shape.json] [--force]
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import numpy as np
import torch

from benchlib.results import result, write_result
from benchlib.timing import paired_median_ms

from fdq.device.bundle import load_bundle
from fdq.device.outputs import checked_outputs_or_exit
from fdq.device.runtimes import load_inference

TIMED_HW, OTHER_HW = (240, 320), (213, 320)


def conv_share(infer, blob: np.ndarray, calls: int = 30) -> float:
    """Fraction of self CPU time spent in quantized::conv2d* ops over ``calls`` inferences."""
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            infer(blob)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key.startswith("quantized::conv2d"))
    return conv / total if total else 0.0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="an int8 TorchScript bundle (fdq quantize --level 2 ...)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--json", default="docs/results/bench_first_shape.json")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args(argv)
    target, = checked_outputs_or_exit("bench_first_shape", args.force, ("--json", args.json))
    bundle = load_bundle(args.bundle)
    rng = np.random.default_rng(0)
    timed = rng.uniform(-120, 130, size=(1, 3, *TIMED_HW)).astype(np.float32)
    other = rng.uniform(-120, 130, size=(1, 3, *OTHER_HW)).astype(np.float32)
    first_timed = load_inference(bundle, threads=1)
    first_timed(timed)
    first_other = load_inference(bundle, threads=1)
    first_other(other)
    fast, slow = paired_median_ms(lambda: first_timed(timed), lambda: first_other(timed), args.warmup, args.runs)
    row = {"bundle": args.bundle, "engine": bundle.engine, "first_shape_timed_ms": fast, "first_shape_other_ms": slow,
           "slowdown": round(slow / fast, 3), "conv_share": round(conv_share(first_timed, timed), 3)}
    write_result(target, result("bench_first_shape", [row], argv=argv,
                                settings={"timed_hw": list(TIMED_HW), "other_hw": list(OTHER_HW), "threads": 1,
                                          "warmup": args.warmup, "runs": args.runs}))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
