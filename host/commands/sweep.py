"""``fdq-profile --sweep``: what to ship on this board. Every configuration it can run (models, runtimes,
precisions, threads, input sizes), latency and AP measured there on the same images, the Pareto
front and one line naming the fastest configuration that keeps its AP."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from fdq.device.cliargs import comma_list, float_at_least, long_side
from fdq.host.commands import CliError


def _runtimes(text: str) -> Tuple[str, ...]:
    from fdq.host.sweep_runs import ALL, RUNTIMES

    if text == ALL:
        return (ALL,)
    names = tuple(comma_list(str)(text))
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown runtime {unknown[0]!r} (choose from: {', '.join(RUNTIMES)}, or all)")
    return names


def _choices(option: str, allowed: Tuple[str, ...]) -> Any:
    def parse(text: str) -> Tuple[str, ...]:
        names = tuple(comma_list(str)(text))
        wrong = [n for n in names if n not in allowed]
        if wrong:
            raise argparse.ArgumentTypeError(f"{option}: unknown {wrong[0]!r} (choose from: {', '.join(allowed)})")
        return names
    return parse


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--sweep`` (its --threads, --images, --gt, --calib, --level, --runs are fdq-profile's)."""
    from fdq.host.sweep import METRICS, PRECISIONS

    g = p.add_argument_group("sweep", "fdq-profile --sweep --images DIR --gt DIR: what to ship on this target")
    g.add_argument("--sweep", action="store_true",
                   help="run every configuration of the options below on the target, AP measured there on --images; "
                        "print the Pareto front of (medium AP, metric) and the one to ship; resumable (runs finished "
                        "under --runs are reused)")
    g.add_argument("--models", type=comma_list(str), metavar="LIST",
                   help="models to sweep: slim, rfb, mnet025 (default: all three) and folders of float bundles "
                        "fdq import wrote (onnxruntime, ncnn, mnn; int8 on --calib)")
    g.add_argument("--runtimes", type=_runtimes, metavar="all|LIST",
                   help="runtimes to sweep: all (every runtime the runner has that is installed there) or a list "
                        "(default: the profile's runtimes installed there, or that --setup installs)")
    g.add_argument("--precisions", type=_choices("--precisions", PRECISIONS), default=",".join(PRECISIONS), metavar="LIST",
                   help="fp32, int8 (int8: TorchScript on the target's engine, ONNX Runtime and ncnn with its scales, "
                        "MNN and ExecuTorch calibrated on --calib)")
    g.add_argument("--long-sides", type=comma_list(long_side), default="320", metavar="LIST",
                   help="input long sides to sweep")
    g.add_argument("--max-ap-drop", type=float_at_least("--max-ap-drop", 0), default=1.0, metavar="PT",
                   help="most medium-AP points a configuration may lose against its model's float at its side")
    g.add_argument("--max-rss", type=float_at_least("--max-rss", 1), metavar="MiB",
                   help="most peak memory (RSS) a configuration may use")
    g.add_argument("--metric", choices=METRICS,
                   help="what ranks the configurations (default: cycles, the A72 cycle estimate of the counted "
                        "instructions, on an emulated board with a counter, else p90)")
    g.add_argument("--budget-minutes", type=float_at_least("--budget-minutes", 0), metavar="M",
                   help="start no configuration after M minutes (the one running finishes); run the same command "
                        "again to go on")


_NOT_WITH_SWEEP = (("bundle", "--bundle"), ("runtime", "--runtime (the sweep takes --runtimes)"), ("out", "--out"),
                   ("against", "--against"), ("count_instructions", "--count-instructions (--metric instructions)"))


def _imported_name(entry: str, zoo: Any) -> str:
    """The model name of ``--models`` entry ``entry`` when it is a float bundle ``fdq import`` wrote."""
    from fdq.device.bundle import BundleError, load_bundle
    from fdq.host.export.imported import is_imported

    if not Path(entry).is_dir():
        raise CliError(f"--models: unknown model {entry!r} (choose from: {', '.join(zoo)}, or the folder of a "
                       "bundle fdq import wrote)")
    try:
        bundle = load_bundle(entry)
    except BundleError as exc:
        raise CliError(f"--models: {exc}") from None
    if not is_imported(bundle) or bundle.runtime != "onnxruntime":
        raise CliError(f"--models: {entry} is not a float bundle written by fdq import (the sweep makes every other "
                       "bundle itself)")
    name = str(bundle.manifest["model"]["name"])
    if name in zoo:
        raise CliError(f"--models: imported {entry} is named {name}, as fdq's own model: import it with another --name")
    return name


def _grid(args: argparse.Namespace) -> Any:
    from fdq.host.sweep_runs import Grid
    from fdq.models import MODEL_NAMES

    models, imported = [], []
    for entry in args.models or MODEL_NAMES:
        name = entry if entry in MODEL_NAMES else _imported_name(entry, MODEL_NAMES)
        if name in models:
            raise CliError(f"--models: {name} is named twice")
        models.append(name)
        if name != entry:
            imported.append((name, entry))
    int8 = [b for b in args.backend or () if b != "fp32"]
    if len(int8) > 1:
        raise CliError(f"--sweep takes one int8 --backend for TorchScript, got {','.join(int8)}")
    return Grid(models=tuple(models), imported=tuple(imported), runtimes=args.runtimes, precisions=tuple(args.precisions),
                threads=tuple(args.threads) if args.threads else None, long_sides=tuple(args.long_sides),
                backend=int8[0] if int8 else None, level=args.level, calib=args.calib, labels=args.labels,
                weights=args.weights, iters=args.iters)


