"""Shared test settings: offline hub, an isolated cache, the public data folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BOB_NUM_THREADS", "2")
# Features and converted weights go to a per-session cache, so cache-hit assertions cannot pass by accident.
os.environ.setdefault("BOB_CACHE_DIR", tempfile.mkdtemp(prefix="bob-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The public tables (timm results, BoB snapshot) are found through the manifest; tests point it at ../shared/data.
if SHARED_DATA.exists():
    os.environ.setdefault("BOB_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public tables); tests that need it skip when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def write_grid(tmp_path: Path):
    """Write a grid YAML into a temp folder and return its path."""

    def _write(text: str, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
