"""fdq-demo: annotated video out, MJPEG server and page (checked in headless Chromium), clean failures.

The video is made here from real WIDER FACE validation images (resized to 640x480) that hold
a clearly detectable face and almost no saturated red (``demo_media``), so the red boxes the demo
draws can be counted in its output, in the served JPEGs and in a browser screenshot of the page.
"""
from __future__ import annotations

import platform
import queue
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List

import numpy as np
import pytest

from demo_media import (MIN_RED_PX, assert_live_facts, assert_screenshot_shows_boxes, assert_serves_page_and_frames,
                        face_video, read_all, red_pixels)
from fdq.device import demo
from fdq.device.demo import main
from fdq.device.mjpeg import parse_hostport
from fdq.device.latency_window import LatencyWindow

SIZE = (640, 480)
N_IMAGES = 5
REPEAT = 2  # 10 frames
N_FRAMES = N_IMAGES * REPEAT


@pytest.fixture(scope="module")
def bundle_dir(slim_fp32_bundle) -> Path:
    """slim fp32 at 320: the session's (conftest)."""
    return Path(slim_fp32_bundle)


@pytest.fixture(scope="module")
def video(bundle_dir, shared_dir, tmp_path_factory) -> Path:
    """10 mp4v frames at 640x480: five images with a face >= 40 px wide and almost no red, each twice."""
    return face_video(bundle_dir, shared_dir, tmp_path_factory.mktemp("video") / "faces.mp4", SIZE, N_IMAGES, REPEAT)


def demo_args(bundle_dir: Path, source, *extra: str) -> List[str]:
    return ["--bundle", str(bundle_dir), "--source", str(source), *extra]


# --------------------------------------------------------------------------------------------------
# Video in, annotated video out
# --------------------------------------------------------------------------------------------------


def test_writes_annotated_video(bundle_dir, video, tmp_path, capsys):
    out = tmp_path / "annotated.mp4"
    assert main(demo_args(bundle_dir, video, "--output", str(out), "--max-frames", str(N_FRAMES))) == 0
    assert f"{N_FRAMES} frames" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4"], "temporary file left behind"

    inputs, outputs = read_all(video), read_all(out)
    assert len(outputs) == N_FRAMES
    for i, (src, dst) in enumerate(zip(inputs, outputs)):
        assert dst.shape == src.shape == (SIZE[1], SIZE[0], 3)
        assert red_pixels(src) < MIN_RED_PX, f"input frame {i} already has red"
        assert red_pixels(dst) >= red_pixels(src) + MIN_RED_PX, f"no boxes drawn on frame {i}"
    # The overlay (FPS and stage latencies, in green) is in the top-left corner of every frame.
    corner = outputs[0][:110, :160].astype(np.int16)
    assert int(((corner[..., 1] > 180) & (corner[..., 1] - np.maximum(corner[..., 0], corner[..., 2]) > 100)).sum()) > 50


def test_max_frames_stops_early(bundle_dir, video, tmp_path):
    out = tmp_path / "three.mp4"
    assert main(demo_args(bundle_dir, video, "--output", str(out), "--max-frames", "3")) == 0
    assert len(read_all(out)) == 3


