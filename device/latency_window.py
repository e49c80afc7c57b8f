"""Per-stage latency of the last second of frames, for the demo page's live numbers.

The demo's capture loop adds each frame's stage times (the names ``fdq-profile`` reports, from
:data:`fdq.device.result.STAGES`); the page polls a snapshot from the HTTP threads. A board slower
than one frame a second (an emulated one) has no frame in the last second: the snapshot then holds
the latest frame alone and says how old it is, so the page never shows an empty or invented number.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Mapping, Optional, Tuple

import numpy as np

from .result import STAGES

WINDOW_S = 1.0


class LatencyWindow:
    """Stage times of the frames finished within the last ``seconds``; thread-safe."""

    def __init__(self, seconds: float = WINDOW_S) -> None:
        self.seconds = float(seconds)
        self._lock = threading.Lock()
        self._frames: Deque[Tuple[float, Dict[str, float]]] = deque()
        self._count = 0

    def add(self, timings_ms: Mapping[str, float], now: Optional[float] = None) -> None:
        """Record one frame's stage times (milliseconds) as finished at ``now`` (monotonic seconds)."""
        stamp = time.monotonic() if now is None else now
        with self._lock:
            self._frames.append((stamp, {s: float(timings_ms[s]) for s in STAGES if s in timings_ms}))
            self._count += 1
            while len(self._frames) > 1 and self._frames[0][0] < stamp - self.seconds:
                self._frames.popleft()

    def snapshot(self, now: Optional[float] = None) -> Dict[str, Any]:
        """``p50_ms`` per stage over the window's frames (else the latest frame), with ``frames``
        (how many), ``age_s`` (seconds since the latest frame), ``fps`` (1000 / p50 of ``total``)
        and ``frames_total``; ``p50_ms`` is empty before the first frame."""
        stamp = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for when, t in self._frames if when >= stamp - self.seconds] or [t for _, t in self._frames][-1:]
            latest = self._frames[-1][0] if self._frames else None
            count = self._count
        p50 = {s: float(np.median([t[s] for t in recent])) for s in STAGES if recent and s in recent[0]}
        total = p50.get("total", 0.0)
        return {"window_s": self.seconds, "frames": len(recent), "frames_total": count,
                "age_s": None if latest is None else max(0.0, stamp - latest), "p50_ms": p50,
                "fps": 1000.0 / total if total > 0 else None}
