#!/usr/bin/env python3
"""Instructions per frame of every runtime and precision on the emulated Pi 4, and the Pi 4 estimate.

Each configuration (the bundles of ``benchlib.recipes.CONFIGS``, as scripts/bench_runtimes.py makes them) runs under ``fdq-profile --count-instructions`` on an emulated board
(``sudo scripts/testboard.sh up arm64``: a Cortex-A72 under qemu, counted by scripts/qemu_count)
at one thread on the runner's synthetic 640x480 frames, long side 320 (so the network sees 320x240,
as in the published numbers). TorchScript runs on the board's own Python (torch 2.9.1); ONNX
Runtime (1.19.2: newer ones die under qemu-user 7.2), ncnn and MNN run in a venv that
``fdq-deploy --setup`` makes in a second work directory of the same board. ExecuTorch cannot run
there: its 1.5 wheels need torch 2.13 and the board has 2.9.1 (the row says so).

The estimate (``fdq.host.estimate``): one cycles-per-instruction figure calibrated on slim MNN int8
(29 ms published on a Pi 4 at 1.5 GHz), which predicts RFB MNN int8 (35 ms published): the error
is reported. Then the same CPI turns every configuration's count into milliseconds, an estimate
whose method and limits are stated next to it. Beside it, a Cortex-A72 cycle model over the counted
instruction classes (``fdq.host.estimate.class_cycles``: each class at its issue throughput from ARM's
A72 optimization guide, uncalibrated; and ``bound_cycles``, the busiest pipe), checked on the same
published numbers, and the int8/fp32 ratios of ncnn by count and by both cycle models.

    sudo python scripts/bench_instructions.py --board /run/fdq-testboard/arm64/profile.yaml \\
        --json docs/results/bench_instructions.json --force --markdown docs/SPEED.md
    python scripts/bench_instructions.py --from-json docs/results/bench_instructions.json --markdown docs/SPEED.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from benchlib.data import add_data_argument, data_of
from benchlib.docs import write_section
from benchlib.recipes import build_config, config_dtype
from benchlib.results import read_result, result, write_result

from fdq.device.outputs import checked_outputs_or_exit
from fdq.host.cli import profile_main
from fdq.host.estimate import (BOUND_METHOD, CALIBRATION, CLASS_METHOD, CLOCK_HZ, METHOD, PUBLISHED, bound_cycles,
                               class_cycles, cycles_ms, cycles_per_instruction, estimate_ms)

MARK_BEGIN, MARK_END = "<!-- bench_instructions:begin -->", "<!-- bench_instructions:end -->"
LONG_SIDE = 320
# configuration -> where it runs on the board: its own Python (torch), the --setup venv, or nowhere
TORCH, VENV = "torch", "venv"
PLACES = {"torchscript-fp32": TORCH, "torchscript-int8-qnnpack": TORCH, "onnx-fp32": VENV, "onnx-int8": VENV,
          "ncnn-fp32": VENV, "ncnn-int8": VENV, "ncnn-int8-qnnpack": VENV, "mnn-fp32": VENV, "mnn-int8": VENV,
          "executorch-int8": None}
NOT_RUN = "not run: ExecuTorch 1.5 needs torch 2.13 on the board, which has 2.9.1"
VENV_RUNTIMES = ["onnxruntime", "ncnn", "mnn"]
ONNXRUNTIME = "1.19.2"  # 1.32 dies at import under qemu-user 7.2 (docs/ARCHITECTURE.md)
STAGES = ("preprocess", "inference", "postprocess", "total")
CYCLE_MODELS = {"class_sum": class_cycles, "bound": bound_cycles}
# ncnn int8 against ncnn fp32 on the emulated A72 (issue 24): goals on instructions and on the class sum
RATIO_GOALS = {"instructions": 0.7, "class_sum": 0.8}


def venv_profile(board: Path, work: Path) -> Path:
    """The board's profile with a second work directory whose venv --setup fills with the other runtimes."""
    fields = yaml.safe_load(board.read_text())
    fields.update(name=f"{fields['name']}-rt", python="/usr/bin/python3", workdir="~/fdq-rt",
                  runtimes=VENV_RUNTIMES, onnxruntime=ONNXRUNTIME)
    path = work / "venv-profile.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def _runs(runs: Path) -> Dict[str, Any]:
    """The newest run document of each bundle in a runs folder (names end in the time)."""
    return {doc["profile"]["bundle"]: doc for doc in (json.loads(p.read_text()) for p in sorted(runs.glob("*.json")))}


