"""Spearman correlations with bootstrap intervals: by group, between groups, and between score columns.

Intervals resample backbones, or **clusters** of rows (``cluster="architecture"``: on public tables one architecture
appears under many pretrained tags, and its tags are not independent evidence). When bootstrap replicates of the
scores are given (:meth:`bobkit.analysis.scores.ScoreBootstrap.replicates`), replicate ``b`` correlates the
scores of replicate ``b``, so the interval also carries the scores' within-cell and between-setting uncertainty.
Random-init controls are kept out of scale correlations by default (``exclude_kinds``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.scores import BASELINE_KINDS, backbone_metadata, pretrained_only, task_scores, zscores
from bobkit.analysis.uncertainty import cluster_members, percentile_interval, resample_rows


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho as Pearson's r of average ranks (NaN for fewer than 3 pairs or a constant input)."""
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _as_array(values: Iterable[float]) -> np.ndarray:
    return np.asarray(list(values) if not hasattr(values, "__array__") else values, dtype=float)


def _boot_rhos(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int, clusters: Sequence[object] | None,
               y_reps: np.ndarray | None, x_reps: np.ndarray | None = None) -> np.ndarray:
    members = cluster_members(clusters, x.size)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        rows = resample_rows(members, rng)
        xx = (x_reps[b] if x_reps is not None else x)[rows]
        yy = (y_reps[b] if y_reps is not None else y)[rows]
        ok = np.isfinite(xx) & np.isfinite(yy)
        out[b] = _rho(xx[ok], yy[ok])
    return out


