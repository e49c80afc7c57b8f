"""The demo's HTTP server: the latest annotated frame as an MJPEG stream, a still and a page.

* ``/``            the page (:mod:`fdq.device.demo_page`): the stream beside the board's facts and
                   its live per-stage latency;
* ``/stream.mjpg`` an MJPEG stream (``multipart/x-mixed-replace``, one JPEG per part);
* ``/frame.jpg``   the latest annotated frame as a single JPEG;
* ``/stats.json``  those facts and the per-stage p50 latency over the last second.

Standard library only, besides OpenCV's JPEG encoder; whether an address may be served is the
caller's decision (:func:`is_loopback_host`).
"""
from __future__ import annotations

import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Tuple

import cv2
import numpy as np

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BOUNDARY = "fdqframe"
JPEG_QUALITY = 80
# While no new frame arrives (source ended, lingering) the stream re-sends the last one this
# often: it keeps the connection alive and lets browsers that render a part only once the
# next boundary arrives show the final frame.
RESEND_SECONDS = 1.0
FIRST_FRAME_WAIT_SECONDS = 10.0


class ServeError(Exception):
    """An address that cannot be resolved or bound; one line."""


class FrameHub:
    """The latest annotated frame, shared between the capture loop and any number of HTTP clients.

    Frames are JPEG-encoded lazily, once per frame, by the first client that wants one: with no
    viewer connected the capture loop pays nothing for serving, and with viewers the encoding
    runs on their threads, beside the detector.
    """

    def __init__(self, quality: int = JPEG_QUALITY) -> None:
        self._cond = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self._seq = 0
        self._closed = False
        self._quality = int(quality)
        self._encode_lock = threading.Lock()
        self._jpeg: Optional[bytes] = None
        self._jpeg_seq = -1

    def publish(self, frame: np.ndarray) -> None:
        """Share a BGR frame; the caller must not modify it afterwards."""
        with self._cond:
            self._frame = frame
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting client; they stop streaming."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def _encode(self, seq: int, frame: np.ndarray) -> bytes:
        with self._encode_lock:
            if self._jpeg_seq != seq or self._jpeg is None:
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                self._jpeg, self._jpeg_seq = buf.tobytes(), seq
            return self._jpeg

    def latest(self, timeout: float) -> Optional[bytes]:
        """The latest frame as JPEG, waiting up to ``timeout`` seconds for the first one."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            seq, frame = self._seq, self._frame
        return None if frame is None else self._encode(seq, frame)

    def next_after(self, seq: int, timeout: float) -> Tuple[int, Optional[bytes]]:
        """Wait for a frame newer than ``seq``; on timeout return the current one again (a resend).

        Returns ``(seq, jpeg)``; ``jpeg`` is None once the hub is closed or while nothing was
        published yet.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq or self._closed, timeout)
            if self._closed:
                return self._seq, None
            seq, frame = self._seq, self._frame
        return seq, None if frame is None else self._encode(seq, frame)


def _make_handler(hub: FrameHub, page: bytes, stats: Callable[[], bytes]) -> type:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fdq-demo"
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # one line per request would drown the demo's own output

        def _send_bytes(self, body: bytes, content_type: str, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send_bytes(page, "text/html; charset=utf-8")
                elif path == "/stats.json":
                    self._send_bytes(stats(), "application/json")
                elif path == "/frame.jpg":
                    jpeg = hub.latest(FIRST_FRAME_WAIT_SECONDS)
                    if jpeg is None:
                        self._send_bytes(b"no frame yet\n", "text/plain; charset=utf-8", 503)
                    else:
                        self._send_bytes(jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send_bytes(b"not found\n", "text/plain; charset=utf-8", 404)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
                pass  # the client went away

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            seq = 0
            while True:
                seq, jpeg = hub.next_after(seq, RESEND_SECONDS)
                if jpeg is None:
                    if hub.closed:
                        return
                    continue  # nothing published yet
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                 "\r\n\r\n".encode("ascii"))
                self.wfile.write(jpeg)
                self.wfile.write(b"\r\n")
                self.wfile.flush()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds on a board
        # without DNS; the name is only used for CGI environments.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def parse_hostport(value: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` -> (host, port); raises ValueError with a readable message."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected [IPV6]:PORT, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT (for example 127.0.0.1:8080), got {value!r}")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets ([::1]:8080), got {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r} (for example 127.0.0.1:8080)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def is_loopback_host(host: str) -> bool:
    return host.lower() in LOOPBACK_HOSTS


def start_server(host: str, port: int, hub: FrameHub, page: str,
                 stats: Callable[[], bytes]) -> Tuple[_Server, threading.Thread, str]:
    """Bind and serve ``hub``'s frames, ``page`` at ``/`` and ``stats()`` at ``/stats.json`` in a
    daemon thread; returns the server, its thread and the page URL."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve serve host {host!r}: {exc}") from None
    family = infos[0][0]
    server_class = type("_DemoServer", (_Server,), {"address_family": family})
    try:
        server = server_class((host, port), _make_handler(hub, page.encode("utf-8"), stats))
    except OSError as exc:
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    url_host = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="fdq-demo-http", daemon=True)
    thread.start()
    return server, thread, f"http://{url_host}:{bound_port}/"
