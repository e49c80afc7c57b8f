"""``fdq-deploy --setup``: a bare board (its stock ``python3``) becomes one that runs the runner.

The board's Python version, C library and machine are read over the connection; this machine
downloads the wheels for exactly that platform (cached under ``$FDQ_HOME/wheels``), sends them to
``WORKDIR/wheels`` and installs them with ``pip --no-index`` into ``WORKDIR/venv``. So the board
needs no internet, and pip never resolves anything there (minutes under emulation, and a Pi in the
field is often offline). What is installed: the runner's packages, and per runtime of the profile's
``runtimes`` its package (torch at the profile's ``torch`` version, default the newest CPU-only wheel
for that Python and machine; onnxruntime, at the profile's ``onnxruntime`` version; ncnn; MNN;
executorch, whose runtime links the libtorch it was built against: the release built for the board's
torch, installed without its declared dependencies, as ``scripts/install_runtimes.sh`` does here).

PyPI's newest aarch64 torch wheels are CUDA builds (the CUDA toolkit, gigabytes, cannot install on a
Pi). A CUDA build is known by its dependencies (``nvidia-*``, ``cuda-*``), read from the index's
metadata before anything is downloaded, not by a list of versions that ages: without a pin the newest
release series whose wheel needs none of them is taken, and a pinned CUDA build is one line.

Once a work directory has that venv, deploy and profile run its Python. Without ``--setup``, a
Python that lacks one of the runner's modules is refused in one line that names it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from packaging.requirements import Requirement

from fdq.calibration.progress import line as progress_line
from fdq.device.outputs import atomic_folder

from .remote import Connection, put_files
from .targets import Target

VENV = "venv"
WHEELS = "wheels"
# module the runner imports -> the distribution that provides it (ranges as fdq's own setup.py)
RUNNER_PACKAGES = {"numpy": "numpy>=1.23,<3", "cv2": "opencv-python-headless>=4.8,<6", "yaml": "pyyaml>=6.0,<7",
                   "psutil": "psutil>=5.9,<8"}
# mnn: the version fdq's exporter writes (setup.py's mnn extra).
RUNTIME_PACKAGES = {"torchscript": "torch", "onnxruntime": "onnxruntime", "ncnn": "ncnn", "mnn": "MNN==3.6.1",
                    "executorch": "executorch"}
# torch major.minor -> the executorch release built against it (both have cp311 aarch64 wheels). 1.5.1 is the
# host's (setup.py's executorch extra), but PyPI's aarch64 torch 2.13 is a CUDA build (libtorch_cuda and the
# CUDA 13 toolkit, gigabytes, cannot load without them), so a Pi gets torch 2.9.1, the last CPU-only aarch64
# wheel there, and executorch 1.0.1, which loads the host's 1.5.1 fp32 programs (measured on the emulated A72).
EXECUTORCH_FOR_TORCH = {"2.13": "1.5.1", "2.9": "1.0.1"}
TORCH_RUNTIMES = ("torchscript", "executorch")  # the runtimes that need torch on the board
CUDA_DISTRIBUTIONS = ("nvidia-", "cuda-")  # a torch wheel that needs one of these is a CUDA build
TORCH_SERIES_TRIED = 8  # release series (2.14, 2.13, ...) looked at for a CPU-only torch before giving up
# What executorch's runtime imports besides torch (its other declared dependencies serve other backends);
# installed with its dependencies, executorch itself with --no-deps.
EXECUTORCH_DEPS = ("ruamel.yaml>=0.17", "flatbuffers>=24", "tabulate>=0.9")
INSTALL_TIMEOUT_S = 3600.0  # torch unpacks for minutes under emulation

# Run by the board's Python: what pip needs to know of the platform, and which modules are missing.
_FACTS = """import importlib.util, json, platform, sys
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "python_full": platform.python_version(),
                  "implementation": sys.implementation.name, "machine": platform.machine(),
                  "libc": list(platform.libc_ver()), "executable": sys.executable,
                  "missing": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]}))