def test_failure_removes_partial_output(bundle_dir, video, tmp_path, monkeypatch):
    calls = []

    def broken_draw(image, dets, timings_ms=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("drawing failed")
        return image

    monkeypatch.setattr(demo, "draw_detections", broken_draw)
    with pytest.raises(RuntimeError, match="drawing failed"):
        main(demo_args(bundle_dir, video, "--output", str(tmp_path / "out.mp4")))
    assert list(tmp_path.iterdir()) == [], "failed run left a video or temporary file"


def test_ctrl_c_keeps_recorded_frames_and_exits_130(bundle_dir, video, tmp_path, monkeypatch, capsys):
    """A real SIGINT during the third frame: that frame completes, the loop stops, the video is kept."""
    calls = []
    real_draw = demo.draw_detections

    def interrupted_draw(image, dets, timings_ms=None):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_draw(image, dets, timings_ms)

    monkeypatch.setattr(demo, "draw_detections", interrupted_draw)
    out = tmp_path / "out.mp4"
    assert main(demo_args(bundle_dir, video, "--output", str(out))) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert len(read_all(out)) == 3 and len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


# --------------------------------------------------------------------------------------------------
# Failures: one clear line, no traceback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "garbage", "camera"])
def test_unopenable_source_is_one_error_line(bundle_dir, tmp_path, capfd, kind):
    if kind == "missing":
        source = "/nonexistent.mp4"
    elif kind == "garbage":
        source = tmp_path / "garbage.mp4"
        source.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        if Path("/dev/video9").exists():
            pytest.skip("this machine has a camera 9")
        source = "9"
    capfd.readouterr()
    assert main(demo_args(bundle_dir, source)) == 1
    err = capfd.readouterr().err  # file-descriptor level: FFmpeg / OpenCV native logging included
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fdq-demo: error: cannot open video source"), err


def test_missing_bundle_is_one_error_line(video, tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "nope"), "--source", str(video)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fdq-demo: error:") and "bundle not found" in lines[0]


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0", "example.com:8080", "192.168.1.20:8080"])
def test_refuses_non_loopback_serve_without_allow_remote(tmp_path, capsys, address):
    # A missing bundle and source: exit 2 (not 1) proves the refusal comes before anything is opened.
    assert main(["--bundle", str(tmp_path / "none"), "--source", str(tmp_path / "none.mp4"), "--serve", address]) == 2
    err = capsys.readouterr().err
    assert "fdq-demo: error: refusing to serve" in err and "--allow-remote" in err


def test_bad_serve_address_is_a_usage_error(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path), "--source", "0", "--serve", "8080"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_parse_hostport():
    assert parse_hostport("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_hostport("localhost:0") == ("localhost", 0)
    assert parse_hostport("[::1]:9000") == ("::1", 9000)
    for bad in ("8080", ":8080", "::1:80", "127.0.0.1:http", "127.0.0.1:70000", "[::1]9000"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_device_demo_imports_nothing_from_the_host_side():
    code = ("import sys, fdq.device.demo\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'rich', 'torch')"
            " or m.startswith('fdq.host'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------------
# Serving: MJPEG stream, still frame, page in a real (headless) browser
# --------------------------------------------------------------------------------------------------


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, stderr: "queue.Queue[str]") -> None:
        self.proc, self.url, self.stderr = proc, url, stderr

    def stderr_lines(self) -> List[str]:
        lines = []
        while True:
            try:
                lines.append(self.stderr.get_nowait())
            except queue.Empty:
                return lines


@pytest.fixture(scope="module")
def served(bundle_dir, video):
    """``python -m fdq.device.demo --serve 127.0.0.1:0`` in a subprocess, lingering on the last frame."""
    cmd = [sys.executable, "-m", "fdq.device.demo", *demo_args(bundle_dir, video, "--serve", "127.0.0.1:0",
                                                               "--max-frames", str(N_FRAMES), "--linger", "60")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        url, seen, deadline = None, [], time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        if url is None:
            pytest.fail("demo did not report its URL; stderr:\n" + "\n".join(seen))
        yield Served(proc, url, lines)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def test_serves_frame_and_mjpeg_stream(served):
    assert_serves_page_and_frames(served.url, SIZE)

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(served.url + "nothing-here", timeout=30)
    assert info.value.code == 404


def test_page_shows_annotated_stream_in_headless_chromium(served, tmp_path):
    assert_screenshot_shows_boxes(served.url, tmp_path, SIZE)


def test_page_and_stats_name_the_machine_and_its_live_latency(served, tmp_path):
    stats = assert_live_facts(served.url, tmp_path, N_FRAMES)
    assert stats["board"] == platform.node() and stats["machine"] == platform.machine()


def test_latency_window_keeps_the_last_second_else_the_latest_frame():
    window = LatencyWindow(1.0)
    assert window.snapshot(now=0.0)["p50_ms"] == {} and window.snapshot(now=0.0)["frames_total"] == 0
    for i, ms in enumerate([10.0, 30.0, 20.0]):  # at t = 0, 0.5, 1.2
        window.add({"preprocess": 1.0, "inference": ms, "postprocess": 2.0, "total": ms + 3.0}, now=(0.0, 0.5, 1.2)[i])
    snap = window.snapshot(now=1.3)  # the frame at t = 0 is older than a second
    assert snap["frames"] == 2 and snap["frames_total"] == 3
    assert snap["p50_ms"]["inference"] == 25.0 and snap["fps"] == pytest.approx(1000.0 / 28.0)
    later = window.snapshot(now=5.0)  # none in the last second: the latest frame, and its age
    assert later["frames"] == 1 and later["p50_ms"]["inference"] == 20.0 and later["age_s"] == pytest.approx(3.8)


def test_stop_on_eof_ends_the_demo_when_its_stdin_closes(bundle_dir, video):
    """What fdq-demo --target relies on: the SSH session's stdin closes, the board's demo ends."""
    proc = subprocess.Popen([sys.executable, "-m", "fdq.device.demo", *demo_args(
        bundle_dir, video, "--serve", "127.0.0.1:0", "--linger", "120", "--stop-on-eof")],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "serving the last frame" in line:
                break
        assert proc.poll() is None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 129
        assert proc.stderr.read().strip().endswith("standard input closed (the session that started it ended)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_stops_the_server_cleanly(served):
    # Last test of the module: it ends the shared server.
    assert served.proc.poll() is None, "the demo stopped before --linger ran out"
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=30) == 130
    time.sleep(0.2)  # let the stderr pump drain
    err = "\n".join(served.stderr_lines())
    assert "Traceback" not in err, err
    with pytest.raises(OSError):
        urllib.request.urlopen(served.url + "frame.jpg", timeout=5)
