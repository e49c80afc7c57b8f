"""Deploy the device runner and bundles (and data files, for ``fdq-profile --images``) to a target.

On the target everything lives under the profile's ``workdir``::

    lib/fdq/device/...        the runner, alone (importable with PYTHONPATH=lib)
    bundles/<name>-<hash>/    one folder per bundle, named by its manifest's sha256
    data/<name>-<hash>/       images and ground truth for accuracy on the target (fdq.host.profiling)
    results/                  the runner's JSON documents

Deploy asks the target for the sha256 of what it already holds and sends only the files that
differ; a bundle's manifest travels last, so a bundle cut short is one the runner refuses. It then
has the target's own Python load every bundle, which verifies every checksum there.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Mapping, Optional, Sequence

from fdq.device.bundle import MANIFEST, load_bundle, sha256_file

from .remote import Connection, RemoteError

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
DEVICE_SUFFIXES = (".py", ".c", ".h")
LIB = "lib"
BUNDLES = "bundles"
DATA = "data"
RESULTS = "results"
RUN_TIMEOUT_S = 3600.0

# Run by the target's Python in the workdir: sha256 of every file under the folders it is given,
# as JSON {path relative to the workdir: digest}.
_INVENTORY = """import hashlib, json, os, sys
out = {}
for top in sys.argv[1:]:
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path)] = hashlib.sha256(f.read()).hexdigest()
print(json.dumps(out))
"""
# Run by the target's Python on the deployed bundles: every checksum, and the int8 engine its torch must have.
_VERIFY = """import sys
from fdq.device.bundle import load_bundle
bundles = [load_bundle(p) for p in sys.argv[1:]]
if any(b.runtime == 'torchscript' and b.engine for b in bundles):
    import torch
    have = list(torch.backends.quantized.supported_engines)
    for b in bundles:
        if b.runtime == 'torchscript' and b.engine and b.engine not in have:
            sys.exit(f"{b.path.name} needs the {b.engine} engine; this torch has {', '.join(have)}")
"""


@dataclass
class Deployment:
    """What a deploy did; ``bundles`` maps each local bundle folder to its folder on the target."""

    workdir: str
    bundles: Dict[str, str] = field(default_factory=dict)
    uploaded: List[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    unchanged: int = 0
    removed: List[str] = field(default_factory=list)


def bundle_id(path: Path) -> str:
    """``<folder>-<first 12 hex of the manifest's sha256>``: two bundles never share a folder there."""
    return f"{path.name}-{sha256_file(path / MANIFEST)[:12]}"


def planned_files(bundles: Sequence[Path], extra: Optional[Mapping[str, Path]] = None) -> Dict[str, Path]:
    """Remote path (relative to the workdir) -> local file, in upload order (manifests last, then
    ``extra``: more remote path -> local file)."""
    plan = {f"{LIB}/fdq/device/{p.relative_to(DEVICE_DIR).as_posix()}": p
            for p in sorted(DEVICE_DIR.rglob("*"))
            if p.is_file() and p.suffix in DEVICE_SUFFIXES and "__pycache__" not in p.parts}
    for folder in bundles:
        files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == MANIFEST)
        plan.update({f"{BUNDLES}/{bundle_id(folder)}/{p.relative_to(folder).as_posix()}": p for p in files})
    plan.update(extra or {})
    return plan


def _in_workdir(conn: Connection, workdir: str, *python_args: str) -> str:
    """A shell command running the target's Python in ``workdir``, with the runner importable."""
    return (f"cd {shlex.quote(workdir)} && PYTHONPATH={LIB} "
            + " ".join(shlex.quote(a) for a in (conn.target.python, *python_args)))


def _check(conn: Connection, command: str, what: str) -> str:
    done = conn.run(command, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise RemoteError(f"{conn.target.name}: {what}: {done.last_error_line()}")
    return done.stdout


def inventory(conn: Connection, workdir: str, *tops: str) -> Dict[str, str]:
    """sha256 of what the target already holds of the runner and the bundles (and of ``tops``)."""
    out = _check(conn, _in_workdir(conn, workdir, "-c", _INVENTORY, LIB, BUNDLES, *tops),
                 f"{conn.target.python} cannot list {workdir}")
    return json.loads(out)


def deploy(conn: Connection, bundles: Sequence[str], extra: Optional[Mapping[str, Path]] = None) -> Deployment:
    """Put the runner and ``bundles`` (verified here first) on the target; verify them there.

    ``extra`` (workdir path -> local file) travels the same way, only what differs there."""
    folders = [load_bundle(b).path.resolve() for b in bundles]
    workdir = conn.path(conn.target.workdir)
    conn.makedirs(workdir)
    result = Deployment(workdir=workdir, bundles={str(f): f"{BUNDLES}/{bundle_id(f)}" for f in folders})
    held = inventory(conn, workdir, *sorted({PurePosixPath(r).parts[0] for r in extra or {}}))
    plan = planned_files(folders, extra)
    for remote, local in plan.items():
        if held.get(remote) == sha256_file(local):
            result.unchanged += 1
            continue
        conn.put(local, str(PurePosixPath(workdir, remote)))
        result.uploaded.append(remote)
        result.uploaded_bytes += local.stat().st_size
    stale = sorted(r for r in held if r.startswith(f"{LIB}/fdq/device/") and r not in plan
                   and "__pycache__" not in r)  # bytecode is Python's own business
    if stale:  # an old module left beside the new ones could still be imported
        _check(conn, "rm -f -- " + " ".join(shlex.quote(str(PurePosixPath(workdir, r))) for r in stale),
               "cannot remove old runner files")
        result.removed = stale
    if result.bundles:
        _check(conn, _in_workdir(conn, workdir, "-c", _VERIFY, *result.bundles.values()),
               "a deployed bundle does not run there")
    return result
