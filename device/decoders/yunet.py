"""``yunet``: the anchor-free decoding of YuNet (libfacedetection), as OpenCV's ``cv2.FaceDetectorYN`` does it.

Per stride s in ``steps`` (8, 16, 32) the graph has ``cls_s``, ``obj_s`` (sigmoid inside the graph),
``bbox_s`` (dx, dy, dw, dh) and ``kps_s`` (5 points) over the cells of a (H/s, W/s) grid, row-major.
The input is zero-padded at the bottom and right to a multiple of the largest stride. A cell's score
is sqrt(clip(cls) * clip(obj)); its box centre is ((col + dx) * s, (row + dy) * s), its size
(exp(dw) * s, exp(dh) * s); its points (col + px) * s, (row + py) * s. Candidates above the score
threshold go through ``cv2.dnn.NMSBoxes`` on integer-truncated (x, y, w, h) rects with ``top_k``, as
FaceDetectorYN does, so the kept set is OpenCV's.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

from ..postprocess import Detections, PostprocessFn
from ..spec import DetectorSpec
from .registry import Decoder, OutputMismatch, Outputs, register

KINDS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}  # output kind -> values per cell


@register("yunet")
class YuNet(Decoder):
    kernels = "numpy+cv2"

    def __init__(self, spec: DetectorSpec, postprocess: Union[str, PostprocessFn] = "auto") -> None:
        super().__init__(spec)
        if not spec.steps:
            raise OutputMismatch("decoder yunet needs its strides (spec steps)")
        self.strides = tuple(int(s) for s in spec.steps)
        self.input_multiple = max(self.strides)

    @staticmethod
    def output_roles(spec: DetectorSpec) -> Tuple[str, ...]:
        return tuple(f"{kind}_{s}" for kind in KINDS for s in spec.steps)

    @staticmethod
    def params(spec: DetectorSpec) -> Dict[str, object]:
        return {"steps": list(spec.steps), "top_k": spec.top_k}

    @staticmethod
    def split(outputs: Sequence[np.ndarray]) -> Outputs:
        levels = len(outputs) // len(KINDS)
        widths = [w for w in KINDS.values() for _ in range(levels)]
        return tuple(np.asarray(o, dtype=np.float32).reshape(-1, w) for o, w in zip(outputs, widths))

    def decode(self, outputs: Outputs, input_size: Tuple[int, int], ratio: float,
               score_threshold: float, nms_threshold: float) -> Detections:
        width, height = input_size
        n = len(self.strides)
        boxes: List[np.ndarray] = []
        points: List[np.ndarray] = []
        scores: List[np.ndarray] = []
        threshold = np.float32(score_threshold)
        for i, stride in enumerate(self.strides):
            cls, obj, bbox, kps = (outputs[i + k * n] for k in range(len(KINDS)))
            cols = width // stride
            if cls.shape[0] != (height // stride) * cols:
                raise ValueError(f"yunet output cls_{stride} has {cls.shape[0]} cells, a {width}x{height} input "
                                 f"gives {(height // stride) * cols}: the bundle and its manifest disagree")
            score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
            idx = np.flatnonzero(score > threshold)  # NMSBoxes keeps only scores above the threshold
            s = np.float32(stride)
            col = (idx % cols).astype(np.float32)[:, None]
            row = (idx // cols).astype(np.float32)[:, None]
            b = bbox[idx]
            centre = (np.concatenate([col, row], axis=1) + b[:, :2]) * s
            size = np.exp(b[:, 2:]) * s
            top_left = centre - size / np.float32(2)
            boxes.append(np.concatenate([top_left, size], axis=1))
            k = kps[idx].reshape(-1, 5, 2)
            points.append(((k + np.concatenate([col, row], axis=1)[:, None, :]) * s).reshape(-1, 10))
            scores.append(score[idx])
        xywh, landmarks, score = (np.concatenate(a) for a in (boxes, points, scores))
        if score.size == 0:
            return Detections(np.zeros((0, 4), np.float32), score, landmarks)
        rects = np.trunc(xywh).astype(np.float64)  # FaceDetectorYN's Rect2i(int(x), int(y), int(w), int(h))
        keep = np.asarray(cv2.dnn.NMSBoxes(rects, score, float(threshold), float(nms_threshold), 1.0,
                                           int(self.spec.top_k)), dtype=np.int64).reshape(-1)
        corners = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        r = np.float32(ratio)
        return Detections(corners[keep] / r, score[keep], landmarks[keep] / r)
