"""WIDER FACE evaluation (easy / medium / hard AP), the official protocol vectorised in numpy.

The numbers match the reference script that most face detectors report with (RetinaFace
``widerface_evaluate/evaluation.py`` with its Cython ``bbox_overlaps``), bit for bit on the same
input, so our AP can be compared with published ones. Only numpy and the standard library are
imported at module level because this module also runs on the board; ``scipy`` is needed only to
read the official ``.mat`` files, and a board can use a JSON copy written by
:meth:`GroundTruth.to_json_dict` instead.

Protocol details kept on purpose (they change the AP):

* scores are min-max normalised over *all* predictions of the run, with the reference's starting
  values ``max = 0`` and ``min = 1`` (so scores that already lie in [0, 1] are stretched to fill it);
* IoU uses the ``+1`` pixel convention and a match needs IoU ``>= iou_threshold``;
* predictions are matched in file order (no sorting); a prediction whose best gt is a face that does
  not count in the setting is neither a true nor a false positive;
* 1000 score thresholds ``1 - (t + 1) / 1000``; ``0 / 0`` precision stays ``nan`` as in numpy.

One deliberate difference: an image of the ground truth that has no prediction entry counts as an
image with no detections (the reference raises ``KeyError``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .atomic import atomic_write_text

PathLike = Union[str, "os.PathLike[str]"]

SETTINGS = ("easy", "medium", "hard")
"""The three difficulty settings, in the order the reference prints them."""

MAT_FILES = {
    "face": "wider_face_val.mat",
    "easy": "wider_easy_val.mat",
    "medium": "wider_medium_val.mat",
    "hard": "wider_hard_val.mat",
}
"""The four official ground-truth files that a ground-truth folder must hold."""

JSON_FORMAT = "fdq.widerface_ground_truth"
JSON_VERSION = 1


class EvaluationError(ValueError):
    """Bad evaluation input (ground truth or predictions), with one message saying what and where."""


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------


@dataclass
class GroundTruth:
    """WIDER FACE ground truth, one entry per image in the official event / file order.

    ``keys[i]`` is ``"EVENT/NAME"`` (NAME without ``.jpg``), ``boxes[i]`` a (K, 4) float64 array of
    ``x, y, w, h`` and ``easy[i]`` / ``medium[i]`` / ``hard[i]`` the 1-based indices (int64, 1-D) of
    the boxes that count in that setting; the other boxes are "ignore" regions.
    """

    keys: list[str]
    boxes: list[np.ndarray]
    easy: list[np.ndarray]
    medium: list[np.ndarray]
    hard: list[np.ndarray]

    def __post_init__(self) -> None:
        # Normalise once here so that evaluation never has to care about .mat dtypes (uint8 indices,
        # int32 boxes) or (0, 0)-shaped empty cells.
        n = len(self.keys)
        for name in ("boxes",) + SETTINGS:
            if len(getattr(self, name)) != n:
                raise EvaluationError(
                    f"ground truth has {n} image keys but {len(getattr(self, name))} entries in {name!r}"
                )
        self.keys = [str(k) for k in self.keys]
        if len(set(self.keys)) != n:
            raise EvaluationError("ground truth has duplicate image keys")
        for key in self.keys:
            if key.count("/") != 1 or key.startswith("/") or key.endswith("/"):
                raise EvaluationError(f"ground-truth key {key!r} is not of the form 'EVENT/NAME'")
        boxes = []
        for key, b in zip(self.keys, self.boxes):
            arr = np.asarray(b, dtype=np.float64)
            if arr.size == 0:
                arr = np.zeros((0, 4), dtype=np.float64)
            elif arr.ndim != 2 or arr.shape[1] != 4:
                raise EvaluationError(f"ground-truth boxes of {key} have shape {arr.shape}, expected (K, 4)")
            boxes.append(arr)
        self.boxes = boxes
        for setting in SETTINGS:
            fixed = []
            for key, b, idx in zip(self.keys, self.boxes, getattr(self, setting)):
                arr = np.asarray(idx)
                if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
                    raise EvaluationError(f"{setting} indices of {key} are not integers")
                arr = arr.astype(np.int64).reshape(-1)
                if arr.size and (arr.min() < 1 or arr.max() > len(b)):
                    raise EvaluationError(
                        f"{setting} indices of {key} must lie in 1..{len(b)} (1-based), got {arr.min()}..{arr.max()}"
                    )
                fixed.append(arr)
            setattr(self, setting, fixed)

    @property
    def num_images(self) -> int:
        """Number of images in the ground truth."""
        return len(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def keep(self, setting: str) -> list[np.ndarray]:
        """1-based indices of the counted boxes per image for ``setting`` (easy, medium or hard)."""
        if setting not in SETTINGS:
            raise EvaluationError(f"unknown setting {setting!r}, expected one of {SETTINGS}")
        return getattr(self, setting)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain-JSON form, so a board without scipy can load the ground truth."""
        images = []
        for i, key in enumerate(self.keys):
            b = self.boxes[i]
            # The official boxes are integers: write them as ints (smaller file); else exact floats.
            box_list = b.astype(np.int64).tolist() if np.array_equal(b, np.trunc(b)) else b.tolist()
            entry: dict[str, Any] = {"key": key, "boxes": box_list}
            for setting in SETTINGS:
                entry[setting] = getattr(self, setting)[i].tolist()
            images.append(entry)
        return {"format": JSON_FORMAT, "version": JSON_VERSION, "images": images}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> GroundTruth:
        """Inverse of :meth:`to_json_dict`."""
        if not isinstance(data, Mapping) or data.get("format") != JSON_FORMAT:
            raise EvaluationError(f"not a ground-truth JSON document (expected format {JSON_FORMAT!r})")
        if data.get("version") != JSON_VERSION:
            raise EvaluationError(f"unsupported ground-truth JSON version {data.get('version')!r}")
        images = data.get("images")
        if not isinstance(images, list):
            raise EvaluationError("ground-truth JSON lacks the 'images' list")
        try:
            return cls(
                keys=[im["key"] for im in images],
                boxes=[np.asarray(im["boxes"], dtype=np.float64) for im in images],
                easy=[np.asarray(im["easy"], dtype=np.int64) for im in images],
                medium=[np.asarray(im["medium"], dtype=np.int64) for im in images],
                hard=[np.asarray(im["hard"], dtype=np.int64) for im in images],
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, EvaluationError):
                raise
            raise EvaluationError(f"malformed ground-truth JSON: {exc!r}") from None


