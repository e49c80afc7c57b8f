"""Deploy the device runner and bundles to a target.

On the target everything lives under the profile's ``workdir``::

    lib/fdq/device/...        the runner, alone (importable with PYTHONPATH=lib)
    bundles/<name>-<hash>/    one folder per bundle, named by its manifest's sha256
    data/<name>-<hash>/       images and ground truth for accuracy on the target (``extra`` files)
    results/                  the runner's JSON documents

Deploy first asks the target's Python for the board's facts (machine, Python, the runtimes there
and their versions, torch's int8 engines, free space) and the sha256 of what it already holds, and
removes ``.part`` files a cut upload left. A bundle that cannot run there, or a deploy that does not
fit, is refused before any byte travels. Only the files that differ are sent, a bundle's manifest
last, so a bundle cut short is one the runner refuses; the target's own Python then loads every
bundle, which verifies every checksum there.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence

from fdq.device.bundle import MANIFEST, RUNTIME_MODULES, Bundle, load_bundle, sha256_file

from .provision import EXECUTORCH_FOR_TORCH, executorch_for
from .remote import Connection, RemoteError, put_files

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
DEVICE_SUFFIXES = (".py", ".c", ".h")
LIB = "lib"
BUNDLES = "bundles"
DATA = "data"
RESULTS = "results"
# One deploy step on the board (its Python importing torch under emulation takes a while).
STEP_TIMEOUT_S = 600.0
BLOCK = 4096                         # files take whole blocks on the board's file system

# Run by the target's Python (standard library only: it runs before the runner is there) with
# argv: workdir, "1" when torch's int8 engines are wanted, then the folders to hash. Prints the
# board's facts and {path relative to the workdir: [sha256 or None, size, mtime]} as JSON, and
# removes the .part files a cut upload left.
FACTS_SCRIPT = """import hashlib, importlib.util, json, os, platform, sys
from importlib import metadata
work, want_engines, tops = sys.argv[1], sys.argv[2] == '1', sys.argv[3:]
os.makedirs(work, exist_ok=True)
os.chdir(work)
dists = {'yaml': ['PyYAML'], 'cv2': ['opencv-python-headless', 'opencv-python'], 'onnxruntime': ['onnxruntime']}
modules = {}
for mod in ('numpy', 'yaml', 'cv2', 'torch', 'onnxruntime', 'ncnn', 'MNN', 'executorch'):
    if importlib.util.find_spec(mod) is None:
        modules[mod] = None
        continue
    modules[mod] = 'unknown'
    for dist in dists.get(mod, [mod]):
        try:
            modules[mod] = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            pass
dotprod = None
if platform.machine() == 'aarch64':  # HWCAP_ASIMDDP, bit 20 of AT_HWCAP: see executorch_refusal
    import ctypes
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    dotprod = bool(getauxval(16) >> 20 & 1)
ncnn_int8 = None
if modules['ncnn']:  # an ncnn built without NCNN_INT8 refuses an int8 convolution's params: see ncnn_int8_refusal
    import ncnn
    ncnn_int8 = ncnn.Net().load_param_mem('7767517\\n2 2\\nInput i 0 1 a\\nConvolution c 1 1 a b 0=1 1=1 6=1 8=2\\n') == 0
engines = None
if want_engines and modules['torch']:
    import torch
    engines = list(torch.backends.quantized.supported_engines)
files, removed = {}, []
for top in tops + ['results']:
    for folder, _, names in os.walk(top):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith('.part'):
                os.unlink(path)
                removed.append(path)
                continue
            digest = None
            if top != 'results':
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            st = os.stat(path)
            files[os.path.relpath(path)] = [digest, st.st_size, st.st_mtime]
vfs = os.statvfs('.')
print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), 'modules': modules,
                  'engines': engines, 'dotprod': dotprod, 'ncnn_int8': ncnn_int8, 'free': vfs.f_bavail * vfs.f_frsize, 'files': files, 'removed_parts': removed}))
"""
# Run by the target's Python on the deployed bundles: every checksum.
_VERIFY = """import sys
from fdq.device.bundle import load_bundle
for p in sys.argv[1:]:
    load_bundle(p)