"""


@dataclass(frozen=True)
class BoardPython:
    """A Python on the board and what pip must know about it."""

    executable: str
    python: str             # "3.11"
    python_full: str
    implementation: str
    machine: str
    libc: Tuple[str, str]   # ("glibc", "2.36")
    missing: Tuple[str, ...]

    def platforms(self) -> List[str]:
        """pip ``--platform`` tags this board takes: manylinux_2_17 up to its glibc (newer wheels carry
        manylinux_2_2x tags only, so manylinux2014 alone would find stale versions or none)."""
        name, version = self.libc
        if name != "glibc" or not version:
            raise SetupError(f"--setup needs a glibc board; {self.executable} reports C library {name or 'unknown'}")
        major, minor = (int(p) for p in version.split(".")[:2])
        newest = minor if major == 2 else 17
        return [f"manylinux_2_{m}_{self.machine}" for m in range(newest, 16, -1)] + [f"manylinux2014_{self.machine}"]

    def markers(self) -> Dict[str, str]:
        """The environment markers of the board's Python, to pick dependencies for it, not for this machine."""
        return {"python_version": self.python, "python_full_version": self.python_full, "os_name": "posix",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": self.machine,
                "implementation_name": self.implementation, "platform_python_implementation": "CPython",
                "platform_release": "", "platform_version": "", "implementation_version": self.python_full,
                "extra": ""}


class SetupError(RuntimeError):
    """The board cannot be provisioned, or lacks what the runner needs; one line says which."""


def _venv_python(conn: Connection) -> str:
    return str(PurePosixPath(conn.path(conn.target.workdir), VENV, "bin", "python"))


def board_python(conn: Connection, modules: Sequence[str] = (), prefer_venv: bool = True) -> BoardPython:
    """Facts of the board's Python (the work directory's venv when it has one, else the profile's);
    ``missing`` lists those of ``modules`` it cannot import. One command, one round trip."""
    q = shlex.quote
    venv, base = q(_venv_python(conn)), q(conn.target.python)
    choose = f"if [ -x {venv} ]; then p={venv}; else p={base}; fi" if prefer_venv else f"p={base}"
    done = conn.run(f'{choose}; "$p" -c {q(_FACTS)} ' + " ".join(q(m) for m in modules), timeout=120)
    if done.returncode != 0:
        raise SetupError(f"{conn.target.name}: {conn.target.python} does not run there: {done.last_error_line()}")
    facts = json.loads(done.stdout)
    return BoardPython(facts["executable"], facts["python"], facts["python_full"], facts["implementation"],
                       facts["machine"], tuple(facts["libc"]), tuple(facts["missing"]))


def _series(version: str) -> str:
    """A release's series: "2.9" of "2.9.1+cpu"."""
    return ".".join(version.split("+")[0].split(".")[:2])


def executorch_for(torch_version: str) -> Optional[str]:
    """The executorch release built against ``torch_version`` (None: none is)."""
    return EXECUTORCH_FOR_TORCH.get(_series(torch_version))


def requirements(target: Target, torch: Optional[str]) -> Tuple[List[str], List[str]]:
    """What the runner needs on ``target``, its packages and those of the profile's runtimes: those
    installed with their dependencies, and those without (executorch). ``torch`` is the board's torch
    release (the profile's pin, or :func:`choose_torch`'s); None only checks the runtime names."""
    wanted, alone = list(RUNNER_PACKAGES.values()), []
    for runtime in target.runtimes:
        if runtime not in RUNTIME_PACKAGES:
            raise SetupError(f"{target.name}: --setup knows runtimes {', '.join(RUNTIME_PACKAGES)}, "
                              f"the profile names {runtime!r}")
        package = RUNTIME_PACKAGES[runtime]
        if package == "executorch":
            executorch = executorch_for(torch) if torch else None
            if torch and executorch is None:
                pairs = ", ".join(f"torch {t} (executorch {e})" for t, e in EXECUTORCH_FOR_TORCH.items())
                chosen = ("the profile pins torch" if target.torch
                          else "the newest CPU-only torch for the board is")
                raise SetupError(f"{target.name}: {chosen} {torch}; executorch has builds for {pairs}")
            alone += [f"executorch=={executorch}"] if executorch else []
            wanted += EXECUTORCH_DEPS
            continue
        version = {"torch": torch, "onnxruntime": target.onnxruntime}.get(package)
        wanted.append(f"{package}=={version}" if version else package)
    if alone and not any(Requirement(p).name == "torch" for p in wanted):
        wanted.append(f"torch=={torch}")
    return wanted, alone


def _platform_args(board: BoardPython) -> List[str]:
    """pip's options that select wheels for the board's interpreter and platform, not this machine's."""
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version", board.python,
            *[a for tag in board.platforms() for a in ("--platform", tag)]]


