"""Writing artifact bundles atomically: files first, checksums, manifest last, then one rename."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Callable, Dict

import yaml

from fdq.device.bundle import MANIFEST, SCHEMA, sha256_file
from fdq.device.outputs import atomic_folder

FDQ_VERSION = "0.1.0"


def write_bundle(out: str, manifest: Dict[str, Any], write_files: Callable[[Path], None],
                 force: bool = False) -> Path:
    """Create bundle ``out``: ``write_files(tmpdir)`` writes the payload, then the manifest is added.

    The folder appears under its final name only when complete; on any failure nothing is left.
    What may stand at ``out`` is :mod:`fdq.device.outputs`' rule: an existing bundle is replaced only
    with ``force``, and only after the new one is complete; anything of the user's is refused.
    """
    with atomic_folder(out, force=force) as tmp:
        write_files(tmp)
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = {"schema": SCHEMA, **manifest, "files": files, "fdq_version": FDQ_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            yaml.safe_dump(full, f, sort_keys=False)
    return Path(out).expanduser().resolve()
