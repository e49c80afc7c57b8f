"""The same work on every host of a fleet, concurrently, and one table of what each did.

A host that cannot be reached or fails is one row with its error line; the others complete.
Deploy and profile both go through :func:`on_each`, so a fleet behaves the same in either.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Optional, Sequence, Tuple, TypeVar

from .remote import Connection, connect
from .targets import Target

MAX_WORKERS = 8
T = TypeVar("T")


@dataclass
class HostResult(Generic[T]):
    """What ``work`` returned on one host, or the one line that says why it failed."""

    target: Target
    value: Optional[T] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _on_one(target: Target, work: Callable[[Connection], T]) -> HostResult[T]:
    try:
        conn = connect(target)
        try:
            return HostResult(target, value=work(conn))
        finally:
            conn.close()
    except (RuntimeError, ValueError, OSError) as exc:  # RemoteError, BundleError, TargetError, SetupError...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        prefix = f"{target.name}: "
        return HostResult(target, error=text[len(prefix):] if text.startswith(prefix) else text)


def on_each(targets: Sequence[Target], work: Callable[[Connection], T],
            workers: int = MAX_WORKERS) -> List[HostResult[T]]:
    """``work(connection)`` on every target, at most ``workers`` at a time; results in target order."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        return list(pool.map(lambda t: _on_one(t, work), targets))


def print_table(title: str, results: Sequence[HostResult[Any]],
                columns: Sequence[Tuple[str, Callable[[Any], str]]]) -> None:
    """One row per host: name, address, each column of its value (empty when it failed), status."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for name in ("host", "address", *(c[0] for c in columns), "status"):
        table.add_column(name, overflow="fold")
    for r in results:
        cells = [Text(fn(r.value) if r.ok else "") for _, fn in columns]
        table.add_row(Text(r.target.name), Text(r.target.address), *cells,
                      Text("ok") if r.ok else Text(f"failed: {r.error}", style="red"))
    console = Console()
    if not console.is_terminal:  # a file or a pipe: the width the table needs, one line per host
        console = Console(width=10_000)
    console.print(table)
