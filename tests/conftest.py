"""Shared pytest fixtures.

``sshd`` and ``arm64_board``: the test boards of ``scripts/testboard.sh`` for the session, each a
real OpenSSH server on a free port of 127.0.0.1 with its own keys, taken down at the end. ``sshd``
is this machine (its Python is the one running the tests), ``arm64_board`` the emulated Raspberry
Pi 4. Each yields ``port``, ``key`` (the client key), ``home`` (the board's state folder),
``profile`` (a YAML file for ``--target``), ``name``, ``fields`` (the profile read) and ``root``
(an arm64 board's root). Without root, sshd or qemu-user the tests that use them skip; CI
installs what they need, runs as root, and fails instead of skipping. The tests that use them are
marked ``board`` here, so that ``pytest -m "not board and not slow"`` leaves them out.

Bundles that several test modules use (slim fp32, with its weights recorded, its ONNX export, a
level-2 qnnpack bundle, slim as a fixed-size ONNX file and its import) are built once per session here.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Read-only shared assets (weights, data): ``$FDQ_SHARED``, default ``<repo>/../shared``."""
    path = Path(os.environ.get("FDQ_SHARED") or REPO_ROOT.parent / "shared")
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared assets not found at {path}: CI must test on the real data (set FDQ_SHARED)")
        pytest.skip(f"shared assets not found at {path} (set FDQ_SHARED)")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory, shared_dir):
    """One FDQ_HOME for the module (its bundle cache, known hosts), for this process and the fdq
    commands it starts alike: what a second call finds."""
    path = tmp_path_factory.mktemp("fdq-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDQ_HOME", str(path))
        mp.setenv("FDQ_WEIGHTS_PATH", str(shared_dir / "weights"))
        yield path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A function returning a TCP port nothing listens on at 127.0.0.1 (at the time of the call)."""
    return _free_port


# Bundles built once per session: every test module that needs one of these takes it from here
# (none writes into them; a test that damages one works on a copy).


@pytest.fixture(scope="session")
def slim_fp32_bundle(tmp_path_factory, shared_dir):
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.models import SPECS, load_model

    weights = shared_dir / "weights" / "slim_Final.pth"
    folder = tmp_path_factory.mktemp("bundles") / "slim_fp32"
    return save_torchscript_bundle(load_model("slim", weights), SPECS["slim"], 320, str(folder), engine=None,
                                   dtype="fp32", quantization={"level": "float"})


@pytest.fixture(scope="session")
def slim_weighted_bundle(tmp_path_factory, shared_dir):
    """slim fp32 at 320 whose manifest records its weights (path and sha256): exports take the float
    model from there."""
    from fdq.device.bundle import sha256_file
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.models import SPECS, load_model

    path = shared_dir / "weights" / "slim_Final.pth"
    weights = {"path": str(path), "sha256": sha256_file(path)}
    return save_torchscript_bundle(load_model("slim", path), SPECS["slim"], 320,
                                   str(tmp_path_factory.mktemp("bundles") / "slim_ts"), engine=None, dtype="fp32",
                                   quantization={"level": "float", "weights": weights})


@pytest.fixture(scope="session")
def slim_onnx_bundle(slim_fp32_bundle, tmp_path_factory) -> Path:
    """``fdq export --format onnx`` of ``slim_fp32_bundle``, in a folder named ``slim_onnx``."""
    from fdq.host.cli import main

    out = tmp_path_factory.mktemp("onnx") / "slim_onnx"
    assert main(["export", str(slim_fp32_bundle), "--format", "onnx", "--out", str(out)]) == 0
    return out


FIXED_HW = (240, 320)  # Ultra-Light-Fast's published 320 files: 1x3x240x320


@pytest.fixture(scope="session")
def fixed_onnx(shared_dir, tmp_path_factory) -> Path:
    """slim as ONNX with a fixed 1x3x240x320 input and no dynamic axes: the layout of Linzaer's files."""
    import warnings

    import torch

    from fdq.models import load_model

    model = load_model("slim", shared_dir / "weights" / "slim_Final.pth").eval()
    path = tmp_path_factory.mktemp("fixed") / "slim-320.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, *FIXED_HW),), str(path), input_names=["input"],
                          output_names=["loc", "conf", "landm"], opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="session")
