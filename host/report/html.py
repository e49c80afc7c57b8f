"""The HTML report: one self-contained file (no script, no external style, font or image; plots are
inline SVG from matplotlib), laid out to read on a phone as on a desktop.
"""
from __future__ import annotations

import datetime as _dt
import html
import io
import shlex
from typing import Any, Dict, Iterable, List, Sequence

from fdq.device.result import SETTINGS, STAGES, Run

from fdq.host.gate import speedup

from .runs import instruction_ratio, interleaving_note, summary_rows

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:12px;color:#1b1f24;
background:#fafafa;line-height:1.4}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.85em;background:#fff}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#eef1f4}td.l,th.l{text-align:left}
.plot svg{width:100%;max-width:900px;height:auto;display:block}
.warn{background:#fff4ce;border-left:4px solid #d29922;padding:6px 10px;margin:4px 0}
code{font-size:.8em;word-break:break-all;white-space:pre-wrap}
.muted{color:#57606a;font-size:.85em}
"""


def _svg(fig: Any) -> str:
    """The figure as an inline <svg> element (text as paths: no font to fetch)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "font.size": 9})
    return plt


def _names(runs: Sequence[Run]) -> List[str]:
    return [f"{i + 1}. {run.label} {run.doc['device']['runtime']} t{run.doc['device']['threads']} @{run.target}"
            for i, run in enumerate(runs)]


def stage_plot(runs: Sequence[Run]) -> str:
    """Per-stage latency distributions, one box per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(STAGES), 1, figsize=(7.5, 1.0 + 0.45 * len(runs) * len(STAGES)), squeeze=False)
    labels = [str(i + 1) for i in range(len(runs))]
    for ax, stage in zip(axes[:, 0], STAGES):
        ax.boxplot([run.doc["latency_ms"][stage]["frames"] for run in runs], orientation="horizontal", tick_labels=labels,
                   showfliers=True, flierprops={"markersize": 2})
        ax.set_title(f"{stage} (ms per frame)", loc="left")
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def timeline_plot(runs: Sequence[Run]) -> str:
    """Total latency against frame index: throttling and hiccups show as drifts and spikes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for name, run in zip(_names(runs), runs):
        ax.plot(run.doc["latency_ms"]["total"]["frames"], linewidth=1.0, label=name)
    ax.set_xlabel("frame")
    ax.set_ylabel("total ms")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.2), ncol=1, frameon=False)
    return _svg(fig)


def speedup_plot(runs: Sequence[Run], baseline: Run) -> str:
    """Baseline total p50 / run total p50, one bar per run, with its bootstrap 95 % interval."""
    plt = _pyplot()
    intervals = [speedup(run, baseline) for run in runs]
    values = [i.value for i in intervals]
    errors = [[v - i.low for v, i in zip(values, intervals)], [i.high - v for v, i in zip(values, intervals)]]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.35 * len(runs)))
    bars = ax.barh([str(i + 1) for i in range(len(runs))], values, xerr=errors, color="#4c72b0",
                   error_kw={"ecolor": "#222", "capsize": 3, "linewidth": 0.8})
    ax.bar_label(bars, labels=[f"{i.value:.2f}x" if run is baseline else f"{i.value:.2f}x [{i.low:.2f}-{i.high:.2f}]"
                               for run, i in zip(runs, intervals)], padding=14)
    ax.axvline(1.0, color="#444", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up against run {runs.index(baseline) + 1} (total p50; bars: bootstrap 95 % interval "
                  "over the frames)")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def ap_plot(runs: Sequence[Run]) -> str:
    """AP easy / medium / hard of every run that measured it."""
    plt = _pyplot()
    measured = [(i, run) for i, run in enumerate(runs) if run.accuracy]
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    width = 0.8 / max(1, len(measured))
    for k, (i, run) in enumerate(measured):
        xs = [s + k * width for s in range(len(SETTINGS))]
        bars = ax.bar(xs, [100 * run.accuracy[s] for s in SETTINGS], width, label=_names(runs)[i])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(SETTINGS))], SETTINGS)
    ax.set_ylabel("AP (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), frameon=False)
    return _svg(fig)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], left: int = 1) -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _facts(run: Run) -> Dict[str, str]:
    d, t = run.doc["device"], run.doc.get("thermal") or {}
    cpu = d.get("cpu") or {}
    features = d.get("cpu_features") or cpu.get("features")
    versions = {k: v for k, v in (d.get("runtime_versions") or {}).items() if k not in ("runtime", "python")}
    throttled = t.get("throttled_end")
    return {
        "target": run.target, "machine": f"{d['machine'].get('node')} {d['machine']['arch']}",
        "CPU": f"{cpu.get('model') or '?'}, {cpu.get('usable_cores')}/{cpu.get('cores')} cores",
        "board": str(cpu.get("board") or "-"),
        "CPU features": ", ".join(features) if isinstance(features, list) else str(features or "-"),
        "OS": str(d.get("os")), "kernel": str(d["machine"].get("release")), "Python": str(d.get("python")),
        "runtime": f"{d['runtime']} " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "engine": str(d.get("engine") or "-"), "threads": str(d["threads"]), "kernels": str(d.get("kernels")),
        "emulated": "yes: " + d["emulation"]["how"] if run.emulated else "no",
        "temperature C (start, end)": f"{t.get('start_c')}, {t.get('end_c')}",
        "throttling": ", ".join(throttled["flags"]) or "none" if throttled else "no vcgencmd",
        "bundle": f"{run.doc['bundle']['quantization']} ({run.doc['bundle']['manifest_sha256'][:12]})",
        "frames (warm-up)": f"{run.doc['settings']['frames']} ({run.doc['settings']['warmup']})",
        "created": str(run.doc.get("created")),
    }