def torch_release(board: BoardPython, spec: str) -> Tuple[str, List[str]]:
    """The version of the newest torch wheel for the board that ``spec`` allows, and the requirements
    that hold there, from the index's metadata alone (``pip install --dry-run --report``: no download)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
                   "--disable-pip-version-check", *_platform_args(board), "--target", str(Path(scratch) / "target"),
                   "--report", str(report), spec]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or ["?"]
            raise SetupError(f"no torch wheel ({spec}) for {board.machine} / Python {board.python}: "
                             f"{errors[-1].strip()}")
        metadata = json.loads(report.read_text())["install"][0]["metadata"]
    held = [Requirement(r) for r in metadata.get("requires_dist", [])]
    return metadata["version"], [r.name for r in held if r.marker is None or r.marker.evaluate(board.markers())]


def _cuda_needs(names: Sequence[str]) -> List[str]:
    return [n for n in names if n.lower().startswith(CUDA_DISTRIBUTIONS)]


def choose_torch(board: BoardPython, target: Target) -> str:
    """The torch release ``--setup`` installs: the profile's pin, else the newest CPU-only wheel for the
    board (of a release series executorch has a build for, when the profile runs executorch). A CUDA
    build is refused in one line that names ``torch:``."""
    where = f"{board.machine} / Python {board.python}"
    if target.torch:
        _, needs = torch_release(board, f"torch=={target.torch}")
        cuda = _cuda_needs(needs)
        if cuda:
            raise SetupError(f"{target.name}: the profile's torch {target.torch} is a CUDA build for {where} "
                             f"(it needs {', '.join(cuda[:3])}): set `torch:` in the profile to a CPU-only "
                             "release (2.9.1 on a Raspberry Pi)")
        return target.torch
    executorch = "executorch" in target.runtimes
    newest_first = sorted(EXECUTORCH_FOR_TORCH, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    candidates = [f"torch=={series}.*" for series in newest_first] if executorch else ["torch"]
    cuda_builds: List[str] = []
    while candidates and len(cuda_builds) < TORCH_SERIES_TRIED:
        version, needs = torch_release(board, candidates.pop(0))
        if not _cuda_needs(needs):
            return version
        cuda_builds.append(version)
        if not executorch:
            candidates.append(f"torch<{_series(version)}")  # the next older release series
    raise SetupError(f"{target.name}: the newest torch wheels for {where}"
                     f"{' that executorch has builds for' if executorch else ''} are CUDA builds "
                     f"({', '.join(cuda_builds)}): set `torch:` in the profile to a CPU-only release")


def _downloaded_bytes(folder: Path, scratch: Path) -> int:
    """What pip has fetched so far: the wheels in ``folder`` and the files it is still writing in its
    temporary folder ``scratch`` (each wheel arrives there, then is copied into ``folder``)."""
    done = {p.name: p.stat().st_size for p in folder.glob("*") if p.is_file()}
    for path in scratch.rglob("*"):
        try:
            if path.is_file() and path.name not in done:
                done[path.name] = path.stat().st_size
        except OSError:  # pip removed it meanwhile
            pass
    return sum(done.values())


def _pip_download(board: BoardPython, folder: Path, packages: Sequence[str], deps: bool) -> None:
    """pip downloads the wheels for the board into ``folder``; on a terminal, one progress line of the
    bytes fetched (pip's own bar is off: it would not know the board)."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", *_platform_args(board),
               "-d", str(folder), *([] if deps else ["--no-deps"]), *packages]
    with tempfile.TemporaryDirectory(prefix="fdq-pip-") as scratch, \
            progress_line(f"fdq: downloading {', '.join(packages)} for {board.machine} / Python {board.python}",
                          unit="bytes") as line:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, TMPDIR=scratch))
        while True:
            try:
                _, stderr = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                line.update(completed=_downloaded_bytes(folder, Path(scratch)))
    if proc.returncode != 0:
        errors = [ln for ln in stderr.splitlines() if ln.startswith("ERROR")] or stderr.splitlines() or ["?"]
        raise SetupError(f"pip download for {board.machine} / Python {board.python} failed: {errors[-1].strip()}")


