"""Test helpers of the camera demo's tests (local and on a board): a video made from real WIDER FACE
validation images that hold a clearly detectable face and almost no saturated red, so that the red
boxes the demo draws can be counted in its output, in the served JPEGs and in a browser screenshot;
reading MJPEG parts; headless Chromium."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

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
               repeat: int) -> Path:
    """``images`` val images resized to ``size`` with a face >= 40 px wide (found by the bundle at
    ``size``) and almost no red, each ``repeat`` times, as an mp4v video at ``out``."""
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
        if len(dets) and float((dets.boxes[:, 2] - dets.boxes[:, 0]).max()) >= MIN_FACE_PX:
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
