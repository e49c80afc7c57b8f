"""Connections to a target: run a command, put and get files. SSH (paramiko) or this machine.

Both kinds offer the same calls, so deploy and profile never ask which one they hold. Files arrive
under a temporary name (``.part``) and are renamed into place (on this machine with
``fdq.device.atomic``): a cut connection leaves no half file that a later deploy would take for a
good one, and a failed upload removes its ``.part`` when the board still answers.

Every failure is a :class:`RemoteError` whose message is one line in the user's words (what was
tried, what happened, within which time-out). Every network step is bounded by the target's
``timeout``: TCP connect, the SSH banner, the login, each SFTP operation; SSH keepalives run
while connected, and :meth:`SSHConnection.run` stops what it started when its own limit passes.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, Sequence, Tuple, Union

import paramiko
from paramiko.hostkeys import HostKeyEntry

from fdq.calibration.progress import line as progress_line
from fdq.device.atomic import atomic_output, atomic_write_text

from .targets import Target
from .zoo import fdq_home

KEEPALIVE_S = 5
STOP_GRACE_S = 2.0
# paramiko logs transport errors (a silent port, a reset) from its own thread; fdq reports them itself.
_PARAMIKO_LOG = logging.getLogger("paramiko")
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False
_KNOWN_HOSTS_LOCK = threading.Lock()


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
    return fdq_home() / "known_hosts"


def _summary(command: str) -> str:
    """The start of a command, on one line, for a message."""
    flat = " ".join(command.split())
    return flat if len(flat) <= 60 else flat[:57] + "..."


def _stop_group_script(pid: int) -> str:
    """sh that ends process group ``pid``: TERM (and CONT, so that a stopped process receives it),
    then KILL whatever is still there after the grace period."""
    group = f"-{pid}"
    steps = int(STOP_GRACE_S * 10)
    return (f"kill -TERM -- {group} 2>/dev/null; kill -CONT -- {group} 2>/dev/null; i=0; "
            f"while kill -0 -- {group} 2>/dev/null && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done; "
            f"kill -KILL -- {group} 2>/dev/null; true")


class _RecordAfterLogin(paramiko.MissingHostKeyPolicy):
    """First contact: remember the key offered, to be recorded only once the login succeeded
    (:func:`_record_host_key`); with ``strict`` refuse it, as ``StrictHostKeyChecking=yes``.
    A changed key never reaches a policy: paramiko raises BadHostKeyException first."""

    def __init__(self, target: Target, known: Path) -> None:
        self.target, self.known = target, known
        self.pending: Optional[Tuple[str, paramiko.PKey]] = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self.target.strict_host_keys:
            raise RemoteError(f"{self.target.name}: {hostname} is not in {self.known} and host keys are strict "
                              f"(--strict-host-keys); its {key.get_name()} key is {key.fingerprint}; connect once "
                              f"without strict host keys after checking it")
        self.pending = (hostname, key)


def _record_host_key(known: Path, hostname: str, key: paramiko.PKey) -> None:
    """Add one line to ``known`` (also when other threads or processes add theirs at the same time)."""
    known.parent.mkdir(parents=True, exist_ok=True)
    with _KNOWN_HOSTS_LOCK, open(known.with_name(known.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = known.read_text(encoding="utf-8").splitlines(keepends=True) if known.is_file() else []
        atomic_write_text(known, "".join(lines) + HostKeyEntry([hostname], key).to_line())


class SSHConnection:
    """A target reached over SSH with a key (the profile's ``key``, else the agent and ~/.ssh)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        where = f"{target.host}:{target.port}"
        key = os.path.expanduser(target.key) if target.key else None
        if key and not os.path.isfile(key):
            raise RemoteError(f"{target.name}: key file {key} not found")
        sock = _open_socket(target)
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        known = known_hosts_file()
        if known.is_file():
            client.load_host_keys(str(known))
        policy = _RecordAfterLogin(target, known)
        client.set_missing_host_key_policy(policy)
        started = time.monotonic()
        try:
            client.connect(target.host, port=target.port, username=target.user, key_filename=key,
                           look_for_keys=key is None, allow_agent=key is None, sock=sock, timeout=target.timeout,
                           banner_timeout=target.timeout, auth_timeout=target.timeout,
                           channel_timeout=target.timeout)
        except RemoteError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise RemoteError(f"{target.name}: the host key of {where} changed since it was trusted (now "
                              f"{exc.key.fingerprint}, recorded {exc.expected_key.fingerprint}); if the board "
                              f"was reinstalled, remove its line from {known}") from None
        except paramiko.AuthenticationException:
            client.close()
            tried = f"key {key}" if key else "the SSH agent's and ~/.ssh keys"
            raise RemoteError(f"{target.name}: authentication failed for {target.user}@{where} with {tried} "
                              f"(the user does not exist there or does not accept that key)") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            transport = client.get_transport()
            answered = bool(transport and transport.remote_version)  # the server's SSH banner came
            client.close()
            if not answered and time.monotonic() - started >= target.timeout * 0.9:
                raise RemoteError(f"{target.name}: {where} accepted but did not answer as an SSH server within "
                                  f"{target.timeout:.0f} s") from None
            if not answered:
                raise RemoteError(f"{target.name}: {where} accepted and closed the connection without answering "
                                  f"as an SSH server") from None
            raise RemoteError(f"{target.name}: SSH to {where} failed ({str(exc).strip() or type(exc).__name__})") from None
        self.client = client
        transport = client.get_transport()
        transport.set_keepalive(KEEPALIVE_S)
        if policy.pending:
            hostname, hostkey = policy.pending
            _record_host_key(known, hostname, hostkey)
            print(f"fdq: first connection to {hostname}: its {hostkey.get_name()} key {hostkey.fingerprint} "
                  f"is now trusted (saved in {known})", file=sys.stderr)
        try:
            self.sftp = client.open_sftp()
            self.sftp.get_channel().settimeout(target.timeout)
            self.home = self.sftp.normalize(".")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise RemoteError(f"{target.name}: {where} has no SFTP service ({exc or type(exc).__name__})") from None

    def path(self, remote: str) -> str:
        """An absolute remote path (``~/x`` is the login's home)."""
        if remote == "~" or remote.startswith("~/"):
            return str(PurePosixPath(self.home, remote[2:]))
        return remote

    def run(self, command: str, timeout: Optional[float] = None,
            on_stderr: Optional[Callable[[bytes], None]] = None) -> Completed:
        """Run ``command`` (a shell command line; quote every argument with ``shlex.quote``) in the
        login's shell there and wait for it; stdout and stderr are drained together, so neither can
        stall the other. ``on_stderr`` sees each piece of stderr as it arrives (a long-running
        command's progress), on this thread; it must not raise (a KeyboardInterrupt it lets through
        stops the command as one while waiting does). The command's stdin stays open until it ends
        or the connection closes: a command watching it ends with the connection.

        Contract: returns only a complete result (any exit status). When ``timeout`` seconds (None:
        no limit) pass first, or KeyboardInterrupt arrives while waiting, the command *and every
        process it started* are stopped on the target (its process group: SIGTERM and SIGCONT, so a
        stopped process dies too, then SIGKILL after a grace period), and :class:`RemoteError` (one
        line, saying it was stopped) or the KeyboardInterrupt is raised. A connection lost meanwhile
        raises :class:`RemoteError`.
        """
        transport = self.client.get_transport()
        try:
            channel = transport.open_session(timeout=self.target.timeout)
            # OpenSSH starts every session in its own session and process group: the shell's pid names it.
            channel.exec_command(f"echo $$; {command}")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.target.name}: cannot start a command there ({exc or type(exc).__name__})") from None
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not (channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready()):
                busy = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    busy = True
                while channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(65536)
                    err += chunk
                    busy = True
                    if on_stderr is not None:
                        on_stderr(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    raise RemoteError(f"{self.target.name}: {_summary(command)} did not finish within "
                                      f"{timeout:.0f} s; {self._stop(channel, out)}")
                if not transport.is_active():
                    raise RemoteError(f"{self.target.name}: the connection was lost while running "
                                      f"{_summary(command)}")
                if not busy:
                    time.sleep(0.01)
        except KeyboardInterrupt:
            print(f"fdq: interrupted: {self._stop(channel, out)}", file=sys.stderr)
            raise
        finally:
            channel.close()
        status = channel.recv_exit_status()
        if status == -1:
            raise RemoteError(f"{self.target.name}: the connection was lost while running {_summary(command)}")
        _, _, rest = bytes(out).partition(b"\n")  # the first line is the shell's pid
        return Completed(status, rest.decode(errors="replace"), err.decode(errors="replace"))

    def _stop(self, channel: paramiko.Channel, out: bytearray) -> str:
        """Stop the process group whose leader's pid is the first line of ``out`` (waiting up to the
        target's timeout for it: a slow login shell prints it late); what happened."""
        until = time.monotonic() + self.target.timeout
        while b"\n" not in out and time.monotonic() < until and not channel.exit_status_ready():
            if channel.recv_ready():
                out += channel.recv(65536)
            else:
                time.sleep(0.05)
        first = bytes(out).split(b"\n", 1)[0]
        if not first.isdigit():
            return f"its process id did not come back within {self.target.timeout:.0f} s, so it may still run there"
        try:
            channel = self.client.get_transport().open_session(timeout=self.target.timeout)
            channel.settimeout(self.target.timeout + STOP_GRACE_S + 5)
            channel.exec_command(_stop_group_script(int(first)))
            channel.recv_exit_status()
            channel.close()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            return f"could not reach the board to stop it ({exc or type(exc).__name__})"
        return "stopped it and its child processes on the board"

    def makedirs(self, remote: str) -> None:
        parts = PurePosixPath(self.path(remote)).parts
        try:
            for i in range(2, len(parts) + 1):
                folder = str(PurePosixPath(*parts[:i]))
                try:
                    self.sftp.stat(folder)
                except FileNotFoundError:
                    self.sftp.mkdir(folder)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.target.name}: cannot create {remote} there ({self._why(exc)})") from None

    def put(self, local: Path, remote: str, sent: Optional[Callable[[int], None]] = None) -> None:
        """Upload ``local`` as ``remote`` (through ``remote.part``); ``sent(bytes so far)`` as it travels."""
        remote = self.path(remote)
        self.makedirs(str(PurePosixPath(remote).parent))
        partial = remote + ".part"
        try:
            self.sftp.put(str(local), partial, callback=(lambda done, total: sent(done)) if sent else None)
            self.sftp.posix_rename(partial, remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            failed = RemoteError(f"{self.target.name}: upload of {local.name} to {remote} failed ({self._why(exc)})")
            answers = not isinstance(exc, (socket.timeout, EOFError)) and self.client.get_transport().is_active()
            if answers:  # else the board cannot clean up now: the next deploy removes the .part
                try:
                    self.sftp.remove(partial)
                except (OSError, EOFError, paramiko.SSHException):
                    pass
                free = self._free_mib(str(PurePosixPath(remote).parent))
                if free is not None and free * 2**20 < local.stat().st_size:
                    raise RemoteError(f"{self.target.name}: no space left on {self.target.name}:"
                                      f"{PurePosixPath(remote).parent} while sending {local.name}: {free:.1f} MiB "
                                      f"free, {local.stat().st_size / 2**20:.1f} MiB needed") from None
            raise failed from None

    def _free_mib(self, folder: str) -> Optional[float]:
        """Free space there, when the board still answers."""
        try:
            done = self.run(f"df -Pk {shlex.quote(folder)}", timeout=self.target.timeout)
            return int(done.stdout.splitlines()[-1].split()[3]) / 1024
        except (RemoteError, IndexError, ValueError):
            return None

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, socket.timeout):
            return f"no answer within {self.target.timeout:.0f} s"
        if isinstance(exc, EOFError) or not self.client.get_transport().is_active():
            return "the connection was lost"
        return str(exc).strip() or type(exc).__name__

    def get(self, remote: str, local: Path) -> None:
        try:
            with atomic_output(local) as partial:
                self.sftp.get(self.path(remote), str(partial))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"{self.target.name}: download of {remote} failed ({self._why(exc)})") from None

    def close(self) -> None:
        self.client.close()


