"""One frame through the whole pipeline: preprocess -> inference -> decode -> NMS, timed per stage.

The inference step is any callable from a float32 NCHW array to the tuple of arrays the spec's
decoder reads (:mod:`fdq.device.decoders`; ssd-priors: ``(loc, scores, landmarks)``), so the eager
model on the host and every runtime on the board share this code. Normalization and ssd-priors'
decode + NMS use the board-compiled C kernels when they load (identical results, see
``fdq.device.kernels``), else the fastest numpy path that reproduces the reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .decoders import Decoder, build_decoder
from .kernels import normalize_c
from .postprocess import Detections, PostprocessFn
from .preprocess import RESIZERS, SCALERS, letterbox, pad_bottom_right
from .spec import DetectorSpec

# Batch-of-one NCHW blob -> the decoder's outputs (ssd-priors: loc (N, 4), scores (N,), landmarks (N, 10)).
# The blob is float32, or the uint8 quantized input of an int8 bundle, an NCHW-shaped view that may be
# channels-last in memory: never assume it is C-contiguous.
InferenceFn = Callable[[np.ndarray], Tuple[np.ndarray, ...]]
NormalizeFn = Callable[[np.ndarray, Sequence[float]], np.ndarray]


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad an HWC image at the bottom and right so both sides are multiples of ``multiple``."""
    height, width = image.shape[:2]
    return pad_bottom_right(image, height + -height % multiple, width + -width % multiple)


def network_input(resized: np.ndarray, spec: DetectorSpec, multiple: int,
                  normalize: NormalizeFn = normalize_c) -> Tuple[np.ndarray, Tuple[int, int]]:
    """The network input of a resized BGR image as ``spec`` describes it (zero-padded to ``multiple``,
    mean, std, channel order), and that input's (width, height)."""
    padded = pad_to_multiple(resized, multiple)
    blob = normalize(padded, spec.mean_bgr)
    if spec.std_bgr != (1.0, 1.0, 1.0):
        blob = blob / np.asarray(spec.std_bgr, dtype=np.float32).reshape(1, 3, 1, 1)
    if spec.channels == "rgb":
        blob = np.ascontiguousarray(blob[:, ::-1])
    return blob, (padded.shape[1], padded.shape[0])


@dataclass
class FaceDetector:
    """Face detection around an inference function, decoded by the spec's decoder."""

    infer: InferenceFn
    spec: DetectorSpec
    long_side: int = 320
    score_threshold: float = 0.02
    nms_threshold: float = 0.4
    last_timings_ms: Dict[str, float] = field(default_factory=dict)
    # ssd-priors: a name for its select_postprocess ("auto": the fastest path equal to the reference) or a
    # function. The path taken lands in ``kernels``: "c", "numpy+cv2", "numpy", or the given function's name.
    postprocess: Union[str, PostprocessFn] = "auto"
    # normalize_c equals preprocess.normalize exactly and falls back to it without the C kernels.
    normalize: NormalizeFn = normalize_c
    # "reference": the evaluation protocol's float32 resize (fdq eval --model reproduces published AP);
    # "uint8": the device path's fixed-point resize (every bundle detector). See fdq.device.preprocess.
    resize: str = "reference"
    # A model of one input size (height, width): frames are letterboxed into it (fdq.device.preprocess.letterbox)
    # and ``long_side`` is its longer side; None: resized by ``long_side``, any size.
    fixed_hw: Optional[Tuple[int, int]] = None
    kernels: str = field(init=False)
    decoder: Decoder = field(init=False)

    def __post_init__(self) -> None:
        if self.resize not in RESIZERS:
            raise ValueError(f"unknown resize {self.resize!r} (choose from: {', '.join(RESIZERS)})")
        if self.fixed_hw is not None and self.long_side != max(self.fixed_hw):
            raise ValueError(f"a model of fixed input {self.fixed_hw[1]}x{self.fixed_hw[0]} runs at long side "
                             f"{max(self.fixed_hw)}, not {self.long_side}")
        self.decoder = build_decoder(self.spec, self.postprocess)
        self.kernels = self.decoder.kernels

    def preprocess(self, resized: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
        """The network input of a resized BGR image, and that input's (width, height)."""
        return network_input(resized, self.spec, self.decoder.input_multiple, self.normalize)

    def fit(self, image_bgr: np.ndarray) -> Tuple[np.ndarray, float]:
        """The frame at the network's size (resized by the long side, or letterboxed into a fixed size) and
        the ratio boxes are divided by to go back."""
        if self.fixed_hw is not None:
            return letterbox(image_bgr, self.fixed_hw, SCALERS[self.resize])
        return RESIZERS[self.resize](image_bgr, self.long_side)

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Faces in an original-size BGR uint8 image; per-stage times land in ``last_timings_ms``."""
        t0 = time.perf_counter()
        resized, ratio = self.fit(image_bgr)
        blob, input_size = self.preprocess(resized)
        t1 = time.perf_counter()
        outputs = self.infer(blob)
        t2 = time.perf_counter()
        dets = self.decoder.decode(outputs, input_size, ratio, self.score_threshold, self.nms_threshold)
        t3 = time.perf_counter()
        self.last_timings_ms = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                                "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return dets
