"""``fdq profile`` (``fdq-profile``): quantize (or take) bundles, run them on a target, and compare the runs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

from fdq.device.atomic import atomic_write_text
# float_at_least, int_at_least: the runner's own checks, made here before anything travels
from fdq.device.cliargs import comma_list, float_at_least, int_at_least
from fdq.host.commands import CliError
from fdq.host.commands.sweep import add_sweep_arguments
from fdq.host.commands.target_options import add_target_arguments, load_targets_from_args
from fdq.host.targets import load_target


def _profile_plans(args: argparse.Namespace) -> List[Tuple[Any, List[Path]]]:
    """(target, bundles) for the --against target first (the baseline), then the --target's hosts."""
    from fdq.host.bundle_cache import FLOAT, check_runtime, quantized_bundle, runtime_bundle

    plans = [(target, None if args.bundle else (args.backend or [target.engine or FLOAT]))
             for target in load_targets_from_args(args)]  # a fleet: every host runs the same bundles
    if args.against:
        backends, name = args.against
        other = load_target(name)
        plans.insert(0, (other, backends or [other.engine or FLOAT]))
    for _, backends in plans:  # before any quantization: a bad combination costs one line, at once
        for backend in backends or ():
            check_runtime(args.runtime or "torchscript", backend != FLOAT, args.calib, backend)
    level = args.level if args.level is not None else (2 if args.calib else 1)
    made = []
    for target, backends in plans:
        sources = [Path(b) for b in args.bundle] if backends is None else [
            quantized_bundle(args.model, backend, level, weights=args.weights, calib=args.calib, labels=args.labels,
                             long_side=args.long_side, iters=args.iters) for backend in backends]
        # --bundle keeps each bundle's own runtime unless --runtime asks for an export
        runtime = args.runtime or (None if backends is None else "torchscript")
        made.append((target, [runtime_bundle(b, runtime, args.calib) if runtime else b for b in sources]))
    return made


def cmd_profile(args: argparse.Namespace) -> int:
    from fdq.device.outputs import check_file_output
    from fdq.host import profiling
    from fdq.host.compare import write_reports
    from fdq.host.remote import connect
    from fdq.host.report.runs import with_baseline
    from fdq.host.report.table import print_table

    if args.sweep:
        from fdq.host.commands.sweep import cmd_sweep

        return cmd_sweep(args)
    if args.bundle and (args.backend or args.level is not None or args.calib or args.labels):
        raise CliError("--bundle carries its backend and level: do not combine it with --backend/--level/--calib")
    if args.gt and not args.images:
        raise CliError("--gt scores the images of --images DIR: give both")
    if args.images and args.source != "synthetic":
        raise CliError("--images sends images to the target; --source names a folder already there: give one")
    runs_dir = profiling.check_runs_folder(args.runs)
    for path, option in ((args.out, "--out"), (args.html, "--html"), (args.markdown, "--markdown")):
        if path:
            check_file_output(path, args.force, option)
    dataset = None
    if args.images:
        if not args.gt:
            raise CliError("--images without --gt measures latency only: give --gt DIR for accuracy, or "
                           "--source DIR for a folder on the target")
        dataset = profiling.stage_dataset(args.images, args.gt)
        if args.frames is not None and args.frames < dataset.count:
            raise CliError(f"--gt scores every image once: --frames {args.frames} < {dataset.count} images")
    if args.count_instructions:  # before any quantization, as every other bad combination
        targets = load_targets_from_args(args)
        profiling.check_counting(targets + ([load_target(args.against[1])] if args.against else []), args.threads)
    plans = _profile_plans(args)
    if args.interleave and args.count_instructions:
        raise CliError("--interleave shares drift between bundles; a count has none: give one of "
                       "--interleave and --count-instructions")
    if args.interleave and max(len(bundles) for _, bundles in plans) < 2:
        raise CliError("--interleave measures two or more bundles alternately: give several --bundle or --backend")
    jobs = [profiling.Job(target, bundle, threads) for target, bundles in plans for bundle in bundles
            for threads in (args.threads or [target.threads])] if not args.interleave else [
        profiling.Job(target, bundles[0], threads, tuple(bundles[1:])) for target, bundles in plans
        for threads in (args.threads or [target.threads])]
    made = sum(1 + len(job.interleaved) for job in jobs)
    if args.out and made != 1:
        raise CliError(f"--out takes one run's JSON and this profile makes {made} runs: leave --out out "
                       f"(every run lands in --runs {args.runs})")
    settings = profiling.RunSettings(frames=args.frames if args.frames is not None or dataset else 100,
                                     min_seconds=args.min_seconds, warmup=args.warmup, source=args.source,
                                     per_op=args.per_op, cooldown=args.cooldown, max_temp=args.max_temp,
                                     run_timeout=args.run_timeout, count_instructions=args.count_instructions)
    outcome = profiling.run_jobs(jobs, settings, runs_dir, args.command_line, dataset, connect,
                                 announce=lambda line: print(line, file=sys.stderr), setup=args.setup,
                                 fleet=[target for target, _ in plans[1 if args.against else 0:]])
    if not outcome.runs:
        raise CliError(f"no run finished ({len(outcome.failures)} failed)")
    if args.out:
        atomic_write_text(args.out, json.dumps(outcome.runs[0].doc, indent=1) + "\n")
    runs, baseline = with_baseline(outcome.runs, None)
    print_table(runs, baseline)
    report = args.html or str(runs_dir / f"report-{outcome.runs[-1].path.stem.rsplit('-', 1)[-1]}.html")
    write_reports(runs, baseline, report, args.markdown, args.force)
    if args.out:
        print(f"run: {Path(args.out).resolve()}")
    print(f"report: {Path(report).resolve()}")
    return 1 if outcome.failures else 0


