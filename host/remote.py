"""Connections to a target: run a command, put and get files. SSH (paramiko) or this machine.

Both kinds offer the same four calls, so deploy and profile never ask which one they hold. Files
arrive under a temporary name and are renamed into place (on this machine with
``fdq.device.atomic``): a cut connection leaves no half file that a later deploy would take for a
good one.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

import paramiko

from fdq.device.atomic import atomic_output

from .targets import Target

CONNECT_TIMEOUT_S = 15.0


class RemoteError(RuntimeError):
    """The target cannot be reached, refuses us, or a transfer failed; one line says which."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


def known_hosts_file() -> Path:
    return Path(os.environ.get("FDQ_HOME") or Path.home() / ".cache" / "fdq") / "known_hosts"


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Like ``ssh -o StrictHostKeyChecking=accept-new``: remember a board's key the first time,
    refuse a changed one (paramiko raises BadHostKeyException for those before asking a policy)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.path))
        print(f"fdq: first connection to {hostname}: its {key.get_name()} key is now trusted "
              f"(saved in {self.path})", file=sys.stderr)


class SSHConnection:
    """A target reached over SSH with a key (the profile's ``key``, else the agent and ~/.ssh)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        known = known_hosts_file()
        if known.is_file():
            client.load_host_keys(str(known))
        client.set_missing_host_key_policy(_TrustOnFirstUse(known))
        key = os.path.expanduser(target.key) if target.key else None
        if key and not os.path.isfile(key):
            raise RemoteError(f"{target.name}: key file {key} not found")
        try:
            client.connect(target.host, port=target.port, username=target.user, key_filename=key,
                           look_for_keys=key is None, timeout=CONNECT_TIMEOUT_S, banner_timeout=CONNECT_TIMEOUT_S,
                           auth_timeout=CONNECT_TIMEOUT_S)
            self.sftp = client.open_sftp()
        except paramiko.BadHostKeyException:
            client.close()
            raise RemoteError(f"{target.name}: the host key of {target.host}:{target.port} changed since it was "
                              f"trusted; if the board was reinstalled, remove its line from {known}") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise RemoteError(f"{target.name}: {target.user}@{target.host} refused the key ({exc})") from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise RemoteError(f"{target.name}: cannot connect to {target.host}:{target.port} ({exc})") from None
        self.client = client
        self.home = self.sftp.normalize(".")

    def path(self, remote: str) -> str:
        """An absolute remote path (``~/x`` is the login's home)."""
        if remote == "~" or remote.startswith("~/"):
            return str(PurePosixPath(self.home, remote[2:]))
        return remote

    def run(self, command: str, timeout: Optional[float] = None) -> Completed:
        """``command`` in the login shell's ``sh``; stdout and stderr are drained together so that
        neither can stall the other."""
        channel = self.client.get_transport().open_session()
        channel.settimeout(timeout)
        channel.exec_command(command)
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if deadline is not None and time.monotonic() > deadline:
                channel.close()
                raise RemoteError(f"{self.target.name}: command timed out after {timeout:.0f} s: {command[:80]}")
            time.sleep(0.01)
        status = channel.recv_exit_status()
        channel.close()
        return Completed(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def makedirs(self, remote: str) -> None:
        parts = PurePosixPath(self.path(remote)).parts
        for i in range(2, len(parts) + 1):
            folder = str(PurePosixPath(*parts[:i]))
            try:
                self.sftp.stat(folder)
            except FileNotFoundError:
                self.sftp.mkdir(folder)

    def put(self, local: Path, remote: str) -> None:
        remote = self.path(remote)
        self.makedirs(str(PurePosixPath(remote).parent))
        partial = remote + ".part"
        try:
            self.sftp.put(str(local), partial)
            self.sftp.posix_rename(partial, remote)
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.target.name}: upload of {local.name} to {remote} failed ({exc})") from None

    def get(self, remote: str, local: Path) -> None:
        try:
            with atomic_output(local) as partial:
                self.sftp.get(self.path(remote), str(partial))
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.target.name}: download of {remote} failed ({exc})") from None

    def close(self) -> None:
        self.sftp.close()
        self.client.close()


class LocalConnection:
    """This machine as a target (profile ``local``): same calls, no network."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def path(self, remote: str) -> str:
        return os.path.expanduser(remote)

    def run(self, command: str, timeout: Optional[float] = None) -> Completed:
        try:
            proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.target.name}: command timed out after {timeout:.0f} s: {command[:80]}") from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def makedirs(self, remote: str) -> None:
        Path(self.path(remote)).mkdir(parents=True, exist_ok=True)

    def put(self, local: Path, remote: str) -> None:
        with atomic_output(self.path(remote)) as partial:
            shutil.copyfile(local, partial)

    def get(self, remote: str, local: Path) -> None:
        with atomic_output(local) as partial:
            shutil.copyfile(self.path(remote), partial)

    def close(self) -> None:
        pass


Connection = Union[SSHConnection, LocalConnection]


def connect(target: Target) -> Connection:
    if target.transport == "local":
        return LocalConnection(target)
    try:
        socket.getaddrinfo(target.host, target.port)
    except socket.gaierror as exc:
        raise RemoteError(f"{target.name}: cannot resolve {target.host} ({exc.strerror})") from None
    return SSHConnection(target)
