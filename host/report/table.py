"""The comparison of runs as a terminal table (rich) and as Markdown, from the same rows."""
from __future__ import annotations

import sys
from typing import Dict, List, Sequence

from fdq.device.result import Run

from .runs import interleaving_note, summary_rows

# summary column -> short terminal header
TERMINAL_COLUMNS = {"run": "run", "target": "target", "runtime": "runtime", "threads": "thr", "emulated": "emul",
                    "inference p50/p90/p99": "inference p50/90/99", "total p50/p90/p99": "total p50/90/99",
                    "FPS": "FPS", "speed-up": "speed-up",
                    "speed-up 95% CI": "95% CI", "load ms": "load", "first frame ms": "1st frame",
                    "peak RSS MiB": "RSS MiB", "temp C": "degC", "AP easy/medium/hard": "AP e/m/h",
                    "total Minstr": "Minstr", "instr. ratio": "instr."}
WIDTH_NOT_A_TERMINAL = 180


def print_table(runs: Sequence[Run], baseline: Run, console=None) -> None:
    """The runs side by side, latency in ms, speed-up against ``baseline``; warnings below."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else WIDTH_NOT_A_TERMINAL)
    rows = summary_rows(runs, baseline)
    columns = [c for c in TERMINAL_COLUMNS if c in rows[0]]  # instructions: where runs counted them
    title = f"fdq runs (latency ms; speed-up against {baseline.name}"
    if "instr. ratio" in columns:
        title += "; instructions per frame (median, millions) and their ratio to it"
    table = Table(title=title + ")")
    for column in columns:
        left = column in ("run", "target", "runtime")
        table.add_column(TERMINAL_COLUMNS[column], justify="left" if left else "right", no_wrap=not left)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    console.print(table)
    note = interleaving_note(runs)
    if note:
        console.print(note)
    for run in runs:
        for warning in run.warnings():
            console.print(f"[yellow]warning[/yellow] {run.name}: {warning}")


def markdown(runs: Sequence[Run], baseline: Run) -> str:
    """Every column of the summary as a Markdown table, then the warnings."""
    rows: List[Dict[str, str]] = summary_rows(runs, baseline)
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    lines.append("")
    lines.append(f"Latency in ms (p50 / p90 / p99 per frame); speed-up: baseline total p50 / run total p50, "
                 f"baseline {baseline.name}, with its bootstrap 95 % interval over the frames.")
    if "instr. ratio" in columns:
        lines.append("Minstr: instructions per frame counted by the emulator (median, millions), exact and "
                     "repeatable, not a time; instr. ratio: run total / baseline total.")
    note = interleaving_note(runs)
    if note:
        lines.append(note)
    notes = [f"- {run.name}: {w}" for run in runs for w in run.warnings()]
    if notes:
        lines += ["", "Warnings:", "", *notes]
    return "\n".join(lines) + "\n"