def _backend(name: str) -> str:
    from fdq.calibration.quant_api import check_backend

    try:
        return name if name == "fp32" else check_backend(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or fp32 for the float bundle") from None


def _runtime(name: str) -> str:
    from fdq.host.bundle_cache import known_runtime

    try:
        return known_runtime(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _against(text: str) -> Tuple[Optional[List[str]], str]:
    """``BACKEND[,BACKEND]@TARGET`` or ``TARGET``."""
    backends, at, target = text.rpartition("@")
    if at and not backends or not target:
        raise argparse.ArgumentTypeError(f"expected BACKEND@TARGET (for example x86@local), got {text!r}")
    return (comma_list(_backend)(backends) if at else None), target


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``profile`` subcommand to ``fdq``'s subparsers (``fdq-profile``: the same as a program)."""
    from fdq.device.run import WARMUP_FRAMES

    p = subparsers.add_parser("profile", help="run bundles on a target and compare the runs",
                              description="Quantize (or take) bundles, run them on a target, and compare the runs: "
                                          "latency per stage, cold start, memory, temperature, AP.")
    add_target_arguments(p, default="local")
    p.add_argument("--against", type=_against, metavar="BACKEND@TARGET",
                   help="also run the model there, as the baseline (for example x86@local)")
    p.add_argument("--model", default="slim", help="slim, rfb or mnet025")
    p.add_argument("--backend", type=comma_list(_backend), metavar="LIST",
                   help="qnnpack, x86, fbgemm, fp32, comma-separated (default: the target's engine)")
    p.add_argument("--level", type=int, choices=(1, 2, 3, 4),
                   help="quantization level (default 1, data-free, or 2 with --calib)")
    p.add_argument("--calib", help="calibration images (levels 2-4; --runtime ncnn-int8 or mnn-int8 of --backend fp32)")
    p.add_argument("--labels", help="ground truth of the --calib images (level 3)")
    p.add_argument("--weights", help="weights file or zoo name (default: the model's zoo weights)")
    p.add_argument("--iters", type=int_at_least("--iters", 1), help="as fdq quantize --iters")
    p.add_argument("--long-side", type=int_at_least("--long-side", 32), default=320,
                   help="input long side of the bundles it quantizes")
    p.add_argument("--bundle", nargs="+", action="extend", metavar="DIR", help="profile these bundles instead")
    p.add_argument("--runtime", type=_runtime,
                   help="torchscript, onnxruntime, ncnn, ncnn-int8, mnn, mnn-int8 or executorch: exports the bundle on "
                        "the fly (an int8 bundle carries its scales to onnxruntime and ncnn-int8; a float one is "
                        "calibrated on --calib for ncnn-int8 and mnn-int8) (default: torchscript, or a --bundle's own "
                        "runtime)")
    p.add_argument("--threads", type=comma_list(int_at_least("--threads", 1)), metavar="LIST",
                   help="thread counts, run in turn (default: the target's)")
    p.add_argument("--frames", type=int_at_least("--frames", 1),
                   help="frames to measure (default 100, or every --images image once)")
    p.add_argument("--min-seconds", type=float_at_least("--min-seconds", 0), default=0.0,
                   help="and measure for at least this long")
    p.add_argument("--warmup", type=int_at_least("--warmup", 0), default=WARMUP_FRAMES,
                   help="unrecorded warm-up frames before timing")
    p.add_argument("--source", default="synthetic", help="on the target: an image folder, a video, or synthetic")
    p.add_argument("--images", help="WIDER-layout images sent to the target (with --gt: AP measured there)")
    p.add_argument("--gt", help="ground truth of --images (.mat folder or .json)")
    p.add_argument("--per-op", action="store_true", help="time per operator (TorchScript, ONNX Runtime)")
    p.add_argument("--cooldown", type=float_at_least("--cooldown", 0), default=0.0,
                   help="seconds the target idles between runs")
    p.add_argument("--max-temp", type=float_at_least("--max-temp", -273), help="wait until the CPU is cooler")
    p.add_argument("--run-timeout", type=float_at_least("--run-timeout", 1), metavar="S",
                   help="stop a run on the target after S seconds (default: 900 s plus 10 s a frame)")
    p.add_argument("--count-instructions", action="store_true",
                   help="also count each stage's instructions under the emulator (an emulated ARM board's "
                        "instruction_counter; one thread): exact and repeatable, unlike its latency")
    p.add_argument("--interleave", action="store_true",
                   help="measure the bundles alternately on the same frames (A B A B ...) in one runner process on "
                        "the target, one run each: drift, other load and throttling hit them alike")
    p.add_argument("--runs", default="fdq-runs", help="folder every run is kept in")
    p.add_argument("--out", help="also write the run's JSON here (one run only)")
    p.add_argument("--html", help="the HTML report (default: in the runs folder)")
    p.add_argument("--markdown", help="also write the table as Markdown")
    p.add_argument("--force", action="store_true", help="replace existing --out/--html/--markdown files")
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_profile)
    return p
