"""Calibration image folders: the exact inference preprocessing, and what the manifest records.

Images go through :func:`fdq.device.preprocess.resize_image` and ``normalize`` at the bundle's long
side, so the observers see the very distribution the device will feed. The manifest gets the
image count and a sha256 of the sorted relative file list: enough to tell later which images a
bundle was calibrated on, without copying them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from fdq.device.images import IMAGE_SUFFIXES, list_images, read_image
from fdq.device.preprocess import normalize, resize_image

HOLDOUT_EVERY = 4


class CalibrationDataError(ValueError):
    """A calibration folder that cannot be used (missing, empty, unreadable)."""


@dataclass(frozen=True)
class CalibrationImages:
    """The images of a calibration folder: ``keys`` are relative paths without suffix (``EVENT/NAME``)."""

    root: Path
    keys: Tuple[str, ...]
    paths: Tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: Sequence[int]) -> "CalibrationImages":
        return CalibrationImages(self.root, tuple(self.keys[i] for i in indices),
                                 tuple(self.paths[i] for i in indices))

    def file_list_sha256(self) -> str:
        """sha256 of the sorted relative file names, one per line (UTF-8)."""
        names = sorted(p.relative_to(self.root).as_posix() for p in self.paths)
        return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()

    def manifest(self) -> Dict[str, Any]:
        return {"images": len(self), "file_list_sha256": self.file_list_sha256()}

    def load(self, long_side: int, mean_bgr: Sequence[float]) -> Tuple[List[torch.Tensor], Dict[str, Tuple[int, int]]]:
        """Network inputs (1, 3, H, W) preprocessed exactly as at inference, and each image's (height, width)."""
        blobs: List[torch.Tensor] = []
        sizes: Dict[str, Tuple[int, int]] = {}
        for key, path in zip(self.keys, self.paths):
            image = read_image(path)
            sizes[key] = (int(image.shape[0]), int(image.shape[1]))
            resized, _ = resize_image(image, long_side)
            blobs.append(torch.from_numpy(normalize(resized, mean_bgr)))
        return blobs, sizes


def find_images(folder: str) -> CalibrationImages:
    """Every image below ``folder`` (sorted); one-line :class:`CalibrationDataError` if there is none."""
    try:
        items = list_images(folder)
    except FileNotFoundError:
        raise CalibrationDataError(f"calibration folder not found: {folder}") from None
    except ValueError:
        raise CalibrationDataError(f"calibration folder {folder} holds no images "
                                   f"({', '.join(IMAGE_SUFFIXES)})") from None
    return CalibrationImages(Path(folder), tuple(k for k, _ in items), tuple(p for _, p in items))


def split_holdout(images: CalibrationImages, every: int = HOLDOUT_EVERY) -> Tuple[CalibrationImages, CalibrationImages]:
    """(calibrate-on, held-back) split: every ``every``-th image is held back for the float-vs-int8 report.

    With fewer than ``every`` images nothing can be spared: both parts are the whole folder, and
    the report says its numbers are in-sample.
    """
    if len(images) < every:
        return images, images
    held: List[int] = [i for i in range(len(images)) if i % every == every - 1]
    kept = [i for i in range(len(images)) if i % every != every - 1]
    return images.subset(kept), images.subset(held)
