"""Measure a bundle on this machine: latency per stage, FPS, memory, temperature and (optionally) AP.

    python -m fdq.device.run --bundle DIR [--source IMAGES_DIR|VIDEO|synthetic] [--frames N]
        [--min-seconds S] [--warmup W] [--threads T] [--gt DIR_OR_JSON] [--long-side L]
        [--threshold 0.02] [--per-op] [--cooldown S] [--max-temp C] [--thermal-zone PATH]
        [--count-instructions] [--progress] --json OUT.json

Each frame goes through exactly the pipeline of :class:`fdq.device.detector.FaceDetector`
(preprocess -> inference -> decode -> NMS); image decoding is not timed. The conventions are those
of MLPerf's single-stream scenario, ncnn's benchncnn and TVM's time_evaluator: the cold start (bundle
load, first frame) is reported apart, warm-up frames are not recorded, and the run lasts until both
``--frames`` and ``--min-seconds`` are reached. The result is ONE JSON document (schema
``fdq.run/1``, laid out by :mod:`fdq.device.result`), written atomically: a run that fails or is
interrupted (SIGINT / SIGTERM) leaves no file behind. The sources are :mod:`fdq.device.sources`'.

Exit codes: 0 success, 1 bad input or failure (one ``fdq-run: error: ...`` line on stderr),
2 bad command line, 130 / 143 interrupted by SIGINT / SIGTERM.

Only the standard library is imported at module level (the pipeline, OpenCV and the runtime are
imported once signal handling is in place); nothing from ``fdq.host``, paramiko or rich.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import instructions, result
from .cliargs import Parser, float_at_least, int_at_least, probability
from .outputs import check_file_output
from .sources import SYNTHETIC_DEFAULT_FRAMES, ImageFolderSource, open_source

PROG = "fdq-run"
WARMUP_FRAMES = 10
"""Unrecorded frames before timing starts: the runner's default and fdq-profile's."""
MAX_TEMP_WAIT_S = 600.0
PER_OP_FRAMES = 5
PROGRESS_EVERY_S = 0.5


class RunError(Exception):
    """Bad input or a failed run; the message is the one line printed after ``fdq-run: error:``."""


class Interrupted(BaseException):
    """Raised at the next checkpoint after SIGINT / SIGTERM: unwinds everything, nothing gets written.

    The signal handler only records the signal: raising inside it could land in the middle of a
    ctypes call or a runtime's C++ code, which would wrap or swallow the exception.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Measure a face-detector bundle on this machine (fdq.run/1 JSON).")
    p.add_argument("--bundle", required=True, nargs="+",
                   help="bundle folder (verified against its manifest); several: measured alternately on the same "
                        "frames (A B A B ...), one result per bundle, so drift and other load hit them alike")
    p.add_argument("--source", default="synthetic",
                   help="image folder (WIDER layout), video file, or 'synthetic'")
    p.add_argument("--frames", type=int_at_least("--frames", 1), default=None,
                   help="frames to measure (default: every image once / the whole video / "
                        f"{SYNTHETIC_DEFAULT_FRAMES} synthetic); image folders and videos loop if needed")
    p.add_argument("--min-seconds", type=float_at_least("--min-seconds", 0), default=0.0,
                   help="keep measuring until this many seconds have passed as well")
    p.add_argument("--warmup", type=int_at_least("--warmup", 0), default=WARMUP_FRAMES, help="unrecorded warm-up frames")
    p.add_argument("--threads", type=int_at_least("--threads", 1), default=1, help="CPU threads")
    p.add_argument("--gt", default=None, help="WIDER FACE ground truth (.mat folder or .json): adds AP")
    p.add_argument("--long-side", type=int_at_least("--long-side", 1), default=None,
                   help="network input long side (default: the bundle's)")
    p.add_argument("--threshold", type=probability("threshold"), default=0.02, help="score threshold before NMS")
    p.add_argument("--per-op", action="store_true",
                   help="after the timed frames, time each operator (TorchScript, ONNX Runtime)")
    p.add_argument("--cooldown", type=float_at_least("--cooldown", 0), default=0.0,
                   help="seconds to idle before loading the bundle (lets the board cool between runs)")
    p.add_argument("--max-temp", type=float_at_least("--max-temp", -273), default=None,
                   help=f"wait (at most {MAX_TEMP_WAIT_S:.0f} s) until the CPU is cooler than this many degC")
    p.add_argument("--thermal-zone", default=None,
                   help="temperature file in millidegrees (default: the CPU zone of /sys/class/thermal)")
    p.add_argument("--count-instructions", action="store_true",
                   help="also count the instructions of each stage (needs the counting qemu of an emulated "
                        "board, one thread; see fdq.device.instructions)")
    p.add_argument("--progress", action="store_true",
                   help=f"while measuring, a line '{PROG}: frame N/TOTAL, F FPS' on stderr every "
                        f"{PROGRESS_EVERY_S:g} s (fdq-profile draws them as its progress line)")
    p.add_argument("--json", required=True, nargs="+", dest="json_out",
                   help="where to write the results (a new file; one per --bundle, in the same order)")
    p.add_argument("--force", action="store_true", help="replace an existing file at --json")
    return p


