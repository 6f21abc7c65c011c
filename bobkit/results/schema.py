"""The one results schema: the columns every results table holds, whoever made it.

``bob build`` writes it from sidecars; the public reference tables (timm, the BoB snapshot) are loaded into it; the
analysis reads nothing else. One row is one metric of one run (or of one public-table entry).

Setting identity: ``setting`` is a readable label; ``setting_id`` identifies *what was measured*: a hash of the task,
dataset, protocol, metric and every parameter that changes the measurement (image size, train/test sizes, low-shot
fraction, epochs, targets, epsilons, ...; never the seed or execution settings). The analysis pools rows only when
their ``setting_id`` agrees. ``setting_params`` holds those parameters as JSON so a mismatch can be explained.

Sampling uncertainty: ``stderr`` is the standard error of ``value`` over the cell's test items (binomial for an
accuracy, a bootstrap over items for ranking metrics; NaN when unknown) and ``n_items`` the number of test items.

How it ran, where that can move a number: ``device`` (e.g. ``cpu``, ``cuda:NVIDIA H100``), ``precision`` (``fp32``,
``bf16``, ``fp16``: the autocast the task ran under) and ``batch_size_used`` (after an out-of-memory retry halved it).
The analysis never averages two runs of one backbone and setting that ran on different device types or precisions
as if they were seeds (:func:`bobkit.analysis.settings.one_execution_per_cell`).

A table's provenance travels in ``DataFrame.attrs`` (kept in the parquet file's metadata): ``runs_dir`` (where the
sidecars behind it are) and ``source``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from bobkit.utils.files import atomic_path

#: Every column of a results table and its pandas dtype, in order.
COLUMNS: dict[str, str] = {
    "run_key": "str",
    "task": "str",
    "backbone": "str",
    "dataset": "str",
    "protocol": "str",
    "seed": "int64",
    "setting": "str",
    "setting_id": "str",
    "setting_params": "str",
    "metric": "str",
    "value": "float64",
    "stderr": "float64",
    "n_items": "float64",
    "higher_is_better": "bool",
    "device": "str",
    "precision": "str",
    "batch_size_used": "float64",
    "display_name": "str",
    "architecture": "str",
    "family": "str",
    "method": "str",
    "method_kind": "str",
    "pretrain_data": "str",
    "pretrain_images": "float64",
    "params_millions": "float64",
}
#: Columns a table cannot do without; every other column is derived or filled when absent.
REQUIRED_COLUMNS: tuple[str, ...] = ("task", "backbone", "dataset", "protocol", "metric", "value")
#: Backbone metadata joined onto every row (from the registry for runs, parsed from names for public tables).
METADATA_COLUMNS: tuple[str, ...] = (
    "display_name", "architecture", "family", "method", "method_kind", "pretrain_data", "pretrain_images",
    "params_millions",
)
_FLOAT_COLUMNS = tuple(c for c, dtype in COLUMNS.items() if dtype == "float64")


def setting_id(task: str, dataset: str, protocol: str, metric: str, params: Mapping[str, Any] | None = None) -> str:
    """Identity of a setting: 12 hex digits over the task, dataset, protocol, metric and measurement parameters."""
    blob = json.dumps([task, dataset, protocol, metric, dict(params or {})], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def derived_setting_ids(table: pd.DataFrame) -> list[str]:
    """:func:`setting_id` of rows that lack one (tables built before the column existed, public tables): from the
    task, dataset, protocol, metric and ``setting_params``; a ``setting`` label that says more than
    task/dataset/protocol (low-shot qualifiers of older builds) counts as a parameter, so such settings stay apart."""
    ids = []
    for row in table[["task", "dataset", "protocol", "metric", "setting", "setting_params"]].itertuples(index=False):
        params = row.setting_params if isinstance(row.setting_params, dict) else json.loads(row.setting_params or "{}")
        base = f"{row.task}/{row.dataset}/{row.protocol}"
        if not params and str(row.setting) != base:
            params = {"setting": str(row.setting)}
        ids.append(setting_id(str(row.task), str(row.dataset), str(row.protocol), str(row.metric), params))
    return ids


def conform(table: pd.DataFrame, *, keep_extra: Iterable[str] | bool = True) -> pd.DataFrame:
    """Check and coerce ``table`` to :data:`COLUMNS`.

    Required columns must exist (``ValueError`` names the missing ones). Absent optional columns are derived
    (``seed`` 0, ``setting`` from task/dataset/protocol, ``setting_params`` ``{}``, a missing ``setting_id`` by
    :func:`derived_setting_ids` (the same hash ``bob build`` writes), ``run_key`` from backbone, setting and seed,
    ``higher_is_better`` from the metric's name) or filled (NaN / None). ``keep_extra``: ``True`` keeps every other column after the schema's, an iterable
    keeps those named, ``False`` drops them.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"results table lacks required columns {missing}; has {list(table.columns)}")
    out = table.copy()
    if "seed" not in out:
        out["seed"] = 0
    if "setting" not in out:
        out["setting"] = out["task"].astype(str) + "/" + out["dataset"].astype(str) + "/" + out["protocol"].astype(str)
    if "setting_params" not in out:
        out["setting_params"] = "{}"
    out["setting_params"] = out["setting_params"].where(out["setting_params"].notna(), "{}").map(
        lambda v: json.dumps(v, sort_keys=True, default=str) if isinstance(v, dict) else v)
    if "setting_id" not in out:
        out["setting_id"] = None
    missing_id = out["setting_id"].isna()
    if missing_id.any():
        out.loc[missing_id, "setting_id"] = derived_setting_ids(out[missing_id])
    if "run_key" not in out:
        out["run_key"] = out["backbone"].astype(str) + ":" + out["setting"].astype(str) + ":" + out["seed"].astype(str)
    if "higher_is_better" not in out:
        from bobkit.tasks.output import higher_is_better

        out["higher_is_better"] = out["metric"].map(higher_is_better)
    for column in COLUMNS:
        if column not in out:
            out[column] = out["backbone"] if column == "display_name" else np.nan
    out["display_name"] = out["display_name"].fillna(out["backbone"])
    out["seed"] = pd.to_numeric(out["seed"], errors="coerce").fillna(0).astype("int64")
    for column in _FLOAT_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    out["higher_is_better"] = out["higher_is_better"].astype(bool)
    for column, dtype in COLUMNS.items():
        if dtype == "str":
            out[column] = out[column].astype(object).where(out[column].notna(), None)
            out[column] = out[column].map(lambda v: v if v is None else str(v))
    if keep_extra is True:
        extra = [c for c in out.columns if c not in COLUMNS]
    elif keep_extra is False:
        extra = []
    else:
        extra = [c for c in keep_extra if c in out.columns and c not in COLUMNS]
    conformed = out[list(COLUMNS) + extra].reset_index(drop=True)
    conformed.attrs = dict(table.attrs)
    return conformed


def read_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A results table from parquet or CSV, conformed to the schema (``attrs["source"]`` is the path)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}")
    table = pd.read_csv(path) if path.suffix.lower() in {".csv", ".txt"} else pd.read_parquet(path)
    table = conform(table)
    table.attrs["source"] = str(path)
    return table


def check_results_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as the parquet file of a results table, or ``ValueError`` (before any work) for a ``.csv`` name: the
    table is parquet with a ``.csv`` twin beside it, and the twin would overwrite it."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        raise ValueError(f"--results {str(path)!r}: the results table is a parquet file with a CSV twin written "
                         f"beside it; name the parquet file ({path.with_suffix('.parquet')}) and the CSV is "
                         f"{path}")
    return path


def write_results(table: pd.DataFrame, path: str | os.PathLike[str] = "results/results.parquet") -> Path:
    """Write the results table atomically as parquet (``attrs`` kept in its metadata) and a CSV twin for quick looks."""
    path = check_results_path(path)
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return path
