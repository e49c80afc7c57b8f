"""Runs (``fdq.run/1`` documents) as the reports see them: loaded from files and folders, summarised.

What a document holds (label, latency, accuracy, instructions, warnings) is read through
:class:`fdq.device.result.Run`, beside the code that writes it. The table, the Markdown and the HTML report all take their rows from :func:`summary_rows`, so the
three never disagree on a number.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fdq.device.result import SETTINGS, Run, read_run
from fdq.host.gate import Interval, speedup


class RunsError(ValueError):
    """A path that is not a run (nor a folder of runs); one line."""


def load_runs(paths: Sequence[str]) -> List[Run]:
    """Every run of files and folders (a folder: its ``*.json`` runs, oldest first)."""
    runs: List[Run] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted((read_run(p) for p in path.glob("*.json") if not p.name.startswith(".")), key=lambda r: (r.doc.get("created", ""), r.path))
            if not found:
                raise RunsError(f"{given}: no run documents (*.json) in this folder")
            runs += found
        elif path.is_file():
            runs.append(read_run(path))
        else:
            raise RunsError(f"{given}: no such run file or folder")
    return runs


def with_baseline(runs: List[Run], baseline: Optional[str]) -> Tuple[List[Run], Run]:
    """The runs and the baseline run (``baseline``: a run file, added first if not among ``runs``)."""
    if not baseline:
        return runs, runs[0]
    base = read_run(Path(baseline))
    for run in runs:
        if run.path is not None and run.path.resolve() == Path(baseline).resolve():
            return runs, run
    return [base, *runs], base


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else (f"{value:.1f}" if value >= 10 else f"{value:.2f}")


def _trio(run: Run, stage: str) -> str:
    return " / ".join(_ms(run.p(stage, q)) for q in ("p50", "p90", "p99"))


def _temperature(doc: Dict[str, Any]) -> str:
    t = doc.get("thermal") or {}
    if t.get("start_c") is None:
        return "-"
    return f"{t['start_c']:.0f}->{t['end_c']:.0f}" if t.get("end_c") is not None else f"{t['start_c']:.0f}"


def instruction_ratio(run: Run, baseline: Run, stage: str = "total") -> str:
    """The run's median instructions per frame over the baseline's, where both counted."""
    mine, base = run.instructions(stage), baseline.instructions(stage)
    return f"{mine / base:.3f}x" if mine is not None and base else "-"


def _interval(interval: Interval) -> str:
    return f"{interval.low:.2f}-{interval.high:.2f}x"


def interleaving_note(runs: Sequence[Run]) -> Optional[str]:
    """What the reports say of runs measured alternately in one runner (``fdq-profile --interleave``)."""
    groups: Dict[Tuple[str, ...], List[int]] = {}
    for i, run in enumerate(runs):
        together = (run.doc.get("interleaved") or {}).get("bundles")
        if together:
            groups.setdefault(tuple(together), []).append(i + 1)
    if not groups:
        return None
    numbers = "; ".join(", ".join(str(n) for n in group) for group in groups.values())
    return (f"Runs {numbers} were measured interleaved: one runner process took each frame through every "
            "bundle in turn (A B A B ...), so drift, other load on the machine and thermal throttling hit them "
            "alike, and their ratio is the one to trust over that of runs made one after the other.")


def _millions(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def summary_rows(runs: Sequence[Run], baseline: Run) -> List[Dict[str, str]]:
    """One row per run: the columns of every report, formatted; the instruction columns where a run
    counted them."""
    counted = any(run.doc.get("instructions") for run in runs)
    rows = []
    for run in runs:
        doc, acc = run.doc, run.accuracy
        cold = doc.get("cold_start") or {}
        rows.append({
            "run": run.label, "target": run.target, "device": run.device, "runtime": doc["device"]["runtime"],
            "engine": str(doc["device"].get("engine") or "-"), "threads": str(doc["device"]["threads"]),
            "emulated": "yes" if run.emulated else "no", "frames": str(doc["settings"]["frames"]),
            "preprocess p50": _ms(run.p("preprocess")), "inference p50/p90/p99": _trio(run, "inference"),
            "postprocess p50": _ms(run.p("postprocess")), "total p50/p90/p99": _trio(run, "total"),
            "FPS": f"{doc['fps']:.1f}", "speed-up": f"{baseline.p('total') / run.p('total'):.2f}x",
            "speed-up 95% CI": "-" if run is baseline else _interval(speedup(run, baseline)),
            "load ms": _ms(cold.get("load_ms")), "first frame ms": _ms(cold.get("first_frame_ms")),
            "peak RSS MiB": f"{doc['memory']['peak_rss_mib']:.0f}", "temp C": _temperature(doc),
            "AP easy/medium/hard": " / ".join(f"{100 * acc[s]:.2f}" for s in SETTINGS) if acc else "-",
        })
        if counted:
            rows[-1].update({"inference Minstr": _millions(run.instructions("inference")),
                             "total Minstr": _millions(run.instructions()),
                             "instr. ratio": instruction_ratio(run, baseline)})
    return rows
