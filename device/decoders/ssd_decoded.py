"""``ssd-decoded``: an SSD face detector whose graph ends in its own decoding, as Linzaer's
Ultra-Light-Fast-Generic-Face-Detector files (``version-slim-320.onnx``, ``version-RFB-320.onnx``,
exported with ``is_test=True``) do.

Outputs: ``scores`` (N, 2), softmax over (background, face), and ``boxes`` (N, 4), corners x1, y1, x2, y2
normalised to [0, 1] by the network input's width and height (the priors and variances live inside the
graph, so the spec holds none). No landmarks: :class:`Detections` carries (K, 0) ones. Threshold and NMS
are ssd-priors' (:func:`fdq.device.postprocess.postprocess_decoded`), with the NMS of the path
:func:`~fdq.device.decoders.ssd_priors.select_postprocess` picks: the C kernels' ``fdq_nms``,
``cv2.dnn.NMSBoxes`` or the numpy reference, which keep the same boxes.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np

from ..kernels import load_kernels
from ..postprocess import Detections, NmsFn, PostprocessFn, nms_keep, nms_keep_cv2, postprocess_decoded
from ..spec import DetectorSpec
from .registry import Decoder, OutputMismatch, Outputs, register
from .ssd_priors import select_postprocess

ROLES = ("scores", "boxes")


def _nms(path: str) -> NmsFn:
    """The NMS of a postprocess path named by :func:`select_postprocess` (``"c"`` only when the kernels load)."""
    if path == "c":
        return load_kernels().nms
    return nms_keep_cv2 if path == "numpy+cv2" else nms_keep


@register("ssd-decoded")
class SsdDecoded(Decoder):
    """Face column of ``scores``, ``boxes`` scaled to pixels, then threshold + NMS."""

    def __init__(self, spec: DetectorSpec, postprocess: Union[str, PostprocessFn] = "auto") -> None:
        super().__init__(spec)
        # A postprocess function is ssd-priors' (it decodes priors): this decoder takes the automatic NMS then.
        _, self.kernels = select_postprocess(postprocess if isinstance(postprocess, str) else "auto")
        self.suppress = _nms(self.kernels)

    @staticmethod
    def output_roles(spec: DetectorSpec) -> Tuple[str, ...]:
        return ROLES

    @staticmethod
    def params(spec: DetectorSpec) -> Dict[str, object]:
        return {}

    @staticmethod
    def split(outputs: Sequence[np.ndarray]) -> Outputs:
        """(1, N, 2) scores and (1, N, 4) boxes (or without the batch axis) -> (N,) face score, (N, 4) boxes."""
        scores, boxes = (np.asarray(o, dtype=np.float32) for o in outputs)
        if scores.shape[-1:] != (2,) or boxes.shape[-1:] != (4,):
            raise OutputMismatch(f"decoder ssd-decoded reads scores (1, N, 2) and boxes (1, N, 4); got scores "
                                 f"{scores.shape}, boxes {boxes.shape}")
        scores, boxes = scores.reshape(-1, 2), boxes.reshape(-1, 4)
        if scores.shape[0] != boxes.shape[0]:
            raise OutputMismatch(f"model outputs disagree on the box count: scores {scores.shape}, boxes {boxes.shape}")
        return np.ascontiguousarray(scores[:, 1]), boxes

    def decode(self, outputs: Outputs, input_size: Tuple[int, int], ratio: float,
               score_threshold: float, nms_threshold: float) -> Detections:
        scores, boxes = outputs
        return postprocess_decoded(boxes, scores, input_size, ratio, score_threshold, nms_threshold, self.suppress)
