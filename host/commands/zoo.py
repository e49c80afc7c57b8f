"""``fdq zoo list|fetch``: the pretrained weights, where they are cached, and their download."""
from __future__ import annotations

import argparse
from typing import Any


def cmd_zoo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from fdq.host import zoo

    if args.zoo_cmd == "fetch":
        names = list(zoo.ZOO) if args.name == "all" else [args.name]
        for name in names:
            print(zoo.fetch(name))
        return 0
    table = Table(title="fdq weights")
    for column in ("name", "file", "size", "sha256", "where", "verified"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps the path, never cuts it
    for name in zoo.ZOO:
        s = zoo.status(name)
        table.add_row(name, s["filename"], str(s["size"]), s["sha256"][:16] + "...",
                      str(s["path"] or "not fetched"), "yes" if s["verified"] else "no")
    console = Console()
    if not console.is_terminal:  # a file or a pipe: as wide as the table needs
        from rich.measure import Measurement

        console = Console(width=Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``zoo`` subcommand (and its actions) to ``fdq``'s subparsers."""
    z = subparsers.add_parser("zoo", help="pretrained weights: list, fetch")
    zsub = z.add_subparsers(dest="zoo_cmd", required=True, metavar="ACTION")
    zsub.add_parser("list", help="known weights and where they are cached")
    zf = zsub.add_parser("fetch", help="download and verify weights (NAME or 'all')")
    zf.add_argument("name", help="slim, rfb, mnet025, or all")
    z.set_defaults(func=cmd_zoo)
    return z
