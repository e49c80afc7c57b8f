"""Faults on the native test board (``scripts/testboard.sh``): each is one line within its time-out,
nothing half-written stays, and the next deploy recovers.

Tests that kill, freeze or fill a board start a board of their own; the others use the session's.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import TESTBOARD, _testboard
from fdq.device.bundle import load_bundle, sha256_file
from fdq.host.cli import deploy_main
from fdq.host.remote import RemoteError, connect
from fdq.host.targets import load_target

CLI = "import sys; from fdq.host.cli import deploy_main; sys.exit(deploy_main(sys.argv[1:]))"


def _deploy_process(*args: str, home: Path) -> subprocess.Popen:
    """fdq-deploy in a process of its own: its whole stderr (paramiko's threads included) is seen."""
    return subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "FDQ_HOME": str(home)})


def _errors(err: str):
    return [ln for ln in err.strip().splitlines() if not ln.startswith("fdq: first connection to ")]


def _workdir(board) -> Path:
    """``~/fdq`` of the board's first host, as this machine sees it."""
    return board["home"] / "host1" / "home" / "fdq"


@pytest.fixture
def own_board(sshd, tmp_path, monkeypatch):
    """A native board of this test alone (it gets killed or frozen); ``sshd`` first, for its skip rule."""
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    with _testboard("native", f"faults-{uuid.uuid4().hex[:8]}", "--python", sys.executable) as board:
        yield board


def _board_pids(board) -> list:
    out = subprocess.run(["bash", str(TESTBOARD), "pids", board["name"]], capture_output=True, text=True, check=True)
    return [int(p) for p in out.stdout.split()]


def _restart(board) -> None:
    subprocess.run(["bash", str(TESTBOARD), "up", "native", "--name", board["name"], "--python", sys.executable],
                   capture_output=True, text=True, check=True)


