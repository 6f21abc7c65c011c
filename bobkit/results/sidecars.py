"""Metrics sidecars: one JSON record per run, the unit of truth the results table is built from.

A sidecar ``runs/<task>/<run_key>/metrics.json`` holds ``status`` ("complete" | "failed"), ``run_key``, ``task``,
``params``, ``metrics`` (scores only), ``timings`` (``*_seconds``), ``error`` and ``provenance``. It is written
atomically and last, so its presence with ``status == "complete"`` is the one signal that a run finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from bobkit.utils.files import write_json

SIDECAR = "metrics.json"
TASK_OUTPUT = "task_metrics.json"
SCHEMA_VERSION = 1


# Keys a task may return that describe the run rather than score the backbone.
NON_SCORE_SUFFIXES = ("_seconds", "_mb", "_bytes")
NON_SCORE_PREFIXES = ("exec_", "peak_",  # execution settings (precision, channels_last, ...) and memory
                      "se/", "n/", "selected_")  # standard errors, item counts, values a selection picked
NON_SCORE_KEYS = ("threads", "n_train", "n_test", "n_queries", "n_database", "n_validation", "feature_cache_hit",
                  "batch_size_used", "images_per_second", "temperature")


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Separate scores (go into the results table) from run descriptors (timings, sizes, counts)."""
    scores: dict[str, float] = {}
    info: dict[str, float] = {}
    for name, value in metrics.items():
        is_info = name.endswith(NON_SCORE_SUFFIXES) or name in NON_SCORE_KEYS or name.startswith(NON_SCORE_PREFIXES)
        (info if is_info else scores)[name] = value
    return scores, info


def save_cell_metrics(metrics: dict[str, Any], output_dir: str | os.PathLike[str] | None) -> None:
    """Called at the end of a task notebook: hand the metrics to the runner (no-op when run interactively)."""
    if output_dir is None:
        return
    write_json(Path(output_dir) / TASK_OUTPUT, metrics)


def read_sidecar(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a run folder, or ``None`` when absent or unreadable (never a partial one: writes are atomic)."""
    path = Path(run_dir) / SIDECAR
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run folder holds a complete sidecar."""
    sidecar = read_sidecar(run_dir)
    return bool(sidecar) and sidecar.get("status") == "complete"


def write_sidecar(run_dir: str | os.PathLike[str], sidecar: dict[str, Any]) -> Path:
    """Write a sidecar atomically; returns its path."""
    path = Path(run_dir) / SIDECAR
    write_json(path, {"schema": SCHEMA_VERSION, **sidecar})
    return path


def iter_sidecars(runs_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """All readable sidecars under ``runs_dir`` (``runs/<task>/<run_key>/metrics.json``)."""
    for path in sorted(Path(runs_dir).glob(f"*/*/{SIDECAR}")):
        sidecar = read_sidecar(path.parent)
        if sidecar is not None:
            yield sidecar
