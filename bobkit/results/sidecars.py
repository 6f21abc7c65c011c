"""Metrics sidecars: one JSON record per run, the unit of truth the results table is built from.

A sidecar ``runs/<task>/<run_key>/metrics.json`` holds ``status`` ("complete" | "failed"), ``run_key``, ``task``,
``params``, ``metrics`` (scores only), ``timings`` (``*_seconds``), ``error`` and ``provenance``. It is written
atomically and last, so its presence with ``status == "complete"`` is the one signal that a run finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from bobkit.utils.files import write_json

SIDECAR = "metrics.json"
TASK_OUTPUT = "task_metrics.json"
#: Format of ``task_metrics.json`` (see :func:`task_output`); format 1 was one flat name -> value dict.
TASK_OUTPUT_FORMAT = 2
#: ``se/<metric>``: the sampling standard error of ``<metric>`` over the cell's test items.
STDERR_PREFIX = "se/"
SCHEMA_VERSION = 1


# Keys a task may return that describe the run rather than score the backbone.
NON_SCORE_SUFFIXES = ("_seconds", "_mb", "_bytes")
NON_SCORE_PREFIXES = ("exec_", "peak_")  # execution settings (precision, channels_last, ...) and memory
NON_SCORE_KEYS = ("threads", "n_train", "n_test", "n_queries", "n_database", "feature_cache_hit",
                  "batch_size_used", "images_per_second", "temperature")


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Separate scores (go into the results table) from run descriptors (timings, sizes, counts)."""
    scores: dict[str, float] = {}
    info: dict[str, float] = {}
    for name, value in metrics.items():
        is_info = name.endswith(NON_SCORE_SUFFIXES) or name in NON_SCORE_KEYS or name.startswith(NON_SCORE_PREFIXES)
        (info if is_info else scores)[name] = value
    return scores, info


def save_cell_metrics(metrics: Mapping[str, Any], output_dir: str | os.PathLike[str] | None) -> None:
    """Hand a cell's outputs to the runner as ``task_metrics.json``, format 2 (no-op when run interactively).

    The task harness calls it when ``output_dir`` is set. ``metrics`` is a task's result (its
    :meth:`~bobkit.tasks.harness.TaskResult.output` carries the declared directions and kinds) or a plain flat
    dict (scores told from descriptors by name, ``se/<metric>`` keys as standard errors).
    """
    if output_dir is None:
        return
    write_json(Path(output_dir) / TASK_OUTPUT, task_output(metrics))


def task_output(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The format-2 task output of a task's result, a plain flat metrics dict or an output already in format 2.

    Format 2: ``format``, ``metrics`` (scores), ``stderr``, ``n_items``, ``higher_is_better``, ``primary``,
    ``setting_params`` and ``descriptors`` (timings, sizes, execution settings, peak memory).
    """
    output = getattr(metrics, "output", None)
    if callable(output):
        return output()
    if metrics.get("format") == TASK_OUTPUT_FORMAT:
        return dict(metrics)
    from bobkit.results.table import higher_is_better

    stderr = {k[len(STDERR_PREFIX):]: v for k, v in metrics.items() if k.startswith(STDERR_PREFIX)}
    scores, descriptors = split_metrics({k: v for k, v in metrics.items() if not k.startswith(STDERR_PREFIX)})
    return {"format": TASK_OUTPUT_FORMAT, "metrics": scores, "stderr": stderr, "n_items": {},
            "higher_is_better": {name: higher_is_better(name) for name in scores}, "primary": [],
            "setting_params": {}, "descriptors": descriptors}


def flat_task_metrics(output: Mapping[str, Any]) -> dict[str, Any]:
    """A task output as one flat name -> value dict: scores and descriptors (format 1 was flat already)."""
    if output.get("format") != TASK_OUTPUT_FORMAT:
        return dict(output)
    return {**output.get("metrics", {}), **output.get("descriptors", {})}


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
