"""``ssd-priors``: SSD / RetinaFace anchor decoding, the family of fdq's own three models.

Parameters (spec fields): ``min_sizes`` per level, ``steps`` (the levels' strides), ``variance`` and
``clip``. The outputs are ``loc`` (N, 4), ``conf`` (N, 2, softmaxed) and ``landm`` (N, 10). Decoding
and NMS run in the board-compiled C kernels when they load, else the fastest numpy path that
reproduces the reference (:func:`select_postprocess`).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np

from ..anchors import prior_boxes
from ..kernels import load_kernels, postprocess_c
from ..postprocess import Detections, PostprocessFn, cv2_nms_agrees, postprocess, postprocess_cv2
from ..spec import DetectorSpec
from .registry import Decoder, OutputMismatch, Outputs, register

ROLES = ("loc", "conf", "landm")


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


def split_outputs(loc: np.ndarray, conf: np.ndarray, landm: np.ndarray) -> Outputs:
    """Model outputs with or without the batch axis -> (N,4) loc, (N,) face score, (N,10) landmarks."""
    loc = np.asarray(loc, dtype=np.float32).reshape(-1, 4)
    conf = np.asarray(conf, dtype=np.float32).reshape(-1, 2)
    landm = np.asarray(landm, dtype=np.float32).reshape(-1, 10)
    if not (loc.shape[0] == conf.shape[0] == landm.shape[0]):
        raise OutputMismatch(f"model outputs disagree on the anchor count: loc {loc.shape}, conf {conf.shape}, "
                             f"landm {landm.shape}")
    return loc, np.ascontiguousarray(conf[:, 1]), landm


@register("ssd-priors")
class SsdPriors(Decoder):
    """Prior boxes per input size (cached), then decode + NMS by the chosen postprocess."""

    def __init__(self, spec: DetectorSpec, postprocess: Union[str, PostprocessFn] = "auto") -> None:
        super().__init__(spec)
        if isinstance(postprocess, str):
            self.postprocess, self.kernels = select_postprocess(postprocess)
        else:
            self.postprocess = postprocess
            self.kernels = getattr(postprocess, "__name__", type(postprocess).__name__)

    @staticmethod
    def output_roles(spec: DetectorSpec) -> Tuple[str, ...]:
        return ROLES

    @staticmethod
    def params(spec: DetectorSpec) -> Dict[str, object]:
        return {"min_sizes": [list(s) for s in spec.min_sizes], "steps": list(spec.steps),
                "variance": list(spec.variance), "clip": spec.clip}

    @staticmethod
    def split(outputs: Sequence[np.ndarray]) -> Outputs:
        return split_outputs(*outputs)

    def decode(self, outputs: Outputs, input_size: Tuple[int, int], ratio: float,
               score_threshold: float, nms_threshold: float) -> Detections:
        loc, scores, landm = outputs
        width, height = input_size
        spec = self.spec
        priors = prior_boxes(spec.min_sizes, spec.steps, height, width, spec.clip)
        if loc.shape[0] != priors.shape[0]:
            raise ValueError(f"model predicts {loc.shape[0]} anchors but the spec gives {priors.shape[0]} "
                             f"for a {width}x{height} input: the bundle and its manifest disagree")
        return self.postprocess(loc, scores, landm, priors, spec.variance, input_size, ratio,
                                score_threshold, nms_threshold)
