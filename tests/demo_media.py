"""Test helpers of the camera demo's tests (local and on a board): a video made from real WIDER FACE
validation images that hold a clearly detectable face and almost no saturated red, so that the red
boxes the demo draws can be counted in its output, in the served JPEGs and in a browser screenshot;
reading MJPEG parts; the page's live facts; headless Chromium."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from fdq.device.result import STAGES

MIN_FACE_PX = 40
MAX_INPUT_RED_PX = 50
MIN_RED_PX = 100  # a 40 px box outline is ~170 px, most of which stays red through mp4v / JPEG


def red_pixels(image: np.ndarray) -> int:
    """Strongly red pixels (the box colour (0, 0, 255) after lossy compression)."""
    bgr = image.astype(np.int16)
    b, g, r = bgr[..., 0], bgr[..., 1], bgr[..., 2]
    return int(((r > 150) & (r - np.maximum(g, b) > 100)).sum())


def read_all(path: Path) -> List[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def assert_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a complete JPEG"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "JPEG does not decode"
    return image


def face_video(bundle_dir: Path, shared_dir: Path, out: Path, size: Tuple[int, int], images: int,
               repeat: int, min_face_px: int = MIN_FACE_PX) -> Path:
    """``images`` val images resized to ``size`` with a face at least ``min_face_px`` wide (found by
    the bundle at ``size``) and almost no red, each ``repeat`` times, as an mp4v video at ``out``."""
    from fdq.device.bundle import load_bundle
    from fdq.device.detector import FaceDetector
    from fdq.device.runtimes import load_inference

    bundle = load_bundle(str(bundle_dir))
    detector = FaceDetector(load_inference(bundle), bundle.spec, 320)
    chosen = []
    for path in sorted((shared_dir / "data" / "widerface_val_subset" / "val" / "images").glob("*/*.jpg")):
        image = cv2.resize(cv2.imread(str(path)), size, interpolation=cv2.INTER_AREA)
        if red_pixels(image) > MAX_INPUT_RED_PX:
            continue
        dets = detector.detect(image).above(0.5)
        if len(dets) and float((dets.boxes[:, 2] - dets.boxes[:, 0]).max()) >= min_face_px:
            chosen.append(image)
            if len(chosen) == images:
                break
    assert len(chosen) == images, f"fewer than {images} suitable validation images in {shared_dir}"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for image in chosen:
        for _ in range(repeat):
            writer.write(image)
    writer.release()
    assert len(read_all(out)) == images * repeat
    return out


def assert_demo_draws_boxes(bundle: Path, video: Path, out: Path, capsys: Any) -> None:
    """fdq-demo on ``bundle`` over ``video`` (every frame) writes ``out`` with red face boxes on every frame."""
    from fdq.device.demo import main as demo_main

    frames = len(read_all(video))
    capsys.readouterr()
    assert demo_main(["--bundle", str(bundle), "--source", str(video), "--output", str(out),
                      "--max-frames", str(frames)]) == 0
    assert f"{frames} frames" in capsys.readouterr().err
    pairs = list(zip(read_all(video), read_all(out)))
    assert len(pairs) == frames and all(red_pixels(dst) >= red_pixels(src) + MIN_RED_PX for src, dst in pairs)


def read_part(resp, boundary: bytes) -> bytes:
    """The body of the next part of a multipart/x-mixed-replace response."""
    delimiter = b"--" + boundary
    while True:
        line = resp.readline()
        assert line, "stream ended before the next part"
        if line.strip() == delimiter:
            break
        assert not line.strip(), f"unexpected data between parts: {line[:80]!r}"
    headers = {}
    while True:
        line = resp.readline().strip()
        if not line:
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("content-type") == "image/jpeg", headers
    body = resp.read(int(headers["content-length"]))
    return body


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not installed (apt-get install -y chromium): the page is only checked in a real browser")


def chromium(url: str, tmp_path: Path, *what: str) -> "subprocess.CompletedProcess[str]":
    """Headless Chromium on ``url`` (3 s of virtual time, an 800x600 window), doing ``what``
    (``--screenshot=F``, ``--dump-dom``: the page after its scripts ran, on stdout)."""
    cmd = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,600", "--virtual-time-budget=3000",
           *what, url]
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headless chromium did not finish {' '.join(what)} within 60 s")


def assert_screenshot_shows_boxes(url: str, tmp_path: Path, size: Tuple[int, int]) -> None:
    """A screenshot of the page: the stream at the top-left corner at its own ``size``, with red face
    boxes, and no red anywhere else (the facts beside it are not red)."""
    shot = tmp_path / "shot.png"
    result = chromium(url, tmp_path, f"--screenshot={shot}")
    assert shot.is_file(), f"no screenshot (exit {result.returncode}):\n{result.stderr[-3000:]}"
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (600, 800)
    assert red_pixels(image[:size[1], :size[0]]) >= MIN_RED_PX, "no face boxes visible in the browser"
    assert red_pixels(image[size[1]:, :]) == 0 and red_pixels(image[:, size[0]:]) == 0


def stats(url: str) -> Dict[str, Any]:
    """The demo's ``/stats.json``."""
    with urllib.request.urlopen(url + "stats.json", timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        return json.loads(resp.read())


def assert_live_facts(url: str, tmp_path: Path, frames: int, wait_s: float = 60.0) -> Dict[str, Any]:
    """Once the demo did its ``frames``: ``/stats.json`` names the bundle's runtime and each stage's
    p50 (the stage names fdq-profile reports), and the page, after its script ran in Chromium, shows
    the board, its machine and a latency row per stage. Returns the stats."""
    deadline = time.monotonic() + wait_s
    while (found := stats(url))["latency"]["frames_total"] < frames and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found["runtime"] == "torchscript" and found["engine"] is None and found["model"] == "slim"
    latency = found["latency"]
    assert latency["frames_total"] == frames and latency["frames"] >= 1
    assert sorted(latency["p50_ms"]) == sorted(STAGES)
    assert 0 < latency["p50_ms"]["inference"] < latency["p50_ms"]["total"]
    dom = chromium(url, tmp_path, "--dump-dom").stdout
    assert f'<b id="board">{html.escape(found["board"])}</b>' in dom and found["machine"] in dom
    for stage in STAGES:
        assert re.search(rf"<td>{stage}</td><td>\d+\.\d ms</td>", dom), dom[-2000:]
    assert re.search(r"p50 over the last 1 s|latest frame, \d+\.\d s ago", dom), dom[-2000:]
    return found


def assert_serves_page_and_frames(url: str, size: Tuple[int, int], boxes: bool = True) -> str:
    """The page, ``/frame.jpg`` (a JPEG of ``size``, with red face boxes when ``boxes``) and two
    JPEG parts of ``/stream.mjpg`` of that size; returns the page."""
    with urllib.request.urlopen(url + "frame.jpg", timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/jpeg"
        frame = assert_jpeg(resp.read())
    assert frame.shape == (size[1], size[0], 3)
    if boxes:
        assert red_pixels(frame) >= MIN_RED_PX

    with urllib.request.urlopen(url, timeout=30) as resp:
        page = resp.read().decode("utf-8")
        assert resp.headers["Content-Type"].startswith("text/html")
    assert '<img src="/stream.mjpg"' in page

    with urllib.request.urlopen(url + "stream.mjpg", timeout=30) as resp:
        content_type = resp.headers["Content-Type"]
        match = re.match(r'multipart/x-mixed-replace;\s*boundary="?([^";]+)"?', content_type)
        assert match, content_type
        boundary = match.group(1).encode("ascii")
        parts = [read_part(resp, boundary) for _ in range(2)]
    for part in parts:
        assert assert_jpeg(part).shape == (size[1], size[0], 3)
    return page
