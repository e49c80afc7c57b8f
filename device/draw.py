"""Annotate a frame with boxes, landmarks and scores (used by `fdq detect` and the camera demo)."""
from __future__ import annotations

from typing import Dict, Optional

import cv2
import numpy as np

from .postprocess import Detections

# One colour per landmark: left eye, right eye, nose, left and right mouth corners (BGR).
_LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def draw_detections(image: np.ndarray, dets: Detections, timings_ms: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Draw in place on a BGR uint8 image and return it."""
    thickness = max(1, round(max(image.shape[:2]) / 500))
    for box, score, points in zip(dets.boxes, dets.scores, dets.landmarks):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), thickness)
        cv2.putText(image, f"{score:.2f}", (x1, max(12, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, (255, 255, 255), max(1, thickness // 2), cv2.LINE_AA)
        for (px, py), colour in zip(points.reshape(-1, 2), _LANDMARK_COLOURS):  # none without landmarks
            cv2.circle(image, (int(round(px)), int(round(py))), thickness + 1, colour, -1)
    if timings_ms:
        total = timings_ms.get("total", 0.0)
        lines = [f"FPS {1000.0 / total:.1f}" if total > 0 else "FPS -"]
        lines += [f"{k} {v:.1f} ms" for k, v in timings_ms.items()]
        for i, text in enumerate(lines):
            cv2.putText(image, text, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1, cv2.LINE_AA)
    return image
