"""YuNet, the tiny detector users would pick instead of fdq's, run as its README says is fair."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Tuple

import cv2
import numpy as np


def yunet_detect(onnx_path: Path) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """``detect(resized BGR) -> (boxes xyxy, scores)`` in the image's pixels: OpenCV's
    ``FaceDetectorYN`` with score threshold 0.02, NMS 0.3, top-k 5000, input size set per image."""
    net = cv2.FaceDetectorYN.create(str(onnx_path), "", (320, 320), score_threshold=0.02,
                                    nms_threshold=0.3, top_k=5000)

    def detect(resized: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        net.setInputSize((resized.shape[1], resized.shape[0]))
        _, faces = net.detect(resized)
        if faces is None:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes = faces[:, 0:4].copy()
        boxes[:, 2:] += boxes[:, :2]
        return boxes, faces[:, 14].astype(np.float32)
    return detect
