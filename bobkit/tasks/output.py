"""What a task hands to the runner: ``task_metrics.json``, task output format 2, and the direction of a metric.

The task harness writes it (:func:`save_cell_metrics`) into the cell's ``output_dir``; the runner reads it
(:func:`parse_task_output`) and files it in the cell's sidecar (:mod:`bobkit.batch.sidecars`). Scores are told from
run descriptors (timings, sizes, counts) by name (:func:`split_metrics`) where a task did not declare them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bobkit.utils.files import write_json

TASK_OUTPUT = "task_metrics.json"
#: Format of ``task_metrics.json`` (see :func:`task_output`); format 1 was one flat name -> value dict.
TASK_OUTPUT_FORMAT = 2
#: ``se/<metric>``: the sampling standard error of ``<metric>`` over the cell's test items.
STDERR_PREFIX = "se/"
#: ``n/<metric>``: the number of test items behind ``<metric>`` when it is not the cell's whole test split
#: (OOD shifts, attacked subsets); otherwise the metric's declaration names the count descriptor.
COUNT_PREFIX = "n/"

# Metric names (or their prefixes) where lower is better; every other score is higher-is-better.
LOWER_IS_BETTER = ("nll", "ece", "brier", "error", "drop", "loss", "mce")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: ``False`` for losses, errors, calibration errors and accuracy drops."""
    base = metric.split("@")[0].split("/")[-1].lower()
    return not any(base == word or base.startswith(word + "_") or base.endswith("_" + word) for word in LOWER_IS_BETTER)



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

