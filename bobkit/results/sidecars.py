"""Metrics sidecars: one JSON record per run, the unit of truth the results table is built from.

A sidecar ``runs/<task>/<run_key>/metrics.json`` holds ``status`` ("complete" | "failed"), ``run_key``, ``task``,
``params``, ``identity`` (the cell without the code: :func:`bobkit.batch.grid.cell_identity`), ``code_version``,
``metrics`` (scores only) with their ``stderr``, ``n_items``, ``higher_is_better`` and ``primary``,
``setting_params``, ``timings`` (descriptors), ``device``, ``batch_size_used``, ``error`` and ``provenance``. It is
written atomically and last; a run is complete when it says ``status == "complete"`` and its ``executed.ipynb``
is there.

A sidecar that cannot be read (invalid UTF-8, not a JSON object) is skipped, never fatal: :func:`scan_sidecars`
reports it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from bobkit.utils.files import write_json

SIDECAR = "metrics.json"
NOTEBOOK = "executed.ipynb"
TASK_OUTPUT = "task_metrics.json"
SCHEMA_VERSION = 2
#: Format of ``task_metrics.json`` (see :func:`task_output`); format 1 was one flat name -> value dict.
TASK_OUTPUT_FORMAT = 2
#: ``se/<metric>``: the sampling standard error of ``<metric>`` over the cell's test items.
STDERR_PREFIX = "se/"
#: ``n/<metric>``: the number of test items behind ``<metric>`` when it is not the cell's whole test split
#: (OOD shifts, attacked subsets); otherwise the metric's declaration names the count descriptor.
COUNT_PREFIX = "n/"


# Keys a task may return that describe the run rather than score the backbone.
NON_SCORE_SUFFIXES = ("_seconds", "_mb", "_bytes")
NON_SCORE_PREFIXES = ("exec_", "peak_",  # execution settings (precision, channels_last, ...) and memory
                      "se/", "n/", "selected_", "fallback_")  # errors, counts, values chosen or fallen back to
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
    parsed = parse_task_output(dict(metrics))
    if not parsed.higher_is_better:
        from bobkit.results.table import higher_is_better

        parsed.higher_is_better = {name: higher_is_better(name) for name in parsed.metrics}
    return {"format": TASK_OUTPUT_FORMAT, **asdict(parsed), "setting_params": parsed.setting_params or {}}


@dataclass
class TaskOutput:
    """What a task notebook handed to the runner, in task output format 2 (old flat outputs are converted)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    stderr: dict[str, Any] = field(default_factory=dict)
    n_items: dict[str, Any] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    primary: list[str] = field(default_factory=list)
    setting_params: dict[str, Any] | None = None
    descriptors: dict[str, Any] = field(default_factory=dict)

    def non_finite(self) -> list[str]:
        """Scores that are missing or not finite (the cell failed even though the notebook ran)."""
        return sorted(k for k, v in self.metrics.items()
                      if v is None or (isinstance(v, float) and not math.isfinite(v)))


def parse_task_output(payload: Any) -> TaskOutput:
    """Read ``task_metrics.json``: format 2 (see the interfaces) or today's flat ``{name: value}`` dict.

    In a flat dict, descriptors are told from scores by name (:func:`split_metrics`) and ``se/<metric>`` keys are
    standard errors.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"task output is not a JSON object: {type(payload).__name__}")
    if payload.get("format") == TASK_OUTPUT_FORMAT:
        return TaskOutput(
            metrics=dict(payload.get("metrics") or {}), stderr=dict(payload.get("stderr") or {}),
            n_items=dict(payload.get("n_items") or {}), higher_is_better=dict(payload.get("higher_is_better") or {}),
            primary=list(payload.get("primary") or []), setting_params=payload.get("setting_params"),
            descriptors=dict(payload.get("descriptors") or {}),
        )
    stderr = {k[len(STDERR_PREFIX):]: v for k, v in payload.items() if k.startswith(STDERR_PREFIX)}
    scores, info = split_metrics({k: v for k, v in payload.items() if not k.startswith(STDERR_PREFIX)})
    return TaskOutput(metrics=scores, stderr=stderr, descriptors=info)


def sidecar_problem(run_dir: str | os.PathLike[str]) -> str | None:
    """Why the run folder's sidecar cannot be used (``None`` when it is fine or absent)."""
    try:
        _load(Path(run_dir) / SIDECAR)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def _load(path: Path) -> dict[str, Any]:
    """A sidecar as a dict; ``ValueError`` for invalid UTF-8, invalid JSON or JSON that is not an object."""
    payload = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(payload, dict):
        raise ValueError(f"not a JSON object but a JSON {type(payload).__name__}")
    return payload


def read_sidecar(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a run folder, or ``None`` when absent or unreadable (never a partial one: writes are atomic).

    Unreadable (invalid UTF-8, not JSON, a JSON list...) reads as ``None``: see :func:`sidecar_problem`.
    """
    try:
        return _load(Path(run_dir) / SIDECAR)
    except (OSError, ValueError):
        return None


def is_complete(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run folder holds a complete sidecar and its executed notebook."""
    sidecar = read_sidecar(run_dir)
    return bool(sidecar) and sidecar.get("status") == "complete" and (Path(run_dir) / NOTEBOOK).is_file()


def write_sidecar(run_dir: str | os.PathLike[str], sidecar: dict[str, Any]) -> Path:
    """Write a sidecar atomically; returns its path."""
    path = Path(run_dir) / SIDECAR
    write_json(path, {"schema": SCHEMA_VERSION, **sidecar})
    return path


@dataclass
class SidecarScan:
    """The sidecars of a runs folder: readable ones by path, and the unreadable ones with the reason."""

    sidecars: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


def scan_sidecars(runs_dir: str | os.PathLike[str], task: str = "*") -> SidecarScan:
    """Every sidecar under ``runs_dir/<task>/<run_key>/``; unreadable ones are listed, not raised."""
    scan = SidecarScan()
    for path in sorted(Path(runs_dir).glob(f"{task}/*/{SIDECAR}")):
        try:
            scan.sidecars.append((path, _load(path)))
        except (OSError, ValueError) as exc:
            scan.corrupt.append((path, str(exc)))
    return scan


def iter_sidecars(runs_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """All readable sidecars under ``runs_dir`` (``runs/<task>/<run_key>/metrics.json``)."""
    for _, sidecar in scan_sidecars(runs_dir).sidecars:
        yield sidecar
