"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Read-only shared assets (weights, data): ``$FDQ_SHARED``, default ``<repo>/../shared``."""
    path = Path(os.environ.get("FDQ_SHARED") or REPO_ROOT.parent / "shared")
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"shared assets not found at {path}: CI must test on the real data (set FDQ_SHARED)")
        pytest.skip(f"shared assets not found at {path} (set FDQ_SHARED)")
    return path
