"""The tidy results table: one row per run x metric, built from the complete sidecars, backbone metadata joined.

Which records go in is the batch's one definition (:func:`bobkit.batch.sidecars.record_verdict`, which ``bob
status`` and ``bob run`` use too): complete records of the current code (a record made by other code is stale, see
:mod:`bobkit.batch.stale`, and goes in only when asked); a run whose ``executed.ipynb`` is gone is not complete; an
unusable sidecar (unreadable, or not fitting the sidecar schema) is skipped and named. What was left out is counted
in ``attrs["left_out"]``, and ``attrs["runs_dir"]`` says where the runs are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bobkit.batch.record import setting_params_of
from bobkit.batch.sidecars import record_verdict, scan_sidecars
from bobkit.tasks.output import higher_is_better

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NoRunsError", "build_results", "check_replacement", "higher_is_better", "setting_name", "sidecar_rows"]


class NoRunsError(ValueError):
    """A runs folder that is missing or holds no run records."""


def setting_name(task: str, dataset: str, protocol: str, params: dict[str, Any]) -> str:
    """Human-readable setting: task/dataset/protocol plus low-shot qualifiers when present."""
    parts = [task, dataset, protocol]
    if params.get("label_fraction"):
        parts.append(f"{params['label_fraction']:g}-labels")
    if params.get("shots_per_class"):
        parts.append(f"{params['shots_per_class']}-shot")
    return "/".join(str(p) for p in parts)


def precision_of(descriptors: dict[str, Any]) -> str | None:
    """``fp32``, ``bf16`` or ``fp16``: the autocast a task ran under, from its ``exec_*`` descriptors (None when the
    record does not say)."""
    bits, bf16 = descriptors.get("exec_autocast_bits"), descriptors.get("exec_bf16")
    if not isinstance(bits, (int, float)):
        return None
    return "fp32" if bits >= 32 else "bf16" if bf16 else "fp16"


def sidecar_rows(sidecar: dict[str, Any]) -> list[dict[str, Any]]:
    """The tidy rows (one per score) of one complete sidecar, with the setting, uncertainty and how it ran."""
    from bobkit.results.schema import setting_id

    params = sidecar.get("params", {})
    protocol = str(params.get("protocol", "default"))
    setting_params = sidecar.get("setting_params")
    if not isinstance(setting_params, dict):  # a record made before sidecars carried it
        setting_params = setting_params_of(params)
    dataset = params.get("dataset")
    base = {
        "run_key": sidecar["run_key"],
        "task": sidecar["task"],
        "backbone": params.get("backbone"),
        "dataset": dataset,
        "protocol": protocol,
        "seed": int(params.get("seed", 0)),
        "setting": setting_name(sidecar["task"], dataset, protocol, params),
        "setting_params": json.dumps(setting_params, sort_keys=True, default=str),
        "device": sidecar.get("device"),
        "precision": precision_of(sidecar.get("timings") or {}),
        "batch_size_used": sidecar.get("batch_size_used"),
    }
    stderr, n_items = sidecar.get("stderr") or {}, sidecar.get("n_items") or {}
    directions = sidecar.get("higher_is_better") or {}
    return [
        {**base, "metric": metric, "value": _number(value),
         "setting_id": setting_id(sidecar["task"], str(dataset), protocol, metric, setting_params),
         "stderr": _number(stderr.get(metric)), "n_items": _number(n_items.get(metric)),
         "higher_is_better": bool(directions.get(metric, higher_is_better(metric)))}
        for metric, value in sorted(sidecar.get("metrics", {}).items())
    ]


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def build_results(runs_dir: str | os.PathLike[str] = "runs", *, include_stale: bool = False) -> pd.DataFrame:
    """Merge every complete, current sidecar into one tidy table (the schema's columns) with backbone metadata.

    Parameters
    ----------
    runs_dir
        The runs folder (``<task>/<run_key>/metrics.json``); missing or without records raises
        :class:`NoRunsError`.
    include_stale
        Keep records made by other code (stale) too.

    Returns
    -------
    pandas.DataFrame
        Conformed to :data:`bobkit.results.schema.COLUMNS`; ``attrs["runs_dir"]`` is the absolute runs folder,
        ``attrs["left_out"]`` counts the records left out (``stale``, ``no_notebook``, ``corrupt``; ``superseded``
        when a cell's declared data changed and it ran again) and
        ``attrs["corrupt"]`` lists the unusable sidecars (``attrs["corrupt_reasons"]``: why, by path).
    """
    import pandas as pd

    from bobkit.backbones import metadata_frame
    from bobkit.results.schema import REQUIRED_COLUMNS, conform

    root = Path(runs_dir).expanduser().resolve()
    if not root.is_dir():
        raise NoRunsError(f"runs folder {str(runs_dir)!r} does not exist ({root})")
    scan = scan_sidecars(root)
    if not scan.sidecars and not scan.corrupt:
        raise NoRunsError(f"runs folder {str(runs_dir)!r} holds no run records (*/*/metrics.json) ({root})")
    left_out = {"stale": 0, "no_notebook": 0, "corrupt": len(scan.corrupt)}
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path, sidecar in scan.sidecars:
        verdict = record_verdict(path.parent, sidecar)
        if verdict == "failed":
            continue
        if verdict == "no_notebook":
            left_out["no_notebook"] += 1
        elif verdict == "stale" and not include_stale:
            left_out["stale"] += 1
        else:
            # One cell made by one code under two run keys: a declared dataset or backbone changed in between
            # (its content key is in the run key); the later record supersedes the earlier one.
            cell = (sidecar.get("identity") or sidecar["run_key"], sidecar.get("code_version"))
            if cell in kept:
                left_out["superseded"] = left_out.get("superseded", 0) + 1
                if float(sidecar.get("started") or 0) < float(kept[cell].get("started") or 0):
                    continue
            kept[cell] = sidecar
    rows = [row for sidecar in kept.values() for row in sidecar_rows(sidecar)]
    table = pd.DataFrame(rows, columns=None if rows else list(REQUIRED_COLUMNS))
    meta = metadata_frame().rename(columns={"name": "backbone"})
    table = conform(table.merge(meta, on="backbone", how="left"))
    table = table.sort_values(["task", "dataset", "protocol", "backbone", "seed", "metric"]).reset_index(drop=True)
    table.attrs = {"runs_dir": str(root), "left_out": left_out, "corrupt": [str(p) for p, _ in scan.corrupt],
                   "corrupt_reasons": {str(p): reason for p, reason in scan.corrupt}}
    return table


def check_replacement(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Refuse (``ValueError``) to replace the table at ``path`` with ``table`` when that holds fewer runs.

    A mistyped ``--runs-dir`` must not silently shrink a results table; the caller passes ``--force`` to skip this.
    """
    from bobkit.results.schema import read_results

    path = Path(path)
    if not path.exists():
        return
    try:
        old = read_results(path)
    except Exception as exc:  # noqa: BLE001 - parquet/CSV readers raise many kinds; the message says which
        raise ValueError(f"{path} exists and cannot be read ({exc}); pass --force to replace it") from exc
    old_runs, new_runs = old["run_key"].nunique(), table["run_key"].nunique()
    if new_runs < old_runs:
        raise ValueError(
            f"refusing to replace {path} ({old_runs} runs, from {old.attrs.get('runs_dir', 'an unknown runs folder')})"
            f" with {new_runs} runs from {table.attrs.get('runs_dir')}; check --runs-dir, or pass --force")