def _wheel_requirements(wheel: Path, board: BoardPython) -> List[str]:
    """The Requires-Dist of ``wheel`` whose markers hold on the board."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode("utf-8").splitlines()
    out = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(board.markers()):
                out.append(f"{req.name}{req.specifier}")
    return out


def download_wheels(board: BoardPython, packages: Sequence[str], alone: Sequence[str], cache: Path) -> List[Path]:
    """Every wheel ``packages`` need on the board, with pip itself, and the wheels of ``alone`` (without
    their dependencies), from the cache when it has this set."""
    key = hashlib.sha256(json.dumps([board.platforms(), board.python, sorted(packages)]
                                    + ([sorted(alone)] if alone else [])).encode()).hexdigest()[:16]
    folder = cache / f"cp{board.python.replace('.', '')}-{board.machine}-{key}"
    if not folder.is_dir():
        with atomic_folder(folder) as scratch:
            torch = [p for p in packages if Requirement(p).name == "torch"]
            others = [p for p in packages if p not in torch]
            if torch:
                # torch's dependencies carry markers (CUDA libraries on x86_64 only) that pip would judge
                # by this machine: take the wheel alone, then its dependencies as the board's markers say.
                _pip_download(board, scratch, torch, deps=False)
                others += _wheel_requirements(next(scratch.glob("torch-*.whl")), board)
            _pip_download(board, scratch, [*others, "pip"], deps=True)
            if alone:
                _pip_download(board, scratch, alone, deps=False)
    return sorted(folder.glob("*.whl"))


def wheel_cache() -> Path:
    return Path(os.environ.get("FDQ_HOME") or Path.home() / ".cache" / "fdq") / "wheels"


# Run by the board's Python: {file name: size} of the wheels folder it already holds.
_SIZES = ("import json, os, sys; d = sys.argv[1]; "
          "print(json.dumps({n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)}))")


def setup(conn: Connection) -> str:
    """Install what the runner needs into ``WORKDIR/venv`` on the board; the venv's Python."""
    q = shlex.quote
    workdir = conn.path(conn.target.workdir)
    board = board_python(conn, prefer_venv=False)
    torch = choose_torch(board, conn.target) if set(TORCH_RUNTIMES) & set(conn.target.runtimes) else None
    packages, alone = requirements(conn.target, torch)
    wheels = download_wheels(board, packages, alone, wheel_cache())
    remote_wheels = str(PurePosixPath(workdir, WHEELS))
    conn.makedirs(remote_wheels)
    listing = conn.run(f"{q(board.executable)} -c {q(_SIZES)} {q(remote_wheels)}", timeout=120)
    held = json.loads(listing.stdout) if listing.returncode == 0 else {}
    sent = [w for w in wheels if held.get(w.name) != w.stat().st_size]
    put_files(conn, [(wheel, str(PurePosixPath(remote_wheels, wheel.name))) for wheel in sent],
              f"sending {len(sent)} wheel(s)")
    print(f"{conn.target.name}: --setup for {board.machine}, Python {board.python}, {' '.join(board.libc)}: "
          f"{len(sent)} of {len(wheels)} wheel(s) sent; installing {', '.join([*packages, *alone])} into {workdir}/{VENV}",
          file=sys.stderr)
    pip_wheel = next(w for w in wheels if w.name.startswith("pip-"))
    venv = _venv_python(conn)
    pip = (f"{q(venv)} {q(f'{WHEELS}/{pip_wheel.name}/pip')} install -q --disable-pip-version-check"
           f" --no-index --find-links {WHEELS}")
    command = (f"cd {q(workdir)} && {{ [ -x {q(venv)} ] || {q(board.executable)} -m venv --without-pip {VENV}; }}"
               f" && {pip} " + " ".join(q(p) for p in packages)
               + (f" && {pip} --no-deps " + " ".join(q(p) for p in alone) if alone else ""))
    done = conn.run(command, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise SetupError(f"{conn.target.name}: installing into {workdir}/{VENV} failed: {done.last_error_line()}")
    return venv


def prepare(conn: Connection, with_setup: bool) -> None:
    """Before a deploy: with ``--setup`` install the runner's packages; then run the work directory's
    venv when it has one, and refuse, in one line, a Python that lacks a runner module."""
    if with_setup:
        setup(conn)
    board = board_python(conn, list(RUNNER_PACKAGES))
    if board.executable == _venv_python(conn):
        conn.target = replace(conn.target, python=board.executable)
    if board.missing:
        dists = {m: Requirement(RUNNER_PACKAGES[m]).name for m in board.missing}
        names = ", ".join(m if d == m else f"{m} (from {d})" for m, d in dists.items())
        venv = f"{conn.path(conn.target.workdir)}/{VENV}"
        raise SetupError(f"{conn.target.name}: {conn.target.python} there lacks {names}; "
                         f"fdq-deploy --setup installs the runner's packages into {venv}")