def _facts(targets: List[Any], setup: bool) -> Tuple[List[Tuple[Any, Dict[str, Any]]], List[str]]:
    """Each host with its facts (after --setup): what it can run decides its configurations; and a line
    for each host that cannot be reached (a fleet's others go on, as everywhere)."""
    from fdq.host.deploy import board_facts
    from fdq.host.fleet import on_each
    from fdq.host.provision import prepare

    def facts(conn: Any) -> Dict[str, Any]:
        prepare(conn, setup)
        return board_facts(conn, conn.path(conn.target.workdir))

    found = on_each(targets, facts)
    failed = [f"{r.target.name}: {r.error}" for r in found if not r.ok]
    if len(failed) == len(found):
        raise CliError(f"cannot read what the target runs: {failed[0]}")
    return [(r.target, r.value) for r in found if r.ok], failed


def cmd_sweep(args: argparse.Namespace) -> int:
    """Plan (what each host runs, bundles made once, finished runs reused), run the rest, answer; the
    ship line is the last line printed."""
    from fdq.calibration.progress import line as progress_line
    from fdq.device.atomic import atomic_write_text
    from fdq.device.outputs import check_file_output
    from fdq.host import profiling
    from fdq.host.commands.target_options import load_targets_from_args
    from fdq.host.remote import connect
    from fdq.host.report.runs import load_runs
    from fdq.host.report.sweep import print_sweep, render
    from fdq.host.sweep import COUNTED, analyse
    from fdq.host.sweep_runs import deadline_after, plan

    for name, option in _NOT_WITH_SWEEP:
        if getattr(args, name):
            raise CliError(f"--sweep makes its own bundles and runs: do not combine it with {option}")
    if not (args.images and args.gt):
        raise CliError("--sweep measures AP on the target on the images it times: give --images DIR and --gt DIR")
    runs_dir = profiling.check_runs_folder(args.runs)
    for path, option in ((args.html, "--html"), (args.markdown, "--markdown")):
        if path:
            check_file_output(path, args.force, option)
    grid = _grid(args)
    targets = load_targets_from_args(args)
    metric = args.metric or ("cycles" if all(t.instruction_counter for t in targets) else "p90")
    if metric in COUNTED:
        profiling.check_counting(targets, grid.threads)
    dataset = profiling.stage_dataset(args.images, args.gt)
    if args.frames is not None and args.frames < dataset.count:
        raise CliError(f"--gt scores every image once: --frames {args.frames} < {dataset.count} images")
    settings = profiling.RunSettings(frames=args.frames, min_seconds=args.min_seconds, warmup=args.warmup,
                                     per_op=args.per_op, cooldown=args.cooldown, max_temp=args.max_temp,
                                     run_timeout=args.run_timeout, count_instructions=metric in COUNTED)
    keep_going = deadline_after(args.budget_minutes)  # the budget counts from the start, bundles included

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    hosts, unreached = _facts(targets, args.setup)
    for line in unreached:
        say(f"fdq-profile: error: {line}")
    earlier = load_runs([str(runs_dir)]) if runs_dir.is_dir() and any(runs_dir.glob("[!.]*.json")) else []
    todo = plan(hosts, grid, dataset, settings, earlier, say)
    total = len(todo.todo) + len(todo.reused)
    say(f"fdq-profile: sweep: {total} configuration(s) on {len(hosts)} host(s): {len(todo.reused)} finished "
        f"under {runs_dir} (reused), {len(todo.todo)} to run")
    finished: List[Any] = []
    with progress_line("fdq-profile: sweep, configurations", total) as steps:
        steps.update(completed=len(todo.reused))
        outcome = profiling.run_jobs(todo.todo, settings, runs_dir, args.command_line, dataset, connect,
                                     announce=steps.say, keep_going=keep_going,
                                     fleet=list(dict.fromkeys(job.target for job in todo.todo)),  # hosts at once
                                     on_done=lambda job, run: (finished.append(job), steps.advance()))
    left = [f"{job.target.name}: {job.bundle.name}, {job.threads} thread(s)" for job in todo.todo
            if job not in finished]
    if left:
        why = f"--budget-minutes {args.budget_minutes:g} spent" if args.budget_minutes is not None else "stopped"
        say(f"fdq-profile: {why}: {len(left)} configuration(s) not run; the same command runs them")
    runs = todo.reused + outcome.runs
    if not runs:
        raise CliError(f"no run finished ({len(outcome.failures)} failed, {len(left)} not started)")
    result = analyse(runs, metric, args.max_ap_drop, args.max_rss,
                     left=unreached + todo.skipped + outcome.failures + left)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    report = args.html or str(runs_dir / f"sweep-{stamp}.html")
    atomic_write_text(check_file_output(report, args.force, "--html"), render(result, report, args.command_line))
    if args.markdown:
        from fdq.host.compare import write_reports
        from fdq.host.report.runs import with_baseline

        write_reports(*with_baseline(runs, None), None, args.markdown, args.force)
    print(f"report: {Path(report).resolve()}")
    print_sweep(result)
    return 1 if outcome.failures or unreached else 0
