"""C kernels compiled on the board at first use, loaded with ctypes; numpy is the fallback.

The board's own compiler builds ``csrc/fdq_kernels.c`` with ``-march=native`` (x86) or
``-mcpu=native`` (ARM), so the code is tuned to the exact CPU without shipping binaries. The
library is cached under a name hashing everything that changes the binary (sources, the compiler
binary by path, size and time, flags, machine, CPU), built into a temporary file and renamed into
place, so concurrent processes never load a half-written file. Without a working compiler every
wrapper here runs the numpy reference instead, after one warning.

``FDQ_KERNELS=numpy`` disables the C kernels, to compare both paths on the same board.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .postprocess import Detections, pixel_scale, postprocess
from .preprocess import normalize
from .sysinfo import cpu_features

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("fdq_kernels.c", "fdq_kernels.h")
BASE_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off")
# -ffp-contract=off: a fused multiply-add rounds once where numpy rounds twice, and clang
# contracts by default; without it results drift from the numpy reference by an ulp.

_f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_u8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_i64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_c_f, _c_i64 = ctypes.c_float, ctypes.c_int64
_SIGNATURES = {
    "fdq_normalize_u8": (None, [_u8, _c_i64, _c_i64, _c_f, _c_f, _c_f, _f32]),
    "fdq_normalize_f32": (None, [_f32, _c_i64, _c_i64, _c_f, _c_f, _c_f, _f32]),
    "fdq_quantize_u8": (None, [_u8, _c_i64, _c_i64, _c_f, _c_f, _c_f, _c_f, ctypes.c_int32, _u8]),
    "fdq_count_above": (_c_i64, [_f32, _c_i64, _c_f]),
    "fdq_decode": (_c_i64, [_f32, _f32, _f32, _f32, _c_i64, _c_f, _c_f, _c_f, _c_f, _c_f,
                            _i64, _f32, _f32, _f32]),
    "fdq_nms": (_c_i64, [_f32, _f32, _c_i64, _c_f, _i64]),
    "fdq_postprocess": (_c_i64, [_f32, _f32, _f32, _f32, _c_i64, _c_f, _c_f, _c_f, _c_f, _c_f, _c_f, _f32]),
}


def _f32c(array: np.ndarray) -> np.ndarray:
    """C-contiguous float32 without a copy when it already is (runtimes often return strided views)."""
    return np.ascontiguousarray(array, dtype=np.float32)


def _mean(mean_bgr: Sequence[float]) -> List[float]:
    """The mean as three float32-exact floats, as numpy subtracts it."""
    mean = np.asarray(mean_bgr, dtype=np.float32).reshape(-1)
    if mean.shape != (3,):
        raise ValueError(f"mean must have 3 values (B, G, R), got {mean.shape[0]}")
    return mean.tolist()


def _variances(variances: Sequence[float]) -> Tuple[float, float]:
    return float(np.float32(variances[0])), float(np.float32(variances[1]))


def _hwc3(image: np.ndarray) -> Tuple[int, int]:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HWC image with 3 channels, got shape {image.shape}")
    return int(image.shape[0]), int(image.shape[1])


def _network_outputs(loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous float32 views (copies only when needed) with checked shapes: C trusts them."""
    loc, scores, landm, priors = _f32c(loc), _f32c(scores).reshape(-1), _f32c(landm), _f32c(priors)
    n = scores.shape[0]
    if loc.shape != (n, 4) or landm.shape != (n, 10) or priors.shape != (n, 4):
        raise ValueError(f"inconsistent shapes: loc {loc.shape}, scores {scores.shape}, "
                         f"landm {landm.shape}, priors {priors.shape}")
    return loc, scores, landm, priors


