"""One frame through the whole pipeline: preprocess -> inference -> decode -> NMS, timed per stage.

The inference step is any callable from a float32 NCHW array to ``(loc, scores, landmarks)``
numpy arrays, so the eager model on the host and every runtime on the board share this code.
Normalization and decode + NMS use the board-compiled C kernels when they load (identical
results, see ``fdq.device.kernels``), else the fastest numpy path that reproduces the reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np

from .anchors import prior_boxes
from .kernels import load_kernels, normalize_c, postprocess_c
from .postprocess import Detections, PostprocessFn, cv2_nms_agrees, postprocess, postprocess_cv2
from .preprocess import RESIZERS
from .spec import DetectorSpec

# Batch-of-one NCHW blob -> (loc (N, 4), scores (N,), landmarks (N, 10)). The blob is float32, or the
# uint8 quantized input of an int8 bundle, an NCHW-shaped view that may be channels-last in memory:
# never assume it is C-contiguous.
InferenceFn = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]
NormalizeFn = Callable[[np.ndarray, Sequence[float]], np.ndarray]


def select_postprocess(prefer: str = "auto") -> Tuple[PostprocessFn, str]:
    """The postprocess function to run and its name: ``"c"``, ``"numpy+cv2"`` or ``"numpy"``.

    ``"auto"`` takes the C kernels when they load (scripts/bench_kernels.py measures them faster
    than numpy + NMSBoxes on real outputs), else NMSBoxes if it agrees with the reference here,
    else the numpy reference. An explicit name that cannot run here raises ``RuntimeError``.
    """
    if prefer not in ("auto", "c", "numpy+cv2", "numpy"):
        raise ValueError(f"unknown postprocess '{prefer}' (choose from: auto, c, numpy+cv2, numpy)")
    if prefer in ("auto", "c") and load_kernels() is not None:
        return postprocess_c, "c"
    if prefer == "c":
        raise RuntimeError("C kernels requested but unavailable (FDQ_KERNELS=numpy or no compiler)")
    if prefer in ("auto", "numpy+cv2") and cv2_nms_agrees():
        return postprocess_cv2, "numpy+cv2"
    if prefer == "numpy+cv2":
        raise RuntimeError("cv2.dnn.NMSBoxes does not reproduce the reference NMS with this OpenCV")
    return postprocess, "numpy"


@dataclass
class FaceDetector:
    """Reference-protocol face detection around an inference function."""

    infer: InferenceFn
    spec: DetectorSpec
    long_side: int = 320
    score_threshold: float = 0.02
    nms_threshold: float = 0.4
    last_timings_ms: Dict[str, float] = field(default_factory=dict)
    # A name for select_postprocess ("auto": the fastest path equal to the reference) or a function.
    # The path taken lands in ``kernels``: "c", "numpy+cv2", "numpy", or the given function's name.
    postprocess: Union[str, PostprocessFn] = "auto"
    # normalize_c equals preprocess.normalize exactly and falls back to it without the C kernels.
    normalize: NormalizeFn = normalize_c
    # "reference": the evaluation protocol's float32 resize (fdq eval --model reproduces published AP);
    # "uint8": the device path's fixed-point resize (every bundle detector). See fdq.device.preprocess.
    resize: str = "reference"
    kernels: str = field(init=False)

    def __post_init__(self) -> None:
        if self.resize not in RESIZERS:
            raise ValueError(f"unknown resize {self.resize!r} (choose from: {', '.join(RESIZERS)})")
        if isinstance(self.postprocess, str):
            self.postprocess, self.kernels = select_postprocess(self.postprocess)
        else:
            self.kernels = getattr(self.postprocess, "__name__", type(self.postprocess).__name__)

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Faces in an original-size BGR uint8 image; per-stage times land in ``last_timings_ms``."""
        t0 = time.perf_counter()
        resized, ratio = RESIZERS[self.resize](image_bgr, self.long_side)
        blob = self.normalize(resized, self.spec.mean_bgr)
        t1 = time.perf_counter()
        loc, scores, landm = self.infer(blob)
        t2 = time.perf_counter()
        height, width = resized.shape[:2]
        priors = prior_boxes(self.spec.min_sizes, self.spec.steps, height, width, self.spec.clip)
        if loc.shape[0] != priors.shape[0]:
            raise ValueError(f"model predicts {loc.shape[0]} anchors but the spec gives {priors.shape[0]} "
                             f"for a {width}x{height} input: the bundle and its manifest disagree")
        dets = self.postprocess(loc, scores, landm, priors, self.spec.variance, (width, height), ratio,
                                self.score_threshold, self.nms_threshold)
        t3 = time.perf_counter()
        self.last_timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                                "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return dets