def load_ground_truth(path: PathLike) -> GroundTruth:
    """Load the ground truth from a folder with the four official .mat files or from a .json file."""
    p = Path(path)
    if p.is_dir():
        return _load_mat_folder(p)
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise EvaluationError(
                f"{p}: expected a folder with {', '.join(MAT_FILES.values())} or a .json ground-truth file"
            )
        try:
            with open(p, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"cannot read ground-truth JSON {p}: {exc}") from None
        try:
            return GroundTruth.from_json_dict(data)
        except EvaluationError as exc:
            raise EvaluationError(f"{p}: {exc}") from None
    raise EvaluationError(f"ground truth not found: {p} (expected a folder of .mat files or a .json file)")


def save_ground_truth_json(gt: GroundTruth, path: PathLike) -> None:
    """Write ``gt.to_json_dict()`` to ``path`` atomically (for boards without scipy)."""
    text = json.dumps(gt.to_json_dict(), separators=(",", ":"))
    atomic_write_text(Path(path), text + "\n")


def _load_mat_folder(folder: Path) -> GroundTruth:
    """Read the four official .mat files the way the reference does (positional cell indexing)."""
    missing = [name for name in MAT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise EvaluationError(f"ground-truth folder {folder} lacks {', '.join(missing)}")
    try:
        from scipy.io import loadmat
    except ImportError:
        raise EvaluationError(
            "reading WIDER FACE .mat files needs scipy; convert them to JSON on the host "
            "(save_ground_truth_json) and load that instead"
        ) from None

    def read(name: str, variables: Sequence[str]) -> dict[str, Any]:
        path = folder / name
        try:
            mat = loadmat(str(path))
        except Exception as exc:  # scipy raises several unrelated types for corrupt files
            raise EvaluationError(f"cannot read {path}: {exc}") from None
        lacking = [v for v in variables if v not in mat]
        if lacking:
            raise EvaluationError(f"{path} is not a WIDER FACE ground-truth file: it lacks {', '.join(lacking)}")
        return mat

    face_path = folder / MAT_FILES["face"]
    face = read(MAT_FILES["face"], ("event_list", "file_list", "face_bbx_list"))
    settings = {s: read(MAT_FILES[s], ("gt_list",))["gt_list"] for s in SETTINGS}

    keys: list[str] = []
    boxes: list[np.ndarray] = []
    keep: dict[str, list[np.ndarray]] = {s: [] for s in SETTINGS}
    try:
        event_list = face["event_list"]
        file_list = face["file_list"]
        bbx_list = face["face_bbx_list"]
        n_events = len(event_list)
        if len(file_list) != n_events or len(bbx_list) != n_events:
            raise EvaluationError(
                f"{face_path}: event_list, file_list and face_bbx_list have different lengths "
                f"({n_events}, {len(file_list)}, {len(bbx_list)})"
            )
        for s in SETTINGS:
            if len(settings[s]) != n_events:
                raise EvaluationError(
                    f"{folder / MAT_FILES[s]}: gt_list has {len(settings[s])} events, {face_path} has {n_events}"
                )
        for i in range(n_events):
            event = str(event_list[i][0][0])
            files = file_list[i][0]
            bbx = bbx_list[i][0]
            if len(bbx) != len(files):
                raise EvaluationError(f"{face_path}: event {event} has {len(files)} files but {len(bbx)} box lists")
            subs = {s: settings[s][i][0] for s in SETTINGS}
            for s in SETTINGS:
                if len(subs[s]) != len(files):
                    raise EvaluationError(
                        f"{folder / MAT_FILES[s]}: event {event} has {len(subs[s])} entries, expected {len(files)}"
                    )
            for j in range(len(files)):
                keys.append(f"{event}/{files[j][0][0]}")
                b = np.asarray(bbx[j][0], dtype=np.float64)
                boxes.append(b.reshape(-1, 4) if b.size else np.zeros((0, 4)))
                for s in SETTINGS:
                    keep[s].append(np.asarray(subs[s][j][0]).reshape(-1))
    except EvaluationError:
        raise
    except (IndexError, TypeError, ValueError, AttributeError) as exc:
        raise EvaluationError(f"malformed WIDER FACE ground truth in {folder}: {exc!r}") from None
    try:
        return GroundTruth(keys=keys, boxes=boxes, easy=keep["easy"], medium=keep["medium"], hard=keep["hard"])
    except EvaluationError as exc:
        raise EvaluationError(f"{folder}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------------------------------


def to_wider_rows(boxes_xyxy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Detections as (N, 5) float64 ``x y w h score`` rows, converted like the reference writer.

    The reference writes ``int(x1), int(y1), int(x2) - int(x1), int(y2) - int(y1)``: truncation
    toward zero of each corner, not of the width. The score is the float32 score widened to float64.
    """
    b = np.asarray(boxes_xyxy)
    s = np.asarray(scores)
    if b.size == 0 and s.size == 0:
        return np.zeros((0, 5), dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise EvaluationError(f"boxes must have shape (N, 4), got {b.shape}")
    s = s.reshape(-1)
    if len(s) != len(b):
        raise EvaluationError(f"{len(b)} boxes but {len(s)} scores")
    t = np.trunc(b.astype(np.float64))
    rows = np.empty((len(b), 5), dtype=np.float64)
    rows[:, 0] = t[:, 0]
    rows[:, 1] = t[:, 1]
    rows[:, 2] = t[:, 2] - t[:, 0]
    rows[:, 3] = t[:, 3] - t[:, 1]
    rows[:, 4] = s.astype(np.float32).astype(np.float64)
    return rows


def _split_key(key: str) -> tuple[str, str]:
    parts = str(key).split("/")
    if len(parts) != 2 or not parts[0] or not parts[1] or parts[0] in (".", "..") or parts[1] in (".", ".."):
        raise EvaluationError(f"prediction key {key!r} is not of the form 'EVENT/NAME'")
    return parts[0], parts[1]


def _fmt_coord(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def write_prediction_file(folder: PathLike, key: str, rows: np.ndarray) -> Path:
    """Write ``folder/EVENT/NAME.txt`` in the official format; returns the path.

    Line 1 is NAME, line 2 the count, then ``x y w h score`` per row. Coordinates are written as
    ints (as floats only if a caller passes non-integral ones), the score with ``repr`` so that
    reading it back gives the same float64. Written to a temporary file then renamed, so a killed
    run never leaves a truncated file that would silently lower the AP.
    """
    event, name = _split_key(key)
    arr = _as_pred_array(rows, key)
    lines = [name, str(len(arr))]
    for x, y, w, h, score in arr.tolist():
        lines.append(f"{_fmt_coord(x)} {_fmt_coord(y)} {_fmt_coord(w)} {_fmt_coord(h)} {float(score)!r}")
    path = Path(folder) / event / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _read_prediction_file(path: Path) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read prediction file {path}: {exc}") from None
    if len(lines) < 2:
        raise EvaluationError(f"malformed prediction file {path}: expected a name line and a count line")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise EvaluationError(f"malformed prediction file {path}: line 2 {lines[1]!r} is not a box count") from None
    rows = []
    for n, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) < 5:
                raise ValueError
            rows.append([float(v) for v in fields[:5]])
        except ValueError:
            raise EvaluationError(
                f"malformed prediction file {path}: line {n} {line!r} is not 'x y w h score'"
            ) from None
    if len(rows) != count:
        raise EvaluationError(f"malformed prediction file {path}: header says {count} boxes, found {len(rows)}")
    if not rows:
        return np.zeros((0, 5), dtype=np.float64)
    return np.array(rows, dtype=np.float64)


def read_prediction_dir(folder: PathLike) -> dict[str, np.ndarray]:
    """Read every ``EVENT/*.txt`` of a prediction folder into ``{"EVENT/NAME": (N, 5) float64}``.

    The key comes from the file path (the reference uses the file's first line, which our writer
    makes identical).
    """
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationError(f"prediction folder not found: {root}")
    out: dict[str, np.ndarray] = {}
    for event_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(event_dir.glob("*.txt")):
            if path.is_file():
                out[f"{event_dir.name}/{path.stem}"] = _read_prediction_file(path)
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def _as_pred_array(value: Any, key: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)  # a copy: normalisation must not touch the caller's
    except (TypeError, ValueError):
        raise EvaluationError(f"predictions of {key} are not numeric") from None
    if arr.size == 0:
        return np.zeros((0, 5), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise EvaluationError(f"predictions of {key} have shape {arr.shape}, expected (N, 5) x y w h score")
    return arr


def _box_overlaps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, K) IoU of x1 y1 x2 y2 boxes, the reference ``bbox_overlaps`` (``+1`` pixel areas).

    Same float operations in the same order as the Cython loop, so the results are identical.
    """
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    area_g = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = iw * ih
    valid = (iw > 0) & (ih > 0)
    out = np.zeros(inter.shape, dtype=np.float64)
    ua = area_p[:, None] + area_g[None, :] - inter
    out[valid] = inter[valid] / ua[valid]
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (the reference ``voc_ap``; nan propagates like its loop)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    # The reference's backward loop of np.maximum is a reverse cumulative maximum (nan-propagating).
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _normalise_scores(preds: Mapping[str, np.ndarray]) -> None:
    """In-place min-max normalisation over all predictions, as the reference ``norm_score``."""
    max_score: Any = 0  # the reference starts from max 0 / min 1, not from the first score
    min_score: Any = 1
    for v in preds.values():
        if len(v) == 0:
            continue
        max_score = max(np.max(v[:, -1]), max_score)
        min_score = min(np.min(v[:, -1]), min_score)
    diff = max_score - min_score
    for v in preds.values():
        if len(v) == 0:
            continue
        v[:, -1] = (v[:, -1] - min_score) / diff


def evaluate(
    predictions: Mapping[str, np.ndarray],
    gt: GroundTruth,
    iou_threshold: float = 0.5,
    thresh_num: int = 1000,
) -> dict[str, Any]:
    """Official WIDER FACE AP for easy, medium and hard.

    ``predictions`` maps ``"EVENT/NAME"`` to (N, 5) ``x y w h score`` rows in file order (not
    modified). A ground-truth image without an entry counts as having no detections (the reference
    would raise ``KeyError``); entries for images outside the ground truth take part in the score
    normalisation (as in the reference) but in nothing else.

    Returns ``{"easy": ap, "medium": ap, "hard": ap, "images": n, "missing_images": m,
    "curves": {setting: {"precision": [...], "recall": [...]}}}`` where ``images`` counts the
    ground-truth images and ``missing_images`` those without a prediction entry; each curve has
    ``thresh_num`` points (thresholds ``1 - (t + 1) / thresh_num``), precision ``nan`` where no
    counted detection passes the threshold, exactly as the reference computes it.
    """
    thresh_num = int(thresh_num)
    if thresh_num < 1:
        raise EvaluationError(f"thresh_num must be >= 1, got {thresh_num}")
    preds = {str(k): _as_pred_array(v, str(k)) for k, v in predictions.items()}
    pr = {s: np.zeros((thresh_num, 2), dtype=np.int64) for s in SETTINGS}
    count_face = {s: 0 for s in SETTINGS}
    missing = 0
    # (t + 1) / thresh_num rounds identically in numpy and Python (one correctly rounded division).
    neg_thresh = -(1.0 - np.arange(1, thresh_num + 1, dtype=np.float64) / thresh_num)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _normalise_scores(preds)
        empty = np.zeros((0, 5), dtype=np.float64)
        for i, key in enumerate(gt.keys):
            pred = preds.get(key)
            if pred is None:
                missing += 1
                pred = empty
            gt_boxes = gt.boxes[i]
            for s in SETTINGS:
                count_face[s] += len(gt.keep(s)[i])
            n, k = len(pred), len(gt_boxes)
            if n == 0 or k == 0:
                continue

            p = pred[:, :4].copy()
            p[:, 2] += p[:, 0]
            p[:, 3] += p[:, 1]
            g = gt_boxes.copy()
            g[:, 2] += g[:, 0]
            g[:, 3] += g[:, 1]
            overlaps = _box_overlaps(p, g)
            best = overlaps.argmax(axis=1)  # first maximum, like ndarray.argmax in the reference
            matched = overlaps[np.arange(n), best] >= iou_threshold

            # Number of predictions whose score passes each threshold = 1 + last index with
            # score >= thresh: with the reverse cumulative max m (non-increasing), that is the count
            # of m >= thresh. fmax skips nan scores, which never pass a threshold.
            suffix_max = np.fmax.accumulate(pred[::-1, 4])[::-1]
            passed = np.searchsorted(-suffix_max, neg_thresh, side="right")

            for s in SETTINGS:
                counted = np.zeros(k, dtype=bool)
                counted[gt.keep(s)[i] - 1] = True
                hit = matched & counted[best]
                # proposal_list == 1 unless the prediction's best match is a face that is ignored.
                proposal_ok = ~(matched & ~counted[best])
                # recall_list: a counted face becomes 1 at its first matching prediction, so
                # pred_recall is the running count of "first match of a counted face".
                first = np.zeros(n, dtype=np.int64)
                hits = np.flatnonzero(hit)
                if hits.size:
                    _, first_pos = np.unique(best[hits], return_index=True)
                    first[hits[first_pos]] = 1
                tp_cum = np.concatenate(([0], np.cumsum(first)))
                prop_cum = np.concatenate(([0], np.cumsum(proposal_ok)))
                pr[s][:, 0] += prop_cum[passed]
                pr[s][:, 1] += tp_cum[passed]

        result: dict[str, Any] = {}
        curves: dict[str, dict[str, list]] = {}
        for s in SETTINGS:
            prf = pr[s].astype(np.float64)
            precision = prf[:, 1] / prf[:, 0]
            recall = prf[:, 1] / np.float64(count_face[s])
            result[s] = voc_ap(recall, precision)
            curves[s] = {"precision": precision.tolist(), "recall": recall.tolist()}
    result["images"] = gt.num_images
    result["missing_images"] = missing
    result["curves"] = curves
    return result
