"""Device and thread selection shared by every task."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a torch device, failing clearly on a bad value."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available on this machine")
        return torch.device(device)
    raise ValueError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (``$BOB_NUM_THREADS`` when not given) and return the number in use."""
    wanted = num_threads or int(os.environ.get("BOB_NUM_THREADS", "0") or 0)
    if wanted > 0:
        torch.set_num_threads(wanted)
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    """A human-readable device name for provenance (GPU model or CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"
