"""``fdq compare RUN.json|RUNS_DIR ...``: runs side by side in the terminal, and as HTML or Markdown;
with ``--check``, the regression gate (:mod:`fdq.host.gate`): exit 1 when a run is slower than its
baseline beyond noise and tolerance, or lost AP."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from fdq.device.atomic import atomic_write_text
from fdq.device.cliargs import float_at_least, percentage
from fdq.device.outputs import check_file_output
from fdq.host.gate import MAX_AP_DROP, QUANTILES


def write_reports(runs: Sequence[Any], baseline: Any, html_path: Optional[str] = None,
                  markdown_path: Optional[str] = None, force: bool = False) -> None:
    """Write the HTML and / or Markdown report (paths checked by the caller before long work)."""
    from fdq.host.report import html, table

    if html_path:
        atomic_write_text(check_file_output(html_path, force, "--html"), html.render(runs, baseline))
    if markdown_path:
        atomic_write_text(check_file_output(markdown_path, force, "--markdown"), table.markdown(runs, baseline))


def check(runs: Sequence[Any], baselines: Sequence[Any], metric: str, tolerance: Optional[float],
          max_ap_drop: float) -> int:
    """Judge every run that is not a baseline against its own; one line each, ``FAIL`` lines for
    those the gate fails. 1 when any failed."""
    from fdq.host import gate

    failed = 0
    for run in runs:
        if any(run is base for base in baselines):
            continue
        verdict = gate.judge(run, baselines, metric, tolerance, max_ap_drop)
        against = f" against {verdict.baseline.path.name if verdict.baseline.path else verdict.baseline.name}" \
            if verdict.baseline is not None else ""
        print(f"check {run.path.name if run.path else run.name}{against}: {gate.describe(verdict)}")
        if verdict.failed:
            failed += 1
            print(f"FAIL {run.name}: " + "; ".join(verdict.failures))
    print(f"check: {'FAILED, ' + str(failed) + ' run(s)' if failed else 'passed'}")
    return 1 if failed else 0


def history(args: argparse.Namespace) -> int:
    """``--history CONFIG``: that configuration's runs from the index, oldest first; the plots in --html."""
    from fdq.host import history as index
    from fdq.host.commands import CliError
    from fdq.host.report import history as page

    config = index.parse_config(args.history)
    rows = index.query(config)
    if not rows:
        raise CliError(f"no run of {args.history} in {index.index_path()} (fdq runs lists what is there)")
    for r in rows:
        ap = "-" if r["ap_medium"] is None else f"{100 * r['ap_medium']:.2f}"
        print(f"{r['created']}  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  AP medium {ap}  {r['path']}")
    if args.html:
        atomic_write_text(check_file_output(args.html, args.force, "--html"), page.render(rows, config))
        print(f"report: {Path(args.html).resolve()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fdq.host.commands import CliError
    from fdq.host.report.runs import load_runs, with_baseline
    from fdq.host.report.table import print_table

    for path, option in ((args.html, "--html"), (args.markdown, "--markdown")):
        if path:
            check_file_output(path, args.force, option)
    if args.history and (args.runs or args.check or args.baseline):
        raise CliError("--history plots one configuration from the index: give it without runs, --baseline or --check")
    if args.history:
        return history(args)
    if not args.runs:
        raise CliError("give the runs to compare (RUN.json or RUNS_DIR), or --history CONFIG")
    if args.check and not args.baseline:
        raise CliError("--check compares with --baseline RUN|RUNS_DIR: give one")
    if args.check and Path(args.baseline).is_dir():
        baselines = load_runs([args.baseline])
        runs, baseline = [*baselines, *load_runs(args.runs)], baselines[0]
    else:
        runs, baseline = with_baseline(load_runs(args.runs), args.baseline)
        baselines = [baseline]
    print_table(runs, baseline)
    write_reports(runs, baseline, args.html, args.markdown, args.force)
    for path in (args.markdown, args.html):  # the report's path is the last line
        if path:
            print(f"report: {Path(path).resolve()}")
    return check(runs, baselines, args.metric, args.tolerance, args.max_ap_drop) if args.check else 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("compare", help="profile runs side by side (terminal, HTML, Markdown)",
                              description=__doc__)
    p.add_argument("runs", nargs="*", metavar="RUN.json|RUNS_DIR", help="fdq.run/1 documents or folders of them")
    p.add_argument("--baseline", metavar="RUN|RUNS_DIR",
                   help="the run the speed-up is measured against (default: the first run); with --check also a "
                        "folder of runs, each run judged against the one of its configuration")
    p.add_argument("--check", action="store_true",
                   help="regression gate: exit 1 when a run is slower than its baseline beyond --tolerance with "
                        "the whole 95%% bootstrap interval beyond it, or lost more AP than --max-ap-drop")
    p.add_argument("--metric", choices=sorted(QUANTILES), default="p50", help="the latency --check judges (total)")
    p.add_argument("--tolerance", type=percentage("--tolerance"), metavar="PCT",
                   help="slowdown --check allows (default 5%%; 0.1%% for instruction-counted runs)")
    p.add_argument("--max-ap-drop", type=float_at_least("--max-ap-drop", 0), default=MAX_AP_DROP, metavar="POINTS",
                   help="AP points (easy, medium or hard) a run may lose against its baseline under --check")
    p.add_argument("--history", metavar="CONFIG",
                   help="one configuration's runs over time, from the index (fdq runs): a run file, or "
                        "FIELD=VALUE,... over model, runtime, precision, threads, side, target, host; plots in --html")
    p.add_argument("--html", help="write the self-contained HTML report here")
    p.add_argument("--markdown", help="write the table as Markdown here")
    p.add_argument("--force", action="store_true", help="replace existing report files")
    p.set_defaults(func=cmd_compare)
    return p
