"""Runs (``fdq.run/1`` documents) as the reports see them: loaded, labelled, summarised, warned about.

The table, the Markdown and the HTML report all take their rows from :func:`summary_rows`, so the
three never disagree on a number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

SCHEMA = "fdq.run/1"
SETTINGS = ("easy", "medium", "hard")


class RunsError(ValueError):
    """A path that is not a run (nor a folder of runs); one line."""


@dataclass(frozen=True)
class Run:
    """One run's document and the file it came from."""

    doc: Dict[str, Any]
    path: Optional[Path] = None

    @property
    def label(self) -> str:
        b = self.doc["bundle"]
        kind = f"{b['engine']} {b['dtype']}" if b.get("engine") else str(b.get("dtype") or "")
        return f"{b['model']} {kind}".strip()

    @property
    def target(self) -> str:
        return str((self.doc.get("profile") or {}).get("target") or self.doc["device"]["machine"].get("node"))

    @property
    def device(self) -> str:
        d = self.doc["device"]
        cpu = d.get("cpu") or {}
        return f"{cpu.get('board') or cpu.get('model') or '?'} ({d['machine']['arch']})"

    @property
    def emulated(self) -> bool:
        return bool(self.doc["device"]["emulation"]["emulated"])

    def p(self, stage: str, q: str = "p50") -> float:
        return float(self.doc["latency_ms"][stage][q])

    @property
    def name(self) -> str:
        """Short and unique enough for a plot axis: label, runtime, threads, target."""
        return f"{self.label} {self.doc['device']['runtime']} t{self.doc['device']['threads']} @{self.target}"


def _load(path: Path) -> Run:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunsError(f"{path}: not a readable JSON run ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise RunsError(f"{path}: not an {SCHEMA} run document")
    return Run(doc, path)


def load_runs(paths: Sequence[str]) -> List[Run]:
    """Every run of files and folders (a folder: its ``*.json`` runs, oldest first)."""
    runs: List[Run] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted((_load(p) for p in path.glob("*.json") if not p.name.startswith(".")), key=lambda r: (r.doc.get("created", ""), r.path))
            if not found:
                raise RunsError(f"{given}: no run documents (*.json) in this folder")
            runs += found
        elif path.is_file():
            runs.append(_load(path))
        else:
            raise RunsError(f"{given}: no such run file or folder")
    return runs


def with_baseline(runs: List[Run], baseline: Optional[str]) -> Tuple[List[Run], Run]:
    """The runs and the baseline run (``baseline``: a run file, added first if not among ``runs``)."""
    if not baseline:
        return runs, runs[0]
    base = _load(Path(baseline))
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


def accuracy(run: Run) -> Optional[Dict[str, float]]:
    return run.doc.get("accuracy")


def instructions(run: Run, stage: str = "total") -> Optional[float]:
    """The median instructions per frame of ``stage`` (``fdq-profile --count-instructions``), else None."""
    counted = run.doc.get("instructions")
    return counted["per_frame"][stage]["median"] if counted else None


def instruction_ratio(run: Run, baseline: Run, stage: str = "total") -> str:
    """The run's median instructions per frame over the baseline's, where both counted."""
    mine, base = instructions(run, stage), instructions(baseline, stage)
    return f"{mine / base:.3f}x" if mine is not None and base else "-"


def _millions(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def summary_rows(runs: Sequence[Run], baseline: Run) -> List[Dict[str, str]]:
    """One row per run: the columns of every report, formatted; the instruction columns where a run
    counted them."""
    counted = any(run.doc.get("instructions") for run in runs)
    rows = []
    for run in runs:
        doc, acc = run.doc, accuracy(run)
        cold = doc.get("cold_start") or {}
        rows.append({
            "run": run.label, "target": run.target, "device": run.device, "runtime": doc["device"]["runtime"],
            "engine": str(doc["device"].get("engine") or "-"), "threads": str(doc["device"]["threads"]),
            "emulated": "yes" if run.emulated else "no", "frames": str(doc["settings"]["frames"]),
            "preprocess p50": _ms(run.p("preprocess")), "inference p50/p90/p99": _trio(run, "inference"),
            "postprocess p50": _ms(run.p("postprocess")), "total p50/p90/p99": _trio(run, "total"),
            "FPS": f"{doc['fps']:.1f}", "speed-up": f"{baseline.p('total') / run.p('total'):.2f}x",
            "load ms": _ms(cold.get("load_ms")), "first frame ms": _ms(cold.get("first_frame_ms")),
            "peak RSS MiB": f"{doc['memory']['peak_rss_mib']:.0f}", "temp C": _temperature(doc),
            "AP easy/medium/hard": " / ".join(f"{100 * acc[s]:.2f}" for s in SETTINGS) if acc else "-",
        })
        if counted:
            rows[-1].update({"inference Minstr": _millions(instructions(run, "inference")),
                             "total Minstr": _millions(instructions(run)),
                             "instr. ratio": instruction_ratio(run, baseline)})
    return rows


def warnings_of(run: Run) -> List[str]:
    """Plain-words warnings: the runner's own, and those older documents did not carry yet."""
    doc = run.doc
    found = list(doc.get("warnings") or [])
    if run.emulated and not any("emulated" in w for w in found):
        found.append("emulated (qemu-user): this latency says nothing about a real board")
    asked = doc["settings"].get("frames_asked")
    if asked and doc["settings"]["frames"] < asked and not any("fewer frames" in w for w in found):
        found.append(f"{doc['settings']['frames']} frames measured, fewer than the {asked} asked")
    return found