@pytest.fixture
def big_bundle(slim_fp32_bundle, tmp_path) -> Path:
    """The slim bundle with 64 MiB of extra data it lists in its manifest: an upload that lasts."""
    folder = tmp_path / "slim_big"
    subprocess.run(["cp", "-r", str(slim_fp32_bundle), str(folder)], check=True)
    (folder / "data.bin").write_bytes(os.urandom(64 << 20))
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["files"]["data.bin"] = {"size": 64 << 20, "sha256": sha256_file(folder / "data.bin")}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    load_bundle(str(folder))
    return folder


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_sshd_killed_or_frozen_mid_upload_then_the_next_deploy_completes(fault, own_board, big_bundle, tmp_path):
    """``killed``: the listener and its connection processes die. ``frozen``: they stop (SIGSTOP), so
    the SFTP time-out must trip; they go on afterwards."""
    home = tmp_path / "fdq-home"
    proc = _deploy_process("--target", str(own_board["profile"]), "--timeout", "5", str(big_bundle), home=home)
    deadline = time.monotonic() + 120
    while not list(_workdir(own_board).glob("bundles/*/data.bin.part")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    pids = _board_pids(own_board)  # the listener and its connection processes
    for pid in pids:
        os.kill(pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if fault == "frozen":
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    errors = _errors(err)
    assert proc.returncode == 1 and len(errors) == 1, err
    assert errors[0].startswith(f"fdq-deploy: error: {own_board['name']}: upload of data.bin to "), err
    if fault == "frozen":
        assert errors[0].endswith("failed (no answer within 5 s)"), err
        assert time.monotonic() - started < 5 + 15  # the SFTP time-out, then giving up on the .part
    remote = next(_workdir(own_board).glob("bundles/slim_big-*"))
    assert not (remote / "manifest.yaml").exists()  # cut short: no manifest, so it cannot load

    if fault == "killed":
        _restart(own_board)
    done = subprocess.run([sys.executable, "-c", CLI, "--target", str(own_board["profile"]), str(big_bundle)],
                          capture_output=True, text=True, env={**os.environ, "FDQ_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    sent = int(done.stderr.split(" file(s) sent")[0].rsplit(" ", 1)[1])
    assert 2 <= sent <= len(list(big_bundle.iterdir()))  # the runner was there: only the bundle's rest went
    assert not list(_workdir(own_board).rglob("*.part"))
    assert load_bundle(str(remote)).manifest["files"]["data.bin"]["size"] == 64 << 20


class _SilentServer:
    """Accepts connections on 127.0.0.1 and never says a word (closed after ``limit_s``)."""

    def __init__(self, limit_s: float = 30.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(limit_s)
        self.port = self.sock.getsockname()[1]
        self.accepted: list = []
        self.thread = threading.Thread(target=self._serve, args=(limit_s,), daemon=True)
        self.thread.start()

    def _serve(self, limit_s: float) -> None:
        end = time.monotonic() + limit_s
        try:
            while time.monotonic() < end:
                self.accepted.append(self.sock.accept()[0])
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("case", ["changed-host-key", "unknown-user", "closed-port", "silent-port", "unknown-name"])
def test_connection_faults_are_one_line_within_their_timeout(case, sshd, slim_fp32_bundle, tmp_path, free_port):
    home = tmp_path / "fdq-home"
    args = ["--target", str(sshd["profile"]), "--timeout", "3", str(slim_fp32_bundle)]
    silent = None
    if case == "changed-host-key":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "forged")], check=True)
        home.mkdir()
        forged = (tmp_path / "forged.pub").read_text().split()[:2]
        (home / "known_hosts").write_text(f"[127.0.0.1]:{sshd['port']} {' '.join(forged)}\n")
        needle = f"the host key of 127.0.0.1:{sshd['port']} changed since it was trusted (now SHA256:"
    elif case == "unknown-user":
        args += ["--user", "nobody-here"]
        needle = f"authentication failed for nobody-here@127.0.0.1:{sshd['port']} with key {sshd['key']}"
    elif case == "closed-port":
        port = free_port()
        args += ["--port", str(port)]
        needle = f"connection refused: nothing listens on 127.0.0.1:{port}"
    elif case == "silent-port":
        silent = _SilentServer()
        args += ["--port", str(silent.port)]
        needle = f"127.0.0.1:{silent.port} accepted but did not answer as an SSH server within 3 s"
    else:
        args += ["--host", "no-such-board.invalid"]
        needle = "unknown host name no-such-board.invalid"
    started = time.monotonic()
    proc = _deploy_process(*args, home=home)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if silent:
            silent.close()
    elapsed = time.monotonic() - started
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err  # no paramiko line, no traceback
    assert lines[0].startswith(f"fdq-deploy: error: {sshd['name']}: ") and needle in lines[0], err
    assert elapsed < 3 + 15, elapsed  # its time-out (3 s) plus starting Python
    if case != "changed-host-key":
        assert not (home / "known_hosts").exists()


def _processes_with(token: str) -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if token in " ".join(p.info["cmdline"] or [])]


def _gone(processes, within_s: float = 10.0) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=within_s)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def _connect_with_room(board):
    """A connection whose time-outs leave room for the board's login shell to start (its rc files can
    be slow on a busy machine), and that start time."""
    conn = connect(load_target(str(board["profile"])))
    started = time.monotonic()
    conn.run("true", timeout=300)
    shell_s = time.monotonic() - started
    conn.close()
    return connect(load_target(str(board["profile"]), timeout=15 + 2 * shell_s)), shell_s


def test_a_frozen_board_trips_the_run_timeout_and_the_remote_process_is_stopped(own_board):
    token = f"fdq-frozen-{uuid.uuid4().hex}"
    conn, shell_s = _connect_with_room(own_board)
    limit = round(15 + 3 * shell_s)  # room for Python to start there on a loaded machine
    try:
        code = f"import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)  # {token}"
        frozen: list = []

        def freeze() -> None:  # the runner and its child stop, as on a board that hangs
            deadline = time.monotonic() + limit
            while not frozen and time.monotonic() < deadline:
                for p in _processes_with(token):  # the runner itself, once its child runs (not the login shell)
                    try:
                        family = [p, *p.children(recursive=True)]
                        if p.info["cmdline"][0] == sys.executable and any(c.name() == "sleep" for c in family):
                            for q in family:
                                q.send_signal(signal.SIGSTOP)
                            frozen.extend(family)
                    except psutil.NoSuchProcess:  # it ended while being looked at (the login shell): look again
                        continue
                time.sleep(0.1)

        helper = threading.Thread(target=freeze)
        helper.start()
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            conn.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", timeout=limit)
        elapsed = time.monotonic() - started
        helper.join()
        assert elapsed < limit + conn.target.timeout + 5  # the limit, then the session that stops it
        message = str(caught.value)
        assert "\n" not in message and f"did not finish within {limit} s" in message
        assert message.endswith("stopped it and its child processes on the board")
        assert len(frozen) >= 2 and _gone(frozen)  # runner and child: stopped ones are killed too
        assert conn.run("echo still here", timeout=10).stdout == "still here\n"  # the connection still works
    finally:
        conn.close()


