"""WIDER FACE training data: labelled images, the reference augmentation, anchor targets per image.

The augmentation is the one these models were trained with (biubug6 Face-Detector-1MB-with-landmark /
Pytorch_Retinaface ``data/data_augment.py``), step by step:

1. :func:`crop`: a random square of 0.3-1.0 of the short side (250 tries) that holds at least one whole
   face; faces whose centre falls outside are dropped, the others clipped to it (landmarks too);
2. :func:`distort`: brightness, contrast, saturation and hue, in one of the two reference orders;
3. :func:`pad_to_square` (with the mean colour) when no crop was found;
4. :func:`mirror`: horizontal flip half of the time, the left/right landmark pairs (eyes, mouth
   corners) swapped;
5. :func:`resize_subtract_mean`: to ``size`` x ``size`` with a random interpolation, BGR mean subtracted.

Randomness comes from one ``numpy`` generator per (seed, epoch, image index), so a sample is the same
whatever the number of DataLoader workers or processes, and a resumed run sees exactly the samples the
interrupted one would have seen.

Faces flagged invalid, and faces smaller than ``min_face`` pixels at the training size, take part in
no loss: they are carried through the augmentation, and the anchors that the matching would make
their positives are neither positives nor (mined) negatives (``valid`` False).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fdq.device.anchors import prior_boxes
from fdq.device.images import list_images, read_image
from fdq.device.spec import DetectorSpec

from .labels import FaceLabels, LabelError, LabelSource, read_faces, unlabelled_error
from .losses import match

#: Square crop sizes, as fractions of the image's short side (the reference's PRE_SCALES).
CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIES = 250
#: Interpolations the reference picks from at random when resizing to the training size.
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
#: Landmark order: left eye, right eye, nose, left mouth corner, right mouth corner; a mirror swaps
#: the pairs (0, 1) and (3, 4).
MIRROR_ORDER = (1, 0, 2, 4, 3)


@dataclass
class Faces:
    """Faces of one image in pixels: corners, landmarks (-1 where absent), and whether they count."""

    boxes: np.ndarray       # (K, 4) float32 x1 y1 x2 y2
    landmarks: np.ndarray   # (K, 10) float32
    used: np.ndarray        # (K,) bool: False for invalid (or too small) faces, which take part in no loss

    def subset(self, keep: np.ndarray) -> "Faces":
        return Faces(self.boxes[keep], self.landmarks[keep], self.used[keep])

    @classmethod
    def of_labels(cls, labels: FaceLabels) -> "Faces":
        xywh = labels.xywh.astype(np.float32)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).reshape(-1, 4)
        used = ~labels.invalid & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        return cls(boxes, labels.landmarks.astype(np.float32).copy(), used)

    @classmethod
    def none(cls) -> "Faces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 10), np.float32), np.zeros(0, bool))


def has_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(K,) bool: the face has its five points (the WIDER convention marks absent ones with -1)."""
    return (landmarks >= 0).all(axis=1)


# --------------------------------------------------------------------------------------------------
# Augmentation (each step takes the generator it draws from)
# --------------------------------------------------------------------------------------------------


def _iof(boxes: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Fraction of each box's area inside ``roi`` (x1 y1 x2 y2)."""
    lt = np.maximum(boxes[:, :2], roi[:2])
    rb = np.minimum(boxes[:, 2:], roi[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area, 1e-12)


def crop(image: np.ndarray, faces: Faces,
         rng: np.random.Generator) -> Tuple[np.ndarray, Faces, Optional[np.ndarray]]:
    """A random square crop holding at least one whole used face; (image, faces, roi x1 y1 x2 y2).

    Faces are kept by their centre and clipped to the crop; without such a crop (in 250 tries, or an
    image without faces) the image is returned unchanged and ``roi`` is None.
    """
    height, width = image.shape[:2]
    short = min(width, height)
    if not faces.used.any():
        return image, faces, None
    centers = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    for _ in range(CROP_TRIES):
        w = int(CROP_SCALES[int(rng.integers(len(CROP_SCALES)))] * short)
        left = 0 if width == w else int(rng.integers(width - w))
        top = 0 if height == w else int(rng.integers(height - w))
        roi = np.array([left, top, left + w, top + w], dtype=np.float32)
        if not (_iof(faces.boxes[faces.used], roi) >= 1).any():
            continue
        inside = ((roi[:2] < centers) & (centers < roi[2:])).all(axis=1)
        if not (inside & faces.used).any():
            continue
        kept = faces.subset(inside)
        boxes = kept.boxes.copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], roi[:2]) - roi[:2]
        boxes[:, 2:] = np.minimum(boxes[:, 2:], roi[2:]) - roi[:2]
        landm = kept.landmarks.copy()
        present = has_landmarks(landm)
        points = landm[present].reshape(-1, 5, 2) - roi[:2]
        landm[present] = np.clip(points, 0, roi[2:] - roi[:2]).reshape(-1, 10)
        return image[top:top + w, left:left + w], Faces(boxes, landm, kept.used), roi
    return image, faces, None


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    channel[:] = np.clip(channel.astype(np.float64) * alpha + beta, 0, 255)


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric distortion of a BGR uint8 image: brightness +-32, contrast and saturation x0.5-1.5,
    hue +-18; contrast before or after the colour changes (one of the reference's two orders)."""
    image = image.copy()
    coin = lambda: bool(rng.integers(2))   # noqa: E731  (the reference's random.randrange(2))
    contrast_first = coin()
    if coin():
        _convert(image, beta=float(rng.uniform(-32, 32)))
    if contrast_first and coin():
        _convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if coin():
        _convert(hsv[:, :, 1], alpha=float(rng.uniform(0.5, 1.5)))
    if coin():
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(rng.integers(-18, 19))) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and coin():
        _convert(image, alpha=float(rng.uniform(0.5, 1.5)))
    return image


