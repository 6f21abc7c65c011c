"""What a notebook analyses: your results table (``bob build`` output) or a public reference table, both in the one
results schema (:mod:`bobkit.results.schema`), and row filters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from bobkit.results.schema import read_results

#: Reference tables a notebook can name instead of a results path.
REFERENCES: tuple[str, ...] = ("bob_retrieval", "timm")


def load_reference(name: str = "bob_retrieval") -> pd.DataFrame:
    """A public reference table in the results schema: ``bob_retrieval`` (the BoB retrieval snapshot) or ``timm``
    (ImageNet and every OOD table timm publishes). A path to a results file is also accepted."""
    if name == "bob_retrieval":
        from bobkit.analysis.public.bob import retrieval_snapshot_table

        return retrieval_snapshot_table()
    if name == "timm":
        from bobkit.analysis.public.timm import timm_results_table

        return timm_results_table()
    if Path(str(name)).suffix in {".parquet", ".csv"}:
        return read_results(name)
    raise ValueError(f"unknown reference table {name!r}; choose from {list(REFERENCES)} or give a results file")


def load_table(results_path: str | os.PathLike[str] | None = None, reference: str = "bob_retrieval") -> pd.DataFrame:
    """Your results table at ``results_path`` (conformed to the schema; ``attrs`` keep ``source`` and, when
    ``bob build`` recorded it, ``runs_dir``), or the public ``reference`` when ``results_path`` is None."""
    if results_path is None or str(results_path) == "":
        table = load_reference(reference)
        table.attrs["source"] = f"public reference table {reference!r}"
        return table
    return read_results(results_path)


def filter_table(
    table: pd.DataFrame,
    *,
    tasks: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    method_kinds: Sequence[str] | None = None,
    min_params: float | None = None,
    max_params: float | None = None,
    exclude_random: bool = False,
) -> pd.DataFrame:
    """Rows of ``table`` matching every given filter (``None`` = no filter). Parameter bounds are in millions;
    rows with unknown parameter counts are dropped when a bound is set."""
    mask = pd.Series(True, index=table.index)
    for column, allowed in (("task", tasks), ("dataset", datasets), ("protocol", protocols), ("metric", metrics),
                            ("backbone", backbones), ("family", families), ("method_kind", method_kinds)):
        if allowed is not None:
            allowed = [allowed] if isinstance(allowed, str) else list(allowed)
            mask &= table[column].isin(allowed)
    if min_params is not None:
        mask &= table["params_millions"] >= min_params
    if max_params is not None:
        mask &= table["params_millions"] < max_params
    if exclude_random:
        mask &= table["method_kind"] != "random"
    out = table[mask].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out
