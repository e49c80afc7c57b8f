"""A generated block inside a docs page: replaced where it is, the rest of the page kept."""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

from fdq.device.atomic import atomic_write_text


def write_section(markdown: Union[str, Path], lines: List[str], heading: str) -> None:
    """Put ``lines`` (a block from its begin marker to its end marker) into the docs page ``markdown``:
    over the same block there, else appended under ``heading``; the rest of the page is kept."""
    begin, end = lines[0], lines[-1]
    md = Path(markdown).read_text(encoding="utf-8") if Path(markdown).exists() else "# How fast each runtime is\n"
    block = "\n".join(lines)
    if begin in md:
        md = md[:md.index(begin)] + block + md[md.index(end) + len(end):]
    else:
        md = md.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    atomic_write_text(str(markdown), md)
