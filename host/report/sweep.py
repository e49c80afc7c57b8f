"""A sweep's answer as the terminal table (rich) and as a self-contained HTML report: per host, every
configuration sorted by the metric with the Pareto front of (medium AP, metric) marked, and the ship
line; in HTML a scatter of AP against the metric whose points link to their runs."""
from __future__ import annotations

import datetime as _dt
import html
import os
import sys
from pathlib import Path
from typing import List, Optional

from fdq.device.result import EMULATED

from ..estimate import CLASS_METHOD
from ..sweep import COUNTED, HostAnswer, Point, SweepResult, metric_text, ship_line
from .html import _STYLE, _pyplot, _svg
from .table import WIDTH_NOT_A_TERMINAL

COLUMNS = ("", "configuration", "metric", "AP e/m/h", "drop pt", "RSS MiB", "run")
METRIC_NAMES = {"p90": "total p90 (ms)", "p50": "total p50 (ms)", "instructions": "instructions per frame (median)",
                "cycles": "Cortex-A72 cycles per frame (median, estimated from the counted instruction classes)"}


def _mark(p: Point, answer: HostAnswer) -> str:
    ship = answer.recommendation.point is p
    return ("ship " if ship else "") + ("front" if p in answer.front else "")


def _row(p: Point, answer: HostAnswer, metric: str) -> List[str]:
    return [_mark(p, answer).strip(), str(p.config), metric_text(p.value, metric), p.ap_text,
            "-" if p.drop is None else f"{0.0 - p.drop + 0.0:+.1f}", f"{p.rss_mib:.0f}", p.run.path.name if p.run.path else "-"]


def emulated_note(result: SweepResult) -> Optional[str]:
    """What an emulated host's numbers are (None when no host is emulated)."""
    if not any(h.emulated for h in result.hosts):
        return None
    if result.metric == "instructions":
        return ("emulated board: ranked by instructions counted by the emulator (exact and repeatable, not a time); "
                "its latencies are emulated and say nothing about a real board")
    if result.metric == "cycles":
        return ("emulated board: ranked by a Cortex-A72 cycle estimate from the instructions the emulator counted, "
                f"by class ({CLASS_METHOD}); its latencies are emulated and say nothing about a real board")
    return f"emulated board: ranked by latencies that are emulated: {EMULATED}"


def print_sweep(result: SweepResult) -> None:
    """Per host a table sorted by the metric (front and recommendation marked), then the ship lines, last."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else WIDTH_NOT_A_TERMINAL)
    fleet = len(result.hosts) > 1
    for answer in result.hosts:
        table = Table(title=f"sweep on {answer.host}: sorted by {METRIC_NAMES[result.metric]}; front: the Pareto "
                            f"front of (medium AP, {result.metric}); drop: medium AP against the float")
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in ("", "configuration", "run") else "right",
                             no_wrap=column != "run", overflow="fold")
        for p in answer.points:
            table.add_row(*_row(p, answer, result.metric))
        console.print(table)
    note = emulated_note(result)
    if note:
        console.print(note, markup=False, highlight=False)
    for line in result.left:
        console.print(f"not run: {line}", markup=False, highlight=False)
    for answer in result.hosts:  # the answer, last
        console.print(ship_line(answer.recommendation, result.metric, answer.host if fleet else ""),
                      markup=False, highlight=False, soft_wrap=True)


def scatter(answer: HostAnswer, metric: str, report_dir: Path) -> str:
    """Medium AP against the metric: every point a link to its run, the front joined, the ship point ringed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    scale = 1e6 if metric in COUNTED else 1.0
    xs = [p.value / scale for p in answer.points]
    ys = [100 * p.ap["medium"] for p in answer.points]
    dots = ax.scatter(xs, ys, s=28, color="#4c72b0", zorder=3, label="configuration")
    dots.set_urls([_link(p, report_dir) for p in answer.points])
    for p, x, y in zip(answer.points, xs, ys):
        ax.annotate(str(p.config), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = answer.front
    ax.step([p.value / scale for p in front], [100 * p.ap["medium"] for p in front], where="post", color="#dd8452",
            linewidth=1.2, zorder=2, label="Pareto front")
    ship = answer.recommendation.point
    if ship is not None:
        ax.scatter([ship.value / scale], [100 * ship.ap["medium"]], s=160, facecolors="none", edgecolors="#2ca02c",
                   linewidths=2.0, zorder=4, label="ship")
    ax.set_xlabel(METRIC_NAMES[metric].replace("(median)", "(median, millions)") if scale > 1 else METRIC_NAMES[metric])
    ax.set_ylabel("medium AP (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _svg(fig)


def _link(p: Point, report_dir: Path) -> str:
    return os.path.relpath(p.run.path, report_dir) if p.run.path else ""


def render(result: SweepResult, report_path: str, command: str) -> str:
    """The whole sweep report as one HTML document (links to the runs relative to ``report_path``)."""
    report_dir = Path(report_path).resolve().parent
    fleet = len(result.hosts) > 1
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>fdq sweep</title><style>{_STYLE}</style></head><body>",
           "<h1>fdq sweep: what to ship</h1>",
           f"<p class=muted>Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; ranked by "
           f"{html.escape(METRIC_NAMES[result.metric])}; a configuration qualifies when it loses at most "
           f"{result.max_ap_drop:g} pt of medium AP against the same model's float at the same side"
           + (f" and peaks at most {result.max_rss_mib:g} MiB" if result.max_rss_mib is not None else "")
           + f".</p><p><code>{html.escape(command)}</code></p>"]
    note = emulated_note(result)
    if note:
        out.append(f'<div class="warn">{html.escape(note)}</div>')
    out += [f'<div class="warn">not run: {html.escape(line)}</div>' for line in result.left]
    for answer in result.hosts:
        out.append(f"<h2>{html.escape(answer.host)}</h2>")
        out.append(f"<p><b>{html.escape(ship_line(answer.recommendation, result.metric, answer.host if fleet else ''))}"
                   "</b></p>")
        if answer.points:
            out.append('<div class="plot">' + scatter(answer, result.metric, report_dir) + "</div>")
            out.append("<p class=muted>Every point links to its run (fdq.run/1 JSON; <code>fdq compare</code> "
                       "reads it).</p>")
        head = "".join(f"<th{' class=l' if i < 2 else ''}>{html.escape(c)}</th>" for i, c in enumerate(COLUMNS))
        body = []
        for p in answer.points:
            cells = _row(p, answer, result.metric)
            link = html.escape(_link(p, report_dir))
            cells_html = [f"<td class=l>{html.escape(c)}</td>" for c in cells[:2]]
            cells_html += [f"<td>{html.escape(c)}</td>" for c in cells[2:-1]]
            cells_html.append(f'<td class=l><a href="{link}">{html.escape(cells[-1])}</a></td>')
            body.append("<tr>" + "".join(cells_html) + "</tr>")
        out.append(f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>')
    out.append("</body></html>\n")
    return "\n".join(out)
