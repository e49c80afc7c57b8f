"""Shared pytest fixtures.

``sshd``: a real OpenSSH server on 127.0.0.1 for the session: a fresh host key, a fresh client key,
a free port on loopback, this user's login, a config of its own; stopped at the end. Without sshd
or root (sshd's privilege separation needs it) the SSH tests skip; CI installs openssh-server and
runs as root, and fails instead of skipping.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

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


SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A function returning a TCP port nothing listens on at 127.0.0.1 (at the time of the call)."""
    return _free_port


@pytest.fixture(scope="session")
def slim_fp32_bundle(tmp_path_factory, shared_dir):
    from fdq.host.artifacts import save_torchscript_bundle
    from fdq.models import SPECS, load_model

    weights = shared_dir / "weights" / "slim_Final.pth"
    folder = tmp_path_factory.mktemp("bundles") / "slim_fp32"
    return save_torchscript_bundle(load_model("slim", weights), SPECS["slim"], 320, str(folder), engine=None,
                                   dtype="fp32", quantization={"level": "float"})


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD) or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must test deploy against a real sshd (install openssh-server, run as root)")
        pytest.skip("needs OpenSSH's sshd and root")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = _free_port()
    config = home / "sshd_config"
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {home / 'host_key'}
AuthorizedKeysFile {home / 'authorized_keys'}
PidFile {home / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"sshd did not start: {server.stderr.read()[-500:]}")
            time.sleep(0.1)
    yield {"port": port, "key": home / "client_key", "home": home}
    server.terminate()
    server.wait(timeout=10)
