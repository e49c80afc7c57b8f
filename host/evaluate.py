"""Run a detector over a WIDER-layout image folder and score it with the official protocol."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from fdq.calibration.progress import track
from fdq.device.detector import FaceDetector
from fdq.device.evaluation import GroundTruth, evaluate, to_wider_rows, write_prediction_file
from fdq.device.images import folder_down, list_images, read_image
from fdq.device.outputs import atomic_folder, write_marker


def predict_folder(detector: FaceDetector, images_dir: str, gt: Optional[GroundTruth] = None) -> Dict[str, np.ndarray]:
    """Official-format rows (x, y, w, h, score) per ``EVENT/NAME`` key; with ``gt``, a folder that lacks
    some of its images is one error before anything runs."""
    images = list_images(images_dir)
    if gt is not None:
        found = {key for key, _ in images}
        missing = [key for key in gt.keys if key not in found]
        if missing:
            down = folder_down(found, set(gt.keys))
            where = f"{Path(images_dir) / down}, one folder down" if down else "the split the ground truth describes"
            raise ValueError(f"{len(missing)} ground-truth images are not in {images_dir} "
                             f"(first: {missing[0]}); point --images at {where}")
    predictions: Dict[str, np.ndarray] = {}
    for key, path in track(images, f"fdq: detecting on {images_dir}"):
        dets = detector.detect(read_image(path))
        predictions[key] = to_wider_rows(dets.boxes, dets.scores)
    return predictions


def write_predictions(predictions: Dict[str, np.ndarray], folder: str, force: bool = False) -> None:
    """The official prediction layout (``EVENT/NAME.txt``), all files or none (fdq.device.outputs' rule)."""
    with atomic_folder(folder, force, "--predictions-out") as tmp:
        for key, rows in predictions.items():
            write_prediction_file(tmp, key, rows)
        write_marker(tmp, {"command": "fdq eval --predictions-out", "images": len(predictions)})


def evaluate_detector(detector: FaceDetector, images_dir: str, gt: GroundTruth,
                      predictions_out: Optional[str] = None, force: bool = False) -> dict:
    """AP per setting for the detector on the folder's images, plus the wall time it took."""
    start = time.perf_counter()
    predictions = predict_folder(detector, images_dir, gt)
    if predictions_out:
        write_predictions(predictions, predictions_out, force)
    result = evaluate(predictions, gt)
    result["seconds"] = time.perf_counter() - start
    return result
