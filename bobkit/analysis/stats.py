"""Scores, rankings, correlations and regressions over a results table (the paper's analysis, every choice a parameter).

Conventions (DESIGN.md section 5):

* a **setting** is task x dataset x protocol x metric. In a results table that is the ``setting`` column (which already
  joins task/dataset/protocol and any low-shot qualifier) plus ``metric``: :data:`DEFAULT_SETTING_KEYS`;
* values of one backbone in one setting are first averaged over seeds (``seed_agg``);
* lower-is-better metrics are negated (``negate_lower``) so that higher is always better;
* each setting is z-scored over the backbones evaluated there (``ddof`` 0 as :func:`scipy.stats.zscore`; a setting
  where every backbone ties scores 0; settings with fewer than ``min_backbones`` backbones are dropped);
* a task score averages the z-scores of its settings (``setting_agg``), the overall score averages the task scores
  (``task_agg``); a backbone missing a setting or a task is averaged over what it has.

Uncertainty comes from a bootstrap that resamples settings within each task and seeds within each backbone x setting
and recomputes everything from the z-scores up (:func:`bootstrap_scores`, :func:`leaderboard`). Correlations use
:func:`scipy.stats.spearmanr` with :func:`scipy.stats.bootstrap` intervals; regressions use statsmodels' formulas.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

DEFAULT_SETTING_KEYS: tuple[str, ...] = ("setting", "metric")
META_COLUMNS: tuple[str, ...] = (
    "display_name", "architecture", "family", "method", "method_kind", "pretrain_data", "pretrain_images",
    "params_millions",
)
_AGG: dict[str, Callable[..., np.ndarray]] = {"mean": np.nanmean, "median": np.nanmedian}


class InsufficientDataError(ValueError):
    """The table lacks what an analysis needs (too few backbones, tasks, pairs, ...). Notebooks show it as a note."""


#: The metric(s) that score each task, as regular expressions tried in order: for each task the first pattern that
#: matches one of its metrics is used, with every metric it matches (each one a setting). A results table from
#: ``bob build`` holds many metrics per run (top5, nll, brier, temperature, ...); scoring all of them would weight
#: tasks by how many numbers they report. Tasks not listed keep ``top1`` when they have it, else every metric.
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "retrieval": ("mrr", "map"),
    "detection": ("box_ap",),
    "segmentation": ("mask_ap", "miou"),
    "ood": (r"acc/[^/]+", "top1", "mca"),  # accuracy on each shifted target (not per corruption), else top1
    "robustness": (r"acc/[^/]+/(?!0$)[^/]+", "top1"),  # accuracy under each attack at eps > 0
}
#: Clean (in-distribution) accuracy metrics a robustness or OOD run reports about itself.
CLEAN_ACCURACY: tuple[str, ...] = ("id_acc", "top1")


def _first_matching(metrics: Iterable[str], patterns: Sequence[str]) -> str | None:
    import re

    names = list(dict.fromkeys(map(str, metrics)))
    for pattern in patterns:
        if any(re.fullmatch(pattern, m) for m in names):
            return pattern
    return None


def primary_metrics(results: pd.DataFrame, spec: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Only the rows of each task's primary metric(s) (:data:`PRIMARY_METRICS`, or ``spec``); ``attrs["primary"]``
    maps task -> the pattern used."""
    spec = PRIMARY_METRICS if spec is None else spec
    keep = pd.Series(False, index=results.index)
    used: dict[str, str] = {}
    for task, rows in results.groupby("task", sort=True):
        patterns = tuple(spec.get(str(task), ("top1",)))
        pattern = _first_matching(rows["metric"], patterns)
        if pattern is None and str(task) not in spec:
            pattern = ".*"
        if pattern is None:
            continue
        used[str(task)] = pattern
        keep.loc[rows.index] = rows["metric"].astype(str).str.fullmatch(pattern)
    out = results[keep].reset_index(drop=True)
    out.attrs = {**results.attrs, "primary": used}
    return out


def describe_primary(scored: pd.DataFrame) -> str:
    """``Scored on: classification: top1; ood: acc/<target> (2 metrics)``."""
    parts = []
    for task, rows in scored.groupby("task", sort=True):
        names = sorted(map(str, rows["metric"].unique()))
        parts.append(f"{task}: {', '.join(names[:4])}" + (f" (+{len(names) - 4} more)" if len(names) > 4 else ""))
    return "Scored metrics per task: " + "; ".join(parts) + "." if parts else "No metric to score."


# --------------------------------------------------------------------------------------------------------------------
# Setting-level values and z-scores
# --------------------------------------------------------------------------------------------------------------------

def setting_ids(results: pd.DataFrame, setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS) -> pd.Series:
    """One string per row naming its setting: the ``setting_keys`` values joined by ``" | "``."""
    missing = [k for k in setting_keys if k not in results.columns]
    if missing:
        raise ValueError(f"setting keys {missing} are not columns of the results table")
    parts = [results[k].astype(str) for k in setting_keys]
    out = parts[0]
    for p in parts[1:]:
        out = out + " | " + p
    return out


def setting_values(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    seed_agg: str = "mean",
) -> pd.DataFrame:
    """One row per backbone x setting: ``value`` (seeds aggregated), ``signed`` (negated when lower is better),
    ``n_seeds``, plus ``task``, ``setting_id``, ``dataset``, ``protocol``, ``metric``, ``higher_is_better``."""
    if results.empty:
        raise InsufficientDataError("the results table is empty")
    frame = results.assign(setting_id=setting_ids(results, setting_keys)).dropna(subset=["value"])
    if frame.empty:
        raise InsufficientDataError("the results table has no non-missing values")
    group = ["backbone", "setting_id"]
    agg = frame.groupby(group, sort=True).agg(
        value=("value", seed_agg), n_seeds=("value", "size"), task=("task", "first"), dataset=("dataset", "first"),
        protocol=("protocol", "first"), metric=("metric", "first"), higher_is_better=("higher_is_better", "first"),
    ).reset_index()
    sign = np.where(agg["higher_is_better"].astype(bool) | (not negate_lower), 1.0, -1.0)
    agg["signed"] = agg["value"] * sign
    return agg


