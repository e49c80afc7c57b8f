"""WIDER FACE ground truth -> per-image training boxes for quantization-aware fine-tuning.

Accepted label sources (all in the original image pixels, ``x y w h`` per face):

* a folder with the four official ``.mat`` files (read with :func:`fdq.device.evaluation.load_ground_truth`;
  the ``invalid_label_list`` of ``wider_face_val.mat`` is honoured when present),
* a ``.json`` ground truth written by :func:`fdq.device.evaluation.save_ground_truth_json`,
* the official text layout ``wider_face_*_bbx_gt.txt`` (path line, count line, ``x y w h blur expression
  illumination invalid occlusion pose`` per face),
* an already loaded :class:`~fdq.device.evaluation.GroundTruth`.

Training boxes are corners ``(x1, y1, x2, y2)`` in original pixels; faces flagged invalid, with a
non-positive width or height, or smaller than ``min_size`` pixels are dropped. Labels that do not
describe the image folder (an image without an entry, or boxes far outside the image) raise one
:class:`LabelError` line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fdq.device.evaluation import GroundTruth, load_ground_truth

LabelSource = Union[str, "os.PathLike[str]", GroundTruth]

#: A box may stick out of its image by this fraction of the image size before the labels are
#: considered to belong to other images (WIDER boxes touch the border; restored images differ by <1 %).
OUTSIDE_TOLERANCE = 0.05


class LabelError(ValueError):
    """Labels that cannot be used with the given images (one line saying why)."""


def _read_bbx_txt(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """The official text layout -> ({key: (K,4) x y w h}, {key: (K,) invalid flags})."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read labels {path}: {exc}") from None
    boxes: Dict[str, np.ndarray] = {}
    invalid: Dict[str, np.ndarray] = {}
    i = 0
    try:
        while i < len(lines):
            if not lines[i]:
                i += 1
                continue
            name = lines[i]
            count = int(lines[i + 1])
            rows = [lines[i + 2 + j].split() for j in range(max(count, 0))]
            # The official file writes one all-zero line for an image with no faces.
            i += 2 + (count if count > 0 else 1)
            key = name[:-len(Path(name).suffix)] if Path(name).suffix else name
            arr = np.array([[float(v) for v in r[:4]] for r in rows], dtype=np.float64).reshape(-1, 4)
            inv = np.array([int(r[7]) if len(r) > 7 else 0 for r in rows], dtype=bool)
            boxes[key] = arr
            invalid[key] = inv
    except (IndexError, ValueError):
        raise LabelError(f"malformed labels file {path} near line {i + 1}: expected 'NAME', 'COUNT', "
                         "then COUNT lines 'x y w h ...'") from None
    return boxes, invalid


def _invalid_from_mat(folder: Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """Invalid flags of ``wider_face_val.mat`` in the same positional order as ``load_ground_truth``."""
    try:
        from scipy.io import loadmat
        mat = loadmat(str(folder / "wider_face_val.mat"))
        flags = mat["invalid_label_list"]
        out: List[np.ndarray] = []
        for i in range(len(flags)):
            for cell in flags[i][0]:
                out.append(np.asarray(cell[0]).reshape(-1).astype(bool))
    except Exception:  # optional information: a missing variable just means "no invalid faces"
        return {}
    if len(out) != len(keys):
        return {}
    return dict(zip(keys, out))


def read_labels(source: LabelSource) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Raw labels: ({"EVENT/NAME": (K, 4) x y w h}, {"EVENT/NAME": (K,) bool invalid})."""
    if isinstance(source, GroundTruth):
        return {k: np.asarray(b, np.float64) for k, b in zip(source.keys, source.boxes)}, {}
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _read_bbx_txt(path)
    if not path.exists():
        raise LabelError(f"labels not found: {path} (expected a ground-truth folder, .json or *_bbx_gt.txt)")
    try:
        gt = load_ground_truth(path)
    except ValueError as exc:
        if path.is_dir():
            txt = sorted(path.glob("*_bbx_gt.txt"))
            if txt:
                return _read_bbx_txt(txt[0])
        raise LabelError(f"cannot use labels {path}: {exc}") from None
    invalid = _invalid_from_mat(path, gt.keys) if path.is_dir() else {}
    return {k: np.asarray(b, np.float64) for k, b in zip(gt.keys, gt.boxes)}, invalid


def training_boxes(xywh: np.ndarray, invalid: Optional[np.ndarray] = None, min_size: float = 2.0) -> np.ndarray:
    """(K, 4) ``x y w h`` -> (M, 4) float32 ``x1 y1 x2 y2`` of the usable faces."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    keep = (b[:, 2] > 0) & (b[:, 3] > 0) & (np.minimum(b[:, 2], b[:, 3]) >= min_size)
    if invalid is not None and len(invalid) == len(b):
        keep &= ~np.asarray(invalid, dtype=bool)
    b = b[keep]
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)


def load_labels(source: LabelSource, image_keys: Iterable[str],
                image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
                min_size: float = 2.0) -> Dict[str, np.ndarray]:
    """Per-image training boxes (x1, y1, x2, y2 original pixels) for exactly ``image_keys``.

    ``image_sizes`` maps a key to the image's (height, width); when given, boxes far outside
    their image mean the labels describe other images. Labels for images that are not in the
    folder are ignored (a full-split ground truth can label a subset folder).
    """
    keys = list(image_keys)
    raw, invalid = read_labels(source)
    missing = [k for k in keys if k not in raw]
    if missing:
        raise LabelError(f"{len(missing)} of {len(keys)} images have no labels in {_name(source)} "
                         f"(first: {missing[0]}); the labels must describe the same images (EVENT/NAME keys)")
    out: Dict[str, np.ndarray] = {}
    for key in keys:
        xywh = raw[key]
        if image_sizes is not None and key in image_sizes and len(xywh):
            height, width = image_sizes[key]
            right = float(np.max(xywh[:, 0] + xywh[:, 2]))
            bottom = float(np.max(xywh[:, 1] + xywh[:, 3]))
            if right > width * (1 + OUTSIDE_TOLERANCE) or bottom > height * (1 + OUTSIDE_TOLERANCE):
                raise LabelError(f"labels of {key} reach ({right:.0f}, {bottom:.0f}) but the image is "
                                 f"{width}x{height}: the labels in {_name(source)} describe other images")
        out[key] = training_boxes(xywh, invalid.get(key), min_size)
    return out


def subset_ground_truth(gt: GroundTruth, keys: Iterable[str]) -> GroundTruth:
    """The ground truth of ``keys`` only (for an AP on held-back images), in ``gt``'s order."""
    wanted = set(keys)
    idx = [i for i, k in enumerate(gt.keys) if k in wanted]
    if len(idx) != len(wanted):
        lacking = sorted(wanted - {gt.keys[i] for i in idx})
        raise LabelError(f"{len(lacking)} images have no ground truth (first: {lacking[0]})")
    return GroundTruth(keys=[gt.keys[i] for i in idx], boxes=[gt.boxes[i] for i in idx],
                       easy=[gt.easy[i] for i in idx], medium=[gt.medium[i] for i in idx],
                       hard=[gt.hard[i] for i in idx])


def ground_truth_of(source: LabelSource) -> Optional[GroundTruth]:
    """The evaluation ground truth (with easy / medium / hard) of a label source, or None for a .txt."""
    if isinstance(source, GroundTruth):
        return source
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".txt":
        return None
    try:
        return load_ground_truth(path)
    except ValueError:
        return None


def _name(source: LabelSource) -> str:
    return "the given ground truth" if isinstance(source, GroundTruth) else str(source)
