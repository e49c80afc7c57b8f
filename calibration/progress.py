"""A progress line for the steps of long host-side work (distillation, calibration), on a terminal only.

rich draws it on stderr when stderr is a terminal; in a pipe or a file the steps run as they are and
nothing is printed, so logs and scripts see exactly what they saw before.
"""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def track(items: Iterable[T], description: str, total: Optional[int] = None) -> Iterator[T]:
    """``items``, with a transient rich progress line (done / total, time left) while a terminal watches."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, console=Console(file=sys.stderr),
                          transient=True)


class Steps:
    """A progress line for work that reports its steps as they finish (done / total, time left), and the
    lines to say meanwhile: printed above the line on a terminal, plainly to stderr elsewhere.
    Thread-safe (a fleet's hosts finish steps at once). Use as a context manager."""

    def __init__(self, description: str, total: int, done: int = 0, unit: str = "steps") -> None:
        self._progress = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            # every finished step counts toward the time left (steps may take minutes; rich's window is 30 s)
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn(f"{unit} done, about"), TimeRemainingColumn(), TextColumn("left"),
                                      console=Console(file=sys.stderr), transient=True, speed_estimate_period=86400.0)
            self._task = self._progress.add_task(description, total=total, completed=done)

    def __enter__(self) -> "Steps":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def say(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr)