def zscores(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    seed_agg: str = "mean",
    ddof: int = 0,
    min_backbones: int = 2,
) -> pd.DataFrame:
    """Per-setting z-scores: :func:`setting_values` plus ``z = (signed - mean) / std`` over the backbones of the
    setting (std with ``ddof``; 0 when all tie). Settings with fewer than ``min_backbones`` backbones are dropped."""
    values = setting_values(results, setting_keys=setting_keys, negate_lower=negate_lower, seed_agg=seed_agg)
    counts = values.groupby("setting_id")["backbone"].transform("size")
    values = values[counts >= min_backbones].copy()
    if values.empty:
        raise InsufficientDataError(f"no setting has at least {min_backbones} backbones to z-score")
    grouped = values.groupby("setting_id")["signed"]
    mean = grouped.transform("mean")
    std = grouped.transform(lambda s: float(np.std(s.to_numpy(), ddof=ddof)) if len(s) > ddof else np.nan)
    values["z"] = np.where(std > 0, (values["signed"] - mean) / std.where(std > 0, 1.0), 0.0)
    return values.reset_index(drop=True)


def task_scores(z: pd.DataFrame, *, setting_agg: str = "mean") -> pd.DataFrame:
    """Wide table backbone x task of aggregated setting z-scores (``z`` from :func:`zscores`)."""
    return z.pivot_table(index="backbone", columns="task", values="z", aggfunc=_AGG[setting_agg])


def overall_scores(task_wide: pd.DataFrame, *, task_agg: str = "mean") -> pd.Series:
    """Overall score per backbone: ``task_agg`` over its task scores."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return pd.Series(_AGG[task_agg](task_wide.to_numpy(dtype=float), axis=1), index=task_wide.index,
                         name="overall")


def backbone_metadata(results: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone with the metadata columns present in ``results`` (index ``backbone``)."""
    cols = [c for c in (*META_COLUMNS, "pretrain_data_group", "tag") if c in results.columns]
    return results.drop_duplicates("backbone").set_index("backbone")[cols]


def scores(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    seed_agg: str = "mean",
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
) -> pd.DataFrame:
    """One row per backbone: a column per task score, ``overall``, ``n_settings``, ``n_tasks`` and the metadata,
    sorted by ``overall`` (best first)."""
    z = zscores(results, setting_keys=setting_keys, negate_lower=negate_lower, seed_agg=seed_agg, ddof=ddof,
                min_backbones=min_backbones)
    wide = task_scores(z, setting_agg=setting_agg)
    out = wide.copy()
    out.columns = [str(c) for c in out.columns]
    out["overall"] = overall_scores(wide, task_agg=task_agg)
    out["n_settings"] = z.groupby("backbone")["setting_id"].nunique()
    out["n_tasks"] = wide.notna().sum(axis=1)
    out = out.join(backbone_metadata(results))
    out = out.sort_values("overall", ascending=False)
    out.index.name = "backbone"
    out.attrs["tasks"] = [str(c) for c in wide.columns]
    return out.reset_index()


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap over settings and seeds
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class _Arrays:
    backbones: list[str]
    settings: list[str]
    tasks: list[str]
    task_of_setting: np.ndarray  # (S,) task index
    values: np.ndarray  # (B, S, K) signed seed values, NaN padded
    n_seeds: np.ndarray  # (B, S)


def _arrays(results: pd.DataFrame, setting_keys: Sequence[str], negate_lower: bool, min_backbones: int) -> _Arrays:
    frame = results.assign(setting_id=setting_ids(results, setting_keys)).dropna(subset=["value"])
    sign = np.where(frame["higher_is_better"].astype(bool) | (not negate_lower), 1.0, -1.0)
    frame = frame.assign(signed=frame["value"].to_numpy(dtype=float) * sign)
    counts = frame.groupby("setting_id")["backbone"].transform("nunique")
    frame = frame[counts >= min_backbones]
    if frame.empty:
        raise InsufficientDataError(f"no setting has at least {min_backbones} backbones to z-score")
    backbones = sorted(frame["backbone"].unique())
    settings = sorted(frame["setting_id"].unique())
    task_by_setting = frame.drop_duplicates("setting_id").set_index("setting_id")["task"].astype(str)
    tasks = sorted(task_by_setting.unique())
    b_idx = pd.Index(backbones).get_indexer(frame["backbone"])
    s_idx = pd.Index(settings).get_indexer(frame["setting_id"])
    k_idx = frame.groupby(["backbone", "setting_id"]).cumcount().to_numpy()
    values = np.full((len(backbones), len(settings), int(k_idx.max()) + 1), np.nan)
    values[b_idx, s_idx, k_idx] = frame["signed"].to_numpy(dtype=float)
    n_seeds = np.isfinite(values).sum(axis=2)
    task_of_setting = pd.Index(tasks).get_indexer([task_by_setting[s] for s in settings])
    return _Arrays(backbones, settings, tasks, task_of_setting, values, n_seeds)


