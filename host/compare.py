"""``fdq compare RUN.json|RUNS_DIR ...``: runs side by side in the terminal, and as HTML or Markdown."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from fdq.device.atomic import atomic_write_text
from fdq.device.outputs import check_file_output


def write_reports(runs: Sequence[Any], baseline: Any, html_path: Optional[str] = None,
                  markdown_path: Optional[str] = None, force: bool = False) -> None:
    """Write the HTML and / or Markdown report (paths checked by the caller before long work)."""
    from fdq.host.report import html, table

    if html_path:
        atomic_write_text(check_file_output(html_path, force, "--html"), html.render(runs, baseline))
    if markdown_path:
        atomic_write_text(check_file_output(markdown_path, force, "--markdown"), table.markdown(runs, baseline))


def cmd_compare(args: argparse.Namespace) -> int:
    from fdq.host.report.runs import load_runs, with_baseline
    from fdq.host.report.table import print_table

    for path, option in ((args.html, "--html"), (args.markdown, "--markdown")):
        if path:
            check_file_output(path, args.force, option)
    runs, baseline = with_baseline(load_runs(args.runs), args.baseline)
    print_table(runs, baseline)
    write_reports(runs, baseline, args.html, args.markdown, args.force)
    for path in (args.markdown, args.html):  # the report's path is the last line
        if path:
            print(f"report: {Path(path).resolve()}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``fdq``'s subparsers."""
    p = subparsers.add_parser("compare", help="profile runs side by side (terminal, HTML, Markdown)",
                              description=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN.json|RUNS_DIR", help="fdq.run/1 documents or folders of them")
    p.add_argument("--baseline", help="the run the speed-up is measured against (default: the first run)")
    p.add_argument("--html", help="write the self-contained HTML report here")
    p.add_argument("--markdown", help="write the table as Markdown here")
    p.add_argument("--force", action="store_true", help="replace existing report files")
    p.set_defaults(func=cmd_compare)
    return p