def fixed_import(fixed_onnx, tmp_path_factory) -> Path:
    """``fixed_onnx`` through ``fdq import --decoder ssd-priors`` with slim's preprocessing."""
    from fdq.host.cli import main
    from fdq.models import SPECS

    out = tmp_path_factory.mktemp("import") / "slim_fixed320"
    mean = ",".join(str(v) for v in SPECS["slim"].mean_bgr)  # slim takes BGR minus this mean, std 1
    assert main(["import", str(fixed_onnx), "--decoder", "ssd-priors", "--mean", mean, "--name", "slim_fixed320",
                 "--licence", "MIT (Face-Detector-1MB-with-landmark)", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def val(shared_dir):
    """The WIDER val subset: images folder, ground-truth folder, the ground truth loaded."""
    from fdq.device.evaluation import load_ground_truth

    root = shared_dir / "data" / "widerface_val_subset" / "val"
    return root / "images", root / "ground_truth", load_ground_truth(root / "ground_truth")


def one_line_error(capsys, argv: List[str], needle: str) -> None:
    """``fdq argv`` fails with exit 1 and exactly one ``fdq: error:`` line on stderr containing ``needle``."""
    from fdq.host.cli import main

    assert main(argv) == 1, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fdq: error: ") and needle in err[0], (argv, err)


CALIB_IMAGES = 8  # the board tests calibrate on the first 8 images of the calibration split


def copy_calib_images(shared_dir: Path, folder: Path) -> Path:
    """The first ``CALIB_IMAGES`` calibration images, copied into ``folder`` in their EVENT/ folders."""
    images = sorted((shared_dir / "data" / "widerface_val_subset" / "calib" / "images").rglob("*.jpg"))
    for image in images[:CALIB_IMAGES]:
        (folder / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / image.parent.name / image.name)
    return folder


def level2_bundle(shared_dir: Path, folder: Path, backend: str) -> Path:
    """A calibrated (level 2) slim bundle for ``backend``, through the CLI as a user makes one."""
    from fdq.host.cli import main

    calib = copy_calib_images(shared_dir, folder / "calib")
    out = folder / f"slim-{backend}"
    assert main(["quantize", "--model", "slim", "--weights", str(shared_dir / "weights" / "slim_Final.pth"),
                 "--level", "2", "--backend", backend, "--calib", str(calib), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def slim_qnnpack_bundle(shared_dir, tmp_path_factory) -> Path:
    """:func:`level2_bundle` for qnnpack, the board's engine."""
    return level2_bundle(shared_dir, tmp_path_factory.mktemp("qnnpack"), "qnnpack")


TESTBOARD = REPO_ROOT / "scripts" / "testboard.sh"
BOARD_ROOTS = Path("/var/lib/fdq-testboard")  # where testboard.sh unpacks an arm64 board's root


def _needs(missing: str) -> None:
    """Skip here, fail in CI: CI must test against the real boards."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must test against a real board: {missing}")
    pytest.skip(f"needs {missing}")


@contextmanager
def _testboard(kind: str, name: str, *options: str) -> Iterator[Dict[str, Any]]:
    """A board from ``scripts/testboard.sh up``, taken down (by pid, mounts with it) at the end."""
    done = subprocess.run(["bash", str(TESTBOARD), "up", kind, "--name", name, *options],
                          capture_output=True, text=True)
    try:
        if done.returncode != 0:
            pytest.fail(f"testboard.sh up {kind} failed: {done.stderr.strip()[-800:]}")
        profile = Path(done.stdout.strip().splitlines()[-1])
        fields = yaml.safe_load(profile.read_text())
        yield {"port": fields["port"], "key": Path(fields["key"]), "home": profile.parent, "profile": profile,
               "name": name, "fields": fields, "root": BOARD_ROOTS / name / "root"}
    finally:
        subprocess.run(["bash", str(TESTBOARD), "down", name], capture_output=True, text=True)


BOARD_FIXTURES = {"sshd", "arm64_board"}


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark ``board`` every test that starts a test board through its fixtures (pytest.ini declares the
    marker; a test that asks for a board with ``request.getfixturevalue`` carries the mark itself)."""
    for item in items:
        if BOARD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.board)


@pytest.fixture(scope="session")
def sshd():
    """This machine behind a private OpenSSH sshd (``testboard.sh up native``, Python: this one)."""
    if not os.path.exists("/usr/sbin/sshd") or os.geteuid() != 0:
        _needs("OpenSSH's sshd and root (install openssh-server, run as root)")
    with _testboard("native", f"pytest-{os.getpid()}", "--python", sys.executable) as board:
        yield board


def _arm64_missing() -> Optional[str]:
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd"):
        return "root and OpenSSH's sshd"
    if platform.machine() != "aarch64" and not os.path.exists("/usr/bin/qemu-aarch64-static"):
        return "qemu-user-static (and binfmt-support, debootstrap) for the emulated arm64 board"
    return None


@pytest.fixture(scope="session")
def arm64_board():
    """The emulated Raspberry Pi 4 (``testboard.sh up arm64``): arm64 root, Cortex-A72 under qemu-user."""
    missing = _arm64_missing()
    if missing:
        _needs(missing)
    with _testboard("arm64", f"pytest-arm64-{os.getpid()}") as board:
        yield board

