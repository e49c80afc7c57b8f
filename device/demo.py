"""Live face detection demo: camera, video file or RTSP stream in, annotated frames out.

``fdq-demo --bundle DIR --source 0|VIDEO|rtsp://... [--serve 127.0.0.1:8080] [--output OUT.mp4]``

Every frame goes through :class:`~fdq.device.detector.FaceDetector` with the bundle's runtime;
boxes, landmarks, FPS and per-stage latency are drawn on it. The annotated frames can be written
to a video (``--output``) and/or published over HTTP (``--serve HOST:PORT``) for a headless board
(the sources are :mod:`fdq.device.sources`' live ones):

* ``/``            a page showing the stream beside the board, its runtime and engine and the
                   live per-stage latency (:mod:`fdq.device.demo_page`);
* ``/stream.mjpg`` an MJPEG stream (``multipart/x-mixed-replace``, one JPEG per part);
* ``/frame.jpg``   the latest annotated frame as a single JPEG;
* ``/stats.json``  those facts and the per-stage p50 latency over the last second.

The server only binds a loopback address unless ``--allow-remote`` is given (on a headless board,
bind its LAN address with ``--allow-remote``; ``fdq-demo --target`` instead forwards the board's
loopback port through its SSH connection, and passes ``--stop-on-eof`` so that the demo ends with
that session). This module imports nothing from the host side.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .bundle import BundleError, load_bundle
from .cliargs import Parser, int_at_least
from .demo_page import board_facts, render_page, stats_document
from .draw import draw_detections
from .latency_window import LatencyWindow
from .outputs import OutputRefused, check_file_output
from .sources import SourceError, open_source

PROG = "fdq-demo"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BOUNDARY = "fdqframe"
JPEG_QUALITY = 80
# While no new frame arrives (source ended, lingering) the stream re-sends the last one this
# often: it keeps the connection alive and lets browsers that render a part only once the
# next boundary arrives show the final frame.
RESEND_SECONDS = 1.0
FIRST_FRAME_WAIT_SECONDS = 10.0
# How the demo says why it stopped; SIGHUP stands for --stop-on-eof (its session ended).
STOP_REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
                signal.SIGHUP: "stopped: standard input closed (the session that started it ended)"}


class DemoError(Exception):
    """A user-facing failure: printed as one ``fdq-demo: error:`` line, exit code 1."""


# --------------------------------------------------------------------------------------------------
# Latest-frame hub and the MJPEG server
# --------------------------------------------------------------------------------------------------


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
        raise DemoError(f"cannot resolve serve host {host!r}: {exc}") from None
    family = infos[0][0]
    server_class = type("_DemoServer", (_Server,), {"address_family": family})
    try:
        server = server_class((host, port), _make_handler(hub, page.encode("utf-8"), stats))
    except OSError as exc:
        raise DemoError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    url_host = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="fdq-demo-http", daemon=True)
    thread.start()
    return server, thread, f"http://{url_host}:{bound_port}/"


# --------------------------------------------------------------------------------------------------
# Video out
# --------------------------------------------------------------------------------------------------


class VideoOutput:
    """mp4v writer into a temporary file next to the target; ``commit`` renames it into place."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int]) -> None:
        target = Path(path)
        if target.parent and not target.parent.is_dir():
            raise DemoError(f"cannot write {path}: folder {target.parent} does not exist")
        self.target = target
        # Same folder (os.replace stays atomic), same suffix (it picks the container), default mode.
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        self.tmp = target.with_name(f".{target.stem}.{token}.partial{target.suffix or '.mp4'}")
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.discard()
            raise DemoError(f"cannot write video {path} (mp4v at {size[0]}x{size[1]})")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def commit(self) -> None:
        self.writer.release()
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self.writer.release()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Live face detection on a camera, video file or stream with an fdq bundle.")
    parser.add_argument("--bundle", required=True, help="bundle folder (with manifest.yaml)")
    parser.add_argument("--source", required=True,
                        help="camera index (0), video file, or stream URL (rtsp://...)")
    parser.add_argument("--serve", metavar="HOST:PORT",
                        help="publish an MJPEG stream and a viewer page (port 0 = any free port)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow --serve on a non-loopback address (anyone on that network can watch)")
    parser.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                        help="with --serve, keep serving the last frame this long after the source ends")
    parser.add_argument("--output", metavar="OUT.mp4",
                        help="write the annotated video (mp4v; a new file; with --target, a path on the board)")
    parser.add_argument("--force", action="store_true", help="replace an existing file at --output")
    parser.add_argument("--max-frames", type=int_at_least("--max-frames", 1), metavar="N", help="stop after N frames")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum face score drawn")
    parser.add_argument("--threads", type=int_at_least("--threads", 1), default=1,
                        help="inference threads (with --target, default: the profile's threads)")
    parser.add_argument("--long-side", type=int, metavar="L",
                        help="network input long side (default: the bundle's)")
    parser.add_argument("--stop-on-eof", action="store_true",
                        help="stop when standard input closes (fdq-demo --target passes it: the SSH session ended)")
    return parser


