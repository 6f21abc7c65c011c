"""Provenance recorded in every sidecar: code version, libraries, machine, device, threads and seed.

Everything here runs in the batch process, not in the kernel, and is cheap: GPUs are listed with ``nvidia-smi``
rather than by importing torch (which costs seconds per batch), and the static part is computed once.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from typing import Any

import bobkit
from bobkit.utils.paths import repo_root

LIBRARIES = (
    "torch", "torchvision", "timm", "numpy", "pandas", "scikit-learn", "papermill", "nbclient", "ipykernel",
    "pycocotools", "submitit",
)


@functools.lru_cache(maxsize=1)
def static_provenance() -> dict[str, Any]:
    """What does not change during a batch: versions, git commit, host, CPU and GPU models."""
    return {
        "bobkit_version": bobkit.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "gpus": list(gpu_names()),
    }


def collect(
    env: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    task_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Static provenance plus this cell's device, threads and seed.

    Parameters
    ----------
    env
        The environment the cell's kernel got on top of ``os.environ`` (``CUDA_VISIBLE_DEVICES``,
        ``BOB_NUM_THREADS``).
    params
        The cell's parameters (``device``, ``seed``).
    task_info
        Run descriptors the task reported (``threads``), which win over the requested values.
    """
    env, params, task_info = env or {}, params or {}, task_info or {}
    visible = env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    requested_threads = env.get("BOB_NUM_THREADS", os.environ.get("BOB_NUM_THREADS", ""))
    threads = task_info.get("threads") or (int(requested_threads) if requested_threads.isdigit() else None)
    return {
        **static_provenance(),
        # A task without a ``device`` parameter runs on the CPU whatever GPUs the node has.
        "device": device_name(str(params.get("device", "cpu")), visible),
        "device_requested": params.get("device"),
        "cuda_visible_devices": visible,
        "threads": int(threads) if threads else None,
        "seed": params.get("seed"),
    }


def device_name(requested: str, visible: str | None) -> str:
    """The device a cell with ``device=requested`` runs on, given the GPUs it can see.

    ``auto`` means the first visible GPU when there is one (what :func:`bobkit.features.device.resolve_device` picks),
    else the CPU.
    """
    gpus = _visible_gpu_names(visible)
    if requested == "cpu" or not gpus:
        return f"cpu: {cpu_model()}"
    index = int(requested.split(":", 1)[1]) if requested.startswith("cuda:") else 0
    return f"cuda: {gpus[index] if index < len(gpus) else gpus[0]}"


def _visible_gpu_names(visible: str | None) -> list[str]:
    names = list(gpu_names())
    if visible is None:
        return names
    picked = []
    for item in (v.strip() for v in visible.split(",") if v.strip()):
        if item.isdigit() and int(item) < len(names):
            picked.append(names[int(item)])
        elif not item.isdigit() and names:  # a GPU UUID or MIG id: the model is the same on one node
            picked.append(names[0])
    return picked


@functools.lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    """Names of the node's NVIDIA GPUs in index order (empty without ``nvidia-smi`` or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.stdout.splitlines() if line.strip()) if out.returncode == 0 else ()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), or the machine type."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when tracked files have local changes), or ``None`` outside git."""
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
