"""WIDER FACE ground truth -> per-image training boxes (and landmarks) for training and fine-tuning.

Accepted label sources (all in the original image pixels, ``x y w h`` per face):

* a folder with the four official ``.mat`` files (read with :func:`fdq.device.evaluation.load_ground_truth`;
  the ``invalid_label_list`` of ``wider_face_val.mat`` is honoured when present),
* a ``.json`` ground truth written by :func:`fdq.device.evaluation.save_ground_truth_json`,
* the official text layout ``wider_face_*_bbx_gt.txt`` (path line, count line, ``x y w h blur expression
  illumination invalid occlusion pose`` per face),
* the RetinaFace ``label.txt`` layout (``# EVENT/NAME.jpg`` lines, then ``x y w h`` and five landmarks per
  face, -1 where absent), as a file or a folder holding it (:func:`read_faces` keeps the landmarks),
* an already loaded :class:`~fdq.device.evaluation.GroundTruth`.

Training boxes are corners ``(x1, y1, x2, y2)`` in original pixels; faces flagged invalid, with a
non-positive width or height, or smaller than ``min_size`` pixels are dropped. Labels that do not
describe the image folder (an image without an entry, or boxes far outside the image) raise one
:class:`LabelError` line; so does a corrupt line of a text file, naming the file and the line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fdq.device.evaluation import GroundTruth, load_ground_truth
from fdq.device.images import folder_down

LabelSource = Union[str, "os.PathLike[str]", GroundTruth]

#: A box may stick out of its image by this fraction of the image size before the labels are
#: considered to belong to other images (WIDER boxes touch the border; restored images differ by <1 %).
OUTSIDE_TOLERANCE = 0.05


class LabelError(ValueError):
    """Labels that cannot be used with the given images (one line saying why)."""


@dataclass
class FaceLabels:
    """The faces of one image as the label file gives them (original pixels)."""

    xywh: np.ndarray        # (K, 4) float64 x y w h
    landmarks: np.ndarray   # (K, 10) float32 x0 y0 ... x4 y4; -1 where the file gives none
    invalid: np.ndarray     # (K,) bool: flagged invalid by the file

    @classmethod
    def of_boxes(cls, xywh: np.ndarray, invalid: Optional[np.ndarray] = None) -> "FaceLabels":
        b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
        inv = np.zeros(len(b), bool) if invalid is None or len(invalid) != len(b) else np.asarray(invalid, bool)
        return cls(b, np.full((len(b), 10), -1.0, np.float32), inv)


def _corrupt(path: Path, line: int, what: str) -> LabelError:
    return LabelError(f"corrupt labels {path} line {line}: {what}")


def _read_lines(path: Path) -> List[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read labels {path}: {exc}") from None


def _numbers(path: Path, line: int, text: str, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise _corrupt(path, line, f"expected {what}, got {text[:60]!r}") from None
    if not all(np.isfinite(values)):
        raise _corrupt(path, line, f"expected finite numbers ({what}), got {text[:60]!r}")
    return values


def _key(name: str) -> str:
    suffix = Path(name).suffix
    return name[:-len(suffix)] if suffix else name


def _read_bbx_txt(path: Path) -> Dict[str, FaceLabels]:
    """The official text layout: ``NAME``, ``COUNT``, then COUNT lines ``x y w h blur expression
    illumination invalid occlusion pose`` (one all-zero line for an image without faces)."""
    lines = _read_lines(path)
    out: Dict[str, FaceLabels] = {}
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        name = lines[i]
        if i + 1 >= len(lines) or not lines[i + 1].lstrip("-").isdigit():
            raise _corrupt(path, i + 2, f"expected the face count of {name}")
        count = int(lines[i + 1])
        if count < 0:
            raise _corrupt(path, i + 2, f"negative face count {count}")
        rows = []
        for j in range(max(count, 1)):
            n = i + 2 + j
            if n >= len(lines):
                raise _corrupt(path, n + 1, f"file ends inside the faces of {name} ({count} announced)")
            values = _numbers(path, n + 1, lines[n], "'x y w h ...'")
            if len(values) < 4:
                raise _corrupt(path, n + 1, f"expected at least 'x y w h', got {len(values)} value(s)")
            rows.append(values)
        rows = rows[:count]
        i += 2 + max(count, 1)
        xywh = np.array([r[:4] for r in rows], dtype=np.float64).reshape(-1, 4)
        out[_key(name)] = FaceLabels.of_boxes(xywh, np.array([r[7] > 0 if len(r) > 7 else False for r in rows], bool))
    return out


#: Landmark columns of a RetinaFace ``label.txt`` face line with visibility flags:
#: x y w h, then (lx ly flag) for the 5 points, then a confidence.
_RETINA_POINTS = (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)


def _read_retinaface_txt(path: Path) -> Dict[str, FaceLabels]:
    """The RetinaFace ``label.txt`` layout: ``# EVENT/NAME.jpg``, then one line per face: ``x y w h``,
    optionally 5 landmarks as ``lx ly`` (14 values) or ``lx ly flag`` plus a confidence (19-20 values);
    landmark coordinates of -1 mean "no landmarks"."""
    lines = _read_lines(path)
    out: Dict[str, FaceLabels] = {}
    key: Optional[str] = None
    rows: List[List[float]] = []

    def flush() -> None:
        if key is None:
            return
        xywh = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
        landm = np.array([r[1] for r in rows], dtype=np.float32).reshape(-1, 10)
        landm[(landm < 0).any(axis=1)] = -1.0
        out[key] = FaceLabels(xywh, landm, np.zeros(len(rows), bool))

    for n, text in enumerate(lines, start=1):
        if not text:
            continue
        if text.startswith("#"):
            flush()
            key, rows = _key(text[1:].strip()), []
            if not key:
                raise _corrupt(path, n, "expected '# EVENT/NAME.jpg'")
            continue
        if key is None:
            raise _corrupt(path, n, "a face line before the first '# EVENT/NAME.jpg' line")
        values = _numbers(path, n, text, "'x y w h [landmarks]'")
        if len(values) == 4:
            points = [-1.0] * 10
        elif len(values) == 14:
            points = values[4:14]
        elif len(values) in (19, 20):
            points = [values[c] for c in _RETINA_POINTS]
        else:
            raise _corrupt(path, n, f"expected 4, 14 or 19-20 values (x y w h [landmarks]), got {len(values)}")
        rows.append([values[:4], points])
    flush()
    return out


def _is_retinaface_txt(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.lstrip().startswith("#")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot read labels {path}: {exc}") from None
    return False


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


def read_faces(source: LabelSource) -> Dict[str, FaceLabels]:
    """Every image's faces from any accepted source (see the module docstring), keyed ``EVENT/NAME``."""
    if isinstance(source, GroundTruth):
        return {k: FaceLabels.of_boxes(b) for k, b in zip(source.keys, source.boxes)}
    path = Path(source)
    if path.is_dir() and (path / "label.txt").is_file():
        path = path / "label.txt"
    if path.is_file() and path.suffix.lower() == ".txt":
        return _read_retinaface_txt(path) if _is_retinaface_txt(path) else _read_bbx_txt(path)
    if not path.exists():
        raise LabelError(f"labels not found: {path} (expected a ground-truth folder, .json, *_bbx_gt.txt "
                         "or label.txt)")
    try:
        gt = load_ground_truth(path)
    except ValueError as exc:
        if path.is_dir():
            txt = sorted(path.glob("*_bbx_gt.txt"))
            if txt:
                return _read_bbx_txt(txt[0])
        raise LabelError(f"cannot use labels {path}: {exc}") from None
    invalid = _invalid_from_mat(path, gt.keys) if path.is_dir() else {}
    return {k: FaceLabels.of_boxes(b, invalid.get(k)) for k, b in zip(gt.keys, gt.boxes)}