"""


@dataclass
class Deployment:
    """What a deploy did; ``bundles`` maps each local bundle folder to its folder on the target."""

    workdir: str
    bundles: Dict[str, str] = field(default_factory=dict)
    facts: Dict[str, Any] = field(default_factory=dict)
    uploaded: List[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    unchanged: int = 0
    removed: List[str] = field(default_factory=list)
    replaced: List[str] = field(default_factory=list)   # bundle files whose copy there did not match
    pruned: List[str] = field(default_factory=list)


def notices(done: Deployment, target_name: str) -> List[str]:
    """What a deploy must tell the user beyond its counts: files found changed there, what was pruned."""
    lines = [f"fdq: {target_name}: the board's copy of {path} did not match (changed there); replaced"
             for path in done.replaced]
    if done.pruned:
        lines.append(f"fdq: {target_name}: pruned {len(done.pruned)} bundle(s) and result(s): {', '.join(done.pruned)}")
    return lines


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


def _check(conn: Connection, command: str, what: str, timeout: float) -> str:
    done = conn.run(command, timeout=timeout)
    if done.returncode != 0:
        raise RemoteError(f"{conn.target.name}: {what}: {done.last_error_line()}")
    return done.stdout


def board_facts(conn: Connection, workdir: str, engines: bool = False, tops: Sequence[str] = ()) -> Dict[str, Any]:
    """The board's machine, Python, runtime modules and versions, free bytes in ``workdir`` (made if
    missing), torch's int8 engines (with ``engines``; importing torch is slow on a small board) and
    ``files``: [sha256, size, mtime] of what it holds of the runner, the bundles, ``tops`` and the results."""
    command = (f"{shlex.quote(conn.target.python)} -c {shlex.quote(FACTS_SCRIPT)} {shlex.quote(workdir)} "
               f"{int(engines)} " + " ".join(shlex.quote(t) for t in (LIB, BUNDLES, *tops)))
    out = _check(conn, command, f"{conn.target.python} cannot run in {workdir}", STEP_TIMEOUT_S)
    return json.loads(out)


def refusal(target_name: str, python: str, bundle: Bundle, facts: Dict[str, Any],
            runtimes: Sequence[str], engine: Optional[str]) -> Optional[str]:
    """Why ``bundle`` cannot run on a board with these facts and profile fields (None: it can)."""
    name, modules = bundle.path.name, facts["modules"]
    if bundle.runtime not in runtimes:
        return (f"{name} is a bundle for {bundle.runtime}; the profile of {target_name} lists runtimes "
                f"{', '.join(runtimes)}")
    module = RUNTIME_MODULES[bundle.runtime]  # the runner's own packages: fdq.host.provision.prepare
    if not modules.get(module):
        return (f"{python} there ({facts['machine']}, Python {facts['python']}) lacks {module}, "
                f"which {name} needs (install it there, or deploy with --setup)")
    if bundle.runtime == "executorch":
        return executorch_refusal(name, bundle, facts)
    if bundle.runtime == "ncnn":
        return ncnn_int8_refusal(name, bundle, facts)
    if bundle.runtime == "torchscript" and bundle.engine:
        if engine and bundle.engine != engine:
            return f"{name} is for the {bundle.engine} engine; {target_name} runs int8 on {engine} (its profile)"
        have = facts.get("engines") or []
        if bundle.engine not in have:
            return (f"{name} needs the {bundle.engine} engine; torch {modules['torch']} there "
                    f"({facts['machine']}) has {', '.join(have)}")
    return None


def executorch_refusal(name: str, bundle: Bundle, facts: Dict[str, Any]) -> Optional[str]:
    """Why the board's executorch cannot run ``bundle`` (None: it can): its runtime links the libtorch it
    was built against, so it needs that torch beside it; and 1.0.x's aarch64 wheel runs an XNNPACK int8
    program with the dot-product instruction SDOT (ARMv8.2) whether or not the CPU has it, so a board
    without it (a Pi 4's Cortex-A72) stops with SIGILL. Found on the emulated A72 with a Pi 4's
    /proc/cpuinfo, sysfs, HWCAP and ID registers (docs/ARCHITECTURE.md). Refused: a crash at run time
    would be worse than a line at deploy."""
    modules = facts["modules"]
    executorch, torch = (str(modules.get(m) or "").split("+")[0] for m in ("executorch", "torch"))
    built_for = {e: t for t, e in EXECUTORCH_FOR_TORCH.items()}.get(executorch)
    where = f"({facts['machine']}, Python {facts['python']})"
    if built_for and executorch_for(torch or "0.0") != executorch:
        return (f"executorch {executorch} there {where} was built against torch {built_for}, torch there is "
                f"{torch or 'missing'}: {name} cannot load (fdq-deploy --setup installs a matching pair)")
    dtype = str((bundle.manifest.get("backend") or {}).get("dtype", "fp32"))
    if dtype == "int8" and executorch.startswith("1.0.") and facts["machine"] == "aarch64" \
            and not facts.get("dotprod"):
        return (f"{name} is an XNNPACK int8 program; executorch {executorch} there {where} runs it with the "
                f"dot-product instruction SDOT, which that CPU lacks (no asimddp, as a Pi 4's Cortex-A72), and "
                f"stops with SIGILL; the release built for the host's torch (1.5.1) needs torch 2.13, which PyPI "
                f"has for aarch64 only as a CUDA build: deploy its float program (fdq export --format executorch)")
    return None


def ncnn_int8_refusal(name: str, bundle: Bundle, facts: Dict[str, Any]) -> Optional[str]:
    """Why the board's ncnn cannot run ``bundle`` (None: it can): an ncnn built without NCNN_INT8 cannot load
    an int8 model (the facts' ``ncnn_int8``: whether it accepts an int8 convolution's params)."""
    dtype = str((bundle.manifest.get("backend") or {}).get("dtype", "fp32"))
    if dtype == "int8" and facts.get("ncnn_int8") is False:
        return (f"{name} is an ncnn int8 model; ncnn {facts['modules'].get('ncnn')} there ({facts['machine']}, Python "
                f"{facts['python']}) was built without int8 (NCNN_INT8) and cannot load it: install PyPI's ncnn there "
                f"(fdq-deploy --setup), or deploy the fp32 export (fdq export --format ncnn)")
    return None


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def prunable(files: Dict[str, List[Any]], keep: Sequence[str], older_than_s: float) -> Dict[str, int]:
    """Bundle folders and results there that no bundle in ``keep`` (bundle ids) names, older than
    ``older_than_s`` seconds: {path relative to the workdir: bytes}."""
    now, found, newest = time.time(), {}, {}
    for path, (_, size, mtime) in files.items():
        parts = PurePosixPath(path).parts
        if parts[0] == BUNDLES and len(parts) > 2 and parts[1] not in keep:
            top = f"{BUNDLES}/{parts[1]}"
        elif parts[0] == RESULTS and not any(parts[-1].startswith(k + "-") for k in keep):
            top = path
        else:
            continue
        found[top] = found.get(top, 0) + _blocks(size)
        newest[top] = max(newest.get(top, 0.0), mtime)
    return {top: size for top, size in found.items() if now - newest[top] >= older_than_s}


def deploy(conn: Connection, bundles: Sequence[str], extra: Optional[Mapping[str, Path]] = None,
           prune_older_than_s: Optional[float] = None) -> Deployment:
    """Put the runner and ``bundles`` (verified here first) on the target and verify them there;
    ``extra`` (workdir path -> local file) travels the same way, only what differs there.

    Refused before anything travels (:class:`RemoteError`, one line): a bundle that cannot run there
    (:func:`refusal`), or files that do not fit in the free space. With ``prune_older_than_s``
    (0: all), the bundles and results there that this deploy does not name go first.
    """
    loaded = [load_bundle(b) for b in bundles]
    folders = [b.path.resolve() for b in loaded]
    target = conn.target
    workdir = conn.path(target.workdir)
    conn.makedirs(workdir)
    result = Deployment(workdir=workdir, bundles={str(f): f"{BUNDLES}/{bundle_id(f)}" for f in folders})
    wants_engines = any(b.runtime == "torchscript" and b.engine for b in loaded)
    tops = sorted({PurePosixPath(r).parts[0] for r in extra or {}} - {LIB, BUNDLES, RESULTS})
    facts = result.facts = board_facts(conn, workdir, engines=wants_engines, tops=tops)
    for bundle in loaded:
        why = refusal(target.name, target.python, bundle, facts, target.runtimes, target.engine)
        if why:
            raise RemoteError(f"{target.name}: refused before sending: {why}")
    free = int(facts["free"])
    files = facts["files"]
    if prune_older_than_s is not None:
        doomed = prunable(files, [PurePosixPath(r).name for r in result.bundles.values()], prune_older_than_s)
        if doomed:
            _check(conn, "rm -rf -- " + " ".join(shlex.quote(str(PurePosixPath(workdir, r))) for r in sorted(doomed)),
                   "cannot remove old bundles and results", STEP_TIMEOUT_S)
            result.pruned = sorted(doomed)
            free += sum(doomed.values())
    held = {path: meta[0] for path, meta in files.items() if meta[0] is not None}
    plan = planned_files(folders, extra)
    send = {remote: local for remote, local in plan.items() if held.get(remote) != sha256_file(local)}
    needed = sum(_blocks(local.stat().st_size) for local in send.values())
    if needed > free:
        raise RemoteError(f"no space on {target.name}:{workdir}: {free / 2**20:.1f} MiB free, "
                          f"{needed / 2**20:.1f} MiB needed (--prune removes bundles this deploy does not name)")
    result.unchanged = len(plan) - len(send)
    put_files(conn, [(local, str(PurePosixPath(workdir, remote))) for remote, local in send.items()],
              f"sending {len(send)} file(s)")
    # same name, same manifest: damaged there
    result.replaced = [remote for remote in send if remote.startswith(f"{BUNDLES}/") and remote in held]
    result.uploaded = list(send)
    result.uploaded_bytes = sum(local.stat().st_size for local in send.values())
    stale = sorted(r for r in held if r.startswith(f"{LIB}/fdq/device/") and r not in plan
                   and "__pycache__" not in r)  # bytecode is Python's own business
    if stale:  # an old module left beside the new ones could still be imported
        _check(conn, "rm -f -- " + " ".join(shlex.quote(str(PurePosixPath(workdir, r))) for r in stale),
               "cannot remove old runner files", STEP_TIMEOUT_S)
        result.removed = stale
    if result.bundles:
        _check(conn, _in_workdir(conn, workdir, "-c", _VERIFY, *result.bundles.values()),
               "a deployed bundle does not verify there", STEP_TIMEOUT_S)
    return result

