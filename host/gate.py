"""The regression gate of ``fdq compare --check``: is a run slower (or less accurate) than its
baseline by more than noise?

Why a bootstrap: a run keeps every frame's latency, and those are skewed (a long tail of hiccups,
two modes when a core is shared), so a normal-theory interval would be wrong, and a median or a
p90 has no simple formula for its error anyway. Resampling each run's frames with replacement and
taking the ratio of the two statistics each time (:func:`ratio_interval`) needs no assumption about
their distribution, and a fixed seed makes the interval the same every time the gate runs. Frames
are not independent (drift and throttling correlate neighbours), so the interval covers the noise
within a run, not between runs; ``fdq-profile --interleave`` makes runs whose drift is shared.
Where both runs measured the same images in the same order, frames are resampled in pairs, so
that a frame's own cost (a larger image, more faces to suppress) cancels out of the ratio.

Instruction counts (``--count-instructions``) are exact and repeatable, so they are compared
directly, with a tolerance of 0.1 % and no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fdq.device.result import SETTINGS, Run

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
TIME_TOLERANCE = 0.05
COUNT_TOLERANCE = 0.001
MAX_AP_DROP = 1.0
QUANTILES = {"p50": 50.0, "p90": 90.0}
CONFIG_FIELDS = ("model", "runtime", "precision", "threads", "side", "target", "host")


@dataclass(frozen=True)
class Interval:
    """A ratio of two statistics and its bootstrap interval."""

    value: float
    low: float
    high: float


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], quantile: float = 50.0,
                   paired: bool = False, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """``quantile`` of ``numerator`` over that of ``denominator`` (per-frame values), with the
    percentile bootstrap's ``CONFIDENCE`` interval. ``paired``: frame i is the same image in both
    runs, so both are resampled with the same indices (what the image itself costs cancels out);
    otherwise each run is resampled on its own."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    picks = rng.integers(0, num.size, (resamples, num.size))
    num_q = np.percentile(num[picks], quantile, axis=1)
    if not paired:
        picks = rng.integers(0, den.size, (resamples, den.size))
    den_q = np.percentile(den[picks], quantile, axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(num_q / den_q, [tail, 100 - tail])
    return Interval(float(np.percentile(num, quantile) / np.percentile(den, quantile)), float(low), float(high))


def same_frames(a: Run, b: Run) -> bool:
    """Whether frame i of both runs is the same image: one source (an image folder sent by
    fdq-profile is named by its content's hash, the same on every target) and as many frames."""
    sa, sb = a.doc.get("source") or {}, b.doc.get("source") or {}
    return (sa.get("kind") == sb.get("kind") and sa.get("images") == sb.get("images")
            and Path(str(sa.get("path"))).parts[-2:] == Path(str(sb.get("path"))).parts[-2:]
            and len(a.doc["latency_ms"]["total"]["frames"]) == len(b.doc["latency_ms"]["total"]["frames"]))


def total_ratio(run: Run, baseline: Run, quantile: float = 50.0) -> Interval:
    """The run's total ``quantile`` over the baseline's, with its interval (paired where the frames are)."""
    return ratio_interval(run.doc["latency_ms"]["total"]["frames"], baseline.doc["latency_ms"]["total"]["frames"],
                          quantile, paired=same_frames(run, baseline))


def speedup(run: Run, baseline: Run) -> Interval:
    """Baseline total p50 over the run's, with its interval (the reports' speed-up column)."""
    if run is baseline:
        return Interval(1.0, 1.0, 1.0)
    return total_ratio(baseline, run)


def configuration(run: Run) -> Dict[str, Any]:
    """What must be equal for two runs to measure the same thing (``CONFIG_FIELDS``; also the
    history's columns)."""
    d, b = run.doc["device"], run.doc["bundle"]
    return {"model": b["model"], "runtime": d["runtime"],
            "precision": f"{b.get('engine') or '-'} {b.get('dtype')} {b.get('quantization')}",
            "threads": d["threads"], "side": run.doc["settings"].get("long_side"),
            "target": run.target, "host": d["machine"].get("node")}


def match_baseline(run: Run, baselines: Sequence[Run]) -> Tuple[Optional[Run], List[str]]:
    """The baseline of ``run``'s configuration, else the only baseline there is with the fields that
    differ (a deliberate comparison, such as 1 thread against 2), else None."""
    mine = configuration(run)
    for base in baselines:
        if configuration(base) == mine:
            return base, []
    if len(baselines) == 1:
        theirs = configuration(baselines[0])
        return baselines[0], [f"{k} {mine[k]} vs {theirs[k]}" for k in CONFIG_FIELDS if mine[k] != theirs[k]]
    return None, []


@dataclass
class Verdict:
    """One run against its baseline: what changed and whether the gate fails it."""

    run: Run
    baseline: Optional[Run]
    differs: List[str]
    metric: str                           # "p50", "p90" or "instructions"
    change: Optional[Interval] = None     # run / baseline - 1 (latency with its interval, or counts)
    ap_change: Optional[Dict[str, float]] = None  # points, per setting
    failures: Optional[List[str]] = None

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def _relative(interval: Interval) -> Interval:
    return Interval(interval.value - 1, interval.low - 1, interval.high - 1)


def judge(run: Run, baselines: Sequence[Run], metric: str = "p50", tolerance: Optional[float] = None,
          max_ap_drop: float = MAX_AP_DROP) -> Verdict:
    """Compare ``run`` with its baseline: a latency ``metric`` fails when the whole interval of the
    change lies above ``tolerance`` (default 5 %); counted runs compare their median instructions per
    frame (default 0.1 %); AP fails when a setting lost more than ``max_ap_drop`` points."""
    base, differs = match_baseline(run, baselines)
    if base is None:
        return Verdict(run, None, [], metric, failures=["no baseline of its configuration ("
                                                        + ", ".join(map(str, configuration(run).values())) + ")"])
    failures: List[str] = []
    counts = run.instructions(), base.instructions()
    if counts[0] is not None and counts[1]:
        metric, limit = "instructions", COUNT_TOLERANCE if tolerance is None else tolerance
        ratio = counts[0] / counts[1]
        change = Interval(ratio - 1, ratio - 1, ratio - 1)
    else:
        limit = TIME_TOLERANCE if tolerance is None else tolerance
        change = _relative(total_ratio(run, base, QUANTILES[metric]))
    if change.low > limit:
        failures.append(f"total {metric} {100 * change.value:+.2f} % ({_span(metric, change)}), beyond the "
                        f"{100 * limit:g} % tolerance")
    ap_change = None
    if run.accuracy and base.accuracy:
        ap_change = {s: 100 * (run.accuracy[s] - base.accuracy[s]) for s in SETTINGS
                     if not math.isnan(run.accuracy[s] - base.accuracy[s])}  # NaN: no face of that setting
        lost = {s: -d for s, d in ap_change.items() if -d > max_ap_drop}
        if lost:
            failures.append("AP " + ", ".join(f"{s} -{d:.2f}" for s, d in lost.items())
                            + f" points, more than the {max_ap_drop:g} allowed")
    return Verdict(run, base, differs, metric, change, ap_change, failures)


def _span(metric: str, change: Interval) -> str:
    if metric == "instructions":
        return "counted, exact"
    return f"95 % CI {100 * change.low:+.2f} .. {100 * change.high:+.2f} %"


def describe(verdict: Verdict) -> str:
    """One line: the change of the metric with its interval, the AP change, what differs."""
    if verdict.change is None:
        return "-"
    text = f"{verdict.metric} {100 * verdict.change.value:+.2f} % ({_span(verdict.metric, verdict.change)})"
    if verdict.ap_change is not None:
        text += "; AP " + " / ".join(f"{s} {d:+.2f}" for s, d in verdict.ap_change.items()) + " pt"
    if verdict.differs:
        text += "; differs: " + ", ".join(verdict.differs)
    return text