def read_labels(source: LabelSource) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Raw labels: ({"EVENT/NAME": (K, 4) x y w h}, {"EVENT/NAME": (K,) bool invalid})."""
    faces = read_faces(source)
    return {k: f.xywh for k, f in faces.items()}, {k: f.invalid for k, f in faces.items()}


def training_boxes(xywh: np.ndarray, invalid: Optional[np.ndarray] = None, min_size: float = 2.0) -> np.ndarray:
    """(K, 4) ``x y w h`` -> (M, 4) float32 ``x1 y1 x2 y2`` of the usable faces."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    keep = (b[:, 2] > 0) & (b[:, 3] > 0) & (np.minimum(b[:, 2], b[:, 3]) >= min_size)
    if invalid is not None and len(invalid) == len(b):
        keep &= ~np.asarray(invalid, dtype=bool)
    b = b[keep]
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)


def unlabelled_error(missing: Sequence[str], total: int, where: str, labels: str,
                     labelled: Collection[str]) -> LabelError:
    """The one line for images the labels do not name; when the split's root was given for its image
    folder, it names the folder to give instead (:func:`fdq.device.images.folder_down`)."""
    down = folder_down(missing, labelled) if where else None
    hint = f"; the images are one folder down: give {Path(where) / down} instead" if down else ""
    place = f" in {where}" if where else ""
    return LabelError(f"{len(missing)} of {total} images{place} have no labels in {labels} "
                      f"(first: {missing[0]}); the labels must describe the same images (EVENT/NAME keys){hint}")


def load_labels(source: LabelSource, image_keys: Iterable[str],
                image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
                min_size: float = 2.0, images_dir: str = "") -> Dict[str, np.ndarray]:
    """Per-image training boxes (x1, y1, x2, y2 original pixels) for exactly ``image_keys`` (of the
    folder ``images_dir``, named in errors).

    ``image_sizes`` maps a key to the image's (height, width); when given, boxes far outside
    their image mean the labels describe other images. Labels for images that are not in the
    folder are ignored (a full-split ground truth can label a subset folder).
    """
    keys = list(image_keys)
    raw, invalid = read_labels(source)
    missing = [k for k in keys if k not in raw]
    if missing:
        raise unlabelled_error(missing, len(keys), images_dir, _name(source), raw)
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
