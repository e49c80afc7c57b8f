"""The runner's result document, schema ``fdq.run/1``: built here, written here, read here.

The runner (:mod:`fdq.device.run`) measures and hands what it measured to :func:`build`; the host's
reports (``fdq compare``, ``fdq-profile``) read documents through :class:`Run`. One module knows the
document's layout, as :mod:`fdq.device.bundle` does for bundles, so old runs (``fdq-runs/``,
``docs/results/``) keep loading as long as this module reads them.

Only the standard library is imported here: the runner imports this module before its signal
handlers are in place, and the host's reports import it too.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .atomic import PathLike, atomic_output

SCHEMA = "fdq.run/1"
STAGES = ("preprocess", "inference", "postprocess", "total")
"""The stages of every frame, as ``latency_ms`` and the demo's page name them."""
SETTINGS = ("easy", "medium", "hard")
"""The WIDER FACE settings of ``accuracy``."""
FACE_THRESHOLD = 0.5
"""Score from which a detection counts as a face in ``detections.per_frame``."""
EMULATED = "emulated (qemu-user): this latency says nothing about a real board"


class ResultError(ValueError):
    """A file that is not a readable ``fdq.run/1`` document; one line."""


def fewer_frames(measured: int, asked: int) -> str:
    """The warning of a run that measured fewer frames than asked."""
    return f"{measured} frames measured, fewer than the {asked} asked"


# --------------------------------------------------------------------------------------------------
# Building a document (the runner)
# --------------------------------------------------------------------------------------------------


