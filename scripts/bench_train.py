#!/usr/bin/env python
"""Benchmark ``fdq train``: training images per second, one process vs two under torchrun vs ``--amp``.

Every run is the product path (``fdq train`` / ``torchrun -m fdq.host.train`` in a subprocess) on a
folder of real WIDER images with their labels (the calib split of ``--data``); the rate is the last epoch's ``images_per_s`` of its
``metrics.jsonl`` (the first epochs warm up: worker start, allocator, oneDNN kernels). The three
configurations run interleaved, ``--reps`` rounds, and each one's median is compared with the one-process
median of the same run, so a shared machine's drift hits all of them alike. The load average before and
after each run is recorded with it, and its range over the whole benchmark in ``machine.load_average_1m_run``: on a shared
machine (other processes busy) the ratios, not the rates, are what carries over, and only while the
load stays below the number of cores.

Example::

    python scripts/bench_train.py --json docs/results/bench_train.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from benchlib.data import Data, add_data_argument, data_of
from benchlib.results import machine, result, write_result

from fdq.device.outputs import checked_outputs_or_exit

CONFIGS = {
    "1 process": {"procs": 1, "amp": False},
    "2 processes (torchrun, gloo)": {"procs": 2, "amp": False},
    "1 process, --amp (bfloat16)": {"procs": 1, "amp": True},
}


def run_once(name: str, args: argparse.Namespace, data: Data, out: Path) -> Dict[str, Any]:
    cfg = CONFIGS[name]
    train = ["--model", args.model, "--images", str(data.calib_images), "--labels", str(data.calib_labels),
             "--size", str(args.size),
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
             "--out", str(out), *(["--amp"] if cfg["amp"] else [])]
    if cfg["procs"] == 1:
        cmd = [sys.executable, "-m", "fdq.host.train", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg['procs']}",
               "-m", "fdq.host.train", *train]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_train: error: {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": metrics[-1]["images_per_s"], "epoch_seconds": metrics[-1]["seconds"],
            "loss": metrics[-1]["loss"], "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_argument(p)
    p.add_argument("--model", default="slim")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--epochs", type=int, default=2, help="per run; the last one is measured")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--json", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args()
    target, = checked_outputs_or_exit("bench_train", args.force, ("--json", args.json))
    data = data_of(args, "calib")
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="fdq-bench-train-") as tmp:
        for rep in range(args.reps):
            for i, name in enumerate(CONFIGS):
                once = run_once(name, args, data, Path(tmp) / f"r{rep}c{i}")
                runs[name].append(once)
                print(f"{name}: {once['images_per_s']:.2f} img/s (load {once['load_before']:.1f})",
                      file=sys.stderr)
    base = statistics.median(r["images_per_s"] for r in runs["1 process"])
    summary = {name: {"median_images_per_s": statistics.median(r["images_per_s"] for r in rs),
                      "ratio_to_1_process": statistics.median(r["images_per_s"] for r in rs) / base}
               for name, rs in runs.items()}
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"], r["load_after"])]
    load = {"min": min(loads), "median": statistics.median(loads), "max": max(loads),
            "note": "1-minute load average before and after each run; the machine is shared with "
                    "other users' processes: a load above the core count slows every configuration, "
                    "and most the one process whose OpenMP threads wait for each other"}
    rows = [{"configuration": name, "round": i, **r} for name, rs in runs.items() for i, r in enumerate(rs)]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("json", "force")}
    write_result(target, result("bench_train", rows, machine_facts=machine(load_average_1m_run=load),
                                settings=settings, summary=summary))
    for name, s in summary.items():
        print(f"{name}: {s['median_images_per_s']:.2f} img/s, x{s['ratio_to_1_process']:.2f}")
    print(f"load average {load['min']:.1f}-{load['max']:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