def _z_matrix(means: np.ndarray, ddof: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(means, axis=0, keepdims=True)
        sd = np.nanstd(means, axis=0, ddof=ddof, keepdims=True)
    z = np.where(sd > 0, (means - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return np.where(np.isfinite(means), z, np.nan)


def _aggregate(z: np.ndarray, setting_cols: np.ndarray, task_of_setting: np.ndarray, n_tasks: int,
               setting_agg: str, task_agg: str) -> tuple[np.ndarray, np.ndarray]:
    task = np.full((z.shape[0], n_tasks), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(n_tasks):
            cols = setting_cols[task_of_setting[setting_cols] == t]
            if cols.size:
                task[:, t] = _AGG[setting_agg](z[:, cols], axis=1)
        overall = _AGG[task_agg](task, axis=1)
    return task, overall


def bootstrap_scores(
    results: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    resample: Sequence[str] = ("settings", "seeds"),
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
) -> dict[str, Any]:
    """Bootstrap replicates of the task and overall scores.

    Each replicate resamples, when named in ``resample``, the seeds of every backbone x setting (with replacement,
    keeping their number) and the settings of every task (with replacement, keeping their number), then recomputes
    the per-setting z-scores and the aggregation exactly as :func:`scores` does (seeds are averaged).

    Returns
    -------
    dict with ``backbones`` (list), ``tasks`` (list), ``point_overall`` (B,), ``point_tasks`` (B, T), ``overall``
    (n_boot, B) and ``tasks_boot`` (n_boot, B, T) arrays.
    """
    unknown = set(resample) - {"settings", "seeds"}
    if unknown:
        raise ValueError(f"resample names {sorted(unknown)}; use 'settings' and/or 'seeds'")
    arr = _arrays(results, setting_keys, negate_lower, min_backbones)
    rng = np.random.default_rng(seed)
    n_b, n_s, n_k = arr.values.shape
    all_cols = np.arange(n_s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        point_means = np.nanmean(arr.values, axis=2)
    z_point = _z_matrix(point_means, ddof)
    point_tasks, point_overall = _aggregate(z_point, all_cols, arr.task_of_setting,
                                            len(arr.tasks), setting_agg, task_agg)
    boot_overall = np.empty((n_boot, n_b))
    boot_tasks = np.empty((n_boot, n_b, len(arr.tasks)))
    by_task = [np.flatnonzero(arr.task_of_setting == t) for t in range(len(arr.tasks))]
    slots = np.arange(n_k)[None, None, :]
    resample_seeds = "seeds" in resample and n_k > 1
    for i in range(n_boot):
        if resample_seeds:
            draws = np.floor(rng.random((n_b, n_s, n_k)) * np.maximum(arr.n_seeds, 1)[..., None]).astype(int)
            picked = np.take_along_axis(arr.values, draws, axis=2)
            picked = np.where(slots < arr.n_seeds[..., None], picked, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(picked, axis=2)
            z = _z_matrix(means, ddof)
        else:
            z = z_point
        if "settings" in resample:
            cols = np.concatenate([rng.choice(c, size=c.size, replace=True) for c in by_task if c.size])
        else:
            cols = all_cols
        boot_tasks[i], boot_overall[i] = _aggregate(z, cols, arr.task_of_setting, len(arr.tasks), setting_agg,
                                                    task_agg)
    return {"backbones": arr.backbones, "tasks": arr.tasks, "point_overall": point_overall,
            "point_tasks": point_tasks, "overall": boot_overall, "tasks_boot": boot_tasks,
            "n_settings_per_task": [int(c.size) for c in by_task], "max_seeds": int(n_k)}


def _ranks(score_matrix: np.ndarray) -> np.ndarray:
    """Rank 1 = best along the last axis (ties share the best rank); NaN stays NaN."""
    return sps.rankdata(-score_matrix, method="min", axis=-1, nan_policy="omit")


def leaderboard(
    results: pd.DataFrame,
    *,
    level: str = "overall",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    resample: Sequence[str] = ("settings", "seeds"),
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
) -> pd.DataFrame:
    """Backbones ranked by score with percentile bootstrap intervals on score and rank.

    ``level`` is ``"overall"`` or a task name (rank on that task's score). Columns: ``rank``, ``backbone``,
    ``display_name``, ``score``, ``score_lo``, ``score_hi``, ``rank_lo``, ``rank_hi``, one column per task score,
    ``n_settings``, ``n_tasks`` and the metadata; best first. With ``n_boot = 0`` the intervals are NaN.
    """
    boot = bootstrap_scores(results, n_boot=max(n_boot, 1), seed=seed, resample=resample,
                            setting_keys=setting_keys, negate_lower=negate_lower, ddof=ddof,
                            min_backbones=min_backbones, setting_agg=setting_agg, task_agg=task_agg)
    if level == "overall":
        point, reps = boot["point_overall"], boot["overall"]
    elif level in boot["tasks"]:
        t = boot["tasks"].index(level)
        point, reps = boot["point_tasks"][:, t], boot["tasks_boot"][:, :, t]
    else:
        raise InsufficientDataError(f"no task {level!r} in the table; tasks: {boot['tasks']}")
    keep = np.isfinite(point)
    if keep.sum() < 1:
        raise InsufficientDataError(f"no backbone has a {level} score")
    backbones = [b for b, k in zip(boot["backbones"], keep) if k]
    point, reps = point[keep], reps[:, keep]
    alpha = (1 - ci) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(reps, [alpha, 1 - alpha], axis=0) if n_boot > 0 else (np.nan * point,) * 2
        rank_reps = _ranks(reps)
        rlo, rhi = np.nanquantile(rank_reps, [alpha, 1 - alpha], axis=0) if n_boot > 0 else (np.nan * point,) * 2
    table = pd.DataFrame({
        "backbone": backbones, "score": point, "score_lo": lo, "score_hi": hi,
        "rank": _ranks(point).astype(int), "rank_lo": rlo, "rank_hi": rhi,
    })
    per_task = pd.DataFrame(boot["point_tasks"][keep], columns=[str(t) for t in boot["tasks"]])
    table = pd.concat([table, per_task], axis=1)
    setting_counts = (results.assign(setting_id=setting_ids(results, setting_keys)).dropna(subset=["value"])
                      .groupby("backbone")["setting_id"].nunique())
    table["n_settings"] = table["backbone"].map(setting_counts).astype("Int64")
    table["n_tasks"] = per_task.notna().sum(axis=1).to_numpy()
    table = table.join(backbone_metadata(results), on="backbone")
    table = table.sort_values(["rank", "backbone"]).reset_index(drop=True)
    front = ["rank", "backbone", "display_name", "score", "score_lo", "score_hi", "rank_lo", "rank_hi"]
    table = table[[c for c in front if c in table] + [c for c in table if c not in front]]
    table.attrs.update(level=level, n_boot=n_boot, ci=ci, resample=list(resample), tasks=boot["tasks"],
                       n_settings_per_task=boot["n_settings_per_task"], max_seeds=boot["max_seeds"])
    return table


# --------------------------------------------------------------------------------------------------------------------
# Correlations
# --------------------------------------------------------------------------------------------------------------------

def _spearman_stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho as Pearson's r of average ranks (vectorised over resamples)."""
    rx = sps.rankdata(x, axis=axis)
    ry = sps.rankdata(y, axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sps.pearsonr(rx, ry, axis=axis).statistic


def spearman(
    x: Iterable[float],
    y: Iterable[float],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, float]:
    """Spearman's rho (:func:`scipy.stats.spearmanr`) with a paired :func:`scipy.stats.bootstrap` interval.

    Pairs with a missing value are dropped. Returns ``rho``, ``pvalue``, ``ci_low``, ``ci_high``, ``n``; the interval is
    NaN with fewer than 4 pairs or ``n_boot = 0``, everything is NaN with fewer than 3 pairs or a constant input.
    """
    x = np.asarray(list(x) if not hasattr(x, "__array__") else x, dtype=float)
    y = np.asarray(list(y) if not hasattr(y, "__array__") else y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    out = {"rho": math.nan, "pvalue": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.spearmanr(x, y)
    out["rho"], out["pvalue"] = float(res.statistic), float(res.pvalue)
    if n >= 4 and n_boot > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            boot = sps.bootstrap((x, y), _spearman_stat, paired=True, vectorized=True, n_resamples=n_boot,
                                 confidence_level=ci, method=method, rng=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        if not (np.isfinite(low) and np.isfinite(high)):
            # small samples: some resamples repeat one backbone and have no defined rho; use the defined ones
            dist = np.asarray(boot.bootstrap_distribution, dtype=float)
            if np.isfinite(dist).sum() >= max(10, n_boot // 2):
                alpha = (1 - ci) / 2
                low, high = (float(v) for v in np.nanquantile(dist, [alpha, 1 - alpha]))
        out["ci_low"], out["ci_high"] = low, high
    return out


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
    min_n: int = 3,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman of ``y`` with ``x`` within each value of ``by`` (and over all rows), with bootstrap intervals.

    ``group_map`` relabels groups first (e.g. ``{"hierarchical-ViT": "ViT"}`` to count Swin as a ViT); ``groups``
    keeps and orders a subset; ``extra_groups`` adds pooled rows (``{"ViT + hierarchical-ViT": ["ViT",
    "hierarchical-ViT"]}``). Rows with a non-finite or, for ``x`` ending in ``images``/``params``, non-positive
    ``x`` are dropped (log scales need them; ranks are unchanged by the log). Columns: ``group``, ``n``, ``rho``,
    ``pvalue``, ``ci_low``, ``ci_high``; groups with fewer than ``min_n`` rows are left out.
    """
    data = frame[[c for c in {x, y, by} if c is not None]].copy()
    data[x] = pd.to_numeric(data[x], errors="coerce")
    data[y] = pd.to_numeric(data[y], errors="coerce")
    data = data[np.isfinite(data[x]) & np.isfinite(data[y])]
    if any(s in x for s in ("images", "params")):
        data = data[data[x] > 0]
    rows = []
    if by is not None:
        labels = data[by].astype(object).where(data[by].notna(), "unknown").astype(str)
        if group_map:
            labels = labels.map(lambda g: group_map.get(g, g))
        data = data.assign(_group=labels)
        order = list(groups) if groups is not None else sorted(data["_group"].unique())
        for g in order:
            part = data[data["_group"] == g]
            if len(part) >= min_n:
                rows.append({"group": g, **spearman(part[x], part[y], n_boot=n_boot, ci=ci, seed=seed)})
        for label, members in (extra_groups or {}).items():
            part = data[data["_group"].isin(list(members))]
            present = set(part["_group"])
            if len(part) >= min_n and len(present) > 1:
                rows.append({"group": label, **spearman(part[x], part[y], n_boot=n_boot, ci=ci, seed=seed)})
    if include_all and len(data) >= min_n:
        rows.append({"group": "all", **spearman(data[x], data[y], n_boot=n_boot, ci=ci, seed=seed)})
    out = pd.DataFrame(rows, columns=["group", "rho", "pvalue", "ci_low", "ci_high", "n"])
    return out[["group", "n", "rho", "pvalue", "ci_low", "ci_high"]]


def score_matrix(
    results: pd.DataFrame,
    *,
    level: str = "task",
    value: str = "z",
    with_metadata: bool = False,
    **score_kwargs: Any,
) -> pd.DataFrame:
    """Wide backbone x column table to correlate: ``level`` ``"task"`` (task scores) or ``"setting"`` (each setting's
    z-score, or ``value="signed"`` for the raw signed values). ``score_kwargs`` go to :func:`zscores`.
    ``with_metadata`` adds a ``backbone`` column and the metadata columns (for scatter plots)."""
    setting_agg = score_kwargs.pop("setting_agg", "mean")
    z = zscores(results, **score_kwargs)
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
    min_overlap: int = 3,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise Spearman between the columns of ``wide`` (pairwise-complete backbones).

    Returns ``(matrix, pairs)``: the square rho matrix (NaN where fewer than ``min_overlap`` backbones overlap) and a
    long table ``a``, ``b``, ``n``, ``rho``, ``pvalue``, ``ci_low``, ``ci_high`` for each unordered pair.
    """
    cols = list(wide.columns)
    if len(cols) < 2:
        raise InsufficientDataError(f"need at least two columns to correlate, have {cols}")
    matrix = pd.DataFrame(np.eye(len(cols)), index=cols, columns=cols)
    rows = []
    for i, a in enumerate(cols):
        for b in cols[i + 1:]:
            res = spearman(wide[a], wide[b], n_boot=n_boot, ci=ci, seed=seed)
            rho = res["rho"] if res["n"] >= min_overlap else math.nan
            matrix.loc[a, b] = matrix.loc[b, a] = rho
            rows.append({"a": a, "b": b, **res})
    pairs = pd.DataFrame(rows)[["a", "b", "n", "rho", "pvalue", "ci_low", "ci_high"]]
    return matrix, pairs


# --------------------------------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Regression:
    """A fitted statsmodels OLS with its formula, data and a tidy coefficient table."""

    formula: str
    fit: Any
    data: pd.DataFrame
    table: pd.DataFrame
    dropped_terms: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        return str(self.fit.summary())


def regression_table(fit: Any, ci: float = 0.95) -> pd.DataFrame:
    """Coefficient table of a statsmodels result: ``term``, ``coef``, ``std_err``, ``t``, ``pvalue``, ``ci_low``,
    ``ci_high``."""
    conf = fit.conf_int(alpha=1 - ci)
    return pd.DataFrame({
        "term": fit.params.index, "coef": fit.params.to_numpy(), "std_err": fit.bse.to_numpy(),
        "t": fit.tvalues.to_numpy(), "pvalue": fit.pvalues.to_numpy(),
        "ci_low": conf.iloc[:, 0].to_numpy(), "ci_high": conf.iloc[:, 1].to_numpy(),
    }).reset_index(drop=True)


def _categorical(column: str, values: pd.Series, reference: str) -> str:
    if reference in set(values.dropna()):
        return f"C({column}, Treatment(reference={reference!r}))"
    return f"C({column})"


def family_slopes(reg: Regression) -> pd.DataFrame:
    """Per-family slope of the score on ``log10(params)`` implied by a :func:`scale_regression` fit with the family
    interaction (reference slope + interaction term), with its standard error and interval from the fit's covariance."""
    params = reg.fit.params
    cov = reg.fit.cov_params()
    if "log_params" not in params.index:
        raise InsufficientDataError("the regression has no log_params term")
    rows = []
    families = sorted(set(reg.data["family"].dropna())) if "family" in reg.data else []
    crit = sps.t.ppf(0.975, reg.fit.df_resid)
    for fam in families or ["all"]:
        terms = ["log_params"] + [t for t in params.index if t.endswith(f"[T.{fam}]:log_params")]
        weights = pd.Series(0.0, index=params.index)
        weights[terms] = 1.0
        slope = float(weights @ params)
        se = float(np.sqrt(weights @ cov @ weights))
        rows.append({"family": fam, "slope_per_decade": slope, "std_err": se, "ci_low": slope - crit * se,
                     "ci_high": slope + crit * se, "n": int((reg.data["family"] == fam).sum()) if families else
                     int(reg.fit.nobs)})
    return pd.DataFrame(rows)


def term_effect(reg: Regression, contains: str) -> dict[str, float] | None:
    """The first coefficient whose term name contains ``contains`` (e.g. ``"[T.SSL]"``) with its interval."""
    for row in reg.table.itertuples():
        if contains in row.term:
            return {"term": row.term, "coef": row.coef, "ci_low": row.ci_low, "ci_high": row.ci_high,
                    "pvalue": row.pvalue}
    return None


def scale_regression(
    frame: pd.DataFrame,
    *,
    response: str = "overall",
    formula: str | None = None,
    interaction: bool = True,
    use_data: bool = True,
    ci: float = 0.95,
) -> Regression:
    """OLS of a score on scale and method: by default
    ``score ~ C(family) * log_params + C(method_kind) + log_data``.

    Categorical references are ``CNN`` and ``supervised`` when present.
    ``log_params = log10(params_millions)``, ``log_data = log10(pretrain_images)`` (rows with unknown or zero data,
    i.e. random init, are dropped when the data term is used). Terms without variation in the data (one family, one
    method kind, one data size) are dropped and listed in ``dropped_terms``; pass ``formula`` (over ``score``,
    ``family``, ``method_kind``, ``log_params``, ``log_data``) to fix the model yourself.
    """
    import statsmodels.formula.api as smf

    data = pd.DataFrame({
        "score": pd.to_numeric(frame[response], errors="coerce"),
        "family": frame.get("family", pd.Series(index=frame.index, dtype=object)).astype(object),
        "method_kind": frame.get("method_kind", pd.Series(index=frame.index, dtype=object)).astype(object),
        "log_params": np.log10(pd.to_numeric(frame.get("params_millions"), errors="coerce").where(lambda s: s > 0)),
        "log_data": np.log10(pd.to_numeric(frame.get("pretrain_images"), errors="coerce").where(lambda s: s > 0)),
        "backbone": frame["backbone"] if "backbone" in frame else frame.index,
    })
    dropped: list[str] = []
    if formula is None:
        needed = ["score", "log_params"] + (["log_data"] if use_data else [])
        data = data.dropna(subset=needed)
        if use_data and data["log_data"].nunique() < 2:
            dropped.append("log_data")
        terms = []
        if data["family"].dropna().nunique() >= 2:
            data = data[data["family"].notna()]
            fam = _categorical("family", data["family"], "CNN")
            terms.append(f"{fam} * log_params" if interaction else f"{fam} + log_params")
        else:
            dropped.append("C(family)")
            terms.append("log_params")
        if data["method_kind"].dropna().nunique() >= 2:
            data = data[data["method_kind"].notna()]
            terms.append(_categorical("method_kind", data["method_kind"], "supervised"))
        else:
            dropped.append("C(method_kind)")
        if use_data and "log_data" not in dropped:
            terms.append("log_data")
        formula = "score ~ " + " + ".join(terms)
    else:
        data = data.dropna(subset=["score"])
    if data["log_params"].nunique() < 2 and "log_params" in formula:
        raise InsufficientDataError("parameter counts do not vary: no scale regression")
    if len(data) < 5:
        raise InsufficientDataError(f"only {len(data)} backbones with scores, sizes and data: no regression")
    fit = smf.ols(formula, data=data).fit()
    if fit.df_resid < 1:
        raise InsufficientDataError(f"{formula} has no residual degrees of freedom with {len(data)} backbones")
    return Regression(formula=formula, fit=fit, data=data.reset_index(drop=True),
                      table=regression_table(fit, ci=ci), dropped_terms=dropped)


# --------------------------------------------------------------------------------------------------------------------
# Paired comparisons: SSL vs supervised at matched data, fine-tune vs linear probe
# --------------------------------------------------------------------------------------------------------------------

def matched_pairs(
    frame: pd.DataFrame,
    *,
    score: str = "overall",
    kind_col: str = "method_kind",
    a: str = "supervised",
    b: str = "SSL",
    match: Sequence[str] = ("architecture", "pretrain_data"),
) -> pd.DataFrame:
    """Pairs of backbones that share ``match`` (architecture and pretraining data) but differ in ``kind_col``.

    One row per ``b`` backbone (e.g. each SSL method) with a matched ``a`` group: ``a_score`` is the mean score of the
    ``a`` backbones of that group. Columns: the match columns, ``b_backbone``, ``b_display``, ``b_method``,
    ``a_backbones``, ``a_score``, ``b_score``, ``diff`` (b - a).
    """
    need = [score, kind_col, *match, "backbone"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InsufficientDataError(f"matched pairs need columns {missing}")
    data = frame.dropna(subset=[score, *match])
    rows = []
    for key, group in data.groupby(list(match), sort=True):
        group_a = group[group[kind_col] == a]
        group_b = group[group[kind_col] == b]
        if group_a.empty or group_b.empty:
            continue
        key = key if isinstance(key, tuple) else (key,)
        for _, rb in group_b.iterrows():
            rows.append({
                **dict(zip(match, key)),
                "b_backbone": rb["backbone"], "b_display": rb.get("display_name", rb["backbone"]),
                "b_method": rb.get("method", b), "a_backbones": ", ".join(map(str, group_a["backbone"])),
                "a_score": float(group_a[score].mean()), "b_score": float(rb[score]),
            })
    out = pd.DataFrame(rows, columns=[*match, "b_backbone", "b_display", "b_method", "a_backbones", "a_score",
                                      "b_score"])
    out["diff"] = out["b_score"] - out["a_score"]
    return out


def paired_summary(diff: Iterable[float], *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean and median of paired differences, a bootstrap interval of the mean (:func:`scipy.stats.bootstrap`), the
    share of positive differences and the Wilcoxon signed-rank p-value (:func:`scipy.stats.wilcoxon`)."""
    d = np.asarray(list(diff), dtype=float)
    d = d[np.isfinite(d)]
    out = {"n": int(d.size), "mean": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "share_positive": math.nan, "wilcoxon_p": math.nan}
    if d.size == 0:
        return out
    out.update(mean=float(d.mean()), median=float(np.median(d)), share_positive=float((d > 0).mean()))
    if d.size >= 3 and n_boot > 0 and np.ptp(d) > 0:
        boot = sps.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=ci, method="percentile",
                             rng=np.random.default_rng(seed))
        out["ci_low"], out["ci_high"] = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if d.size >= 5 and np.any(d != 0):
        out["wilcoxon_p"] = float(sps.wilcoxon(d).pvalue)
    return out


def protocol_comparison(
    results: pd.DataFrame,
    *,
    a: str = "linear_probe",
    b: str = "finetune",
    keys: Sequence[str] = ("task", "dataset", "metric"),
    metric: str | None = "auto",
    negate_lower: bool = False,
) -> pd.DataFrame:
    """Backbone values under two protocols on the same task/dataset/metric (seeds averaged).

    ``metric``: keep one metric (``"auto"``: ``top1`` when both protocols have it, else their most common metric;
    ``None``: all metrics).

    Columns: ``backbone``, the ``keys``, ``a`` value, ``b`` value, ``delta`` (b - a), ``higher_is_better``, metadata.
    Only backbone x key combinations evaluated under both protocols are kept.
    """
    frame = results[results["protocol"].isin([a, b])].dropna(subset=["value"])
    if frame.empty or frame["protocol"].nunique() < 2:
        raise InsufficientDataError(f"the table has no rows under both protocols {a!r} and {b!r} "
                                    f"(protocols present: {sorted(map(str, results['protocol'].unique()))})")
    if metric == "auto":
        shared = set(frame.loc[frame["protocol"] == a, "metric"]) & set(frame.loc[frame["protocol"] == b, "metric"])
        if not shared:
            raise InsufficientDataError(f"protocols {a!r} and {b!r} share no metric")
        counts = frame[frame["metric"].isin(shared)]["metric"].value_counts()
        metric = "top1" if "top1" in shared else str(counts.index[0])
    if metric is not None:
        frame = frame[frame["metric"] == metric]
    wide = frame.pivot_table(index=["backbone", *keys], columns="protocol", values="value", aggfunc="mean")
    wide = wide.dropna(subset=[a, b]).reset_index()
    if wide.empty:
        raise InsufficientDataError(f"no backbone was evaluated under both {a!r} and {b!r} on the same setting")
    hib = frame.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    wide["higher_is_better"] = wide["metric"].map(hib).astype(bool) if "metric" in keys else True
    if negate_lower and "metric" in keys:
        sign = np.where(wide["higher_is_better"], 1.0, -1.0)
        wide[a] = wide[a] * sign
        wide[b] = wide[b] * sign
    wide["delta"] = wide[b] - wide[a]
    wide.columns.name = None
    return wide.join(backbone_metadata(results), on="backbone")


def rank_agreement(
    comparison: pd.DataFrame,
    *,
    a: str = "linear_probe",
    b: str = "finetune",
    keys: Sequence[str] = ("task", "dataset", "metric"),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman between the two protocols' values over backbones, per ``keys`` combination (from
    :func:`protocol_comparison`)."""
    rows = []
    for key, group in comparison.groupby(list(keys), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **spearman(group[a], group[b], n_boot=n_boot, seed=seed),
                     "mean_delta": float(group["delta"].mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Metric pairs: robustness / calibration vs accuracy
# --------------------------------------------------------------------------------------------------------------------

def select_values(results: pd.DataFrame, **filters: Any) -> pd.Series:
    """Mean ``value`` per backbone over the rows matching ``filters`` (column -> value or list of values)."""
    mask = pd.Series(True, index=results.index)
    for column, allowed in filters.items():
        if allowed is None:
            continue
        allowed = [allowed] if isinstance(allowed, (str, int, float, bool)) else list(allowed)
        mask &= results[column].isin(allowed)
    return results[mask].groupby("backbone")["value"].mean()


def metric_pairs(
    results: pd.DataFrame,
    x: Mapping[str, Any],
    y: Mapping[str, Any],
    *,
    x_name: str = "x",
    y_name: str = "y",
) -> pd.DataFrame:
    """Per-backbone means of two row selections side by side (``x``/``y`` map column -> allowed values), with
    metadata; backbones lacking either are dropped."""
    xs = select_values(results, **x).rename(x_name)
    ys = select_values(results, **y).rename(y_name)
    both = pd.concat([xs, ys], axis=1).dropna()
    if len(both) == 0:
        raise InsufficientDataError(f"no backbone has both {dict(x)} and {dict(y)}")
    both.index.name = "backbone"
    return both.join(backbone_metadata(results)).reset_index()


def robustness_pairs(
    results: pd.DataFrame,
    task: str,
    *,
    metric: str = "auto",
    accuracy_task: str = "classification",
    accuracy_metric: str = "top1",
    x_name: str = "accuracy",
    y_name: str = "robustness",
) -> pd.DataFrame:
    """Per backbone: clean accuracy (``x_name``) and accuracy under shift or attack in ``task`` (``y_name``).

    ``metric`` is a regular expression for the robustness metric(s) of ``task`` (``"auto"``: its
    :data:`PRIMARY_METRICS` pattern, e.g. every ``acc/<attack>/<eps>`` with eps > 0), averaged per backbone. Clean
    accuracy is the run's own (``id_acc`` / ``top1`` of the same task) when the task reports one that differs from
    the robustness metric, else ``accuracy_metric`` of ``accuracy_task``. ``attrs`` name both selections.
    """
    rows = results[results["task"] == task]
    if rows.empty:
        raise InsufficientDataError(f"the table has no {task!r} rows")
    pattern = metric if metric != "auto" else _first_matching(rows["metric"], PRIMARY_METRICS.get(task, ("top1",)))
    if pattern is None:
        raise InsufficientDataError(f"no {task!r} metric matches {PRIMARY_METRICS.get(task)}")
    y_rows = rows[rows["metric"].astype(str).str.fullmatch(pattern)]
    if y_rows.empty:
        raise InsufficientDataError(f"no {task!r} metric matches {pattern!r}")
    clean = next((m for m in CLEAN_ACCURACY if m in set(rows["metric"]) and m not in set(y_rows["metric"])), None)
    if clean is not None:
        x_rows, x_label = rows[rows["metric"] == clean], f"{task} {clean}"
    else:
        x_rows = results[(results["task"] == accuracy_task) & (results["metric"] == accuracy_metric)]
        x_label = f"{accuracy_task} {accuracy_metric}"
    xs = x_rows.groupby("backbone")["value"].mean().rename(x_name)
    ys = y_rows.groupby("backbone")["value"].mean().rename(y_name)
    both = pd.concat([xs, ys], axis=1).dropna()
    if both.empty:
        raise InsufficientDataError(f"no backbone has both {x_label} and {task} {pattern}")
    both.index.name = "backbone"
    out = both.join(backbone_metadata(results)).reset_index()
    y_metrics = sorted(map(str, y_rows["metric"].unique()))
    if len(y_metrics) > 1:
        y_label = f"{task}: mean of {', '.join(y_metrics[:3])}" + (" ..." if len(y_metrics) > 3 else "")
    else:
        y_label = f"{task} {y_metrics[0]}"
    out.attrs.update(x_label=x_label, y_label=y_label, y_metrics=y_metrics)
    return out


def calibration_pairs(
    results: pd.DataFrame,
    *,
    metric: str = "ece",
    accuracy_task: str = "classification",
    accuracy_metric: str = "top1",
) -> pd.DataFrame:
    """Per backbone: accuracy and a calibration metric (``ece``, lower is better). Accuracy is ``top1`` of the same
    runs' task when it reports one, else ``accuracy_metric`` of ``accuracy_task``."""
    rows = results[results["metric"] == metric]
    if rows.empty:
        raise InsufficientDataError(f"the table has no {metric!r} rows")
    tasks = sorted(map(str, rows["task"].unique()))
    same = results[results["task"].isin(tasks) & results["metric"].isin(CLEAN_ACCURACY)]
    if not same.empty:
        x_rows, label = same, f"{'/'.join(tasks)} top-1"
    else:
        x_rows, label = results[(results["task"] == accuracy_task) & (results["metric"] == accuracy_metric)], \
            f"{accuracy_task} {accuracy_metric}"
    xs = x_rows.groupby("backbone")["value"].mean().rename("accuracy")
    ys = rows.groupby("backbone")["value"].mean().rename("calibration")
    both = pd.concat([xs, ys], axis=1).dropna()
    if both.empty:
        raise InsufficientDataError(f"no backbone has both an accuracy and {metric!r}")
    both.index.name = "backbone"
    out = both.join(backbone_metadata(results)).reset_index()
    out.attrs.update(x_label=label, y_label=f"{metric} (lower is better)")
    return out


# --------------------------------------------------------------------------------------------------------------------
# Probit-scale ID vs OOD trend and effective robustness
# --------------------------------------------------------------------------------------------------------------------

def probit(p: Iterable[float] | float, eps: float = 1e-4) -> np.ndarray:
    """Inverse normal CDF of accuracies in [0, 1], clipped to ``[eps, 1 - eps]``."""
    return sps.norm.ppf(np.clip(np.asarray(p, dtype=float), eps, 1 - eps))


def fit_probit_trend(id_acc: Iterable[float], ood_acc: Iterable[float]) -> dict[str, float]:
    """Linear fit ``probit(ood) = intercept + slope * probit(id)`` by statsmodels OLS (Taori et al.'s trend line).

    Returns ``slope``, ``intercept``, ``r2``, ``n``, and the slope's 95% interval ``slope_low``/``slope_high``."""
    import statsmodels.api as sm

    x, y = probit(list(id_acc)), probit(list(ood_acc))
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        raise InsufficientDataError("need at least 3 models to fit an ID-vs-OOD trend")
    fit = sm.OLS(y[ok], sm.add_constant(x[ok])).fit()
    conf = fit.conf_int()
    return {"intercept": float(fit.params[0]), "slope": float(fit.params[1]), "r2": float(fit.rsquared),
            "n": int(ok.sum()), "slope_low": float(conf[1][0]), "slope_high": float(conf[1][1])}


def effective_robustness(
    frame: pd.DataFrame,
    ood_col: str,
    *,
    id_col: str = "id_acc",
    baseline: pd.Series | str | None = None,
) -> tuple[pd.Series, dict[str, float]]:
    """Effective robustness of each row: OOD accuracy minus the accuracy the probit trend predicts from its ID accuracy.

    The trend is fitted on the ``baseline`` rows (a boolean mask or a :meth:`pandas.DataFrame.query` string; ``None`` =
    all rows). Returns ``(series, trend)`` with ``trend`` from :func:`fit_probit_trend`.
    """
    if baseline is None:
        mask = pd.Series(True, index=frame.index)
    elif isinstance(baseline, str):
        mask = frame.index.isin(frame.query(baseline).index)
        mask = pd.Series(mask, index=frame.index)
    else:
        mask = pd.Series(baseline, index=frame.index).astype(bool)
    base = frame[mask]
    trend = fit_probit_trend(base[id_col], base[ood_col])
    predicted = sps.norm.cdf(trend["intercept"] + trend["slope"] * probit(frame[id_col]))
    trend["baseline_n"] = int(mask.sum())
    return pd.Series(frame[ood_col].to_numpy(dtype=float) - predicted, index=frame.index, name="eff_robustness"), trend


def correlations(x: Iterable[float], y: Iterable[float]) -> dict[str, float]:
    """Pearson (raw and probit scale) and Spearman correlation of paired accuracies, via scipy."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3:
        raise InsufficientDataError("need at least 3 pairs to correlate")
    return {"n": int(x.size), "pearson": float(sps.pearsonr(x, y).statistic),
            "pearson_probit": float(sps.pearsonr(probit(x), probit(y)).statistic),
            "spearman": float(sps.spearmanr(x, y).statistic)}


def group_summary(
    frame: pd.DataFrame,
    value: str,
    by: str,
    *,
    min_n: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-group ``n``, ``mean`` (with a bootstrap interval), ``median`` of ``value``; largest mean first."""
    rows = []
    for g, part in frame.dropna(subset=[value]).groupby(by, sort=True):
        v = part[value].to_numpy(dtype=float)
        if v.size < min_n:
            continue
        row = {by: g, "n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
               "ci_low": math.nan, "ci_high": math.nan}
        if v.size >= 3 and n_boot > 0 and np.ptp(v) > 0:
            boot = sps.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=ci, method="percentile",
                                 rng=np.random.default_rng(seed))
            row["ci_low"], row["ci_high"] = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[by, "n", "mean", "ci_low", "ci_high", "median"])
    return out.sort_values("mean", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------------
# "Where does my backbone rank"
# --------------------------------------------------------------------------------------------------------------------

def place_backbones(
    mine: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    **score_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank the backbones of ``mine`` among a ``reference`` table on the settings both share.

    Settings are matched on ``setting_keys`` (``setting`` = task/dataset/protocol[/qualifiers], and ``metric``);
    reference backbones that also appear in ``mine`` are taken from ``mine``. Returns ``(leaderboard, shared)``: the :func:`leaderboard` of the
    merged table with a boolean ``mine`` column, and the shared settings. Raises :class:`InsufficientDataError` when
    no setting is shared.
    """
    mine_ids = set(setting_ids(mine, setting_keys))
    ref_ids = set(setting_ids(reference, setting_keys))
    shared = sorted(mine_ids & ref_ids)
    if not shared:
        raise InsufficientDataError(
            "your table shares no task/dataset/protocol/metric with the reference; "
            f"yours: {sorted(mine_ids)[:6]}, reference: {sorted(ref_ids)[:6]}")
    ours = mine[setting_ids(mine, setting_keys).isin(shared)]
    ref = reference[setting_ids(reference, setting_keys).isin(shared) & ~reference["backbone"].isin(ours["backbone"])]
    merged = pd.concat([ref, ours], ignore_index=True)
    board = leaderboard(merged, n_boot=n_boot, ci=ci, seed=seed, setting_keys=setting_keys, **score_kwargs)
    board["mine"] = board["backbone"].isin(set(ours["backbone"]))
    shared_frame = pd.DataFrame([s.split(" | ") for s in shared], columns=list(setting_keys))
    return board, shared_frame


# --------------------------------------------------------------------------------------------------------------------
# Sentences for notebooks
# --------------------------------------------------------------------------------------------------------------------

def fmt_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    """``0.58 [0.41, 0.72]`` (interval omitted when NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def describe_correlations(table: pd.DataFrame, what: str) -> str:
    """One sentence per row of a :func:`correlate_by_group` table."""
    if table.empty:
        return f"No group has enough backbones to correlate {what}."
    parts = [f"{r.group}: rho = {fmt_ci(r.rho, r.ci_low, r.ci_high)} (n = {r.n})" for r in table.itertuples()]
    return f"Spearman correlation of {what}: " + "; ".join(parts) + "."


def describe_leaderboard(board: pd.DataFrame, top: int = 3, name_col: str = "display_name") -> str:
    """``Top 3: A (score 1.20 [0.9, 1.4], rank 1-2), ...``."""
    if board.empty:
        return "No backbone could be scored."
    items = []
    for r in board.head(top).itertuples():
        name = getattr(r, name_col, r.backbone) or r.backbone
        rank = f"rank {r.rank_lo:.0f}-{r.rank_hi:.0f}" if np.isfinite(r.rank_lo) else f"rank {r.rank}"
        items.append(f"{name} (score {fmt_ci(r.score, r.score_lo, r.score_hi)}, {rank})")
    return f"Top {min(top, len(board))} of {len(board)}: " + "; ".join(items) + "."


def main_metric(results: pd.DataFrame, **filters: Any) -> str:
    """The metric to read from the rows matching ``filters``: ``top1`` when present, else the most common one."""
    mask = pd.Series(True, index=results.index)
    for column, allowed in filters.items():
        if allowed is None:
            continue
        allowed = [allowed] if isinstance(allowed, str) else list(allowed)
        mask &= results[column].isin(allowed)
    metrics = results.loc[mask, "metric"]
    if metrics.empty:
        raise InsufficientDataError(f"no rows match {filters}")
    return "top1" if "top1" in set(metrics) else str(metrics.value_counts().index[0])


def pair_stats(pairs: pd.DataFrame, threshold: float = 0.8) -> dict[str, float]:
    """Median, min, max of the pairwise rho in a :func:`correlation_matrix` pairs table and the share above
    ``threshold``."""
    rho = pairs["rho"].dropna()
    if rho.empty:
        return {"n_pairs": 0, "median": math.nan, "min": math.nan, "max": math.nan, "share_above": math.nan}
    return {"n_pairs": int(rho.size), "median": float(rho.median()), "min": float(rho.min()),
            "max": float(rho.max()), "share_above": float((rho > threshold).mean()), "threshold": threshold}


def describe_pairs(pairs: pd.DataFrame, what: str, threshold: float = 0.8) -> str:
    """``Median Spearman over 28 dataset pairs: 0.83 (range 0.41 to 0.97); 18 of 28 above 0.8.``"""
    st = pair_stats(pairs, threshold)
    if st["n_pairs"] == 0:
        return f"No {what} had enough overlapping backbones to correlate."
    above = int(round(st["share_above"] * st["n_pairs"]))
    return (f"Median Spearman over {st['n_pairs']} {what}: {st['median']:.2f} (range {st['min']:.2f} to "
            f"{st['max']:.2f}); {above} of {st['n_pairs']} above {threshold:g}.")


def describe_paired(summary: Mapping[str, float], b: str, a: str) -> str:
    """Sentence for :func:`paired_summary` of ``b - a`` differences."""
    if not summary.get("n"):
        return f"No {b} backbone could be paired with a {a} one."
    text = (f"Over {summary['n']} matched pairs, {b} minus {a} score: mean {fmt_ci(summary['mean'], summary['ci_low'], summary['ci_high'])}, "
            f"median {summary['median']:.2f}; {b} wins {summary['share_positive'] * 100:.0f}% of pairs")
    if np.isfinite(summary.get("wilcoxon_p", math.nan)):
        text += f" (Wilcoxon p = {summary['wilcoxon_p']:.3g})"
    return text + "."


def describe_regression(reg: Regression) -> str:
    """R², n and the per-family slope on log10(params) of a :func:`scale_regression` fit."""
    text = f"OLS `{reg.formula}` on {int(reg.fit.nobs)} backbones: R² = {reg.fit.rsquared:.2f}."
    try:
        slopes = family_slopes(reg)
        text += " Score gain per 10x parameters (other terms fixed): " + "; ".join(
            f"{r.family} {fmt_ci(r.slope_per_decade, r.ci_low, r.ci_high)}" for r in slopes.itertuples()) + "."
    except InsufficientDataError:
        pass
    if reg.dropped_terms:
        text += f" Dropped for lack of variation: {', '.join(reg.dropped_terms)}."
    return text


def describe_protocols(comparison: pd.DataFrame, agreement: pd.DataFrame, a: str, b: str) -> str:
    """Mean change from ``a`` to ``b`` and the rank agreement between them."""
    metric = comparison["metric"].iloc[0] if "metric" in comparison and len(comparison) else "value"
    text = (f"{b} minus {a} ({metric}): mean {comparison['delta'].mean():+.3f} over {len(comparison)} backbone x "
            f"dataset pairs, positive for {(comparison['delta'] > 0).mean() * 100:.0f}%.")
    rho = agreement["rho"].dropna() if "rho" in agreement else pd.Series(dtype=float)
    if len(rho):
        text += f" Rank agreement between the protocols (Spearman, per dataset): median {rho.median():.2f}."
    return text


def describe_id_ood(dataset: str, corr: Mapping[str, float], trend: Mapping[str, float]) -> str:
    """ID-vs-OOD correlation and probit trend in a sentence."""
    return (f"{dataset}: over {corr['n']} models, OOD accuracy tracks ImageNet accuracy with Pearson r = "
            f"{corr['pearson']:.3f} (probit scale {corr['pearson_probit']:.3f}, Spearman {corr['spearman']:.3f}); "
            f"the probit trend fitted on {trend.get('baseline_n', trend['n'])} baseline models has slope "
            f"{trend['slope']:.2f} (R² {trend['r2']:.2f}).")
