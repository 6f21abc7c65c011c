"""Metrics sidecars (one per run) and the tidy results table built from them.

A sidecar ``runs/<task>/<run_key>/metrics.json`` holds ``status`` ("complete" | "failed"), ``run_key``, ``task``,
``params``, ``metrics`` (scores only), ``timings`` (``*_seconds``), ``error`` and ``provenance``. It is written
atomically and last, so its presence with ``status == "complete"`` is the one signal that a run finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from bobkit.atomic import atomic_path, write_json

if TYPE_CHECKING:  # pandas is imported where a table is built: task notebooks import this module at every start
    import pandas as pd

SIDECAR = "metrics.json"
TASK_OUTPUT = "task_metrics.json"
SCHEMA_VERSION = 1

# Metric names (or their prefixes) where lower is better; every other score is higher-is-better.
LOWER_IS_BETTER = ("nll", "ece", "brier", "error", "drop", "loss", "mce")
# Keys a task may return that describe the run rather than score the backbone.
NON_SCORE_SUFFIXES = ("_seconds", "_mb", "_bytes")
NON_SCORE_PREFIXES = ("exec_", "peak_")  # execution settings (precision, channels_last, ...) and memory
NON_SCORE_KEYS = ("threads", "n_train", "n_test", "n_queries", "n_database", "feature_cache_hit",
                  "batch_size_used", "images_per_second", "temperature")

RESULT_COLUMNS = [
    "run_key", "task", "backbone", "dataset", "protocol", "seed", "setting", "metric", "value", "higher_is_better",
]


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: ``False`` for losses, errors, calibration errors and accuracy drops."""
    base = metric.split("@")[0].split("/")[-1].lower()
    return not any(base == word or base.startswith(word + "_") or base.endswith("_" + word) for word in LOWER_IS_BETTER)


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


def setting_name(task: str, dataset: str, protocol: str, params: dict[str, Any]) -> str:
    """Human-readable setting: task/dataset/protocol plus low-shot qualifiers when present."""
    parts = [task, dataset, protocol]
    if params.get("label_fraction"):
        parts.append(f"{params['label_fraction']:g}-labels")
    if params.get("shots_per_class"):
        parts.append(f"{params['shots_per_class']}-shot")
    return "/".join(str(p) for p in parts)


def sidecar_rows(sidecar: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows (one per score) of one complete sidecar."""
    params = sidecar.get("params", {})
    protocol = str(params.get("protocol", "default"))
    base = {
        "run_key": sidecar["run_key"],
        "task": sidecar["task"],
        "backbone": params.get("backbone"),
        "dataset": params.get("dataset"),
        "protocol": protocol,
        "seed": int(params.get("seed", 0)),
        "setting": setting_name(sidecar["task"], params.get("dataset"), protocol, params),
    }
    return [
        {**base, "metric": metric, "value": float(value) if value is not None else float("nan"),
         "higher_is_better": higher_is_better(metric)}
        for metric, value in sorted(sidecar.get("metrics", {}).items())
    ]


def build_results(runs_dir: str | os.PathLike[str] = "runs") -> pd.DataFrame:
    """Merge every complete sidecar into one tidy table with the backbone metadata joined on."""
    import pandas as pd

    rows = [row for s in iter_sidecars(runs_dir) if s.get("status") == "complete" for row in sidecar_rows(s)]
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    from bobkit.backbones import metadata_frame

    meta = metadata_frame().rename(columns={"name": "backbone"})
    table = table.merge(meta, on="backbone", how="left")
    return table.sort_values(["task", "dataset", "protocol", "backbone", "seed", "metric"]).reset_index(drop=True)


def write_results(table: pd.DataFrame, path: str | os.PathLike[str] = "results/results.parquet") -> Path:
    """Write the results table atomically as parquet (and a CSV twin for quick looks)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return path


def leaderboard(table: "pd.DataFrame", metric: str | None = "top1") -> "pd.DataFrame":
    """A small wide table: backbones as rows, settings (x metric, when several) as columns, mean over seeds.

    ``metric=None`` keeps every metric of ``table`` (e.g. rows already filtered to each task's primary metrics).
    """
    import pandas as pd

    rows = table if metric is None else table[table["metric"] == metric]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(column=rows["setting"] + ("/" + rows["metric"] if rows["metric"].nunique() > 1 else ""))
    wide = rows.pivot_table(index="backbone", columns="column", values="value", aggfunc="mean")
    wide.columns.name = None
    wide["mean"] = wide.mean(axis=1)
    return wide.sort_values("mean", ascending=False)