def pad_to_square(image: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """The image in the top-left corner of a square of the mean colour (boxes stay where they are)."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:] = np.asarray(mean_bgr, dtype=image.dtype)
    out[:height, :width] = image
    return out


def mirror_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """(K, 4) x1 y1 x2 y2 boxes of an image ``width`` pixels wide, flipped horizontally."""
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def mirror(image: np.ndarray, faces: Faces, rng: np.random.Generator) -> Tuple[np.ndarray, Faces]:
    """Horizontal flip half of the time; boxes and landmarks follow, left/right landmark pairs swapped."""
    if not rng.integers(2):
        return image, faces
    width = image.shape[1]
    boxes = mirror_boxes(faces.boxes, width)
    landm = faces.landmarks.copy()
    present = has_landmarks(landm)
    points = landm[present].reshape(-1, 5, 2)
    points[:, :, 0] = width - points[:, :, 0]
    landm[present] = points[:, list(MIRROR_ORDER)].reshape(-1, 10)
    return np.ascontiguousarray(image[:, ::-1]), Faces(boxes, landm, faces.used)


def resize_subtract_mean(image: np.ndarray, size: int, mean_bgr: Sequence[float],
                         rng: Optional[np.random.Generator]) -> np.ndarray:
    """``size`` x ``size`` float32 HWC, mean subtracted; the interpolation is random with ``rng``."""
    method = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))] if rng is not None else cv2.INTER_LINEAR
    out = cv2.resize(image, (size, size), interpolation=method).astype(np.float32)
    return out - np.asarray(mean_bgr, dtype=np.float32)


def augment(image: np.ndarray, faces: Faces, size: int, mean_bgr: Sequence[float],
            rng: Optional[np.random.Generator]) -> Tuple[np.ndarray, Faces]:
    """The reference training transform (``rng`` None: only pad to square and resize, for evaluation).

    Returns the (size, size, 3) mean-subtracted float32 image and the faces in its pixels.
    """
    roi = None
    if rng is not None:
        image, faces, roi = crop(image, faces, rng)
        image = distort(image, rng)
    if roi is None:
        image = pad_to_square(image, mean_bgr)
    if rng is not None:
        image, faces = mirror(image, faces, rng)
    scale = size / image.shape[0]
    landm = faces.landmarks.copy()
    present = has_landmarks(landm)
    landm[present] *= scale
    out = Faces(faces.boxes * scale, landm, faces.used)
    return resize_subtract_mean(image, size, mean_bgr, rng), out


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelledImage:
    key: str
    path: Path
    faces: Faces


def labelled_images(images_dir: str, labels: Optional[LabelSource]) -> List[LabelledImage]:
    """Every image below ``images_dir`` with its faces (no faces without ``labels``), sorted by key.

    Images the labels do not mention are an error (one line), so are labels of no image at all:
    a full-split label file may label a subset folder.
    """
    try:
        found = list_images(images_dir)
    except FileNotFoundError:
        raise LabelError(f"image folder not found: {images_dir}") from None
    if labels is None:
        return [LabelledImage(key, path, Faces.none()) for key, path in found]
    faces = read_faces(labels)
    missing = [key for key, _ in found if key not in faces]
    if missing:
        raise unlabelled_error(missing, len(found), str(images_dir), str(labels), faces)
    return [LabelledImage(key, path, Faces.of_labels(faces[key])) for key, path in found]


class WiderFaceTraining(Dataset):
    """Augmented training samples with their anchor targets, computed in the DataLoader's workers.

    A sample is a dict of tensors: ``image`` (3, S, S), ``loc`` (N, 4), ``labels`` (N,), ``landm``
    (N, 10), ``landm_valid`` (N,), ``valid`` (N,) (False: the anchor belongs to a face that takes part
    in no loss), and ``index``. ``augment=False`` gives the unaugmented, square-padded image.
    """

    def __init__(self, items: Sequence[LabelledImage], spec: DetectorSpec, size: int, *, seed: int = 0,
                 augment: bool = True, min_face: float = 2.0, match_threshold: float = 0.35) -> None:
        self.items = list(items)
        self.spec = spec
        self.size = size
        self.seed = seed
        self.augment = augment
        self.min_face = min_face
        self.match_threshold = match_threshold
        self.epoch = 0
        self.priors = torch.from_numpy(np.array(prior_boxes(spec.min_sizes, spec.steps, size, size, spec.clip),
                                                dtype=np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Samples depend on (seed, epoch, index) only; call before iterating a new epoch."""
        self.epoch = epoch

    def sample(self, index: int) -> Tuple[np.ndarray, Faces]:
        """The augmented (size, size, 3) image and its faces in training pixels."""
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        image, faces = augment(read_image(item.path), item.faces, self.size, self.spec.mean_bgr, rng)
        small = np.minimum(faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1]) < self.min_face
        return image, Faces(faces.boxes, faces.landmarks, faces.used & ~small)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image, faces = self.sample(index)
        norm = np.float32(self.size)
        used = faces.subset(faces.used)
        landm = used.landmarks.copy()
        landm[has_landmarks(landm)] /= norm
        t = match(torch.from_numpy(used.boxes / norm), self.priors, self.match_threshold,
                  landmarks=torch.from_numpy(landm))
        # the anchors an ignored face would make positive are neither positives nor negatives
        claimed = match(torch.from_numpy(faces.boxes[~faces.used] / norm), self.priors, self.match_threshold).labels
        valid = ~((claimed > 0) & (t.labels == 0))
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "loc": t.loc,
                "labels": t.labels, "landm": t.landm, "landm_valid": t.landm_valid, "valid": valid,
                "index": torch.tensor(index)}
