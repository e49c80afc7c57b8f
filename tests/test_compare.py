"""fdq compare: the terminal table, Markdown, and the HTML report checked in a real headless Chromium
that may not reach any network (every request goes to a proxy on 127.0.0.1 that records it)."""
from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from fdq.host.cli import main as fdq_main, profile_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, slim_fp32_bundle, shared_dir):
    """Two real runs of the float bundle on this machine (1 and 2 threads), with AP on four images."""
    from fdq.calibration.labels import subset_ground_truth
    from fdq.device.evaluation import load_ground_truth, save_ground_truth_json

    root = tmp_path_factory.mktemp("compare")
    val = shared_dir / "data" / "widerface_val_subset" / "val"
    event = "5--Car_Accident"
    (root / "images" / event).mkdir(parents=True)
    for image in sorted((val / "images" / event).glob("*.jpg"))[:2]:
        (root / "images" / event / image.name).symlink_to(image)
    keys = [f"{event}/{p.stem}" for p in (root / "images" / event).iterdir()]
    save_ground_truth_json(subset_ground_truth(load_ground_truth(val / "ground_truth"), keys), root / "gt.json")
    profile = root / "here.yaml"
    profile.write_text(yaml.safe_dump({"name": "here", "transport": "local", "python": sys.executable,
                                       "workdir": str(root / "work"), "threads": 1}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDQ_HOME", str(root / "home"))
        assert profile_main(["--target", str(profile), "--bundle", str(slim_fp32_bundle), "--threads", "1,2",
                             "--images", str(root / "images"), "--gt", str(root / "gt.json"), "--frames", "6",
                             "--warmup", "1", "--per-op", "--runs", str(root / "fdq-runs")]) == 0
    files = sorted((root / "fdq-runs").glob("[!.]*.json"), key=lambda p: json.loads(p.read_text())["device"]["threads"])
    assert len(files) == 2
    return {"dir": root / "fdq-runs", "files": files, "root": root}


def test_table_and_markdown(runs, tmp_path, capsys):
    md = tmp_path / "r.md"
    assert fdq_main(["compare", str(runs["dir"]), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"report: {md.resolve()}"
    assert "torchscript" in out and "1.00x" in out
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["run", "target", "device"] and "AP easy/medium/hard" in header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    docs = [json.loads(p.read_text()) for p in runs["files"]]
    col = {name: header.index(name) for name in ("threads", "speed-up", "FPS", "AP easy/medium/hard")}
    assert [r[col["threads"]] for r in rows] == ["1", "2"]
    assert rows[0][col["speed-up"]] == "1.00x"
    expected = docs[0]["latency_ms"]["total"]["p50"] / docs[1]["latency_ms"]["total"]["p50"]
    assert rows[1][col["speed-up"]] == f"{expected:.2f}x"
    assert rows[0][col["FPS"]] == f"{docs[0]['fps']:.1f}"
    assert rows[0][col["AP easy/medium/hard"]] == " / ".join(f"{100 * docs[0]['accuracy'][s]:.2f}"
                                                              for s in ("easy", "medium", "hard"))


def test_baseline_option_sets_the_reference(runs, tmp_path):
    md = tmp_path / "b.md"
    assert fdq_main(["compare", *map(str, runs["files"]), "--baseline", str(runs["files"][1]),
                     "--markdown", str(md)]) == 0
    rows = md.read_text().splitlines()[2:4]
    assert rows[1].split(" | ")[13] == "1.00x" and rows[0].split(" | ")[13] != "1.00x"


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    notes = tmp_path / "notes.json"
    notes.write_text('{"hello": 1}')
    taken = tmp_path / "taken.html"
    taken.write_text("mine")
    for argv, needle in [([str(notes)], "not an fdq.run/1 run document"),
                         ([str(tmp_path / "nothing")], "no such run file or folder"),
                         ([str(runs["dir"]), "--html", str(taken)], "file exists; add --force")]:
        assert fdq_main(["compare", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fdq: error: ") and needle in err[0], err
    assert taken.read_text() == "mine"


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def _any(self) -> None:
        _Recorder.seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.end_headers()

    do_GET = do_POST = do_CONNECT = do_HEAD = _any

    def log_message(self, *args) -> None:
        pass


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")
def test_html_report_renders_offline_in_chromium(runs, tmp_path):
    from PIL import Image

    report = tmp_path / "report.html"
    assert fdq_main(["compare", str(runs["dir"]), "--html", str(report)]) == 0
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), "external resource"
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert text.count("<svg") == 4  # stage boxes, timeline, speed-up, AP
    assert 'name="viewport"' in text and "Time per operator" in text and "fdq-profile --target" in text

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    shot = tmp_path / "shot.png"
    try:
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update",
                               f"--proxy-server=http://127.0.0.1:{proxy.server_address[1]}",
                               "--proxy-bypass-list=<-loopback>", '--host-resolver-rules=MAP * ~NOTFOUND',
                               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=412,2400",
                               f"--screenshot={shot}", report.as_uri()],
                              capture_output=True, text=True, timeout=120)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert _Recorder.seen == [], _Recorder.seen
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    ink = (pixels.sum(axis=2) < 600).mean(axis=1)        # share of non-background pixels per row
    assert (ink > 0.01).mean() > 0.5, "most of the page is blank"
    colours = {tuple(c) for c in pixels[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50, "no plots: too few colours"
    # the plots' blue (matplotlib C0, #1f77b4) is on screen, so the SVGs rendered
    blue = (np.abs(pixels - np.array([31, 119, 180])).sum(axis=2) < 40).sum()
    assert blue > 500, blue


def test_a_short_run_is_warned_about_once(tmp_path):
    """A run that measured fewer frames than asked carries the runner's own warning; the report adds none
    of its own beside it (it did, worded differently), and adds it to an older document without one."""
    from fdq.device.result import fewer_frames, read_run

    source = sorted((Path(__file__).resolve().parents[1] / "docs" / "results" / "profile-local-runs").glob("local-*.json"))[0]
    doc = json.loads(source.read_text())
    doc["settings"].update(frames=3, frames_asked=10)
    for own in ([fewer_frames(3, 10)], []):
        doc["warnings"] = own
        path = tmp_path / f"run{len(own)}.json"
        path.write_text(json.dumps(doc))
        assert read_run(path).warnings().count(fewer_frames(3, 10)) == 1
