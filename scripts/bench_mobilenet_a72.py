#!/usr/bin/env python3
"""MobileNet-v1 fp32 and int8 through fdq's ncnn path, counted on the emulated Cortex-A72: does the
A72 cycle model reproduce ncnn's own Pi 4 int8/fp32 ratio?

ncnn's benchmark/README.md (Raspberry Pi 4 Model B, Cortex-A72 at 1.8 GHz, 1 thread) lists
mobilenet at 124.3 ms fp32 and 84.8 ms int8: int8 1.47x faster. As benchncnn does, the network here
has random weights (seed 0; a count depends on the shapes, not the values) and a 224x224 input:
MobileNet-v1 (conv3x3 s2 then 13 depthwise/pointwise pairs, ReLU after each, average pool, a
softmax; without the 1000-way classifier, 0.2 % of
the multiply-adds, as pnnx makes it an InnerProduct that fdq's ncnn reader does not decode). pnnx converts it (fp32), :func:`fdq.host.export.ncnn_int8.int8_files`
makes its int8 model by the export's rules (fdq calibration on random N(0,1) inputs, requantize fusion,
Winograd off), and ``benchlib/count_ncnn.py`` runs each under the counting qemu in the board's root
(``scripts/testboard.sh up arm64``; its ncnn is the one ``fdq-deploy --setup`` put in the ``~/fdq-rt``
venv, e.g. by scripts/bench_instructions.py). Reported: instructions, the single-CPI estimate (its
ratio is the instruction ratio) and the A72 cycle models' ratios (``fdq.host.estimate``), all estimates.

Then ``--probes``: small two-layer networks (two pointwise or two 3x3 depthwise convolutions with ReLU,
the first requantized into the second as in a whole model) at the channel counts and sizes of slim
and of MobileNet, through the same path: where ncnn's int8 pays on an ARMv8.0 core and where it does not.

    python scripts/bench_mobilenet_a72.py --board /run/fdq-testboard/arm64/profile.yaml \\
        --json docs/results/bench_mobilenet_a72.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import yaml
from torch import nn

from benchlib.results import read_result, result, write_result

from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.estimate import A72_THROUGHPUT, BOUND_METHOD, CLASS_METHOD, bound_cycles, class_cycles, cycles_ms
from fdq.host.export.ncnn import NCNN_BIN, NCNN_PARAM, run_pnnx
from fdq.host.export.ncnn_int8 import int8_files

PUBLISHED = {"fp32_ms": 124.3, "int8_ms": 84.8, "speedup": round(124.3 / 84.8, 4),
             "source": "ncnn benchmark/README.md, Raspberry Pi 4 Model B (Cortex-A72 1.8 GHz), 1 thread, mobilenet"}
GOAL = 0.2  # the estimated int8 speedup within 20 % of the published one
SIDE = 224
MOBILENET = "mobilenet-v1 224"
ROOTS = Path("/var/lib/fdq-testboard")  # where testboard.sh unpacks a board's arm64 root
VENV_PYTHONS = ("root/host1/fdq-rt/.venv/bin/python", "root/host1/fdq-rt/venv/bin/python")
COUNTING_ENV = ["PATH=/usr/bin:/bin", "HOME=/root", "PYTHONHASHSEED=0", "OMP_NUM_THREADS=1",
                "MALLOC_MMAP_THRESHOLD_=4096"]  # as fdq.host.profiling counts the runner
BOARD_DIR = "tmp/fdq-mobilenet"


def mobilenet_v1() -> nn.Module:
    """MobileNet-v1 as benchncnn's mobilenet.param (batch norm folded into the convolutions' bias), less its classifier."""
    def conv(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> List[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups), nn.ReLU()]

    layers = conv(3, 32, 3, 2)
    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    for cin, cout, stride in plan:
        layers += conv(cin, cin, 3, stride, groups=cin) + conv(cin, cout, 1, 1)
    torch.manual_seed(0)
    # no 1000-way classifier: pnnx makes it an InnerProduct, which fdq's ncnn reader does not decode;
    # it is 1 M of the network's 569 M multiply-adds
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Softmax(dim=1)).eval()


# name -> (channels, height, width, depthwise): two layers of each, as in slim (320x240) and MobileNet (224)
PROBES = {"slim pw 16 @160x120": (16, 120, 160, False), "slim pw 32 @80x60": (32, 60, 80, False),
          "slim pw 64 @40x30": (64, 30, 40, False), "mobilenet pw 256 @28x28": (256, 28, 28, False),
          "mobilenet pw 512 @14x14": (512, 14, 14, False), "slim dw 32 @80x60": (32, 60, 80, True),
          "slim dw 64 @40x30": (64, 30, 40, True), "mobilenet dw 512 @14x14": (512, 14, 14, True)}


def probe(channels: int, depthwise: bool) -> nn.Module:
    """Two convolutions with ReLU: 1x1, or 3x3 depthwise stride 1; random weights (seed 0)."""
    torch.manual_seed(0)
    k, groups = (3, channels) if depthwise else (1, 1)
    return nn.Sequential(nn.Conv2d(channels, channels, k, 1, k // 2, groups=groups), nn.ReLU(),
                         nn.Conv2d(channels, channels, k, 1, k // 2, groups=groups), nn.ReLU()).eval()


def export(net: nn.Module, shape: Tuple[int, int, int], work: Path, calib_frames: int) -> Dict[str, Any]:
    """fp32 (pnnx) and int8 (fdq's rules) ncnn files of ``net`` for a CxHxW ``shape`` in ``work``; the int8 layer table."""
    fp32, int8, pnnx_work = work / "fp32", work / "int8", work / "pnnx"
    for folder in (fp32, pnnx_work):
        folder.mkdir(parents=True, exist_ok=True)
    run_pnnx(net, fp32, pnnx_work, shape[1:], None, channels=shape[0])
    rng = np.random.default_rng(1)
    blobs = [rng.standard_normal((1, *shape)).astype(np.float32) for _ in range(calib_frames)]
    rows = int8_files(fp32, "in0", blobs, int8)
    return {"int8_layers": sum(r["int8"] for r in rows), "float_convolutions": [r["layer"] for r in rows if not r["int8"]],
            "requantized": sum("top_scale" in r for r in rows)}


def board_root(profile: Path) -> Path:
    root = ROOTS / yaml.safe_load(profile.read_text())["name"] / "root"
    if not (root / "opt/fdq-count/run").is_file():
        raise SystemExit(f"bench_mobilenet_a72: {root} is no arm64 board root with the counting qemu "
                         "(scripts/testboard.sh up arm64)")
    return root


def count(root: Path, folder: Path, shape: Tuple[int, int, int], int8: bool, frames: int,
          warmup: int) -> Dict[str, Any]:
    """One counting run on the board of the ncnn files in ``folder``; the ``instructions`` section it prints."""
    python = next((p for p in VENV_PYTHONS if (root / p).exists()), None)
    if python is None:
        raise SystemExit("bench_mobilenet_a72: the board has no ~/fdq-rt venv with ncnn: run "
                         "scripts/bench_instructions.py (or fdq-deploy --setup with runtimes [ncnn]) on it first")
    board = root / BOARD_DIR
    shutil.rmtree(board, ignore_errors=True)
    (board / "fdq").mkdir(parents=True)
    (board / "fdq" / "__init__.py").write_text("")
    shutil.copytree(Path(__file__).resolve().parent.parent / "device", board / "fdq" / "device",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(Path(__file__).resolve().parent / "benchlib" / "count_ncnn.py", board)
    shutil.copytree(folder, board / "model")
    inside = f"/{BOARD_DIR}"
    cmd = ["chroot", str(root), "/usr/bin/env", "-i", *COUNTING_ENV, f"PYTHONPATH={inside}", "/opt/fdq-count/run",
           f"/{python}", f"{inside}/count_ncnn.py", f"{inside}/model/{NCNN_PARAM}", f"{inside}/model/{NCNN_BIN}",
           "in0", "out0", *map(str, shape), str(frames), str(warmup)] + (["int8"] if int8 else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_mobilenet_a72: counting {folder} failed: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(network: str, shape: Tuple[int, int, int], precision: str, counts: Dict[str, Any]) -> Dict[str, Any]:
    per_class = counts["classes"]["inference"]
    frames = [{name: values[i] for name, values in per_class.items()} for i in range(counts["frames"])]
    cycles = {"class_sum": statistics.median(class_cycles(f) for f in frames),
              "bound": statistics.median(bound_cycles(f) for f in frames)}
    return {"network": network, "precision": precision, "input": list(shape), "cpu": counts["cpu"],
            "frames": counts["frames"], "warmup_excluded": counts["warmup_excluded"],
            "instructions": {k: counts["per_frame"]["inference"][k] for k in ("median", "min", "max")},
            "classes": {name: statistics.median(values) for name, values in per_class.items()},
            "cycles": cycles, "cycle_estimate_ms_at_1.8GHz": {k: round(cycles_ms(v, 1.8e9), 2) for k, v in cycles.items()},
            "output_shape": counts["output_shape"]}


def ratios(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per network, fp32 over int8 (the int8 speedup) by instructions and by each cycle model."""
    out = {}
    for network in dict.fromkeys(r["network"] for r in rows):
        fp32, int8 = ({r["precision"]: r for r in rows if r["network"] == network}[p] for p in ("fp32", "int8"))
        out[network] = {"instructions": fp32["instructions"]["median"] / int8["instructions"]["median"],
                        **{m: fp32["cycles"][m] / int8["cycles"][m] for m in ("class_sum", "bound")}}
    return out


def summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    speedups = ratios(rows)
    mobilenet = speedups.pop(MOBILENET)
    return {"published": PUBLISHED, "class_sum_method": CLASS_METHOD, "bound_method": BOUND_METHOD,
            "single_cpi_note": "one CPI for both: its speedup is the instruction ratio",
            "mobilenet_int8_speedup": {k: {"estimated": round(v, 4), "error": round(v / PUBLISHED["speedup"] - 1, 4),
                                           "within_20_percent": abs(v / PUBLISHED["speedup"] - 1) <= GOAL}
                                       for k, v in mobilenet.items()},
            "probe_int8_speedup": {k: {m: round(v, 4) for m, v in r.items()} for k, r in speedups.items()}}


def markdown(doc: Dict[str, Any]) -> List[str]:
    lines = [f"`{doc['command']}` ({doc['created'][:10]}; emulated Cortex-A72, 1 thread, median of "
             f"{doc['settings']['frames']} frames; cycles are estimates, not measurements), millions per frame:", "",
             "| network | ncnn | instructions | A72 class-sum cycles | A72 bound cycles | "
             + " | ".join(A72_THROUGHPUT) + " |", "| --- " * (5 + len(A72_THROUGHPUT)) + "|"]
    for r in doc["rows"]:
        lines.append(f"| {r['network']} | {r['precision']} | {r['instructions']['median'] / 1e6:.2f} | "
                     f"{r['cycles']['class_sum'] / 1e6:.2f} | {r['cycles']['bound'] / 1e6:.2f} | "
                     + " | ".join(f"{r['classes'][k] / 1e6:.2f}" for k in A72_THROUGHPUT) + " |")
    lines += ["", f"MobileNet-v1 int8 speedup, published {PUBLISHED['speedup']:.2f}x ({PUBLISHED['source']}):", ""]
    for name, s in doc["summary"]["mobilenet_int8_speedup"].items():
        name = "instructions (= the single-CPI estimate)" if name == "instructions" else f"{name} cycles"
        lines.append(f"- {name}: **{s['estimated']:.2f}x** ({100 * s['error']:+.0f} %; goal within 20 %: "
                     f"{'met' if s['within_20_percent'] else 'not met'})")
    probes = doc["summary"].get("probe_int8_speedup")
    if probes:
        lines += ["", "| two-layer probe | int8 speedup by instructions | by class-sum cycles | by bound cycles |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {r['instructions']:.2f}x | {r['class_sum']:.2f}x | {r['bound']:.2f}x |" for k, r in probes.items()]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", help="an emulated board's profile (testboard.sh up arm64)")
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--calib-frames", type=int, default=4)
    p.add_argument("--probes", action="store_true", help="also the two-layer probes at slim's and MobileNet's sizes")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fdq-bench-mobilenet"))
    p.add_argument("--json", default="docs/results/bench_mobilenet_a72.json")
    p.add_argument("--from-json", help="only print the table of this earlier result")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args()
    if args.from_json:
        doc = read_result(args.from_json, "bench_mobilenet_a72")
    else:
        if not args.board:
            p.error("--board PROFILE is needed (scripts/testboard.sh up arm64 prints it)")
        target, = checked_outputs_or_exit("bench_mobilenet_a72", args.force, ("--json", args.json))
        root, work = board_root(Path(args.board)), Path(args.work).resolve()
        networks = {MOBILENET: (mobilenet_v1(), (3, SIDE, SIDE))}
        if args.probes:
            networks.update({name: (probe(c, dw), (c, h, w)) for name, (c, h, w, dw) in PROBES.items()})
        rows, exported = [], {}
        for i, (name, (net, shape)) in enumerate(networks.items()):
            folder = work / f"net{i}"
            exported[name] = export(net, shape, folder, args.calib_frames)
            for precision in ("fp32", "int8"):
                rows.append(row(name, shape, precision, count(root, folder / precision, shape, precision == "int8",
                                                              args.frames, args.warmup)))
                print(f"{name} {precision}: {rows[-1]['instructions']['median'] / 1e6:.2f} M instructions",
                      file=sys.stderr)
        doc = result("bench_mobilenet_a72", rows, summary=summary(rows),
                     settings={"frames": args.frames, "warmup": args.warmup, "threads": 1,
                               "calibration": f"{args.calib_frames} random N(0,1) inputs", "export": exported})
        write_result(target, doc)
        print(f"wrote {target}")
    print("\n".join(markdown(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