def _per_op(runs: Sequence[Run], names: List[str]) -> str:
    parts = []
    for name, run in zip(names, runs):
        per_op = run.doc.get("per_op")
        if not per_op:
            continue
        if not per_op.get("available"):
            parts.append(f"<p>{html.escape(name)}: {html.escape(per_op.get('reason', 'not available'))}</p>")
            continue
        parts.append(f"<h3>{html.escape(name)}</h3><p class=muted>{html.escape(per_op['tool'])}, "
                     f"{per_op['frames']} frames</p>")
        parts.append(_table(("operator type", "ms per frame", "calls per frame", "share"),
                            ((r["op"], f"{r['ms_per_frame']:.3f}", f"{r['calls_per_frame']:g}",
                              f"{100 * r['share']:.1f}%") for r in per_op["by_type"])))
        parts.append(_table(("slowest", "type", "ms per frame", "share"),
                            ((r["name"], r["op"], f"{r['ms_per_frame']:.3f}", f"{100 * r['share']:.1f}%")
                             for r in per_op["slowest"]), left=2))
    return "".join(parts)


def _instructions(runs: Sequence[Run], names: List[str], baseline: Run) -> str:
    """Counted instructions per stage and frame of every run that counted them, with the ratio to the baseline."""
    rows = []
    for name, run in zip(names, runs):
        counted = run.doc.get("instructions")
        for stage in STAGES if counted else ():
            s = counted["per_frame"][stage]
            rows.append((name, stage, f"{s['median']:,.0f}", f"{s['min']:,}", f"{s['max']:,}", f"{s['total']:,}",
                         instruction_ratio(run, baseline, stage)))
    if not rows:
        return ""
    cpus = sorted({f"{r.doc['instructions'].get('cpu')} ({', '.join(r.doc['instructions'].get('cpu_features') or [])})"
                   for r in runs if r.doc.get("instructions")})
    return ("<h2>Instructions per stage</h2>"
            + _table(("run", "stage", "median per frame", "min", "max", "total", "ratio to baseline"), rows, left=2)
            + f"<p class=muted>Counted by the emulator as {html.escape('; '.join(cpus))}: every instruction the "
              "emulated CPU executed in the stage, exact and repeatable run to run. A count is not a time: caches, "
              "memory, the kernel and other threads are not in it. Ratio: median per frame over the baseline's.</p>")


def _commands(run: Run) -> List[str]:
    lines = []
    profile_command = (run.doc.get("profile") or {}).get("command")
    if profile_command:
        lines.append(profile_command)
    if run.doc.get("command"):
        lines.append("on the target: " + shlex.join(run.doc["command"]))
    return lines or ["(not recorded)"]


def render(runs: Sequence[Run], baseline: Run) -> str:
    """The whole report as one HTML document."""
    names = _names(runs)
    rows = summary_rows(runs, baseline)
    columns = list(rows[0])
    facts = [_facts(run) for run in runs]
    warnings = [(name, w) for name, run in zip(names, runs) for w in run.warnings()]
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>fdq report: {len(runs)} runs</title><style>{_STYLE}</style></head><body>",
           f"<h1>fdq: {len(runs)} run(s) compared</h1>",
           f"<p class=muted>Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; "
           f"speed-up against run {runs.index(baseline) + 1} ({html.escape(baseline.name)}).</p>"]
    if warnings:
        out.append("<h2>Warnings</h2>")
        out += [f'<div class="warn"><b>{html.escape(n)}</b>: {html.escape(w)}</div>' for n, w in warnings]
    out.append("<h2>Summary</h2>")
    out.append(_table(["#", *columns], ([str(i + 1), *(row[c] for c in columns)] for i, row in enumerate(rows)),
                      left=4))
    out.append("<p class=muted>Latency in ms per frame, p50 / p90 / p99 (p90 is MLPerf's single-stream metric); "
               "load and first frame: the cold start a camera app pays at every start.</p>")
    note = interleaving_note(runs)
    if note:
        out.append(f"<p>{html.escape(note)}</p>")
    out.append("<h2>Devices</h2>")
    out.append(_table(["", *names], ([key, *(f[key] for f in facts)] for key in facts[0]), left=len(runs) + 1))
    out.append('<h2>Latency per stage</h2><div class="plot">' + stage_plot(runs) + "</div>")
    out.append('<h2>Latency over the run</h2><div class="plot">' + timeline_plot(runs) + "</div>")
    out.append('<h2>Speed-up</h2><div class="plot">' + speedup_plot(runs, baseline) + "</div>")
    if any(run.accuracy for run in runs):
        out.append('<h2>Accuracy (WIDER FACE AP)</h2><div class="plot">' + ap_plot(runs) + "</div>")
    out.append(_instructions(runs, names, baseline))
    per_op = _per_op(runs, names)
    if per_op:
        out.append("<h2>Time per operator</h2>" + per_op)
    out.append("<h2>Commands</h2>")
    for name, run in zip(names, runs):
        out.append(f"<p><b>{html.escape(name)}</b><br>"
                   + "<br>".join(f"<code>{html.escape(c)}</code>" for c in _commands(run)) + "</p>")
    out.append("</body></html>\n")
    return "\n".join(out)
