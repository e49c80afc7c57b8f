"""``fdq compare --history CONFIG``: one configuration's total p50 / p90 and AP over time, from the
index of runs (:mod:`fdq.host.history`), as one self-contained HTML page like the report's."""
from __future__ import annotations

import datetime as _dt
import html
from typing import Any, Dict, List, Sequence

from fdq.device.result import SETTINGS

from .html import _STYLE, _pyplot, _svg, _table


def _times(rows: Sequence[Dict[str, Any]]) -> List[_dt.datetime]:
    return [_dt.datetime.fromisoformat(r["created"]) for r in rows]


def latency_plot(rows: Sequence[Dict[str, Any]]) -> str:
    """Total p50 and p90 per run against the time the run was made."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    when = _times(rows)
    for column, label in (("p50_ms", "total p50"), ("p90_ms", "total p90")):
        ax.plot(when, [r[column] for r in rows], marker="o", markersize=3, linewidth=1.0, label=label)
    ax.set_ylabel("ms per frame")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.autofmt_xdate()
    return _svg(fig)


def ap_plot(rows: Sequence[Dict[str, Any]]) -> str:
    """AP easy / medium / hard per run (runs that measured it) against time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    measured = [r for r in rows if r["ap_medium"] is not None]
    for setting in SETTINGS:
        ax.plot(_times(measured), [100 * r[f"ap_{setting}"] for r in measured], marker="o", markersize=3,
                linewidth=1.0, label=setting)
    ax.set_ylabel("AP (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    fig.autofmt_xdate()
    return _svg(fig)


def render(rows: Sequence[Dict[str, Any]], config: Dict[str, Any]) -> str:
    """The page: the configuration, the two plots, and one table row per run."""
    name = ", ".join(f"{k}={v}" for k, v in config.items())
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>fdq history: {html.escape(name)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>fdq history: {len(rows)} run(s)</h1><p class=muted>{html.escape(name)}</p>",
           '<h2>Latency over time</h2><div class="plot">' + latency_plot(rows) + "</div>"]
    if any(r["ap_medium"] is not None for r in rows):
        out.append('<h2>Accuracy over time (WIDER FACE AP)</h2><div class="plot">' + ap_plot(rows) + "</div>")
    out.append("<h2>Runs</h2>")
    out.append(_table(("created", "host", "fdq", "commit", "p50 ms", "p90 ms", "AP e/m/h", "run"),
                      ((r["created"], r["host"], r["fdq_version"] or "-", (r["git_commit"] or "-")[:10],
                        f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                        " / ".join("-" if r[f"ap_{s}"] is None else f"{100 * r[f'ap_{s}']:.2f}" for s in SETTINGS),
                        r["path"]) for r in rows), left=4))
    out.append("</body></html>\n")
    return "\n".join(out)
