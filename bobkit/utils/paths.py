"""Where bobkit keeps caches and where the shipped project files live; environment switches."""

from __future__ import annotations

import os
from pathlib import Path


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (1, true, yes, on); read at call time."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def repo_root() -> Path:
    """The project checkout holding ``data_manifest.yaml``, ``notebooks/`` and ``params/``."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Root of all caches: ``$BOB_CACHE_DIR`` or ``~/.cache/bobkit``."""
    root = os.environ.get("BOB_CACHE_DIR") or Path.home() / ".cache" / "bobkit"
    return Path(root).expanduser()


def weights_cache_dir() -> Path:
    """Converted checkpoints (packaged weights mapped to timm names)."""
    return cache_dir() / "weights"


def feature_cache_dir() -> Path:
    """Frozen features keyed by backbone, weights, dataset, split and transform."""
    return cache_dir() / "features"


def data_cache_dir() -> Path:
    """Downloaded or converted datasets."""
    return cache_dir() / "data"
