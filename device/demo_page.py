"""What the demo's page shows beside the stream: the board, its runtime and engine, live latency.

The facts (board name, machine, emulated or not, runtime, engine, threads, model) are written into
the page itself, so any client sees them; the per-stage latency (p50 over the last second, the
stage names ``fdq-profile`` reports) comes from ``/stats.json``, which the page polls.
"""
from __future__ import annotations

import html
import json
import platform
from string import Template
from typing import Any, Dict

from .latency_window import LatencyWindow
from .result import STAGES
from .sysinfo import emulation

POLL_MS = 500

# $-placeholders (string.Template): the CSS and script keep their braces. The stream stays at the
# top-left corner at its own size (flex: none), the facts to its right.
_PAGE = Template("""<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>fdq-demo: $board</title>
<style>
body{margin:0;background:#111;color:#ccc;font-family:sans-serif;display:flex;align-items:flex-start}
img{display:block;max-width:100%;flex:none}
#facts{padding:6px 10px;font-size:13px;line-height:1.4;min-width:0}
#facts b{color:#eee}
#latency td{padding:0 6px 0 0}
</style>
</head>
<body>
<img src="/stream.mjpg" alt="fdq-demo live stream">
<div id="facts">
<div>board <b id="board">$board</b></div>
<div id="machine">$machine$emulated</div>
<div>runtime <b id="runtime">$runtime</b></div>
<div>engine <b id="engine">$engine</b></div>
<div>threads <b>$threads</b>, model <b>$model</b></div>
<table id="latency"></table>
<div id="window"></div>
</div>
<script>
var STAGES = $stages;
function show(s) {
  var l = s.latency, rows = "";
  STAGES.forEach(function (stage) {
    var v = l.p50_ms[stage];
    rows += "<tr><td>" + stage + "</td><td>" + (v === undefined ? "-" : v.toFixed(1) + " ms") + "</td></tr>";
  });
  document.getElementById("latency").innerHTML = rows;
  var w = l.frames_total === 0 ? "no frame yet" : (l.age_s <= l.window_s
      ? "p50 over the last " + l.window_s + " s (" + l.frames + " frames), " + (l.fps ? l.fps.toFixed(1) : "-") + " fps"
      : "latest frame, " + l.age_s.toFixed(1) + " s ago");
  document.getElementById("window").textContent = w;
}
function poll() {
  fetch("/stats.json", {cache: "no-store"}).then(function (r) { return r.json(); }).then(show)
    .catch(function () {}).then(function () { setTimeout(poll, $poll_ms); });
}
poll();
</script>
</body>
</html>
""")


def board_facts(bundle: Any, threads: int) -> Dict[str, Any]:
    """This board and how the demo runs on it (a bundle from :func:`fdq.device.bundle.load_bundle`)."""
    return {"board": platform.node(), "machine": platform.machine(), "emulated": bool(emulation()["emulated"]),
            "runtime": bundle.runtime, "engine": bundle.engine, "threads": int(threads),
            "model": bundle.manifest.get("model", {}).get("name")}


def render_page(facts: Dict[str, Any]) -> str:
    """The HTML page: the stream, the facts, and the script that polls the live latency."""
    def text(value: Any) -> str:
        return html.escape(str(value))

    return _PAGE.substitute(
        board=text(facts["board"]), machine=text(facts["machine"]),
        emulated=" (emulated: its latency says nothing about a real board)" if facts["emulated"] else "",
        runtime=text(facts["runtime"]), engine=text(facts["engine"] or "none (float)"),
        threads=text(facts["threads"]), model=text(facts["model"]), stages=json.dumps(list(STAGES)),
        poll_ms=POLL_MS)


def stats_document(facts: Dict[str, Any], window: LatencyWindow) -> bytes:
    """``/stats.json``: the facts and the latency window's snapshot."""
    return json.dumps({**facts, "latency": window.snapshot()}).encode("utf-8")
