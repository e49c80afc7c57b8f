"""Run a command with stderr on a terminal (a pty), as a user watching it, to see its progress lines."""
from __future__ import annotations

import os
import pty
import subprocess
import threading
from typing import Dict, Sequence, Tuple


def run_on_terminal(argv: Sequence[str], env: Dict[str, str], timeout: float = 300) -> Tuple[int, str, str]:
    """(exit status, stdout, everything the terminal on stderr received) of ``argv``; stdout stays a pipe."""
    main_fd, terminal = pty.openpty()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL,
                            env=dict(env, COLUMNS="160"))
    os.close(terminal)
    out: list = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # a full pipe would stall it
    reader.start()
    seen = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal's other end closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(main_fd)
    status = proc.wait(timeout=timeout)
    reader.join()
    proc.stdout.close()
    return status, out[0].decode("utf-8", "replace"), seen.decode("utf-8", "replace")
