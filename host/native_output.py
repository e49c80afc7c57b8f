"""Run a converter's compiled code in this process with its console output kept out of the user's terminal.

MNN's converter and quantizer (``_tools``) print progress straight to file descriptors 1 and 2 from
C++, where no Python redirection reaches. They run in-process (fdq never starts their command
wrappers, see :mod:`fdq.host.export.mnn`), so both descriptors point at a temporary file meanwhile;
its tail goes into the error message when the tool fails.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator, List


@contextlib.contextmanager
def captured_fds(lines: List[str]) -> Iterator[None]:
    """Send fds 1 and 2 to a temporary file; on exit restore them and put the file's lines in ``lines``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            text = log.read().decode("utf-8", errors="replace").replace("\r", "\n")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def tail(lines: List[str], count: int = 3) -> str:
    """The last ``count`` lines joined on one line, for an error message."""
    return " | ".join(lines[-count:]) if lines else "(no output)"