def count(profile: Path, bundles: Dict[str, Path], runs: Path, frames: int, warmup: int, setup: bool) -> Dict[str, Any]:
    """fdq-profile --count-instructions over the ``bundles`` without a run in ``runs`` yet (a run is
    kept, like a bundle: remove --work to count again); each configuration's run document."""
    todo = [b for b in bundles.values() if str(b) not in (_runs(runs) if runs.is_dir() else {})]
    if todo:
        status = profile_main(["--target", str(profile), "--bundle", *map(str, todo), "--count-instructions",
                               "--frames", str(frames), "--warmup", str(warmup), "--runs", str(runs),
                               "--html", str(runs / f"{profile.stem}.html"), "--force"] + (["--setup"] if setup else []))
        if status != 0:
            print(f"fdq-profile exited {status}", file=sys.stderr)
    found = _runs(runs) if runs.is_dir() else {}
    return {config: found.get(str(bundle)) for config, bundle in bundles.items()}


def row(model: str, config: str, doc: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"model": model, "config": config, "dtype": config_dtype(config)}
    if doc is None:
        out["not_run"] = NOT_RUN if PLACES[config] is None else "the run failed (see the script's output)"
        return out
    counts = doc["instructions"]
    out.update({"runtime": doc["bundle"]["runtime"], "engine": doc["bundle"]["engine"],
                "runtime_versions": doc["device"]["runtime_versions"], "cpu": counts["cpu"],
                "cpu_features": counts["cpu_features"], "frames": counts["frames"],
                "warmup_excluded": counts["warmup_excluded"], "kernels": doc["device"]["kernels"],
                "instructions": {s: {k: counts["per_frame"][s][k] for k in ("median", "min", "max", "total")}
                                 for s in STAGES},
                "cold_start_instructions": counts["cold_start"]})
    if counts.get("classes"):
        out.update(frame_classes(counts["classes"]))
    return out


def frame_classes(classes: Dict[str, Dict[str, List[int]]]) -> Dict[str, Any]:
    """The median frame's instructions per class, and the median of each cycle model over the frames
    (per stage: inference and total)."""
    out: Dict[str, Any] = {"classes": {}, "cycles": {}}
    for stage in ("inference", "total"):
        per_class = classes[stage]
        frames = [{name: counts[i] for name, counts in per_class.items()}
                  for i in range(len(next(iter(per_class.values()))))]
        out["classes"][stage] = {name: statistics.median(counts) for name, counts in per_class.items()}
        out["cycles"][stage] = {model: statistics.median(fn(f) for f in frames) for model, fn in CYCLE_MODELS.items()}
    return out


