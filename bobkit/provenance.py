"""Provenance recorded in every sidecar: code version, libraries, machine."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from typing import Any

import bobkit
from bobkit.paths import repo_root

LIBRARIES = ("torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "papermill", "pycocotools")


@functools.lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """What does not change during a batch: versions, git commit, host."""
    return {
        "bobkit_version": bobkit.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpus": _gpu_names(),
    }


def collect(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Static provenance plus this cell's worker settings (threads, visible GPUs)."""
    env = env or {}
    return {
        **static_provenance(),
        "threads": int(env.get("BOB_NUM_THREADS", os.environ.get("BOB_NUM_THREADS", "0")) or 0) or None,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES")),
    }


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has local changes), or ``None`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(), capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu_names() -> list[str]:
    try:
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA runtime
        return []
