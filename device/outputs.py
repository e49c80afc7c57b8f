"""Where fdq may write what the user names: never over anything fdq did not make.

Every command that writes a path the user gives (``--out``, ``--output``, ``--json``, ``--plot``,
``--predictions-out``, profile results) goes through these checks *before* it starts working, and
writes through :func:`atomic_folder` or :func:`fdq.device.atomic.atomic_output`, so a failure leaves
nothing half-written.

Folders:

* a path that does not exist, or an empty folder: written;
* a folder fdq made (a bundle, ``manifest.yaml`` of schema ``fdq.bundle/1``, or an output folder
  holding fdq's marker file): refused unless ``force``; with it, replaced atomically;
* anything else (a file, a folder of the user's, ``.``, the home folder): always refused.

Files: a path that does not exist is written; an existing regular file is replaced only with
``force``; a folder or anything else in the way is always refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import yaml

from .bundle import MANIFEST, SCHEMA

PathLike = Union[str, "os.PathLike[str]"]
MARKER = ".fdq-output"  # JSON inside; no suffix, so that globbing *.json never meets it
MARKER_SCHEMA = "fdq.output/1"


class OutputRefused(ValueError):
    """The named output path holds something fdq must not replace; the message is one line."""


def is_fdq_bundle(folder: Path) -> bool:
    """A folder whose manifest declares an fdq bundle (complete or being replaced)."""
    try:
        manifest = yaml.safe_load((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == SCHEMA


def is_fdq_output(folder: Path) -> bool:
    """A folder fdq wrote: a bundle, or an output folder carrying fdq's marker."""
    if is_fdq_bundle(folder):
        return True
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(marker, dict) and marker.get("schema") == MARKER_SCHEMA


def check_folder_output(path: PathLike, force: bool = False, option: str = "--out") -> Path:
    """Raise :class:`OutputRefused` unless ``path`` may receive a folder fdq writes; its absolute path."""
    target = Path(path).expanduser().absolute()
    if not os.path.lexists(target):
        return target
    if target.is_symlink() or not target.is_dir():
        raise OutputRefused(f"{option} {path}: exists and is not a folder fdq wrote; refusing to replace it "
                            "(choose a new path)")
    if not any(target.iterdir()):
        return target
    if not is_fdq_output(target):
        raise OutputRefused(f"{option} {path}: folder exists and was not written by fdq; refusing to replace "
                            "it (choose a new or empty folder)")
    if not force:
        raise OutputRefused(f"{option} {path}: an fdq output is already there; add --force to replace it")
    if target in (Path.cwd().absolute(), Path.home().absolute()) or target == Path(target.anchor):
        raise OutputRefused(f"{option} {path}: refusing to replace the current, home or root folder")
    return target


def check_file_output(path: PathLike, force: bool = False, option: str = "--json") -> str:
    """Raise :class:`OutputRefused` unless a file may be written at ``path``; its absolute path.

    With ``os.path``, not ``pathlib``: CPython 3.11's pathlib interns every part of a path, and the
    runner's ``--json`` name is new each run (it carries a time). Interned, it changes the
    interpreter's string table, and with it the instructions that later lookups execute: two
    counting runs differing only in that name differed by 0.12 % in a stage (``--count-instructions``).
    """
    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.lexists(target):
        return target
    if os.path.islink(target) or not os.path.isfile(target):
        raise OutputRefused(f"{option} {path}: exists and is not a regular file; refusing to replace it")
    if not force:
        raise OutputRefused(f"{option} {path}: file exists; add --force to replace it")
    return target


def checked_outputs_or_exit(prog: str, force: bool, *outputs: Tuple[str, PathLike]) -> List[str]:
    """:func:`check_file_output` for each (option, path), before a script's work starts; a refusal
    ends the program with one ``PROG: error: ...`` line. The absolute paths, in order."""
    try:
        return [check_file_output(path, force, option) for option, path in outputs]
    except OutputRefused as exc:
        raise SystemExit(f"{prog}: error: {exc}") from None


def write_marker(folder: Path, info: Optional[Dict[str, Any]] = None) -> None:
    """Mark ``folder`` as fdq's, so that a later run may replace it with ``--force`` (and only then)."""
    (folder / MARKER).write_text(json.dumps({"schema": MARKER_SCHEMA, **(info or {})}, indent=1) + "\n",
                                 encoding="utf-8")


@contextmanager
def atomic_folder(path: PathLike, force: bool = False, option: str = "--out") -> Iterator[Path]:
    """A scratch folder that becomes ``path`` when the block succeeds, and vanishes when it raises.

    ``path`` is checked with :func:`check_folder_output` first. An existing empty folder is kept
    (it may be the working directory) and the results are moved into it, the manifest or marker
    last; an fdq folder given with ``force`` is swapped out whole and removed only afterwards.
    """
    target = check_folder_output(path, force, option)
    existing = target.is_dir()
    if existing and not any(target.iterdir()):
        scratch_parent, swap = target, False
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch_parent, swap = target.parent, existing
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name or 'out'}.", dir=scratch_parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are ordinary folders
        if scratch_parent == target:
            last = {MANIFEST, MARKER}
            moved = []
            try:
                for entry in sorted(tmp.iterdir(), key=lambda p: p.name in last):
                    if os.path.lexists(target / entry.name):  # something appeared there meanwhile: keep it
                        raise OutputRefused(f"{option} {path}: {entry.name} appeared there while fdq was "
                                            "writing; refusing to replace it")
                    os.replace(entry, target / entry.name)
                    moved.append(target / entry.name)
            except BaseException:  # take back what was moved: nothing half-written stays
                for done in moved:
                    if done.is_dir() and not done.is_symlink():
                        shutil.rmtree(done)
                    else:
                        done.unlink()
                raise
            tmp.rmdir()
        elif swap:
            check_folder_output(target, force, option)  # still ours, now that the work is done
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