# --------------------------------------------------------------------------------------------------
# Signals and errors
# --------------------------------------------------------------------------------------------------


_STATE: Dict[str, Any] = {"committed": False, "signal": None}


def check_interrupted() -> None:
    """Raise :class:`Interrupted` if SIGINT / SIGTERM arrived since the handlers were installed."""
    if _STATE["signal"] is not None and not _STATE["committed"]:
        raise Interrupted(_STATE["signal"])


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def build_detector(bundle: Any, threads: int = 1, long_side: Optional[int] = None,
                   threshold: float = 0.02) -> Any:
    """The FaceDetector the runner measures (also used in-process by tests and the host)."""
    from .runtimes import bundle_detector

    return bundle_detector(bundle, threads, long_side, score_threshold=threshold)


def _idle(seconds: float) -> None:
    """Sleep, still answering SIGINT / SIGTERM within a tenth of a second."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_interrupted()
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def _cool_down(args: argparse.Namespace, warnings: List[str], progress: Any = None) -> Dict[str, Any]:
    """``--cooldown`` idles; ``--max-temp`` then waits until the CPU is cooler than asked (as TVM
    and ncnn do between measurements), saying so through ``progress``. What happened goes into the result."""
    from . import sysinfo

    _idle(args.cooldown)
    done: Dict[str, Any] = {"cooldown_s": args.cooldown, "max_temp_c": args.max_temp, "waited_s": 0.0}
    if args.max_temp is None:
        return done
    start = time.monotonic()
    temperature = sysinfo.cpu_temperature_c(args.thermal_zone)
    if progress and temperature is not None and temperature >= args.max_temp:
        progress(f"{PROG}: waiting until the CPU is cooler than {args.max_temp:g} degC (now {temperature:.1f}; "
                 f"at most {MAX_TEMP_WAIT_S:.0f} s)")
    while temperature is not None and temperature >= args.max_temp and time.monotonic() - start < MAX_TEMP_WAIT_S:
        _idle(1.0)
        temperature = sysinfo.cpu_temperature_c(args.thermal_zone)
    done["waited_s"] = round(time.monotonic() - start, 1)
    if temperature is None:
        warnings.append(f"--max-temp {args.max_temp:g}: this machine reports no CPU temperature, so the run "
                        "started without waiting")
    elif temperature >= args.max_temp:
        warnings.append(f"--max-temp {args.max_temp:g}: still {temperature:.1f} degC after {MAX_TEMP_WAIT_S:.0f} s; "
                        "measured anyway")
    return done


def _counter(args: argparse.Namespace, warnings: List[str]) -> Optional[instructions.InstructionCounter]:
    """The instruction counter of ``--count-instructions`` (one thread: the count is shared by all)."""
    if not args.count_instructions:
        return None
    if args.threads != 1:
        raise RunError(f"--count-instructions counts with one thread (the count is shared by every thread, "
                       f"unsynchronized), got --threads {args.threads}")
    try:
        counter = instructions.InstructionCounter()
    except instructions.CountingError as exc:
        raise RunError(str(exc)) from None
    if not os.environ.get("PYTHONHASHSEED", "").isdigit():
        warnings.append("PYTHONHASHSEED is not set: Python's string hashing varies from run to run, and "
                        "the instruction counts with it")
    return counter


def _no_mark(code: int, frame: int = 0) -> None:
    """The mark of a run that counts nothing."""


def _measured_frames(source: Any, frames: Optional[int], min_seconds: float) -> Iterator[Tuple[str, Any]]:
    """Frames until both ``frames`` (None: the source's own end) and ``min_seconds`` are reached."""
    if not min_seconds:
        yield from source.frames(frames)
        return
    start = time.perf_counter()
    for index, item in enumerate(source.frames(sys.maxsize)):
        if (frames is None or index >= frames) and time.perf_counter() - start >= min_seconds:
            return
        yield item


def _ground_truth(args: argparse.Namespace, source: Any) -> Any:
    """``--gt``'s ground truth, checked against the source: its image folder, every image once."""
    if not args.gt:
        return None
    from .evaluation import load_ground_truth

    if not isinstance(source, ImageFolderSource):
        raise RunError("--gt needs --source to be the ground truth's image folder")
    gt = load_ground_truth(args.gt)
    keys = {key for key, _ in source.items}
    missing = [k for k in gt.keys if k not in keys]
    if missing:
        from .images import folder_down

        down = folder_down(keys, set(gt.keys))
        raise RunError(f"{args.source} is not the ground truth's image folder: {len(missing)} of "
                       f"{gt.num_images} ground-truth images are missing (first: {missing[0]})"
                       + (f"; give {Path(args.source) / down}, one folder down" if down else ""))
    if args.frames is not None and args.frames < len(source.items):
        raise RunError(f"--gt needs every image once: --frames {args.frames} < {len(source.items)} images")
    return gt


def _frame_lines(total: Optional[int]) -> Callable[[int, bool], None]:
    """``--progress``: ``on_frame(done, last)`` writes ``frame DONE/TOTAL, F FPS`` on stderr after the first
    frame, then at most every PROGRESS_EVERY_S, and after the last; between frames, outside every timed stage."""
    started = time.perf_counter()
    last: Optional[float] = None

    def on_frame(done: int, final: bool = False) -> None:
        nonlocal last
        now = time.perf_counter()
        if last is not None and now - last < PROGRESS_EVERY_S and not final:
            return
        last = now
        sys.stderr.write(f"{PROG}: frame {done}{'' if total is None else f'/{total}'}, "
                         f"{done / max(now - started, 1e-9):.1f} FPS\n")
        sys.stderr.flush()

    return on_frame


def _measure(detectors: Sequence[Any], source: Any, frames: Optional[int], min_seconds: float,
             counter: Optional[instructions.InstructionCounter], scored: int,
             on_frame: Optional[Callable[[int, bool], None]] = None) -> List[Tuple[result.Frames, Dict[str, Any]]]:
    """Time every frame, each detector in turn on it (one detector: a plain run); the detections
    of the first ``scored`` frames (one pass over the ground truth's folder) also as the
    evaluator's rows, by image key. ``on_frame(frames done, last)`` after each frame."""
    to_rows = None
    if scored:
        from .evaluation import to_wider_rows as to_rows
    mark = counter.mark if counter else _no_mark
    infer = detectors[0].infer
    if counter:
        detectors[0].infer = counter.around_inference(infer)
    measured = [(result.Frames(), {}) for _ in detectors]
    started = time.perf_counter()
    for index, (key, image) in enumerate(_measured_frames(source, frames, min_seconds)):
        for detector, (frames_of, predictions) in zip(detectors, measured):
            check_interrupted()
            frames_of.starts.append(time.perf_counter() - started)
            mark(instructions.FRAME_START, index)
            dets = detector.detect(image)
            mark(instructions.FRAME_END, index)
            frames_of.add(detector.last_timings_ms, dets)
            if to_rows is not None and index < scored:
                predictions[key] = to_rows(dets.boxes, dets.scores)
        if on_frame is not None:
            on_frame(index + 1, False)
    seconds = time.perf_counter() - started
    if on_frame is not None and measured[0][0].faces:
        on_frame(len(measured[0][0].faces), True)
    for frames_of, _ in measured:
        frames_of.seconds = seconds
    detectors[0].infer = infer
    return measured


def _load(path: str, args: argparse.Namespace, threads: int, mark: Any, first_image: Any) -> Tuple[Any, Any, float,
                                                                                                Dict[str, float]]:
    """A bundle, verified, and its detector, with the cold start: load time and the first frame."""
    from .bundle import load_bundle

    started = time.perf_counter()
    bundle = load_bundle(path)  # verifies every file's size and sha256
    detector = build_detector(bundle, threads, args.long_side, args.threshold)
    load_ms = (time.perf_counter() - started) * 1e3
    mark(instructions.LOADED)
    detector.detect(first_image)  # the cold first frame a camera app pays at every start
    mark(instructions.FIRST_FRAME)
    return bundle, detector, load_ms, dict(detector.last_timings_ms)


def measure(args: argparse.Namespace, progress: Any = None) -> List[Dict[str, Any]]:
    """Do the measurement described by parsed ``args``: one ``fdq.run/1`` document per bundle. Several
    bundles are loaded in turn, then measured alternately, frame by frame, on the same frames."""
    import cv2

    from . import sysinfo

    started = time.perf_counter()
    warnings: List[str] = []
    if len(args.bundle) > 1 and args.count_instructions:
        raise RunError("--count-instructions counts one bundle at a time (a count has no drift to share)")
    counter = _counter(args, warnings)
    conditions = _cool_down(args, warnings, progress)
    source = open_source(args.source)
    gt = _ground_truth(args, source)

    frames = args.frames if args.frames is not None else source.default_frames()
    threads = int(args.threads)
    cv2.setNumThreads(threads)
    first_image = next(iter(source.warmup(1)))
    mark = counter.mark if counter else _no_mark
    loaded = [_load(path, args, threads, mark, first_image) for path in args.bundle]
    detectors = [detector for _, detector, _, _ in loaded]

    thermal_start = sysinfo.thermal_state(args.thermal_zone)
    if progress:
        for bundle, _, _, _ in loaded:
            progress(f"{PROG}: {bundle.manifest['model']['name']} {bundle.runtime} "
                     f"{(bundle.manifest.get('backend') or {}).get('dtype')}, "
                     f"{frames if frames is not None else 'all'} frames (+{args.warmup} warm-up) from {source.kind}"
                     + (f", at least {args.min_seconds:g} s" if args.min_seconds else "")
                     + (", interleaved" if len(loaded) > 1 else ""))
    check_interrupted()
    for image in source.warmup(args.warmup):
        for detector in detectors:
            detector.detect(image)
            check_interrupted()
    measured = _measure(detectors, source, frames, args.min_seconds, counter,
                        len(source.items) if gt is not None else 0,
                        _frame_lines(frames) if args.progress else None)
    if not measured[0][0].faces:
        raise RunError(f"source {args.source} delivered no frames")
    thermal_end = sysinfo.thermal_state(args.thermal_zone)

    documents = []
    for (bundle, detector, load_ms, first_frame_ms), (frames_of, predictions) in zip(loaded, measured):
        per_op = None
        if args.per_op:
            from .perop import profile_ops

            check_interrupted()
            per_op = profile_ops(bundle, detector, source.warmup(min(PER_OP_FRAMES, len(frames_of.faces))), threads)
        document = result.build(args, bundle, detector, source.describe(), frames_of, load_ms=load_ms,
                                first_frame_ms=first_frame_ms, conditions=conditions,
                                thermal=(thermal_start, thermal_end), warnings=list(warnings), per_op=per_op,
                                instructions=counter.result(int(args.warmup), threads) if counter else None)
        if gt is not None:
            from .evaluation import evaluate

            document["accuracy"] = result.accuracy_section(evaluate(predictions, gt), args.gt)
        documents.append(document)
    together = [document["bundle"]["manifest_sha256"] for document in documents]
    for position, document in enumerate(documents):
        document["wall_s"] = time.perf_counter() - started
        if len(documents) > 1:  # the order each frame went through the bundles: this one's place in it
            document["interleaved"] = {"position": position, "bundles": together}
    return documents


def run(args: argparse.Namespace, progress: Any = None) -> Dict[str, Any]:
    """The document of a run of one bundle (:func:`measure`)."""
    return measure(args, progress)[0]


def _install_signal_handlers() -> Dict[int, Any]:
    def handler(signum: int, frame: Any) -> None:
        if _STATE["signal"] is None:
            _STATE["signal"] = signum

    _STATE["committed"] = False
    _STATE["signal"] = None
    previous = {}
    for sig in _SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    return previous


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        previous = _install_signal_handlers()  # first: an early Ctrl-C must not print a traceback
    except ValueError:  # not the main thread (embedded use): keep the caller's handlers
        previous = {}
    try:
        args = build_parser().parse_args(argv)
        if len(args.json_out) != len(args.bundle):
            raise RunError(f"--json takes one file per --bundle: {len(args.bundle)} bundle(s), "
                           f"{len(args.json_out)} file(s)")
        outs = [check_file_output(path, args.force, "--json") for path in args.json_out]

        def progress(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        documents = measure(args, progress)
        command = [sys.executable, "-m", "fdq.device.run", *(sys.argv[1:] if argv is None else list(argv))]
        check_interrupted()
        _STATE["committed"] = True  # complete results: a signal from now on is ignored, every file is written
        for out, document in zip(outs, documents):
            document["command"] = command
            result.write(out, document)
            fps = document["fps"]
            summary = f"{PROG}: wrote {out} ({document['settings']['frames']} frames, " \
                      f"{fps:.1f} FPS, total p50 {document['latency_ms']['total']['p50']:.1f} ms"
            if "accuracy" in document:
                acc = document["accuracy"]
                summary += f", AP easy {acc['easy']:.4f} medium {acc['medium']:.4f} hard {acc['hard']:.4f}"
            progress(summary + ")")
        return 0
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        sys.stderr.write(f"{PROG}: interrupted by {name}; no results written\n")
        return 128 + exc.signum
    except SystemExit as exc:  # argparse (--help, usage errors)
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except (RunError, ValueError, OSError, RuntimeError, ImportError) as exc:
        if os.environ.get("FDQ_DEBUG"):
            raise
        sys.stderr.write(f"{PROG}: error: {_first_line(exc)}\n")
        return 1
    except Exception as exc:  # anything unforeseen: still one line, the traceback on request
        if os.environ.get("FDQ_DEBUG"):
            raise
        sys.stderr.write(f"{PROG}: error: unexpected {type(exc).__name__}: {_first_line(exc)} "
                         f"(set FDQ_DEBUG=1 for a traceback)\n")
        return 1
    finally:
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass


if __name__ == "__main__":
    sys.exit(main())