def test_interrupting_a_remote_run_stops_it_there(own_board):
    token = f"fdq-interrupted-{uuid.uuid4().hex}"
    conn, shell_s = _connect_with_room(own_board)

    family: list = []

    def interrupt(*_):  # Ctrl-C, once the remote shell and its sleep run
        for p in _processes_with(token):
            family.extend([p, *p.children(recursive=True)])
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0 + 2 * shell_s)
        with pytest.raises(KeyboardInterrupt):
            conn.run(f"sleep 300; echo {token}", timeout=60)
        assert len(family) >= 2 and _gone(family)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        conn.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: room for the runner and one slim bundle, not two. Mounted before the board
    starts (its private mount namespace copies the mounts it finds), unmounted after it stopped."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "fdq-test-disk", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_refused_before_sending_and_prune_frees_it(sshd, small_disk, slim_fp32_bundle, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    second = tmp_path / "slim_second"
    subprocess.run(["cp", "-r", str(slim_fp32_bundle), str(second)], check=True)
    (second / "manifest.yaml").write_text((second / "manifest.yaml").read_text() + "# a second build\n")
    with _testboard("native", f"disk-{uuid.uuid4().hex[:8]}", "--python", sys.executable) as board:
        target = ["--target", str(board["profile"]), "--workdir", str(small_disk / "fdq")]
        assert deploy_main(target + [str(slim_fp32_bundle)]) == 0
        before = sorted(p.relative_to(small_disk) for p in small_disk.rglob("*"))
        capsys.readouterr()

        assert deploy_main(target + [str(second)]) == 1
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith(f"fdq-deploy: error: no space on {board['name']}:{small_disk}/fdq: ")
        assert " MiB free, 1.3 MiB needed (--prune removes bundles this deploy does not name)" in err[0]
        assert sorted(p.relative_to(small_disk) for p in small_disk.rglob("*")) == before  # nothing sent

        conn = connect(load_target(str(board["profile"])))  # an SFTP write that still meets a full disk
        try:
            with pytest.raises(RemoteError) as caught:
                conn.put(second / "model.pt", str(small_disk / "fdq" / "extra" / "model.pt"))
        finally:
            conn.close()
        assert str(caught.value).startswith(f"{board['name']}: no space left on {board['name']}:{small_disk}/fdq/extra "
                                            f"while sending model.pt: ")
        assert not list(small_disk.rglob("*.part")) and not (small_disk / "fdq" / "extra" / "model.pt").exists()

        assert deploy_main(target + ["--prune", str(second)]) == 0
        out = capsys.readouterr().out
        remote = Path(out.split(" -> ")[1].strip())
        assert remote.name.startswith("slim_second-") and load_bundle(str(remote))
        assert [p.name for p in (small_disk / "fdq" / "bundles").iterdir()] == [remote.name]


def test_a_byte_changed_on_the_board_is_reported_and_replaced(sshd, slim_fp32_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FDQ_HOME", str(tmp_path / "fdq-home"))
    target = ["--target", str(sshd["profile"]), "--workdir", str(tmp_path / "work")]
    assert deploy_main(target + [str(slim_fp32_bundle)]) == 0
    remote = Path(capsys.readouterr().out.split(" -> ")[1].strip())
    model = bytearray((remote / "model.pt").read_bytes())
    model[len(model) // 2] ^= 0x01
    (remote / "model.pt").write_bytes(bytes(model))

    conn = connect(load_target(str(sshd["profile"]), workdir=str(tmp_path / "work")))
    try:  # a run there of the tampered bundle is refused by the runner itself
        done = conn.run(f"cd {shlex.quote(str(tmp_path / 'work'))} && PYTHONPATH=lib {shlex.quote(sys.executable)} "
                        f"-m fdq.device.run --bundle {shlex.quote(str(remote))} --frames 1 --json r.json", timeout=300)
    finally:
        conn.close()
    assert done.returncode != 0 and "model.pt does not match its manifest checksum" in done.stderr

    assert deploy_main(target + [str(slim_fp32_bundle)]) == 0
    err = capsys.readouterr().err
    assert (f"fdq: {sshd['name']}: the board's copy of bundles/{remote.name}/model.pt did not match (changed there); "
            "replaced") in err
    assert sha256_file(remote / "model.pt") == sha256_file(slim_fp32_bundle / "model.pt")
