"""AP as every benchmark reports it: the WIDER protocol's easy / medium / hard, in points."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Union

from fdq.device.detector import FaceDetector, InferenceFn
from fdq.device.evaluation import SETTINGS
from fdq.host.evaluate import evaluate_detector
from fdq.models import SPECS


def points(result: Mapping[str, Any], digits: int = 2) -> Dict[str, float]:
    """The three settings of an evaluation (fractions) in points, rounded to ``digits``."""
    return {s: round(100.0 * float(result[s]), digits) for s in SETTINGS}


def score_detector(detector: FaceDetector, images: Union[str, Path], gt: Any, digits: int = 2) -> Dict[str, float]:
    """AP of ``detector`` over a folder of images (``fdq eval``'s code path)."""
    return points(evaluate_detector(detector, str(images), gt), digits)


def score(infer: InferenceFn, model: str, long_side: int, images: Union[str, Path], gt: Any,
          resize: str = "reference", digits: int = 2) -> Dict[str, float]:
    """AP of an inference function of ``model`` in the detector's pipeline at ``long_side``."""
    return score_detector(FaceDetector(infer, SPECS[model], long_side=long_side, resize=resize), images, gt, digits)
