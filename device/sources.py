"""Frame sources of the runner and the demo: an image folder, a video file, a camera, a stream, noise.

:func:`open_source` turns a ``--source`` into one of them. The runner measures repeatable frames (an
image folder, a video file, ``synthetic``), the demo shows live ones (a camera index, a stream URL or
capture pipeline, any file OpenCV decodes); a video file is the same :class:`CaptureSource` in both.
Every source gives frames the same way: ``warmup(n)`` images, then ``frames(n)`` ``(key, image)``
pairs, ``frames(None)`` to the source's own end.

Only the standard library is imported here: the runner installs its signal handlers before OpenCV
and numpy load (they are imported when a source opens).
"""
from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

SYNTHETIC_SIZE = (640, 480)
SYNTHETIC_POOL = 8
SYNTHETIC_SEED = 0
SYNTHETIC_DEFAULT_FRAMES = 50
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                  ".mjpg", ".mjpeg", ".h264", ".264", ".h265", ".hevc", ".y4m", ".gif")


class SourceError(ValueError):
    """A source that cannot be opened or read; the message is one line for the user."""


class ImageFolderSource:
    """Images below a folder, in sorted order, keyed ``EVENT/NAME``; loops when more frames are asked."""

    kind = "images"

    def __init__(self, folder: str) -> None:
        from .images import list_images

        try:
            self.items = list_images(folder)
        except (FileNotFoundError, ValueError) as exc:
            raise SourceError(str(exc)) from None
        self.folder = folder

    def default_frames(self) -> int:
        return len(self.items)

    def frame(self, index: int) -> Tuple[str, Any]:
        from .images import read_image

        key, path = self.items[index % len(self.items)]
        try:
            return key, read_image(path)
        except (FileNotFoundError, ValueError) as exc:
            raise SourceError(str(exc)) from None

    def warmup(self, count: int) -> Iterator[Any]:
        for i in range(count):
            yield self.frame(i)[1]

    def frames(self, count: int) -> Iterator[Tuple[str, Any]]:
        for i in range(count):
            yield self.frame(i)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "path": str(Path(self.folder).resolve()), "images": len(self.items)}


class SyntheticSource:
    """Deterministic uniform-noise 4:3 frames (numpy seed 0): a board with no data can still be timed."""

    kind = "synthetic"

    def __init__(self) -> None:
        import numpy as np

        rng = np.random.default_rng(SYNTHETIC_SEED)
        width, height = SYNTHETIC_SIZE
        self.pool = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(SYNTHETIC_POOL)]

    def default_frames(self) -> int:
        return SYNTHETIC_DEFAULT_FRAMES

    def warmup(self, count: int) -> Iterator[Any]:
        for i in range(count):
            yield self.pool[i % len(self.pool)]

    def frames(self, count: int) -> Iterator[Tuple[str, Any]]:
        for i in range(count):
            yield f"synthetic{i:06d}", self.pool[i % len(self.pool)]

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "width": SYNTHETIC_SIZE[0], "height": SYNTHETIC_SIZE[1],
                "seed": SYNTHETIC_SEED, "distinct_frames": SYNTHETIC_POOL, "content": "uniform noise uint8"}


