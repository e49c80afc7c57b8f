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
