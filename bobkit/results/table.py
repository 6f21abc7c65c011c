"""The tidy results table: one row per run x metric, built from the complete sidecars, backbone metadata joined."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bobkit.results.sidecars import iter_sidecars

if TYPE_CHECKING:
    import pandas as pd

# Metric names (or their prefixes) where lower is better; every other score is higher-is-better.
LOWER_IS_BETTER = ("nll", "ece", "brier", "error", "drop", "loss", "mce")
RESULT_COLUMNS = [
    "run_key", "task", "backbone", "dataset", "protocol", "seed", "setting", "metric", "value", "higher_is_better",
]



def higher_is_better(metric: str) -> bool:
    """Direction of a metric: ``False`` for losses, errors, calibration errors and accuracy drops."""
    base = metric.split("@")[0].split("/")[-1].lower()
    return not any(base == word or base.startswith(word + "_") or base.endswith("_" + word) for word in LOWER_IS_BETTER)


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


def leaderboard(table: pd.DataFrame, metric: str | None = "top1") -> pd.DataFrame:
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
