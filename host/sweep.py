"""``fdq-profile --sweep``'s answer, from run documents alone: each run's configuration and metric, the
Pareto front of (medium AP, metric), and the configuration to ship.

Everything here is a pure function of ``fdq.run/1`` documents (read through
:class:`fdq.device.result.Run`), so a sweep resumed from its runs folder, every host of a fleet and
the tests reach the same answer by the same code. Running the configurations is
:mod:`fdq.host.sweep_runs`'s job.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from fdq.device.result import SETTINGS, Run

PRECISIONS = ("fp32", "int8")
# p90 (MLPerf's single-stream metric) and p50 of the whole frame; instructions: the emulator's exact count;
# cycles: those instructions by class at a Cortex-A72's issue costs (host/estimate.py), an estimate
METRICS = ("p90", "p50", "instructions", "cycles")
COUNTED = ("instructions", "cycles")  # metrics that need --count-instructions


@dataclass(frozen=True, order=True)
class Config:
    """One point of the grid: what a user would choose to ship."""

    model: str
    runtime: str      # torchscript, onnxruntime, ncnn, mnn, executorch (int8 picks ncnn-int8 / mnn-int8)
    precision: str    # fp32 or int8
    threads: int
    long_side: int

    def __str__(self) -> str:
        return (f"{self.model} {self.runtime} {self.precision} @{self.long_side}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''}")


def configurations(models: Sequence[str], runtimes: Sequence[str], precisions: Sequence[str],
                   threads: Sequence[int], long_sides: Sequence[int]) -> List[Config]:
    """Every combination, in the order given (model slowest)."""
    return [Config(m, r, p, t, s) for m, r, p, t, s in itertools.product(models, runtimes, precisions, threads,
                                                                            long_sides)]


def config_of(run: Run) -> Config:
    """The configuration a run measured, read from its document (``ncnn-int8`` bundles run as ``ncnn``)."""
    doc = run.doc
    return Config(model=doc["bundle"]["model"], runtime=doc["device"]["runtime"],
                  precision="int8" if doc["bundle"].get("dtype") == "int8" else "fp32",
                  threads=int(doc["device"]["threads"]), long_side=int(doc["settings"]["long_side"]))


def metric_value(run: Run, metric: str) -> Optional[float]:
    """The run's value of ``metric`` (lower is better): total ms per frame at p90 / p50, or the median
    instructions per frame, or the median class-sum A72 cycles per frame; None when the run did not measure
    it (a run that did not count, or counted without classes)."""
    if metric == "instructions":
        return run.instructions("total")
    if metric == "cycles":
        from fdq.host.estimate import run_cycles

        return run_cycles(run.doc)
    return run.p("total", metric)


def metric_text(value: float, metric: str) -> str:
    """``p90 9.8 ms (102 FPS)``, ``36.4 M instructions`` or ``20.1 M A72 cycles (estimate)``."""
    if metric == "instructions":
        return f"{value / 1e6:.1f} M instructions"
    if metric == "cycles":
        return f"{value / 1e6:.1f} M A72 cycles (estimate)"
    return f"{metric} {value:.1f} ms ({1000.0 / value:.0f} FPS)" if value > 0 else f"{metric} {value:.1f} ms"


@dataclass(frozen=True)
class Point:
    """A measured configuration as the answer sees it."""

    run: Run
    config: Config
    value: float                  # the metric
    ap: Dict[str, float]          # easy / medium / hard, 0-1
    drop: Optional[float]         # medium AP points lost against the same model's float at the same side
    rss_mib: float

    @property
    def ap_text(self) -> str:
        """``.70/.57/.21``: easy / medium / hard AP as WIDER FACE papers print it."""
        return "/".join(f"{self.ap[s]:.2f}".lstrip("0") for s in SETTINGS)


def _float_reference(config: Config, runs: Dict[Config, Run]) -> Optional[Run]:
    """The float run a configuration's AP is held against: the same model and side, the same runtime
    and threads where that was run, else the same model and side on any runtime."""
    same = Config(config.model, config.runtime, "fp32", config.threads, config.long_side)
    if same in runs:
        return runs[same]
    floats = [c for c in sorted(runs) if c.precision == "fp32" and c.model == config.model
              and c.long_side == config.long_side]
    return runs[floats[0]] if floats else None


def points(runs: Sequence[Run], metric: str) -> List[Point]:
    """The runs of one host with AP and the metric, sorted by the metric (the latest run of a
    configuration counts); the AP drop of each against its float (see :func:`_float_reference`)."""
    latest: Dict[Config, Run] = {}
    for run in sorted(runs, key=lambda r: str(r.doc.get("created", ""))):
        if run.accuracy and metric_value(run, metric) is not None:
            latest[config_of(run)] = run
    found = []
    for config, run in latest.items():
        reference = _float_reference(config, latest)
        drop = None if reference is None else 100.0 * (reference.accuracy["medium"] - run.accuracy["medium"])
        found.append(Point(run, config, float(metric_value(run, metric)), {s: run.accuracy[s] for s in SETTINGS},
                           drop, float(run.doc["memory"]["peak_rss_mib"])))
    return sorted(found, key=lambda p: (p.value, -p.ap["medium"], p.config))


def pareto_front(candidates: Sequence[Point]) -> List[Point]:
    """The points no other point beats on both medium AP (higher) and the metric (lower), by the metric."""
    def beaten(p: Point) -> bool:
        return any(q.value <= p.value and q.ap["medium"] >= p.ap["medium"]
                   and (q.value < p.value or q.ap["medium"] > p.ap["medium"]) for q in candidates)

    return sorted((p for p in candidates if not beaten(p)), key=lambda p: (p.value, p.config))


@dataclass(frozen=True)
class Recommendation:
    """The configuration to ship, or why none qualifies."""

    point: Optional[Point]
    why: str = ""


def recommend(candidates: Sequence[Point], max_ap_drop: float, max_rss_mib: Optional[float] = None) -> Recommendation:
    """The fastest point (lowest metric) that loses at most ``max_ap_drop`` medium-AP points against its
    float and peaks at most ``max_rss_mib``; else the reasons every point failed, counted."""
    reasons: Dict[str, List[Point]] = {"lose": [], "rss": [], "nofloat": []}
    for p in sorted(candidates, key=lambda p: (p.value, p.config)):
        if p.drop is None:
            reasons["nofloat"].append(p)
        elif p.drop > max_ap_drop:
            reasons["lose"].append(p)
        elif max_rss_mib is not None and p.rss_mib > max_rss_mib:
            reasons["rss"].append(p)
        else:
            return Recommendation(p)
    if not candidates:
        return Recommendation(None, "no configuration finished with AP and the metric")
    parts = []
    if reasons["lose"]:
        least = min(reasons["lose"], key=lambda p: p.drop)
        parts.append(f"{len(reasons['lose'])} lose more than {max_ap_drop:g} pt of medium AP against their float "
                     f"(the least: {least.config}, -{least.drop:.1f} pt)")
    if reasons["rss"]:
        least = min(reasons["rss"], key=lambda p: p.rss_mib)
        parts.append(f"{len(reasons['rss'])} peak above --max-rss {max_rss_mib:g} MiB (the least: {least.config}, "
                     f"{least.rss_mib:.0f} MiB)")
    if reasons["nofloat"]:
        parts.append(f"{len(reasons['nofloat'])} have no float run of their model and side to compare with "
                     f"(add fp32 to --precisions)")
    return Recommendation(None, "; ".join(parts))


def ship_line(rec: Recommendation, metric: str, host: str = "") -> str:
    """The sweep's last line: ``ship: slim ncnn int8 @320, 4 threads: p90 9.8 ms (102 FPS), AP .70/.57/.21,
    -0.4 pt against its float``, or ``ship: nothing qualifies: WHY``."""
    where = f" on {host}" if host else ""
    p = rec.point
    if p is None:
        return f"ship{where}: nothing qualifies: {rec.why}"
    against = "the float itself" if p.config.precision == "fp32" and p.drop == 0 else \
        f"{0.0 - p.drop + 0.0:+.1f} pt against its float"
    return f"ship{where}: {p.config}: {metric_text(p.value, metric)}, AP {p.ap_text}, {against}"


@dataclass
class HostAnswer:
    """One host's points, front and recommendation."""

    host: str
    points: List[Point]
    front: List[Point]
    recommendation: Recommendation
    emulated: bool


@dataclass
class SweepResult:
    """What a sweep found, host by host; ``left``: configurations not run (a budget, a failure)."""

    metric: str
    max_ap_drop: float
    max_rss_mib: Optional[float]
    hosts: List[HostAnswer]
    left: List[str] = field(default_factory=list)


def analyse(runs: Sequence[Run], metric: str, max_ap_drop: float, max_rss_mib: Optional[float] = None,
            left: Sequence[str] = ()) -> SweepResult:
    """Every host's (each run's ``profile.target``) own front and recommendation."""
    by_host: Dict[str, List[Run]] = {}
    for run in runs:
        by_host.setdefault(run.target, []).append(run)
    hosts = []
    for host, host_runs in by_host.items():
        found = points(host_runs, metric)
        hosts.append(HostAnswer(host, found, pareto_front(found), recommend(found, max_ap_drop, max_rss_mib),
                                any(r.emulated for r in host_runs)))
    return SweepResult(metric, max_ap_drop, max_rss_mib, hosts, list(left))
