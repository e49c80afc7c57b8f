"""Reading and verifying artifact bundles (a folder: model file(s), report, ``manifest.yaml``).

The manifest is written last, so a folder without one is an incomplete bundle. Every file it
lists is checked (size and sha256) before anything is loaded: a number measured on the board
must come from exactly the artifact the host produced.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from .decoders import DECODERS
from .spec import DetectorSpec

SCHEMA = "fdq.bundle/1"
MANIFEST = "manifest.yaml"
RUNTIMES = ("torchscript", "onnxruntime", "ncnn", "mnn", "executorch")
# The Python module each runtime imports (what a board must have to run such a bundle).
RUNTIME_MODULES = {"torchscript": "torch", "onnxruntime": "onnxruntime", "ncnn": "ncnn", "mnn": "MNN",
                   "executorch": "executorch"}


class BundleError(ValueError):
    """An incomplete, tampered or unsupported bundle."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder and parsed manifest."""

    path: Path
    manifest: Dict[str, Any]

    @property
    def spec(self) -> DetectorSpec:
        return DetectorSpec.from_dict(self.manifest["model"]["spec"])

    @property
    def runtime(self) -> str:
        return str(self.manifest["runtime"])

    @property
    def engine(self) -> Any:
        return self.manifest.get("backend", {}).get("engine")

    @property
    def long_side(self) -> int:
        return int(self.manifest["input"]["long_side"])

    @property
    def fixed_hw(self) -> Optional[Tuple[int, int]]:
        """(height, width) of a model that takes one input size only (``input.fixed_hw``), else None."""
        fixed = (self.manifest.get("input") or {}).get("fixed_hw")
        return (int(fixed[0]), int(fixed[1])) if fixed else None

    def file(self, role: str) -> Path:
        """Path of the file the manifest names for ``role`` (for example ``model``)."""
        name = self.manifest.get("entry", {}).get(role)
        if not name:
            raise BundleError(f"bundle {self.path} has no '{role}' file in its manifest")
        return self.path / name


def load_bundle(path: str, verify: bool = True) -> Bundle:
    """Parse the manifest and, by default, check every listed file's size and sha256."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"bundle not found: {path}")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"incomplete bundle {path}: no {MANIFEST} (it is written last)")
    try:
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BundleError(f"unreadable manifest {manifest_path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{manifest_path} is not an {SCHEMA} manifest")
    if manifest.get("runtime") not in RUNTIMES:
        raise BundleError(f"unsupported runtime {manifest.get('runtime')!r} in {manifest_path}")
    spec = (manifest.get("model") or {}).get("spec") or {}
    decoder = spec.get("decoder", "ssd-priors")
    if decoder not in DECODERS:
        raise BundleError(f"bundle {path} needs decoder {decoder!r}, which this fdq runner lacks (it knows: "
                          f"{', '.join(sorted(DECODERS))}); deploy a newer fdq")
    if verify:
        for name, meta in manifest.get("files", {}).items():
            file_path = folder / name
            if not file_path.is_file():
                raise BundleError(f"bundle {path} is missing {name}")
            if file_path.stat().st_size != int(meta["size"]) or sha256_file(file_path) != meta["sha256"]:
                raise BundleError(f"bundle {path}: {name} does not match its manifest checksum (tampered or truncated)")
    return Bundle(folder, manifest)