class CaptureSource:
    """What OpenCV captures (``cv2.VideoCapture``): a video file, a camera index, a stream URL or a
    capture pipeline. Its first frame is read on opening, so a source that gives none fails at once;
    a file is reopened from the start when more frames are asked than it holds."""

    def __init__(self, source: Union[int, str], kind: str) -> None:
        import cv2

        self.source = source
        self.kind = kind  # video, camera or stream
        self._cv2 = cv2
        self.cap, self.first = self._open()
        self.width = int(self.first.shape[1])
        self.height = int(self.first.shape[0])
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._pending: Optional[Any] = self.first  # the frame already read counts as frame 0
        self.loops = 0

    def _open(self) -> Tuple[Any, Any]:
        """The capture and its first frame; SourceError (one line, with native code's reason) if either fails."""
        cv2, source = self._cv2, self.source
        what = f"camera {source}" if isinstance(source, int) else repr(source)
        if self.kind == "video" and not os.path.exists(source):
            raise SourceError(f"cannot open video source {what}: no such file")
        frame = None
        with _quiet_opencv(cv2), _captured_stderr_fd() as captured:
            cap = cv2.VideoCapture(source)
            opened = cap.isOpened()
            if opened:
                if self.kind == "camera":
                    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # best effort: the newest frame, not a backlog
                ok, frame = cap.read()
                if not ok:
                    frame = None
        if frame is None:
            cap.release()
            reason = _native_reason(captured)
            if not opened:
                hint = " (is a camera connected, and is the index right?)" if self.kind == "camera" else ""
                raise SourceError(f"cannot open video source {what}{hint}" + (f": {reason}" if reason else ""))
            raise SourceError(f"cannot open video source {what}: no frame could be read"
                              + (f" ({reason})" if reason else ""))
        return cap, frame

    def default_frames(self) -> Optional[int]:
        return None  # until the end of the file

    def warmup(self, count: int) -> Iterator[Any]:
        for _ in range(count):  # reading ahead would skip measured frames: repeat the first one
            yield self.first

    def _next(self) -> Optional[Any]:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, frame = self.cap.read()
        return frame if ok and frame is not None else None

    def frames(self, count: Optional[int]) -> Iterator[Tuple[str, Any]]:
        index = 0
        while count is None or index < count:
            frame = self._next()
            if frame is None:
                if count is None:
                    return
                self.cap.release()
                self.cap, frame = self._open()
                self.loops += 1
            yield f"frame{index:06d}", frame
            index += 1

    def playback_fps(self, fallback: float = 25.0) -> float:
        """The frame rate to write this source's frames at: its own where plausible, else ``fallback``."""
        return self.fps if math.isfinite(self.fps) and 1.0 <= self.fps <= 240.0 else fallback

    def release(self) -> None:
        self.cap.release()

    def describe(self) -> Dict[str, Any]:
        where = str(Path(self.source).resolve()) if self.kind == "video" else str(self.source)
        return {"kind": self.kind, "path": where, "width": self.width,
                "height": self.height, "fps": self.fps, "frame_count": self.count, "loops": self.loops}


Source = Union[ImageFolderSource, SyntheticSource, CaptureSource]


def open_source(text: str, live: bool = False) -> Source:
    """The source ``--source`` names. ``live`` (the demo): a camera index, a stream URL or capture
    pipeline, or any file OpenCV decodes. Otherwise (the runner): ``synthetic``, an image folder, or a
    file with a video suffix. SourceError (one line) when it cannot be opened."""
    if live:
        stripped = text.strip()
        if stripped.isdigit():
            return CaptureSource(int(stripped), "camera")
        return CaptureSource(text, "stream" if "://" in text or "!" in text else "video")
    if text == "synthetic":
        return SyntheticSource()
    path = Path(text)
    if path.is_dir():
        return ImageFolderSource(text)
    if path.is_file():
        # FFmpeg opens almost anything (a .txt file decodes as ANSI art): insist on a video suffix.
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise SourceError(f"source {text} is neither an image folder nor a video file "
                              f"({', '.join(VIDEO_SUFFIXES[:6])}, ...)")
        return CaptureSource(text, "video")
    raise SourceError(f"source not found: {text} (an image folder, a video file or 'synthetic')")


@contextmanager
def _quiet_opencv(cv2: Any) -> Iterator[None]:
    """OpenCV logs its own warnings while probing a source; the tools report one clear line."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    old = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(old)


@contextmanager
def _captured_stderr_fd() -> Iterator[List[str]]:
    """Collect what native code (FFmpeg, GStreamer) writes straight to fd 2 while probing a source.

    Yields a list that holds the captured text once the block exits. Only used while no other thread
    writes to stderr (the demo opens its source before it starts any).
    """
    captured: List[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read(1 << 16).decode("utf-8", errors="replace"))


def _native_reason(captured: Sequence[str]) -> str:
    """The last line native code logged, without its ``[module @ 0x...]`` prefix."""
    lines = [line.strip() for text in captured for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1])[:200]
