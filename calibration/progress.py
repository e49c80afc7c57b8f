"""Progress lines for long host-side work (distillation, calibration, training, exports, transfers, a
board's frames), on a terminal only.

rich draws them on stderr when stderr is a terminal and ``--quiet`` was not given; in a pipe or a file
the work runs as it is and nothing is printed, so logs and scripts see exactly what they saw before.
Every line open at a time (nested steps, a fleet's hosts in their threads) is a row of one shared
display, since a terminal holds one live display at a time.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")

_LOCK = threading.Lock()
_STATE: dict = {"quiet": False, "display": None, "lines": 0}


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress line, even on a terminal."""
    _STATE["quiet"] = quiet


def shown() -> bool:
    """Whether progress lines are drawn: stderr is a terminal and ``--quiet`` was not given."""
    return not _STATE["quiet"] and sys.stderr.isatty()


class Line:
    """One row of the display: ``update(completed=, total=, description=, note=)``, ``advance(n)``.
    A line that is not drawn takes the same calls and does nothing."""

    def __init__(self, display: Any = None, task: Any = None) -> None:
        self._display, self._task = display, task

    @property
    def drawn(self) -> bool:
        """Whether this line is on the terminal (worth feeding with progress that costs something to get)."""
        return self._display is not None

    def update(self, **fields: Any) -> None:
        if self._display is not None:
            self._display.update(self._task, **fields)

    def advance(self, n: float = 1, **fields: Any) -> None:
        if self._display is not None:
            self._display.update(self._task, advance=n, **fields)

    def say(self, text: str) -> None:
        """A line of output that stays: above the display when it is drawn, plainly on stderr otherwise."""
        if self._display is not None:
            self._display.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)


def _display() -> Any:
    """The shared rich display: spinner, what, bar, done/total (bytes and speed for transfers), a note
    (loss, FPS), elapsed and left."""
    from rich.console import Console
    from rich.filesize import decimal
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
    from rich.text import Text

    class Count(ProgressColumn):
        """M/N for steps and frames; bytes sent and their speed for a transfer."""

        steps, size, speed = MofNCompleteColumn(), DownloadColumn(), TransferSpeedColumn()

        def render(self, task: Any) -> Text:
            if task.fields.get("unit") == "bytes":
                size = self.size.render(task) if task.total is not None else Text(decimal(int(task.completed)))
                return Text.assemble(size, " ", self.speed.render(task))
            if task.total is None:
                return Text(f"{int(task.completed)}" if task.completed else "")
            return self.steps.render(task)

    # Drawn on a copy of the terminal's descriptor: a native tool whose output fdq captures by
    # redirecting fd 2 (MNN's converter) neither swallows the display nor finds it in its output.
    terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), Count(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=terminal), transient=True, redirect_stdout=False,
                    speed_estimate_period=3600.0)  # steps may take minutes (a sweep's runs): every one counts toward the time left


@contextmanager
def line(description: str, total: Optional[float] = None, unit: str = "", note: str = "",
         show: bool = True) -> Iterator[Line]:
    """A progress line while the ``with`` block runs (removed at its end); ``total`` None: a spinner
    with the elapsed time until a total is known. ``unit`` "bytes" shows sizes and speed. ``show``
    False (or no terminal, or ``--quiet``): nothing drawn."""
    if not (show and shown()):
        yield Line()
        return
    with _LOCK:
        if _STATE["display"] is None:
            _STATE["display"] = _display()
            _STATE["display"].start()
        display = _STATE["display"]
        _STATE["lines"] += 1
        task = display.add_task(description, total=total, unit=unit, note=note)
    try:
        yield Line(display, task)
    finally:
        with _LOCK:
            display.remove_task(task)
            _STATE["lines"] -= 1
            if _STATE["lines"] == 0:
                display.stop()
                display.console.file.close()
                _STATE["display"] = None


def track(items: Iterable[T], description: str, total: Optional[int] = None) -> Iterator[T]:
    """``items``, with a progress line (done / total, time left) while a terminal watches."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with line(description, total) as progress:
        for item in items:
            yield item
            progress.advance()