def estimates(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The CPI from the calibration row, the check on the other published model, every row's estimate."""
    counted = {(r["model"], r["config"]): r for r in rows if "instructions" in r}
    calib = counted.get((CALIBRATION.model, "mnn-int8"))
    if calib is None:
        return {"method": METHOD, "cpi": None, "note": "the calibration run (slim mnn-int8) is missing"}
    cpi = cycles_per_instruction(calib["instructions"]["inference"]["median"], CALIBRATION.ms)
    checks = []
    for name, published in PUBLISHED.items():
        r = counted.get((name, "mnn-int8"))
        if r is None or published is CALIBRATION:
            continue
        predicted = estimate_ms(r["instructions"]["inference"]["median"], cpi)
        checks.append({"model": name, "published_ms": published.ms, "estimated_ms": round(predicted, 2),
                       "error": round(predicted / published.ms - 1, 4), "goal": "within 20 %",
                       "met": abs(predicted / published.ms - 1) <= 0.2, "source": published.source})
    for r in counted.values():
        r["estimate_ms"] = {s: round(estimate_ms(r["instructions"][s]["median"], cpi), 2) for s in ("inference", "total")}
        if "cycles" in r:
            r["cycle_estimate_ms"] = {m: round(cycles_ms(r["cycles"]["inference"][m]), 2) for m in CYCLE_MODELS}
    return {"method": METHOD, "clock_hz": CLOCK_HZ, "cpi": round(cpi, 4), "calibrated_on": CALIBRATION.__dict__,
            "checks": checks, "cycle_models": cycle_checks(counted)}


def cycle_checks(counted: Dict[Any, Dict[str, Any]]) -> Dict[str, Any]:
    """The cycle models against the published Pi 4 milliseconds (uncalibrated), and ncnn's int8/fp32 ratios."""
    checks = []
    for name, published in PUBLISHED.items():
        r = counted.get((name, "mnn-int8"))
        if r is None or "cycles" not in r:
            continue
        checks.append({"model": name, "published_ms": published.ms, "source": published.source,
                       **{f"{m}_ms": r["cycle_estimate_ms"][m] for m in CYCLE_MODELS},
                       **{f"{m}_error": round(r["cycle_estimate_ms"][m] / published.ms - 1, 4) for m in CYCLE_MODELS}})
    ratios = []
    for model in sorted({m for m, _ in counted}):
        fp32, int8 = counted.get((model, "ncnn-fp32")), counted.get((model, "ncnn-int8"))
        if not (fp32 and int8 and "cycles" in fp32 and "cycles" in int8):
            continue
        ratio = {"instructions": int8["instructions"]["inference"]["median"] / fp32["instructions"]["inference"]["median"],
                 **{m: int8["cycles"]["inference"][m] / fp32["cycles"]["inference"][m] for m in CYCLE_MODELS}}
        ratios.append({"model": model, "int8_over_fp32": {k: round(v, 4) for k, v in ratio.items()},
                       "goals": {k: {"at_most": goal, "met": ratio[k] <= goal} for k, goal in RATIO_GOALS.items()}})
    return {"class_sum_method": CLASS_METHOD, "bound_method": BOUND_METHOD, "checks": checks,
            "ncnn_int8_over_fp32": ratios}


def markdown(doc: Dict[str, Any]) -> List[str]:
    est, settings = doc["summary"]["estimate"], doc["settings"]
    lines = [MARK_BEGIN, "", f"`{doc['command']}` ({doc['created'][:10]}; emulated Cortex-A72, "
             f"features `{' '.join(doc['summary']['board_cpu_features'] or [])}`, 1 thread, 320x240, median of "
             f"{settings['frames']} frames after {settings['warmup']} warm-up):", ""]
    if est.get("cpi"):
        lines += [f"Calibration: slim MNN int8 inference, {CALIBRATION.ms:g} ms published, gives **CPI "
                  f"{est['cpi']:.3f}** at {CLOCK_HZ / 1e9:g} GHz."]
        for check in est["checks"]:
            lines.append(f"Check: {check['model']} MNN int8 estimated at **{check['estimated_ms']:.1f} ms** against "
                         f"{check['published_ms']:g} ms published: error {100 * check['error']:+.1f} % "
                         f"(goal within 20 %: {'met' if check['met'] else 'not met'}).")
        lines.append("")
    cycle_models = est.get("cycle_models") or {}
    for check in cycle_models.get("checks", []):
        lines.append(f"Cycle models (uncalibrated): {check['model']} MNN int8 class sum **{check['class_sum_ms']:.1f} ms**, "
                     f"busiest-pipe bound **{check['bound_ms']:.1f} ms**, against {check['published_ms']:g} ms published "
                     f"(errors {100 * check['class_sum_error']:+.1f} %, {100 * check['bound_error']:+.1f} %).")
    if cycle_models.get("checks"):
        lines.append("")
    lines += ["| model | runtime, precision | inference Minstr | total Minstr | estimated Pi 4 inference ms | "
              "estimated Pi 4 total ms | A72 class-sum inference ms | A72 bound inference ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        if "instructions" not in r:
            lines.append(f"| {r['model']} | {r['config']} | {r['not_run']} | | | | | |")
            continue
        i = r["instructions"]
        e = r.get("estimate_ms") or {}
        c = r.get("cycle_estimate_ms") or {}
        lines.append(f"| {r['model']} | {r['config']} | {i['inference']['median'] / 1e6:.1f} | "
                     f"{i['total']['median'] / 1e6:.1f} | {e.get('inference', '-')} | {e.get('total', '-')} | "
                     f"{c.get('class_sum', '-')} | {c.get('bound', '-')} |")
    if cycle_models.get("ncnn_int8_over_fp32"):
        lines += ["", "| model | ncnn int8 / fp32: instructions | class-sum cycles | bound cycles |",
                  "| --- | --- | --- | --- |"]
        for r in cycle_models["ncnn_int8_over_fp32"]:
            q, g = r["int8_over_fp32"], r["goals"]
            lines.append(f"| {r['model']} | {q['instructions']:.3f}x (goal <= {g['instructions']['at_most']}: "
                         f"{'met' if g['instructions']['met'] else 'not met'}) | {q['class_sum']:.3f}x (goal <= "
                         f"{g['class_sum']['at_most']}: {'met' if g['class_sum']['met'] else 'not met'}) | "
                         f"{q['bound']:.3f}x |")
    lines += ["", "Counts: exact and repeatable (two runs agree to 0.1 %, the Python postprocess to 0.5 %, "
              f"`tests/test_instructions.py`). "
              f"Milliseconds: {est['method']}. A72 class sum: {CLASS_METHOD}. A72 bound: {BOUND_METHOD}. Total: the runner's whole pipeline (uint8 resize and normalize, "
              "inference, decode and NMS in the C kernels).", "", MARK_END]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--board", help="an emulated board's profile (testboard.sh up arm64)")
    add_data_argument(p)
    p.add_argument("--models", default="slim,rfb")
    p.add_argument("--configs", default=",".join(PLACES))
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fdq-bench-instructions"),
                   help="bundles and runs (kept, bundles reused)")
    p.add_argument("--json", default="docs/results/bench_instructions.json")
    p.add_argument("--markdown", help="put the table into this docs page (between its markers)")
    p.add_argument("--from-json", help="only write --markdown from this earlier result")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    args = p.parse_args()
    if args.from_json:
        doc = read_result(args.from_json, "bench_instructions")
    else:
        if not args.board:
            p.error("--board PROFILE is needed (sudo scripts/testboard.sh up arm64 prints it)")
        target, = checked_outputs_or_exit("bench_instructions", args.force, ("--json", args.json))
        data = data_of(args, "calib")
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        configs = args.configs.split(",")
        board, venv = Path(args.board), venv_profile(Path(args.board), work)
        rows: List[Dict[str, Any]] = []
        docs: Dict[Any, Any] = {}
        setup = True
        for model in args.models.split(","):
            for place, profile in ((TORCH, board), (VENV, venv)):
                bundles = {c: build_config(c, model, LONG_SIDE, work, data) for c in configs if PLACES[c] == place}
                if bundles:
                    runs = work / f"runs-{model}-{place}"
                    docs.update({(model, c): d for c, d in count(profile, bundles, runs, args.frames, args.warmup,
                                                                  setup and place == VENV).items()})
                    setup = setup and place != VENV
            rows += [row(model, c, docs.get((model, c))) for c in configs]
        features = next((r["cpu_features"] for r in rows if "cpu_features" in r), None)
        summary = {"board_cpu_features": features, "estimate": estimates(rows)}  # estimates() adds to the rows
        doc = result("bench_instructions", rows, summary=summary,
                     settings={"frames": args.frames, "warmup": args.warmup, "long_side": LONG_SIDE, "threads": 1})
        write_result(target, doc)
        print(f"wrote {target}")
    if args.markdown:
        write_section(args.markdown, markdown(doc), "Instructions on the emulated Pi 4, and a Pi 4 estimate")
    print("\n".join(markdown(doc)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