def check_frame_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (argparse's exit code 2) of the options that do not name a path or an address:
    checked wherever the demo is started, before a board is reached."""
    if args.long_side is not None and args.long_side < 16:
        parser.error("--long-side must be at least 16")
    if not 0.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be between 0 and 1")
    if args.linger < 0 or not np.isfinite(args.linger):
        parser.error("--linger must be a non-negative number of seconds")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[Tuple[str, int]]:
    """Usage errors (argparse's exit code 2); returns the parsed --serve address."""
    if args.output:
        try:
            check_file_output(args.output, args.force, "--output")
        except OutputRefused as exc:
            parser.error(str(exc))
    check_frame_options(parser, args)
    if args.serve is None:
        return None
    try:
        host, port = parse_hostport(args.serve)
    except ValueError as exc:
        parser.error(f"--serve: {exc}")
    if not is_loopback_host(host) and not args.allow_remote:
        try:
            ipaddress.ip_address(host)
            kind = "a non-loopback address"
        except ValueError:
            kind = "a host name other than localhost"
        parser.error(f"refusing to serve on {host} ({kind}) without --allow-remote: anyone who can reach "
                     f"it could watch the camera; use 127.0.0.1, or add --allow-remote")
    return host, port


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1


def _info(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@contextmanager
def _stop_on_signals() -> Iterator[Dict[str, Optional[int]]]:
    """SIGINT and SIGTERM ask the frame loop to stop; it checks between frames.

    The handler only records the signal: an exception raised inside it could land in the middle of
    a ctypes call (the C kernels) and come out wrapped as an unrelated error.
    """
    state: Dict[str, Optional[int]] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: Any) -> None:
        state["signal"] = signum

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _stop_at_stdin_eof(stop: Dict[str, Optional[int]]) -> None:
    """Ask the frame loop to stop (as SIGHUP) once standard input ends. Over SSH without a terminal
    no signal arrives when the connection drops, but sshd closes the session's pipes: so the demo
    never outlives the connection that started it, holding the camera."""
    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop["signal"] = signal.SIGHUP

    threading.Thread(target=watch, name="fdq-demo-stdin", daemon=True).start()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        serve = _check_args(parser, args)
    except SystemExit as exc:  # usage error or --help: argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with _stop_on_signals() as stop:
            if args.stop_on_eof:
                _stop_at_stdin_eof(stop)
            code = _run(args, serve, stop)
        if stop["signal"] is not None:
            _info(STOP_REASONS[stop["signal"]])
            return 128 + int(stop["signal"])
        return code
    except (DemoError, SourceError) as exc:
        return _error(str(exc))


def _load_detector(args: argparse.Namespace) -> Tuple[Any, Any]:
    """The bundle and its detector."""
    from .runtimes import bundle_detector  # imports only the runtime the bundle needs

    # Postprocess keeps scores strictly above its threshold: the float32 just below --threshold keeps
    # exactly the faces scoring >= --threshold. Greedy NMS only lets higher scores suppress lower
    # ones, so thresholding first gives the same faces as NMS at 0.02 and filtering afterwards.
    below = float(np.nextafter(np.float32(args.threshold), np.float32(-np.inf)))
    try:
        bundle = load_bundle(args.bundle)
        return bundle, bundle_detector(bundle, args.threads, args.long_side, score_threshold=below)
    except BundleError as exc:
        raise DemoError(str(exc)) from None
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise DemoError(f"cannot load bundle {args.bundle}: {exc}") from None


def _run(args: argparse.Namespace, serve: Optional[Tuple[str, int]], stop: Dict[str, Optional[int]]) -> int:
    source = open_source(args.source, live=True)  # fails fast, before the (slower) bundle loading
    server = None
    hub = FrameHub()
    window = LatencyWindow()
    output: Optional[VideoOutput] = None
    frames = 0
    detect_ms: List[float] = []
    committed = False
    try:
        bundle, detector = _load_detector(args)
        if args.output:
            output = VideoOutput(args.output, source.playback_fps(), (source.width, source.height))
        if serve is not None:
            facts = board_facts(bundle, args.threads)
            server, _, url = start_server(serve[0], serve[1], hub, render_page(facts),
                                          lambda: stats_document(facts, window))
            _info(f"serving {url} (stream {url}stream.mjpg, still {url}frame.jpg)")
        t_start = time.perf_counter()
        for _, frame in source.frames(None):
            if stop["signal"] is not None:
                break
            dets = detector.detect(frame).above(args.threshold)
            timings = dict(detector.last_timings_ms)
            detect_ms.append(timings.get("total", 0.0))
            window.add(timings)
            draw_detections(frame, dets, timings)
            if output is not None:
                output.write(frame)
            if server is not None:
                hub.publish(frame)  # each frame read is a fresh array: no copy needed
            frames += 1
            if args.max_frames is not None and frames >= args.max_frames:
                break
        source.release()
        if output is not None and frames > 0:
            output.commit()
            committed = True
        elapsed = time.perf_counter() - t_start
        mean_ms = float(np.mean(detect_ms)) if detect_ms else 0.0
        fps = frames / elapsed if elapsed > 0 else 0.0
        _info(f"{frames} frames, {fps:.1f} fps overall, detection {mean_ms:.1f} ms/frame"
              + (f", wrote {args.output}" if output is not None else ""))
        if server is not None and args.linger > 0 and stop["signal"] is None:
            _info(f"source finished; serving the last frame for {args.linger:g} s (Ctrl-C to stop)")
            deadline = time.monotonic() + args.linger
            while time.monotonic() < deadline and stop["signal"] is None:
                time.sleep(0.1)
        return 0  # a signal is a clean stop: what was recorded is kept
    finally:
        source.release()
        if output is not None and not committed:
            output.discard()
        hub.close()
        if server is not None:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    sys.exit(main())
