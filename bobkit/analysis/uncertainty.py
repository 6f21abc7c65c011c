"""Sampling uncertainty: each cell's standard error over its test items, and bootstrap intervals built on it.

Every number the analysis shows comes with an interval that combines two sources:

* **within-cell**: a cell's value is a mean over its test items, so it has a sampling standard error (``stderr``
  in the results table, written by the task; :func:`within_cell_stderr` falls back to the binomial bound
  ``sqrt(p (1 - p) / n)`` for metrics that are means over items of a value in [0, 1] when only ``n_items`` is known:
  exact for accuracies, an upper bound for MRR / mAP / precision);
* **between settings and seeds** (and between backbones or architectures for correlations): a bootstrap.

An interval that would be shown as 95% but has zero width while nothing fixed the value exactly is reported as
NaN ("no interval"), never as certainty: :func:`percentile_interval`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

#: Metrics that are means over test items of a value in [0, 1]: accuracies (binomial standard error exact) and
#: per-query ranking scores (the binomial value is an upper bound on their standard error).
ITEM_MEAN_METRICS = r"(top\d+|id_acc|acc/.+|mca|recall@\d+|precision@\d+|mp@\d+|map|mrr|mrr_bob)"


def binomial_stderr(value: np.ndarray | pd.Series | float, n_items: np.ndarray | pd.Series | float) -> np.ndarray:
    """``sqrt(p (1 - p) / n)`` for proportions ``p`` over ``n`` items (NaN where ``p`` is outside [0, 1] or
    ``n < 1``)."""
    p = np.asarray(value, dtype=float)
    n = np.asarray(n_items, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(p * (1.0 - p) / n)
    return np.where((p >= 0) & (p <= 1) & (n >= 1), se, np.nan)


def within_cell_stderr(table: pd.DataFrame) -> pd.Series:
    """Each row's standard error over its test items: ``stderr`` where the task recorded it, else the binomial bound
    for :data:`ITEM_MEAN_METRICS` rows with a known ``n_items``, else NaN (unknown)."""
    recorded = pd.to_numeric(table.get("stderr", pd.Series(np.nan, index=table.index)), errors="coerce")
    n_items = pd.to_numeric(table.get("n_items", pd.Series(np.nan, index=table.index)), errors="coerce")
    item_mean = table["metric"].astype(str).str.fullmatch(ITEM_MEAN_METRICS)
    bound = pd.Series(binomial_stderr(table["value"], n_items), index=table.index).where(item_mean)
    return recorded.where(np.isfinite(recorded), bound).astype(float)


def percentile_interval(replicates: np.ndarray, ci: float = 0.95, axis: int = 0,
                        min_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``replicates`` along ``axis`` (NaN replicates ignored).

    NaN where fewer than ``min_share`` of the replicates are defined, and NaN where the interval has zero width:
    a 95% interval of width zero would claim certainty that a finite number of items cannot give.
    """
    reps = np.asarray(replicates, dtype=float)
    alpha = (1.0 - ci) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [alpha, 1.0 - alpha], axis=axis)
    defined = np.isfinite(reps).mean(axis=axis) >= min_share
    flat = ~(hi - lo > 1e-12)
    lo = np.where(defined & ~flat, lo, np.nan)
    hi = np.where(defined & ~flat, hi, np.nan)
    return lo, hi


def cluster_members(clusters: Sequence[object] | None, n: int) -> list[np.ndarray]:
    """Row indices of each cluster (each row its own cluster when ``clusters`` is None)."""
    if clusters is None:
        return [np.array([i]) for i in range(n)]
    codes, _ = pd.factorize(pd.Series(list(clusters)).astype(str))
    order = np.argsort(codes, kind="stable")
    splits = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, splits)


def resample_rows(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Row indices of one cluster bootstrap draw: as many clusters as there are, with replacement, all their rows."""
    picks = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[i] for i in picks]) if len(members) else np.array([], dtype=int)


def bootstrap_mean(values: Sequence[float], *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                   clusters: Sequence[object] | None = None,
                   replicates: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile interval of a mean: rows (or ``clusters`` of rows) resampled with replacement; with
    ``replicates`` (``n_boot`` x rows, e.g. bootstrap replicates of each row's score), replicate ``b`` averages
    row values of replicate ``b`` so the interval also carries the rows' own uncertainty."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or n_boot <= 0:
        return np.nan, np.nan
    members = cluster_members(clusters, v.size)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        rows = resample_rows(members, rng)
        source = replicates[b] if replicates is not None else v
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means[b] = np.nanmean(source[rows])
    lo, hi = percentile_interval(means, ci)
    return float(lo), float(hi)
