"""What an export starts from: the float model a bundle came from, the calibration images, and the
example and verification inputs (every format traces and checks at the same sizes).

The float model comes from the weights the bundle records (``quantization.weights``: a path and/or
sha256), else from the zoo (``fdq.host.zoo.resolve_weights``); ``weights=`` overrides both.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
from torch import nn

from fdq.device.bundle import Bundle, sha256_file
from fdq.device.images import list_images, read_image
from fdq.device.decoders import build_decoder
from fdq.device.detector import network_input
from fdq.device.preprocess import normalize, resize_image
from fdq.device.spec import DetectorSpec

PathLike = Union[str, Path]


def _recorded_weights(bundle: Bundle) -> Tuple[Optional[str], Optional[str]]:
    q = bundle.manifest.get("quantization")
    w = q.get("weights") if isinstance(q, dict) else None
    if isinstance(w, str):
        return w, None
    if isinstance(w, dict):
        return (str(w["path"]) if w.get("path") else None), (str(w["sha256"]) if w.get("sha256") else None)
    return None, None


def float_weights(bundle: Bundle, weights: Optional[PathLike] = None) -> Tuple[Path, Dict[str, Any]]:
    """The float weights file for ``bundle`` and a record of where it came from."""
    from fdq.host import zoo

    name = str(bundle.manifest["model"]["name"])
    if weights is not None:
        path = zoo.resolve_weights(name, str(weights))
        return path, {"path": str(Path(path).resolve()), "sha256": sha256_file(path), "source": "argument"}
    rec_path, rec_sha = _recorded_weights(bundle)
    if rec_path and Path(rec_path).is_file():
        digest = sha256_file(Path(rec_path))
        if rec_sha and digest != rec_sha:
            raise ValueError(f"weights {rec_path} recorded in bundle {bundle.path} no longer match their sha256 "
                             f"{rec_sha}")
        return Path(rec_path), {"path": str(Path(rec_path).resolve()), "sha256": digest, "source": "bundle manifest"}
    if rec_sha:
        for entry in zoo.ZOO.values():
            if entry.sha256 == rec_sha:
                path = zoo.fetch(entry.name)
                return path, {"path": str(path), "sha256": rec_sha, "source": f"zoo {entry.name} (by sha256)"}
        raise ValueError(f"bundle {bundle.path} records weights {rec_path or ''} sha256 {rec_sha[:12]}... that are "
                         f"neither on disk nor in the zoo; pass weights=")
    if rec_path:
        raise ValueError(f"weights {rec_path} recorded in bundle {bundle.path} not found; pass weights=")
    path = zoo.resolve_weights(name, None)
    return path, {"path": str(path), "sha256": sha256_file(path), "source": f"zoo {name}"}


def float_model(bundle: Bundle, weights: Optional[PathLike] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The float eager model a bundle was made from (its spec must match the bundle's)."""
    from fdq.models import SPECS, load_model

    name = str(bundle.manifest["model"]["name"])
    if name not in SPECS:
        raise ValueError(f"bundle {bundle.path} holds model {name!r}, which fdq.models does not define")
    if SPECS[name].to_dict() != bundle.spec.to_dict():
        raise ValueError(f"bundle {bundle.path}: its {name} spec differs from fdq.models' (anchors or steps changed)")
    path, info = float_weights(bundle, weights)
    return load_model(name, path), info


def calibration_images(calib_dir: PathLike, limit: Optional[int] = None) -> Tuple[List[Path], Dict[str, Any]]:
    """Sorted calibration image paths and their record (count, sha256 of the sorted list and contents)."""
    try:
        items = list_images(str(calib_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"calibration: {exc}") from None
    if limit is not None:
        if limit < 1:
            raise ValueError(f"calibration image limit must be >= 1, got {limit}")
        items = items[:limit]
    root = Path(calib_dir)
    rel = [p.relative_to(root).as_posix() for _, p in items]
    content = hashlib.sha256()
    for _, p in items:
        content.update(bytes.fromhex(sha256_file(p)))
    info = {"images": len(items), "dir": str(root.resolve()),
            "list_sha256": hashlib.sha256("\n".join(rel).encode("utf-8")).hexdigest(),
            "content_sha256": content.hexdigest(),
            "list_note": "sha256 of the sorted relative paths joined by newlines; content: of the files' sha256s in that order"}
    return [p for _, p in items], info


def preprocessed(paths: List[Path], long_side: int, mean_bgr, spec: Optional[DetectorSpec] = None) -> Iterator[np.ndarray]:
    """Network inputs exactly as the runner makes them (resize to the long side, subtract the mean, NCHW);
    with ``spec``, as that spec's detector makes them (its padding, std and channel order too)."""
    multiple = build_decoder(spec).input_multiple if spec is not None else 1
    for path in paths:
        resized, _ = resize_image(read_image(path), long_side)
        yield normalize(resized, mean_bgr) if spec is None else network_input(resized, spec, multiple, normalize)[0]


def example_hw(long_side: int) -> Tuple[int, int]:
    """The (height, width) an export traces at: 4:3 at ``long_side``."""
    return max(8, long_side * 3 // 4), long_side


def verification_inputs(long_side: int) -> List[np.ndarray]:
    """Three random inputs of different sizes around ``long_side`` that every export is checked on."""
    rng = np.random.default_rng(0)
    h, w = example_hw(long_side)
    shapes = [(h, w), (w, max(8, w * 2 // 3)), (max(8, h - 37), max(8, w - 13))]
    return [(rng.standard_normal((1, 3, a, b)) * 60).astype(np.float32) for a, b in shapes]


def image_inputs(long_side: int, mean_bgr) -> List[np.ndarray]:
    """Blobs of random 8-bit images at the verification sizes: integer-valued like every real input,
    so both models quantize the input identically (noise would flip input roundings at ties)."""
    rng = np.random.default_rng(0)
    return [normalize(rng.integers(0, 256, (b.shape[2], b.shape[3], 3), dtype=np.uint8), mean_bgr)
            for b in verification_inputs(long_side)]