@dataclass
class Frames:
    """The measured frames: each stage's milliseconds, the faces (score >= FACE_THRESHOLD) and the
    detections NMS kept, per frame; ``starts``: when each frame began, in seconds since the
    measurement did (interleaved runs share that start); ``seconds``: how long the frames took,
    reading included."""

    timings: Dict[str, List[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    faces: List[int] = field(default_factory=list)
    kept: List[int] = field(default_factory=list)
    starts: List[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, timings_ms: Dict[str, float], dets: Any) -> None:
        """One frame: the detector's ``last_timings_ms`` and its detections."""
        for stage in STAGES:
            self.timings[stage].append(timings_ms[stage])
        self.faces.append(int((dets.scores >= FACE_THRESHOLD).sum()))
        self.kept.append(len(dets))


def latency_stats(values: Sequence[float]) -> Dict[str, Any]:
    """mean / p50 / p90 / p99 / min / max of per-frame milliseconds, plus the raw list."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(arr, [50, 90, 99]))
    return {"mean": float(arr.mean()), "p50": p50, "p90": p90, "p99": p99, "min": float(arr.min()),
            "max": float(arr.max()), "frames": [float(v) for v in arr]}


def quantization_level(manifest: Dict[str, Any]) -> Optional[str]:
    """The bundle's quantization in one word (its level, scheme, mode or method; ``float`` for fp32)."""
    q = manifest.get("quantization")
    if isinstance(q, dict):
        for key in ("level", "scheme", "mode", "method"):
            if q.get(key):
                return str(q[key])
    elif q:
        return str(q)
    dtype = (manifest.get("backend") or {}).get("dtype")
    return "float" if dtype in ("fp32", "float32", None) else None


def _bundle(bundle: Any) -> Dict[str, Any]:
    import hashlib

    from .bundle import MANIFEST

    manifest = bundle.manifest
    return {
        "path": str(bundle.path.resolve()),
        "model": manifest["model"]["name"],
        "runtime": bundle.runtime,
        "engine": bundle.engine,
        "dtype": (manifest.get("backend") or {}).get("dtype"),
        "quantization": quantization_level(manifest),
        "quantization_config": manifest.get("quantization"),
        "manifest_sha256": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest(),
        "created": manifest.get("created"),
        "fdq_version": manifest.get("fdq_version"),
        "long_side": bundle.long_side,
    }


def build(args: Any, bundle: Any, detector: Any, source: Dict[str, Any], frames: Frames, *,
          load_ms: float, first_frame_ms: Dict[str, float], conditions: Dict[str, Any],
          thermal: Tuple[Dict[str, Any], Dict[str, Any]],
          warnings: List[str], per_op: Optional[Dict[str, Any]] = None,
          instructions: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The document of a run: the runner's parsed ``args``, the bundle and its detector, the source's
    description, the measured frames, and around them the cold start (bundle and detector loading,
    the first frame's stages), the cool-down's ``conditions``, the thermal state at the start and
    end. This machine's facts (system, runtime versions, memory) are read now; ``warnings`` gains
    those they call for."""
    from . import sysinfo
    from .runtimes import runtime_versions

    threads = int(args.threads)
    latency = {stage: latency_stats(frames.timings[stage]) for stage in STAGES}
    start, end = thermal
    throttling = sysinfo.throttling_during(start["throttled"], end["throttled"])
    device = sysinfo.system_info()
    if device["emulation"]["emulated"]:
        warnings.append(EMULATED)
    if throttling:
        warnings.append(f"the CPU throttled during the run ({', '.join(throttling)}): the latency is not "
                        "the board's steady speed")
    if args.frames is not None and len(frames.faces) < args.frames:
        warnings.append(fewer_frames(len(frames.faces), args.frames))
    document: Dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": _bundle(bundle),
        "device": {
            **device,
            "runtime": bundle.runtime,
            "runtime_versions": runtime_versions(bundle),
            "engine": bundle.engine,
            "threads": threads,
            "kernels": getattr(detector, "kernels", "numpy"),
        },
        "source": source,
        "settings": {"frames": len(frames.faces), "frames_asked": args.frames, "min_seconds": args.min_seconds,
                     "measured_s": frames.seconds, "frame_start_s": frames.starts, "warmup": int(args.warmup), "threads": threads,
                     "long_side": int(detector.long_side), "score_threshold": float(args.threshold),
                     "nms_threshold": float(detector.nms_threshold), "face_threshold": FACE_THRESHOLD,
                     **conditions},
        "cold_start": {"load_ms": load_ms, "first_frame_ms": first_frame_ms["total"],
                       "first_frame_stages_ms": first_frame_ms},
        "latency_ms": latency,
        "fps": 1000.0 / latency["total"]["mean"] if latency["total"]["mean"] > 0 else None,
        "memory": sysinfo.memory(),
        "thermal": {"start_c": start["c"], "end_c": end["c"],
                    "throttled_start": start["throttled"], "throttled_end": end["throttled"],
                    "zone": args.thermal_zone, "throttled_during_run": throttling},
        "detections": {"face_threshold": FACE_THRESHOLD, "per_frame": frames.faces,
                       "faces_total": int(sum(frames.faces)), "candidates_per_frame": frames.kept,
                       "candidates_total": int(sum(frames.kept)),
                       "candidates_note": f"detections kept after NMS with score > {args.threshold}"},
        "warnings": warnings,
    }
    if per_op is not None:
        document["per_op"] = per_op
    if instructions is not None:
        document["instructions"] = instructions
    return document


def accuracy_section(evaluated: Dict[str, Any], ground_truth: str) -> Dict[str, Any]:
    """The ``accuracy`` section: :func:`fdq.device.evaluation.evaluate`'s AP and image counts."""
    return {**{s: evaluated[s] for s in SETTINGS}, "images": evaluated["images"],
            "missing_images": evaluated.get("missing_images", 0), "ground_truth": str(Path(ground_truth).resolve())}


def write(path: PathLike, document: Dict[str, Any]) -> None:
    """Temp file in the target folder, fsync, rename: the file is complete or absent."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# Reading a document (the host's reports)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run's document and the file it came from."""

    doc: Dict[str, Any]
    path: Optional[Path] = None

    @property
    def label(self) -> str:
        b = self.doc["bundle"]
        kind = f"{b['engine']} {b['dtype']}" if b.get("engine") else str(b.get("dtype") or "")
        return f"{b['model']} {kind}".strip()

    @property
    def target(self) -> str:
        return str((self.doc.get("profile") or {}).get("target") or self.doc["device"]["machine"].get("node"))

    @property
    def device(self) -> str:
        d = self.doc["device"]
        cpu = d.get("cpu") or {}
        return f"{cpu.get('board') or cpu.get('model') or '?'} ({d['machine']['arch']})"

    @property
    def emulated(self) -> bool:
        return bool(self.doc["device"]["emulation"]["emulated"])

    def p(self, stage: str, q: str = "p50") -> float:
        return float(self.doc["latency_ms"][stage][q])

    @property
    def name(self) -> str:
        """Short and unique enough for a plot axis: label, runtime, threads, target."""
        return f"{self.label} {self.doc['device']['runtime']} t{self.doc['device']['threads']} @{self.target}"

    @property
    def accuracy(self) -> Optional[Dict[str, float]]:
        return self.doc.get("accuracy")

    def instructions(self, stage: str = "total") -> Optional[float]:
        """The median instructions per frame of ``stage`` (``fdq-profile --count-instructions``), else None."""
        counted = self.doc.get("instructions")
        return counted["per_frame"][stage]["median"] if counted else None

    def warnings(self) -> List[str]:
        """Plain-words warnings: the runner's own, and those older documents did not carry yet."""
        doc = self.doc
        found = list(doc.get("warnings") or [])
        if self.emulated and not any("emulated" in w for w in found):
            found.append(EMULATED)
        asked = doc["settings"].get("frames_asked")
        if asked and doc["settings"]["frames"] < asked:
            warning = fewer_frames(doc["settings"]["frames"], asked)
            found += [] if warning in found else [warning]
        return found


def read_run(path: Path) -> Run:
    """The run in ``path``; ResultError (one line) if it is not a readable ``fdq.run/1`` document."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultError(f"{path}: not a readable JSON run ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultError(f"{path}: not an {SCHEMA} run document")
    return Run(doc, path)
