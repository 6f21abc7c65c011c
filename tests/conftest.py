"""Shared test settings: offline hub, an isolated cache. Nothing outside the repository is read: the public tables
ship inside bobkit (``bobkit/reference/``) and test data lives under ``tests/``."""

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


@pytest.fixture
def write_grid(tmp_path: Path):
    """Write a grid YAML into a temp folder and return its path."""

    def _write(text: str, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
