"""Finding and reading images: one clear error instead of OpenCV's silent ``None``."""
from __future__ import annotations

from pathlib import Path
from typing import Collection, Iterable, List, Optional, Tuple

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: str) -> List[Tuple[str, Path]]:
    """(key, path) for every image below ``folder``, sorted; key is the relative path without suffix.

    For a WIDER-layout folder the key is ``EVENT/NAME``, the name the evaluator matches.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return [(p.relative_to(root).with_suffix("").as_posix(), p) for p in found]


def folder_down(keys: Iterable[str], known: Collection[str]) -> Optional[str]:
    """The one folder every key of ``keys`` sits under when dropping it leaves a ``known`` key (a WIDER
    split's root given for its ``images/`` folder keys ``images/EVENT/NAME``), else None: the folder to
    name in the error."""
    heads = set()
    for key in keys:
        head, _, rest = key.partition("/")
        if not rest or rest not in known:
            return None
        heads.add(head)
    return heads.pop() if len(heads) == 1 else None


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image; raises instead of returning None for a missing or undecodable file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image: {path}")
    return image
