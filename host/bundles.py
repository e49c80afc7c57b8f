"""Writing artifact bundles atomically: files first, checksums, manifest last, then one rename."""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import yaml

from fdq.device.bundle import MANIFEST, SCHEMA, sha256_file

FDQ_VERSION = "0.1.0"


def write_bundle(out: str, manifest: Dict[str, Any], write_files: Callable[[Path], None]) -> Path:
    """Create bundle ``out``: ``write_files(tmpdir)`` writes the payload, then the manifest is added.

    The folder appears under its final name only when complete; on any failure nothing is left.
    An existing bundle at ``out`` is replaced only after the new one is complete.
    """
    target = Path(out).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_files(tmp)
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = {"schema": SCHEMA, **manifest, "files": files, "fdq_version": FDQ_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            yaml.safe_dump(full, f, sort_keys=False)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "bundle")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
