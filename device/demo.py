"""Live face detection demo: camera, video file or RTSP stream in, annotated frames out.

``fdq-demo --bundle DIR --source 0|VIDEO|rtsp://... [--serve 127.0.0.1:8080] [--output OUT.mp4]``

Every frame goes through :class:`~fdq.device.detector.FaceDetector` with the bundle's runtime;
boxes, landmarks, FPS and per-stage latency are drawn on it. The annotated frames can be written
to a video (``--output``) and/or published over HTTP (``--serve HOST:PORT``) for a headless board:
a page with the stream, an MJPEG stream, the latest frame and live statistics
(:mod:`fdq.device.mjpeg`). The sources are :mod:`fdq.device.sources`' live ones.

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
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .bundle import BundleError, load_bundle
from .cliargs import Parser, int_at_least
from .demo_page import board_facts, render_page, stats_document
from .draw import draw_detections
from .latency_window import LatencyWindow
from .mjpeg import FrameHub, ServeError, is_loopback_host, parse_hostport, start_server
from .outputs import OutputRefused, check_file_output
from .sources import SourceError, open_source

PROG = "fdq-demo"
# How the demo says why it stopped; SIGHUP stands for --stop-on-eof (its session ended).
STOP_REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
                signal.SIGHUP: "stopped: standard input closed (the session that started it ended)"}


class DemoError(Exception):
    """A user-facing failure: printed as one ``fdq-demo: error:`` line, exit code 1."""


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
    except (DemoError, ServeError, SourceError) as exc:
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
