"""A local port forward through an open SSH connection, as ``ssh -L 127.0.0.1:P:127.0.0.1:Q``.

Each connection accepted on the local listener travels in a ``direct-tcpip`` channel of the
connection's transport (paramiko's demos/forward.py) to the board's loopback, pumped by a thread
of its own. Listening only on a loopback address, and on the board reaching only its loopback,
nothing is opened to either machine's network. At most :data:`MAX_CONNECTIONS` are carried at
once (a page, its stream and its polls need three); one more is closed at once.
"""
from __future__ import annotations

import select
import socket
import threading
from typing import Dict, Optional, Set, Tuple

import paramiko

from .remote import RemoteError, SSHConnection

MAX_CONNECTIONS = 16
POLL_S = 0.25   # how often idle threads look whether the forward is closing


class PortForward:
    """A listener on ``host:port`` here (bound at once: a port in use fails before any other work)
    whose connections :meth:`start` carries to a port on the board's 127.0.0.1."""

    def __init__(self, host: str, port: int) -> None:
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            listener = socket.socket(infos[0][0], socket.SOCK_STREAM)
        except (OSError, IndexError) as exc:
            raise RemoteError(f"cannot listen on {host}:{port} ({exc})") from None
        try:
            listener.bind(infos[0][4])
            listener.listen(MAX_CONNECTIONS)
        except OSError as exc:
            listener.close()
            raise RemoteError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another "
                              f"--forward port (0: any free one)") from None
        listener.settimeout(POLL_S)
        self._listener = listener
        self.address: Tuple[str, int] = listener.getsockname()[:2]
        self._closing = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._lock = threading.Lock()
        self._live: Dict[socket.socket, Optional[paramiko.Channel]] = {}  # client -> its channel
        self._threads: Set[threading.Thread] = set()
        self._acceptor: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self, conn: SSHConnection, board_port: int) -> None:
        """Carry every connection from now on to ``127.0.0.1:board_port`` on ``conn``'s board."""
        # Interactive traffic, as OpenSSH treats forwarded ports: without TCP_NODELAY on the SSH socket,
        # Nagle's algorithm holds each small request and channel message: one 66 KB frame took a
        # median 38 ms through the forward here (28x direct), 4-7 ms with it (4-5x; bench_forward.py).
        conn.client.get_transport().sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._acceptor = threading.Thread(target=self._accept, args=(conn, board_port), name="fdq-forward",
                                          daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        """Stop listening and end every carried connection (both ends); returns when the threads did."""
        self._closing.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()
        with self._lock:
            live, threads = list(self._live.items()), list(self._threads)
        for sock, channel in live:
            _close(sock, channel)
        for thread in threads:
            thread.join(timeout=5)

    def _accept(self, conn: SSHConnection, board_port: int) -> None:
        while not self._closing.is_set():
            try:
                sock, origin = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                sock.close()  # over the bound: refused at once rather than queued behind the others
                continue
            thread = threading.Thread(target=self._carry, args=(conn, board_port, sock, origin),
                                      name="fdq-forward-conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _carry(self, conn: SSHConnection, board_port: int, sock: socket.socket, origin: Tuple) -> None:
        channel: Optional[paramiko.Channel] = None
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._live[sock] = None
            channel = conn.client.get_transport().open_channel(
                "direct-tcpip", ("127.0.0.1", board_port), origin[:2], timeout=conn.target.timeout)
            with self._lock:
                self._live[sock] = channel
            if not self._closing.is_set():
                _pump(sock, channel, self._closing)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the board's port closed, the connection dropped or the client left: this one ends
        finally:
            _close(sock, channel)
            with self._lock:
                self._live.pop(sock, None)
                self._threads.discard(threading.current_thread())
            self._slots.release()


def _pump(sock: socket.socket, channel: paramiko.Channel, closing: threading.Event) -> None:
    """Copy bytes both ways until either side closes or the forward does."""
    while not closing.is_set():
        ready, _, _ = select.select([sock, channel], [], [], POLL_S)
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            channel.sendall(data)
        if channel in ready:
            data = channel.recv(65536)
            if not data:
                return
            sock.sendall(data)


def _close(sock: socket.socket, channel: Optional[paramiko.Channel]) -> None:
    for end in (channel, sock):
        if end is not None:
            try:
                end.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