def _open_socket(target: Target) -> socket.socket:
    """A TCP connection to the target, or one line saying why not."""
    where = f"{target.host}:{target.port}"
    try:
        socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RemoteError(f"{target.name}: unknown host name {target.host} ({exc.strerror})") from None
    try:
        return socket.create_connection((target.host, target.port), timeout=target.timeout)
    except ConnectionRefusedError:
        raise RemoteError(f"{target.name}: connection refused: nothing listens on {where}") from None
    except socket.timeout:
        raise RemoteError(f"{target.name}: {where} did not accept a connection within {target.timeout:.0f} s "
                          f"(is the board on and the address right?)") from None
    except OSError as exc:
        raise RemoteError(f"{target.name}: cannot reach {where} ({exc.strerror or exc})") from None


class LocalConnection:
    """This machine as a target (profile ``local``): same calls, no network."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def path(self, remote: str) -> str:
        return os.path.expanduser(remote)

    def run(self, command: str, timeout: Optional[float] = None,
            on_stderr: Optional[Callable[[bytes], None]] = None) -> Completed:
        """As :meth:`SSHConnection.run`, on this machine (the command in a session of its own)."""
        proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            with selectors.DefaultSelector() as pipes:  # both drained together, stderr handed on as it comes
                pipes.register(proc.stdout, selectors.EVENT_READ, out)
                pipes.register(proc.stderr, selectors.EVENT_READ, err)
                while pipes.get_map():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise subprocess.TimeoutExpired(command, timeout)
                    for key, _ in pipes.select(left):
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            pipes.unregister(key.fileobj)
                        key.data.extend(chunk)
                        if chunk and key.data is err and on_stderr is not None:
                            on_stderr(chunk)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            self._stop(proc)
            raise RemoteError(f"{self.target.name}: {_summary(command)} did not finish within {timeout:.0f} s; "
                              f"stopped it and its child processes") from None
        except KeyboardInterrupt:
            self._stop(proc)
            raise
        return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
        try:
            proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()

    def makedirs(self, remote: str) -> None:
        Path(self.path(remote)).mkdir(parents=True, exist_ok=True)

    def put(self, local: Path, remote: str, sent: Optional[Callable[[int], None]] = None) -> None:
        try:
            with atomic_output(self.path(remote)) as partial:
                shutil.copyfile(local, partial)
            if sent:
                sent(local.stat().st_size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise RemoteError(f"{self.target.name}: no space left on this machine in "
                                  f"{Path(self.path(remote)).parent} while copying {local.name}") from None
            raise

    def get(self, remote: str, local: Path) -> None:
        with atomic_output(local) as partial:
            shutil.copyfile(self.path(remote), partial)

    def close(self) -> None:
        pass


Connection = Union[SSHConnection, LocalConnection]


def by_line(handle: Callable[[str], None]) -> Callable[[bytes], None]:
    """An ``on_stderr`` for :meth:`SSHConnection.run` that hands ``handle`` each complete line, decoded."""
    pending = bytearray()

    def feed(chunk: bytes) -> None:
        pending.extend(chunk)
        *lines, rest = bytes(pending).split(b"\n")
        pending[:] = rest
        for raw in lines:
            handle(raw.decode("utf-8", errors="replace").rstrip())

    return feed


def put_files(conn: Connection, files: Sequence[Tuple[Path, str]], what: str) -> None:
    """Upload each (local file, remote path), in order, under one progress line in bytes for them all."""
    total = sum(local.stat().st_size for local, _ in files)
    with progress_line(f"{conn.target.name}: {what}", total=total, unit="bytes", show=bool(files)) as line:
        done = 0
        for local, remote in files:
            conn.put(local, remote, lambda n, before=done: line.update(completed=before + n))
            done += local.stat().st_size


def connect(target: Target) -> Connection:
    """A connection to ``target``, or :class:`RemoteError` with one line."""
    if target.transport == "local":
        return LocalConnection(target)
    return SSHConnection(target)