class Kernels:
    """The loaded library with typed entry points; methods take and return numpy arrays.

    Every array crossing into C costs microseconds of ctypes checks, so the hot paths pass few:
    the mean travels as three floats and :meth:`postprocess` is one fused call.
    """

    def __init__(self, path: Path, built: bool) -> None:
        self.path = path
        self.built = built  # True when this process compiled it, False when loaded from the cache
        self._lib = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self._lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def normalize(self, resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
        """Fused transpose + mean subtraction; uint8 or float32 HWC in, float32 NCHW out."""
        height, width = _hwc3(resized)
        out = np.empty((1, 3, height, width), dtype=np.float32)
        if resized.dtype == np.uint8:
            self._lib.fdq_normalize_u8(np.ascontiguousarray(resized), height, width, *_mean(mean_bgr), out)
        elif resized.dtype == np.float32:
            self._lib.fdq_normalize_f32(np.ascontiguousarray(resized), height, width, *_mean(mean_bgr), out)
        else:
            raise TypeError(f"normalize kernel takes uint8 or float32 images, got {resized.dtype}")
        return out

    def quantize_input(self, resized: np.ndarray, mean_bgr: Sequence[float], scale: float,
                       zero_point: int) -> np.ndarray:
        """uint8 HWC -> the quint8 input of an int8 model, skipping the float blob: shape
        (1, 3, H, W), channels-last in memory (see :func:`quantize_input`)."""
        height, width = _hwc3(resized)
        if resized.dtype != np.uint8:
            raise TypeError(f"quantize kernel takes a uint8 image, got {resized.dtype}")
        out = np.empty((1, height, width, 3), dtype=np.uint8)
        self._lib.fdq_quantize_u8(np.ascontiguousarray(resized), height, width, *_mean(mean_bgr),
                                  float(np.float32(scale)), int(zero_point), out)
        return out.transpose(0, 3, 1, 2)

    def decode(self, loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
               variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
               score_threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates (score > threshold, ascending anchor): anchor index, score, pixel box, landmarks."""
        loc, scores, landm, priors = _network_outputs(loc, scores, landm, priors)
        n = scores.shape[0]
        threshold = float(np.float32(score_threshold))
        count = self._lib.fdq_count_above(scores, n, threshold)
        index, cand_scores = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.float32)
        boxes, points = np.empty((count, 4), dtype=np.float32), np.empty((count, 10), dtype=np.float32)
        self._lib.fdq_decode(loc, scores, landm, priors, n, *_variances(variances),
                             *pixel_scale(input_size, ratio).tolist(), threshold, index, cand_scores, boxes, points)
        return index, cand_scores, boxes, points

    def nms(self, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
        """Positions kept by score-ordered greedy NMS, as ``score_order`` then :func:`nms.nms`."""
        boxes, scores = _f32c(boxes), _f32c(scores).reshape(-1)
        if boxes.shape != (scores.shape[0], 4):
            raise ValueError(f"boxes {boxes.shape} do not match scores {scores.shape}")
        keep = np.empty(scores.shape[0], dtype=np.int64)
        kept = self._lib.fdq_nms(boxes, scores, scores.shape[0], float(np.float32(iou_threshold)), keep)
        if kept < 0:
            raise MemoryError("fdq_nms could not allocate its work buffers")
        return keep[:kept]

    def postprocess(self, loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                    variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
                    score_threshold: float = 0.02, nms_threshold: float = 0.4) -> Detections:
        """Threshold + decode + sort + NMS in one C call; same contract as :func:`postprocess.postprocess`."""
        loc, scores, landm, priors = _network_outputs(loc, scores, landm, priors)
        n = scores.shape[0]
        out = np.empty((n, 15), dtype=np.float32)
        kept = self._lib.fdq_postprocess(loc, scores, landm, priors, n, *_variances(variances),
                                         *pixel_scale(input_size, ratio).tolist(),
                                         float(np.float32(score_threshold)), float(np.float32(nms_threshold)), out)
        if kept < 0:
            raise MemoryError("fdq_postprocess could not allocate its work buffers")
        rows = out[:kept]
        return Detections(rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5:].copy())


def _compiler() -> List[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _arch_flags() -> List[str]:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return ["-march=native"]
    if machine.startswith(("aarch64", "arm")):
        return ["-mcpu=native"]
    return []


def _compiler_identity(path: str) -> str:
    """The compiler as the cache key knows it: its real path, size and modification time (ccache's
    default ``compiler_check``), read without running it. Running ``--version`` at every start cost a
    process (a fork and a compiler start, slow on a Pi and slower emulated), and its output, arriving
    in one read or two, made the runner's instruction counts vary from run to run."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real} {st.st_size} {st.st_mtime_ns}"


def _cpu_signature() -> str:
    """The CPU's model and feature lines, and the features this process really has (under
    qemu-user /proc/cpuinfo is the host's): a cache shared across boards must not hand a
    ``-march=native`` build to a CPU lacking its instructions."""
    features = " ".join(cpu_features() or [])
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return f"{platform.processor()}\n{features}"
    keys = ("model name", "flags", "features", "cpu implementer", "cpu part")
    seen = {}
    for line in lines:
        key = line.split(":", 1)[0].strip().lower()
        if key in keys and key not in seen:
            seen[key] = line
    return "\n".join([*(seen[k] for k in keys if k in seen), features])


def _cache_dir() -> Path:
    return Path(os.environ.get("FDQ_KERNEL_CACHE") or Path.home() / ".cache" / "fdq" / "kernels")


def _build(compiler: List[str], flag_sets: List[List[str]], target: Path) -> str:
    """Compile into ``target`` with the first flag set the compiler accepts; '' or the error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in flag_sets:
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=str(target.parent))
        os.close(fd)
        cmd = compiler + flags + [str(SOURCE_DIR / SOURCES[0]), "-o", tmp, "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return ""
            errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return "; ".join(errors)


@lru_cache(maxsize=1)
def _compiled() -> Optional[Kernels]:
    """Build (or find in the cache) and load the library once per process; warn once on failure."""
    compiler = _compiler()
    try:
        path = shutil.which(compiler[0]) if compiler else None
        if path is None:
            raise FileNotFoundError(f"compiler {compiler[0] if compiler else '(empty $CC)'!r} not found")
        flag_sets = [list(BASE_FLAGS) + _arch_flags(), list(BASE_FLAGS)]
        if flag_sets[0] == flag_sets[1]:
            flag_sets.pop()
        digest = hashlib.sha256()
        for name in SOURCES:
            digest.update((SOURCE_DIR / name).read_bytes())
        for part in ([_compiler_identity(path)] + compiler[1:]
                     + [" ".join(f) for f in flag_sets] + [platform.machine(), _cpu_signature()]):
            digest.update(part.encode() + b"\0")
        target = _cache_dir() / f"fdq_kernels-{platform.machine()}-{digest.hexdigest()[:16]}.so"
        if target.exists():
            try:
                return Kernels(target, built=False)
            except OSError:
                pass  # unreadable leftover: rebuild over it
        error = _build(compiler, flag_sets, target)
        if error:
            raise RuntimeError(f"build failed: {error}")
        return Kernels(target, built=True)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warnings.warn(f"fdq C kernels unavailable, using numpy ({exc})", RuntimeWarning, stacklevel=3)
        return None


def load_kernels() -> Optional[Kernels]:
    """The C kernels, or None when disabled (``FDQ_KERNELS=numpy``) or not buildable here."""
    if os.environ.get("FDQ_KERNELS", "").strip().lower() == "numpy":
        return None
    return _compiled()


def kernel_status() -> str:
    """``"c"`` or ``"numpy"``: which kernels this process runs (the runner's ``"kernels"`` field)."""
    return "c" if load_kernels() is not None else "numpy"


def normalize_c(resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """:func:`fdq.device.preprocess.normalize`, fused in C when available; identical output."""
    kernels = load_kernels()
    if kernels is None:
        return normalize(resized, mean_bgr)
    return kernels.normalize(resized, mean_bgr)


def quantize_input(resized: np.ndarray, mean_bgr: Sequence[float], scale: float, zero_point: int) -> np.ndarray:
    """numpy reference of the quantized input: ``torch.quantize_per_tensor`` of the normalized
    blob (multiply by ``1 / scale`` in float32, round half to even, add the zero point, saturate).

    Shape (1, 3, H, W) as a view of (1, H, W, 3) memory: channels-last, the layout quantized
    convolutions on x86 / onednn compute in, so the model's first one copies nothing. Computed in
    HWC order with the same float32 operations as :func:`normalize`, hence the same values.
    """
    mean = np.asarray(mean_bgr, dtype=np.float32).reshape(3)
    inv_scale = np.float32(1) / np.float32(scale)
    q = np.rint((resized.astype(np.float32, copy=False) - mean) * inv_scale) + np.float32(zero_point)
    # reshape, not [None]: a 0 batch stride makes torch's quantized tensor fall back to NCHW
    return np.clip(q, 0, 255).astype(np.uint8).reshape(1, *q.shape).transpose(0, 3, 1, 2)


def quantize_input_c(resized: np.ndarray, mean_bgr: Sequence[float], scale: float, zero_point: int) -> np.ndarray:
    """uint8 HWC -> quint8 model input (NCHW shape, channels-last memory) in one pass when the C
    kernels are available; identical to :func:`quantize_input` otherwise."""
    kernels = load_kernels()
    if kernels is None:
        return quantize_input(resized, mean_bgr, scale, zero_point)
    return kernels.quantize_input(resized, mean_bgr, scale, zero_point)


def quantized_normalizer(scale: float, zero_point: int) -> Callable[[np.ndarray, Sequence[float]], np.ndarray]:
    """The normalize step of a bundle whose model takes a quint8 input.

    A uint8 frame (a camera frame at the input size) goes straight to the quantized input in one
    pass, channels-last as the int8 convolutions want it; a float32 image (after the reference
    protocol's float resize) gives the float blob, which the runtime quantizes with the same scale
    and zero point: identical values either way.
    """
    def normalize_quantized(resized: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
        if resized.dtype == np.uint8:
            return quantize_input_c(resized, mean_bgr, scale, zero_point)
        return normalize_c(resized, mean_bgr)

    return normalize_quantized


def postprocess_c(loc: np.ndarray, scores: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                  variances: Sequence[float], input_size: Tuple[int, int], ratio: float,
                  score_threshold: float = 0.02, nms_threshold: float = 0.4) -> Detections:
    """:func:`fdq.device.postprocess.postprocess` in C when available, else that numpy function."""
    kernels = load_kernels()
    if kernels is None:
        return postprocess(loc, scores, landm, priors, variances, input_size, ratio,
                           score_threshold, nms_threshold)
    return kernels.postprocess(loc, scores, landm, priors, variances, input_size, ratio,
                               score_threshold, nms_threshold)