def spearman(
    x: Iterable[float],
    y: Iterable[float],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    clusters: Sequence[object] | None = None,
    y_replicates: np.ndarray | None = None,
    x_replicates: np.ndarray | None = None,
) -> dict[str, float]:
    """Spearman's rho (:func:`scipy.stats.spearmanr`) with a percentile bootstrap interval.

    Pairs with a missing value are dropped. The bootstrap resamples pairs, or whole ``clusters`` of pairs; with
    ``y_replicates`` / ``x_replicates`` (``n_boot`` x pairs) replicate ``b`` uses their row ``b`` as ``y`` / ``x``. Returns ``rho``, ``pvalue``,
    ``ci_low``, ``ci_high``, ``n``, ``n_clusters``; the interval is NaN with fewer than 4 pairs or ``n_boot = 0``,
    everything is NaN with fewer than 3 pairs or a constant input.
    """
    x, y = _as_array(x), _as_array(y)
    ok = np.isfinite(x) & np.isfinite(y)
    reps = None if y_replicates is None else np.asarray(y_replicates, dtype=float)[:, ok]
    x_reps = None if x_replicates is None else np.asarray(x_replicates, dtype=float)[:, ok]
    labels = None if clusters is None else np.asarray(list(clusters), dtype=object)[ok]
    x, y = x[ok], y[ok]
    n = int(x.size)
    n_clusters = n if labels is None else int(pd.Series(labels).astype(str).nunique())
    out = {"rho": math.nan, "pvalue": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n,
           "n_clusters": n_clusters}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.spearmanr(x, y)
    out["rho"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    if n >= 4 and n_clusters >= 3 and n_boot > 0:
        for name, given in (("y_replicates", reps), ("x_replicates", x_reps)):
            if given is not None and len(given) < n_boot:
                raise ValueError(f"{name} has {len(given)} rows, fewer than n_boot = {n_boot}")
        rhos = _boot_rhos(x, y, n_boot=n_boot, seed=seed, clusters=labels, y_reps=reps, x_reps=x_reps)
        lo, hi = percentile_interval(rhos, ci)
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def pretrained_spearman(frame: pd.DataFrame, x: str, y: str, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                        pool_exclude: Sequence[str] = BASELINE_KINDS) -> dict[str, float]:
    """:func:`spearman` of columns ``x`` and ``y`` over the pretrained backbones' rows of ``frame`` (random-init
    controls left out, :func:`~bobkit.analysis.scores.pretrained_only`), with ``n_controls_left_out``."""
    pooled, n_controls = pretrained_only(frame, pool_exclude)
    return {**spearman(pooled[x], pooled[y], n_boot=n_boot, ci=ci, seed=seed), "n_controls_left_out": n_controls}


def _scale_frame(frame: pd.DataFrame, x: str, y: str, columns: Sequence[str | None],
                 exclude_kinds: Sequence[str]) -> pd.DataFrame:
    keep = [c for c in dict.fromkeys([x, y, *columns]) if c is not None and c in frame]
    data = frame[keep].copy()
    data[x] = pd.to_numeric(data[x], errors="coerce")
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[np.isfinite(data[x]) & np.isfinite(data[y])]
    if any(s in x for s in ("images", "params")):
        data = data[data[x] > 0]  # log scales need them; ranks are unchanged by the log
    if exclude_kinds and "method_kind" in frame:
        data = data[~frame.loc[data.index, "method_kind"].isin(list(exclude_kinds))]
    return data


def _group_labels(data: pd.DataFrame, by: str, group_map: Mapping[str, str] | None) -> pd.Series:
    labels = data[by].astype(object).where(data[by].notna(), "unknown").astype(str)
    return labels.map(lambda g: group_map.get(g, g)) if group_map else labels


def _replicates_for(data: pd.DataFrame, replicates: pd.DataFrame | None) -> np.ndarray | None:
    if replicates is None:
        return None
    if "backbone" not in data:
        raise ValueError("replicates need a 'backbone' column to align rows")
    return replicates.reindex(columns=data["backbone"].tolist()).to_numpy(dtype=float)


def correlate_by_group(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    by: str | None = "family",
    groups: Sequence[str] | None = None,
    group_map: Mapping[str, str] | None = None,
    extra_groups: Mapping[str, Sequence[str]] | None = None,
    include_all: bool = True,
    min_n: int = 4,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    cluster: str | None = None,
    replicates: pd.DataFrame | None = None,
    exclude_kinds: Sequence[str] = BASELINE_KINDS,
) -> pd.DataFrame:
    """Spearman of ``y`` with ``x`` within each value of ``by`` (and over all rows), with bootstrap intervals.

    ``group_map`` relabels groups first (e.g. ``{"hierarchical-ViT": "ViT"}``); ``groups`` keeps and orders a subset;
    ``extra_groups`` adds pooled rows (``{"ViT + hierarchical-ViT": ["ViT", "hierarchical-ViT"]}``). Rows with a
    non-finite or, for ``x`` ending in ``images``/``params``, non-positive ``x`` are dropped, and so are rows whose
    ``method_kind`` is in ``exclude_kinds`` (random init). ``cluster`` names a column whose values are resampled
    as units; ``replicates`` (backbone columns) carries the scores' own uncertainty into the interval. Columns:
    ``group``, ``n``, ``n_clusters``, ``rho``, ``pvalue``, ``ci_low``, ``ci_high``; groups with fewer than ``min_n``
    rows are left out (4: with 3 a rank correlation can only be +-1 or +-0.5 and has no interval).
    """
    data = _scale_frame(frame, x, y, [by, cluster, "backbone"], exclude_kinds)
    reps = _replicates_for(data, replicates)

    def one(mask: np.ndarray, label: str) -> dict[str, Any]:
        part = data[mask]
        return {"group": label, **spearman(part[x], part[y], n_boot=n_boot, ci=ci, seed=seed,
                                           clusters=None if cluster is None else part[cluster],
                                           y_replicates=None if reps is None else reps[:, mask])}

    rows = []
    if by is not None:
        labels = _group_labels(data, by, group_map).to_numpy()
        order = list(groups) if groups is not None else sorted(set(labels))
        rows += [one(labels == g, g) for g in order if (labels == g).sum() >= min_n]
        for label, members in (extra_groups or {}).items():
            mask = np.isin(labels, list(members))
            if mask.sum() >= min_n and len(set(labels[mask])) > 1:
                rows.append(one(mask, label))
    if include_all and len(data) >= min_n:
        rows.append(one(np.ones(len(data), dtype=bool), "all"))
    out = pd.DataFrame(rows, columns=["group", "rho", "pvalue", "ci_low", "ci_high", "n", "n_clusters"])
    return out[["group", "n", "n_clusters", "rho", "pvalue", "ci_low", "ci_high"]]


def correlation_difference(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    a: str = "ViT",
    b: str = "CNN",
    by: str = "family",
    group_map: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    cluster: str | None = None,
    replicates: pd.DataFrame | None = None,
    exclude_kinds: Sequence[str] = BASELINE_KINDS,
    min_n: int = 4,
) -> dict[str, float]:
    """rho(group ``a``) minus rho(group ``b``) of ``y`` with ``x``, with a bootstrap interval on the difference.

    Each replicate resamples each group's rows (or clusters) independently, using replicate scores when
    ``replicates`` is given. Returns ``rho_a``, ``rho_b``, ``n_a``, ``n_b``, ``diff``, ``ci_low``, ``ci_high`` and
    ``p_a_greater`` (share of replicates with a larger rho in ``a``). Raises :class:`InsufficientDataError` when a
    group has fewer than ``min_n`` rows or a single ``x`` value.
    """
    data = _scale_frame(frame, x, y, [by, cluster, "backbone"], exclude_kinds)
    labels = _group_labels(data, by, group_map).to_numpy()
    reps = _replicates_for(data, replicates)
    parts = {}
    for g in (a, b):
        mask = labels == g
        if mask.sum() < min_n or data.loc[mask, x].nunique() < 2:
            raise InsufficientDataError(f"it has {int(mask.sum())} pretrained {g} backbone(s) with a known {x} "
                                        f"({min_n} at distinct values are needed in each group)")
        parts[g] = mask
    rho = {g: _rho(data.loc[m, x].to_numpy(float), data.loc[m, y].to_numpy(float)) for g, m in parts.items()}
    rng_seeds = {a: seed, b: seed + 1}
    boots = {}
    for g, m in parts.items():
        labels_g = None if cluster is None else data.loc[m, cluster].to_numpy()
        boots[g] = _boot_rhos(data.loc[m, x].to_numpy(float), data.loc[m, y].to_numpy(float), n_boot=n_boot,
                              seed=rng_seeds[g], clusters=labels_g, y_reps=None if reps is None else reps[:, m])
    diff = boots[a] - boots[b]
    lo, hi = percentile_interval(diff, ci)
    return {"a": a, "b": b, "rho_a": rho[a], "rho_b": rho[b], "n_a": int(parts[a].sum()),
            "n_b": int(parts[b].sum()), "diff": rho[a] - rho[b], "ci_low": float(lo), "ci_high": float(hi),
            "p_a_greater": float(np.nanmean(diff > 0)) if np.isfinite(diff).any() else math.nan}


def score_matrix(
    results: pd.DataFrame,
    *,
    level: str = "task",
    value: str = "z",
    with_metadata: bool = False,
    exclude_baselines: bool = True,
    **score_kwargs: Any,
) -> pd.DataFrame:
    """Wide backbone x column table to correlate: ``level`` ``"task"`` (task scores) or ``"setting"`` (each
    setting's z-score, or ``value="signed"`` for the raw signed values). ``score_kwargs`` go to
    :func:`~bobkit.analysis.scores.zscores`. ``with_metadata`` adds a ``backbone`` column and the metadata columns.
    Baselines (random-init controls) are left out unless ``exclude_baselines`` is False: being bad at everything,
    they would inflate every correlation."""
    setting_agg = score_kwargs.pop("setting_agg", "mean")
    z = zscores(results, **score_kwargs)
    if exclude_baselines:
        z = z[~z["baseline"]]
    if level == "task":
        wide = task_scores(z, setting_agg=setting_agg)
    elif level == "setting":
        wide = z.pivot_table(index="backbone", columns="setting_id", values=value, aggfunc="mean")
    else:
        raise ValueError(f"level must be 'task' or 'setting', not {level!r}")
    wide.columns = [str(c) for c in wide.columns]
    wide.columns.name = None
    if with_metadata:
        columns = list(wide.columns)
        wide = wide.join(backbone_metadata(results)).reset_index()
        wide.attrs["score_columns"] = columns
    return wide


def correlation_matrix(
    wide: pd.DataFrame,
    *,
    min_overlap: int = 4,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    replicates: Mapping[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise Spearman between the columns of ``wide`` (pairwise-complete backbones).

    ``replicates`` maps a column to its bootstrap replicates (``n_boot`` x backbones, e.g.
    ``boot.replicates(task)``); ``wide``'s index must then be the backbones. Pairs of such columns get intervals
    that also carry the scores' own uncertainty.

    Returns ``(matrix, pairs)``: the square rho matrix and a long table ``a``, ``b``, ``n``, ``rho``, ``pvalue``,
    ``ci_low``, ``ci_high`` for each unordered pair; both NaN where fewer than ``min_overlap`` backbones overlap (with
    3 a rank correlation can only be +-1 or +-0.5 and has no interval).
    """
    cols = list(wide.columns)
    if len(cols) < 2:
        raise InsufficientDataError(f"need at least two columns to correlate, have {cols}")
    matrix = pd.DataFrame(np.eye(len(cols)), index=cols, columns=cols)
    rows = []
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            reps = {c: None if not replicates or c not in replicates else
                    replicates[c].reindex(columns=list(wide.index)).to_numpy(dtype=float) for c in (a, b)}
            res = spearman(wide[a], wide[b], n_boot=n_boot, ci=ci, seed=seed, x_replicates=reps[a],
                           y_replicates=reps[b])
            if res["n"] < min_overlap:
                res.update(rho=math.nan, pvalue=math.nan, ci_low=math.nan, ci_high=math.nan)
            matrix.loc[a, b] = matrix.loc[b, a] = res["rho"]
            rows.append({"a": a, "b": b, **res})
    pairs = pd.DataFrame(rows)[["a", "b", "n", "rho", "pvalue", "ci_low", "ci_high"]]
    return matrix, pairs


def pair_stats(pairs: pd.DataFrame, threshold: float = 0.8) -> dict[str, float]:
    """Median, min, max of the pairwise rho in a :func:`correlation_matrix` pairs table and the share above
    ``threshold``."""
    rho = pairs["rho"].dropna()
    if rho.empty:
        return {"n_pairs": 0, "median": math.nan, "min": math.nan, "max": math.nan, "share_above": math.nan}
    return {"n_pairs": int(rho.size), "median": float(rho.median()), "min": float(rho.min()),
            "max": float(rho.max()), "share_above": float((rho > threshold).mean()), "threshold": threshold}
