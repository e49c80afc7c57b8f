"""Pretrained weights registry ("zoo") with a checksum-verified download cache.

Like torchvision's weight cache: a model name maps to one upstream file with a known sha256.
Local folders in ``FDQ_WEIGHTS_PATH`` are searched first so that offline machines work;
otherwise the file is downloaded once into ``$FDQ_HOME/weights``. Every file handed out has
been verified, and a failed download never leaves a partial or wrong file behind.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fdq.calibration.progress import line as progress_line

_UPSTREAM = "https://github.com/biubug6/Face-Detector-1MB-with-landmark/raw/master/weights/"
_LICENSE = "MIT (c) 2019 biubug6"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class WeightsEntry:
    """One pretrained file: where it comes from and how to recognise the genuine bytes."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int
    license: str


def _entry(name: str, filename: str, size: int, sha256: str) -> WeightsEntry:
    return WeightsEntry(name, filename, _UPSTREAM + filename, sha256, size, _LICENSE)


ZOO: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        _entry("slim", "slim_Final.pth", 1427150,
               "76cdb587b2cf5f91b3836b66a652a0f7a91891758cd4fb0b07e4b7527af1c651"),
        # Upstream spells the RFB model's file "RBF".
        _entry("rfb", "RBF_Final.pth", 1504452,
               "b22c45855bff5c4eb84e9973e2ee8a980639aa194ec66f33a87ce712f9d44c28"),
        _entry("mnet025", "mobilenet0.25_Final.pth", 1789735,
               "ed6fa7d45a5179f03cb5ce82c73b0c6711372968e53782e88395acee88d319e1"),
    )
}


class ZooError(RuntimeError):
    """Weights cannot be found, downloaded or verified; the message says what to do."""


def fdq_home() -> Path:
    """fdq's own cache folder: ``$FDQ_HOME``, default ``~/.cache/fdq``."""
    return Path(os.environ.get("FDQ_HOME") or "~/.cache/fdq").expanduser()


def cache_dir() -> Path:
    """Download target, ``$FDQ_HOME/weights`` (default ``~/.cache/fdq/weights``)."""
    return fdq_home() / "weights"


def search_path() -> list[Path]:
    """Folders searched for weights: ``FDQ_WEIGHTS_PATH`` entries first, then the cache dir."""
    extra = os.environ.get("FDQ_WEIGHTS_PATH", "")
    folders = [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return folders + [cache_dir()]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large files need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lookup(name: str) -> WeightsEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(f"unknown zoo name {name!r}; known names: {', '.join(sorted(ZOO))}") from None


def _find(entry: WeightsEntry) -> Path | None:
    """First search-path file with the entry's name, verified or not."""
    for folder in search_path():
        candidate = folder / entry.filename
        if candidate.is_file():
            return candidate
    return None


def _stream(entry: WeightsEntry, out: IO[bytes]) -> tuple[str, int]:
    """Copy ``entry.url`` into ``out``, hashing on the way (a progress line in bytes on a terminal);
    returns (sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(entry.url, timeout=_TIMEOUT_S) as response, \
            progress_line(f"fdq: downloading {entry.filename}", total=entry.size, unit="bytes") as line:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            line.update(completed=size)
    return digest.hexdigest(), size


def _download(entry: WeightsEntry) -> Path:
    """Download into the cache via a same-dir temp file, so the final name appears atomically
    and only after the size and sha256 match."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.NamedTemporaryFile(dir=folder, prefix=entry.filename + ".", suffix=".part",
                                          delete=False)
    except OSError as exc:
        raise ZooError(
            f"cannot write to the weights cache {folder}: {exc}; set FDQ_HOME to a writable "
            f"folder or FDQ_WEIGHTS_PATH to a folder holding {entry.filename}"
        ) from exc
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            try:
                actual_sha, actual_size = _stream(entry, tmp)
            except (OSError, http.client.HTTPException) as exc:
                raise ZooError(
                    f"cannot download {entry.name} weights from {entry.url}: {exc}; for offline "
                    f"use set FDQ_WEIGHTS_PATH to a folder holding {entry.filename}"
                ) from exc
        if actual_size != entry.size or actual_sha != entry.sha256:
            raise ZooError(
                f"download of {entry.url} is corrupt and was discarded: expected sha256 "
                f"{entry.sha256} ({entry.size} bytes), got sha256 {actual_sha} "
                f"({actual_size} bytes)"
            )
        final = folder / entry.filename
        os.replace(tmp_path, final)
        return final
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fetch(name: str) -> Path:
    """Path of verified weights for a zoo name, downloading them into the cache if not found."""
    entry = _lookup(name)
    found = _find(entry)
    if found is None:
        return _download(entry)
    actual = sha256_file(found)
    if actual != entry.sha256:
        raise ZooError(
            f"{found} is not the genuine {entry.name} weights: expected sha256 {entry.sha256}, "
            f"got {actual}; delete or replace the file"
        )
    return found


def resolve_weights(model_name: str, weights: str | None) -> Path:
    """Turn a user's ``--weights`` value (None, a file path or a zoo name) into a file path."""
    if weights is None:
        return fetch(model_name)
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if weights in ZOO:
        return fetch(weights)
    raise ZooError(
        f"no such weights file or zoo name: {weights!r} (zoo names: {', '.join(sorted(ZOO))})"
    )


def status(name: str) -> dict[str, Any]:
    """Entry facts plus where the file is found and whether it verifies, for ``fdq zoo list``."""
    entry = _lookup(name)
    found = _find(entry)
    return {
        "name": entry.name,
        "filename": entry.filename,
        "url": entry.url,
        "sha256": entry.sha256,
        "size": entry.size,
        "license": entry.license,
        "path": found,
        "verified": found is not None and sha256_file(found) == entry.sha256,
    }
