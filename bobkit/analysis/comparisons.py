"""Comparisons the analysis states in words, each with an interval on the **difference**: SSL vs supervised (matched
pairs and groups), fine-tuning vs linear probing, groups of models, and where your backbones rank among a reference.

Intervals resample the compared units (pairs, group members, or clusters such as architectures); when bootstrap
replicates of the scores are given (:meth:`bobkit.analysis.scores.ScoreBootstrap.replicates`), replicate ``b`` uses
the scores of replicate ``b``, so the interval also carries the scores' within-cell and between-setting uncertainty.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.correlation import spearman
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.scores import BASELINE_KINDS, backbone_metadata, baseline_mask, leaderboard, pretrained_only
from bobkit.analysis.settings import match_settings, one_execution_per_cell, one_setting_per_base, setting_ids
from bobkit.analysis.uncertainty import (
    bootstrap_mean,
    cluster_members,
    percentile_interval,
    resample_rows,
    within_cell_stderr,
)

# --------------------------------------------------------------------------------------------------------------------
# SSL vs supervised at matched architecture and data
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


def pair_differences(pairs: pd.DataFrame, replicates: pd.DataFrame) -> np.ndarray:
    """Replicates (``n_boot`` x pairs) of each :func:`matched_pairs` difference, from score ``replicates``
    (``n_boot`` x backbones)."""
    columns = []
    for row in pairs.itertuples(index=False):
        a_cols = [b.strip() for b in str(row.a_backbones).split(",")]
        columns.append(replicates[row.b_backbone].to_numpy() - replicates[a_cols].to_numpy().mean(axis=1))
    return np.column_stack(columns) if columns else np.empty((len(replicates), 0))


def paired_summary(diff: Iterable[float], *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                   replicates: np.ndarray | None = None) -> dict[str, float]:
    """Mean and median of paired differences, a bootstrap interval of the mean, the share of positive differences
    and the Wilcoxon signed-rank p-value (:func:`scipy.stats.wilcoxon`).

    The interval resamples pairs; with ``replicates`` (``n_boot`` x pairs, :func:`pair_differences`) each replicate
    also uses replicate scores, so it carries their uncertainty too.
    """
    d = np.asarray(list(diff), dtype=float)
    ok = np.isfinite(d)
    d = d[ok]
    out = {"n": int(d.size), "mean": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "share_positive": math.nan, "wilcoxon_p": math.nan}
    if d.size == 0:
        return out
    out.update(mean=float(d.mean()), median=float(np.median(d)), share_positive=float((d > 0).mean()))
    if n_boot > 0 and (replicates is not None or (d.size >= 3 and np.ptp(d) > 0)):
        reps = None if replicates is None else np.asarray(replicates, dtype=float)[:, ok]
        out["ci_low"], out["ci_high"] = bootstrap_mean(d, n_boot=n_boot, ci=ci, seed=seed, replicates=reps)
    if d.size >= 5 and np.any(d != 0):
        out["wilcoxon_p"] = float(sps.wilcoxon(d).pvalue)
    return out


def group_difference(
    frame: pd.DataFrame,
    value: str,
    by: str,
    *,
    a: str,
    b: str,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    cluster: str | None = None,
    replicates: pd.DataFrame | None = None,
    stderr: str | None = "auto",
) -> dict[str, Any]:
    """Mean ``value`` of group ``b`` minus that of group ``a`` (rows with ``by == a`` / ``b``), with a bootstrap
    interval that resamples each group's rows (or ``cluster``\\ s) and, with ``replicates`` (backbone columns), uses
    replicate values.

    ``stderr`` names a column of each row's within-cell standard error (``"auto"``: ``<value>_se`` when the frame
    has it, e.g. ``delta_se`` of :func:`protocol_comparison`); each replicate then draws every row's value from
    N(value, stderr), as :func:`protocol_gain` does, so the interval carries the test items' sampling error too.
    Returns ``a``, ``b``, ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``diff``, ``ci_low``, ``ci_high``,
    ``p_b_greater`` and ``stderr_column`` (the column used, ``None``)."""
    data = frame.dropna(subset=[value])
    if stderr == "auto":
        stderr = f"{value}_se" if f"{value}_se" in data else None
    groups = {g: data[data[by] == g] for g in (a, b)}
    for g, part in groups.items():
        if part.empty:
            raise InsufficientDataError(f"no row with {by} = {g!r} and a value of {value!r}")
    rng = np.random.default_rng(seed)
    boot = np.zeros(n_boot)
    for sign, g in ((-1.0, a), (1.0, b)):
        part = groups[g]
        members = cluster_members(None if cluster is None else part[cluster], len(part))
        reps = None if replicates is None else replicates.reindex(columns=part["backbone"].tolist()).to_numpy()
        if reps is None:
            reps = _drawn_values(part, value, stderr, max(n_boot, 1), rng)
        for i in range(n_boot):
            rows = resample_rows(members, rng)
            boot[i] += sign * np.nanmean(reps[i][rows])
    lo, hi = percentile_interval(boot, ci) if n_boot > 0 else (np.nan, np.nan)
    mean_a, mean_b = float(groups[a][value].mean()), float(groups[b][value].mean())
    return {"a": a, "b": b, "n_a": len(groups[a]), "n_b": len(groups[b]), "mean_a": mean_a, "mean_b": mean_b,
            "diff": mean_b - mean_a, "ci_low": float(lo), "ci_high": float(hi),
            "p_b_greater": float(np.mean(boot > 0)) if n_boot > 0 else math.nan, "stderr_column": stderr}


def _drawn_values(part: pd.DataFrame, value: str, stderr: str | None, n_boot: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` x rows: each row's ``value`` drawn from N(value, its ``stderr``) (no noise where unknown or when
    ``stderr`` is None)."""
    values = part[value].to_numpy(dtype=float)
    if stderr is None:
        return np.broadcast_to(values, (n_boot, values.size))
    se = np.nan_to_num(pd.to_numeric(part[stderr], errors="coerce").to_numpy(dtype=float))
    return values[None, :] + rng.standard_normal((n_boot, values.size)) * se[None, :]


def group_summary(
    frame: pd.DataFrame,
    value: str,
    by: str,
    *,
    min_n: int = 1,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    cluster: str | None = None,
    stderr: str | None = "auto",
) -> pd.DataFrame:
    """Per-group ``n``, ``n_clusters``, ``mean`` (with a bootstrap interval over rows, or over ``cluster``\\ s of
    rows, each row drawn from N(value, ``stderr``) as in :func:`group_difference`), ``median`` of ``value``; largest
    mean first."""
    rows = []
    data = frame.dropna(subset=[value])
    if stderr == "auto":
        stderr = f"{value}_se" if f"{value}_se" in data else None
    rng = np.random.default_rng(seed + 1)
    for g, part in data.groupby(by, sort=True):
        v = part[value].to_numpy(dtype=float)
        if v.size < min_n:
            continue
        clusters = None if cluster is None else part[cluster].astype(str)
        n_clusters = v.size if clusters is None else int(clusters.nunique())
        row = {by: g, "n": int(v.size), "n_clusters": n_clusters, "mean": float(v.mean()),
               "median": float(np.median(v)), "ci_low": math.nan, "ci_high": math.nan}
        if n_clusters >= 3 and n_boot > 0:
            reps = None if stderr is None else _drawn_values(part, value, stderr, n_boot, rng)
            row["ci_low"], row["ci_high"] = bootstrap_mean(v, n_boot=n_boot, ci=ci, seed=seed, clusters=clusters,
                                                           replicates=reps)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[by, "n", "n_clusters", "mean", "ci_low", "ci_high", "median"])
    return out.sort_values("mean", ascending=False).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------------
# Fine-tuning vs linear probing
# --------------------------------------------------------------------------------------------------------------------

def protocol_comparison(
    results: pd.DataFrame,
    *,
    a: str = "linear_probe",
    b: str = "finetune",
    keys: Sequence[str] = ("task", "dataset", "metric"),
    metric: str | None = "auto",
    negate_lower: bool = False,
) -> pd.DataFrame:
    """Backbone values under two protocols on the same task/dataset/metric (seeds averaged; within each protocol one
    setting per task/dataset/metric, see :func:`~bobkit.analysis.settings.one_setting_per_base`).

    ``metric``: keep one metric (``"auto"``: ``top1`` when both protocols have it, else their most common metric;
    ``None``: all metrics).

    Columns: ``backbone``, the ``keys``, ``a`` value, ``b`` value, ``delta`` (b - a), ``delta_se`` (the two
    cells' standard errors of their seed means: the seeds' spread, or the within-cell standard errors where that is
    larger or there is one seed, :func:`seed_mean_variance`; NaN unknown), ``higher_is_better``, metadata. Only
    backbone x key combinations evaluated under both protocols are kept; a backbone's runs on another device type or
    precision are not its seeds. ``attrs["left_out"]``: settings not used; ``attrs["execution_left_out"]``: runs
    not averaged with a cell's seeds.
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
    frame, execution_left_out = one_execution_per_cell(frame)
    frame, left_out = one_setting_per_base(frame)
    frame = frame.assign(_var=within_cell_stderr(frame) ** 2)
    index = ["backbone", *keys]
    wide = frame.pivot_table(index=index, columns="protocol", values="value", aggfunc="mean")
    var = frame.groupby([*index, "protocol"])[["value", "_var"]].apply(seed_mean_variance).unstack("protocol")
    wide = wide.dropna(subset=[a, b])
    if wide.empty:
        raise InsufficientDataError(f"no backbone was evaluated under both {a!r} and {b!r} on the same setting")
    delta_se = np.sqrt(var.reindex(wide.index)[a] + var.reindex(wide.index)[b])
    wide = wide.reset_index()
    hib = frame.drop_duplicates("metric").set_index("metric")["higher_is_better"]
    wide["higher_is_better"] = wide["metric"].map(hib).astype(bool) if "metric" in keys else True
    if negate_lower and "metric" in keys:
        sign = np.where(wide["higher_is_better"], 1.0, -1.0)
        wide[a] = wide[a] * sign
        wide[b] = wide[b] * sign
    wide["delta"] = wide[b] - wide[a]
    wide["delta_se"] = delta_se.to_numpy()
    wide.columns.name = None
    out = wide.join(backbone_metadata(results), on="backbone")
    out.attrs["left_out"] = left_out
    out.attrs["execution_left_out"] = execution_left_out
    return out


def seed_mean_variance(cell: pd.DataFrame) -> float:
    """The sampling variance of a cell's mean over its seeds (``value`` and ``_var``, each seed's within-cell
    variance): the seeds are replicates, so with two or more their spread ``s^2 / n`` counts, never less than the
    test items' part ``mean(var) / n`` (which a spread of few seeds can underestimate); one seed: its ``var``."""
    n = len(cell)
    within = float(cell["_var"].mean()) / n if cell["_var"].notna().any() else np.nan
    if n < 2:
        return within
    between = float(cell["value"].var(ddof=1)) / n
    return between if not np.isfinite(within) else max(between, within)


def protocol_gain(comparison: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                  pool_exclude: Sequence[str] = BASELINE_KINDS) -> dict[str, float]:
    """Mean ``delta`` of a :func:`protocol_comparison` over the pretrained backbones' pairs (random-init controls,
    ``method_kind`` in ``pool_exclude``, left out and counted in ``n_controls_left_out``), with an interval that
    resamples backbone x dataset pairs and draws each pair's delta from N(delta, delta_se) (within-cell
    uncertainty; none where unknown)."""
    pooled, n_controls = pretrained_only(comparison, pool_exclude)
    delta = pooled["delta"].to_numpy(dtype=float)
    se = np.nan_to_num(pooled.get("delta_se", pd.Series(np.nan, index=pooled.index)).to_numpy(float))
    rng = np.random.default_rng(seed + 1)
    replicates = delta[None, :] + rng.standard_normal((max(n_boot, 1), delta.size)) * se[None, :]
    lo, hi = bootstrap_mean(delta, n_boot=n_boot, ci=ci, seed=seed, replicates=replicates)
    return {"n": int(delta.size), "mean": float(np.mean(delta)) if delta.size else math.nan, "ci_low": lo,
            "ci_high": hi, "share_positive": float(np.mean(delta > 0)) if delta.size else math.nan,
            "n_controls_left_out": n_controls}


def rank_agreement(
    comparison: pd.DataFrame,
    *,
    a: str = "linear_probe",
    b: str = "finetune",
    keys: Sequence[str] = ("task", "dataset", "metric"),
    n_boot: int = 1000,
    seed: int = 0,
    pool_exclude: Sequence[str] = BASELINE_KINDS,
) -> pd.DataFrame:
    """Spearman between the two protocols' values over the pretrained backbones, per ``keys`` combination (from
    :func:`protocol_comparison`; random-init controls, ``method_kind`` in ``pool_exclude``, left out: a control far
    below every pretrained backbone under both protocols would make any two rankings agree).
    ``n_controls_left_out`` counts them."""
    rows = []
    controls = baseline_mask(comparison, pool_exclude)
    for key, group in comparison.groupby(list(keys), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        pooled = group[~controls.loc[group.index]]
        rows.append({**dict(zip(keys, key)), **spearman(pooled[a], pooled[b], n_boot=n_boot, seed=seed),
                     "mean_delta": float(pooled["delta"].mean()) if len(pooled) else math.nan,
                     "n_controls_left_out": int(controls.loc[group.index].sum())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# "Where does my backbone rank"
# --------------------------------------------------------------------------------------------------------------------

def place_backbones(
    mine: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    allow_dropped: bool = True,
    **score_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank the backbones of ``mine`` among a ``reference`` table on the settings both share.

    Settings are matched by :func:`~bobkit.analysis.settings.match_settings`: exactly (same ``setting_id``) or, with
    ``allow_dropped``, after dropping parameters only one side records. Your rows are then scored in the reference
    setting they matched. Two of your settings that match the same reference setting are never pooled: both are
    left out (``match = "ambiguous"``). Reference backbones that also appear in ``mine`` are taken from ``mine``.

    Returns ``(leaderboard, matches)``: the :func:`~bobkit.analysis.scores.leaderboard` of the merged table with a
    boolean ``mine`` column, and the match table (one row per setting of yours). Raises
    :class:`InsufficientDataError` when no setting can be compared.
    """
    matches = match_settings(mine, reference)
    usable = matches["match"].eq("exact") | (allow_dropped & matches["match"].eq("dropped"))
    counts = matches[usable].groupby("reference_setting_id")["mine_setting_id"].transform("nunique")
    matches.loc[counts[counts > 1].index, "match"] = "ambiguous"
    usable &= ~matches["match"].eq("ambiguous")
    if not usable.any():
        yours = sorted(matches["mine_label"])[:6]
        raise InsufficientDataError(f"none of your settings matches a reference setting; yours: {yours}; "
                                    f"reference: {sorted(set(setting_ids(reference)))[:6]}")
    target = dict(zip(matches.loc[usable, "mine_setting_id"], matches.loc[usable, "reference_setting_id"]))
    ours = mine[mine["setting_id"].isin(list(target))].copy()
    ref_rows = reference[reference["setting_id"].isin(list(target.values()))]
    # scored in the reference setting they matched: same id, params and label as the reference rows
    ref_meta = ref_rows.drop_duplicates("setting_id").set_index("setting_id")[["setting", "setting_params"]]
    ours["setting_id"] = ours["setting_id"].map(target)
    ours["setting"] = ours["setting_id"].map(ref_meta["setting"])
    ours["setting_params"] = ours["setting_id"].map(ref_meta["setting_params"])
    ref = ref_rows[~ref_rows["backbone"].isin(ours["backbone"])]
    merged = pd.concat([ref, ours], ignore_index=True)
    board = leaderboard(merged, n_boot=n_boot, ci=ci, seed=seed, **score_kwargs)
    board["mine"] = board["backbone"].isin(set(ours["backbone"]))
    return board, matches


def best_vs_next(frame: pd.DataFrame, value: str, by: str, summary: pd.DataFrame, *, n_boot: int = 1000,
                 ci: float = 0.95, seed: int = 0, cluster: str | None = None) -> dict[str, Any] | None:
    """The first group of a :func:`group_summary` (largest mean) minus the second, with the interval of
    :func:`group_difference`: does "highest" hold? ``None`` with fewer than two groups."""
    if len(summary) < 2:
        return None
    best, second = summary[by].iloc[0], summary[by].iloc[1]
    return group_difference(frame, value, by, a=second, b=best, n_boot=n_boot, ci=ci, seed=seed, cluster=cluster)


#: The ``reference`` that places your backbones among the other backbones of your own results table.
OWN_REFERENCE = "own"


def select_backbones(table: pd.DataFrame, names: Sequence[str] | str | None) -> pd.DataFrame:
    """The rows of exactly the backbones ``names`` (all rows for ``None``).

    Raises :class:`InsufficientDataError` naming every requested backbone the table does not hold (and the ones it
    holds), so a misspelt name is never silently dropped from a placement.
    """
    if names is None:
        return table
    wanted = [names] if isinstance(names, str) else list(names)
    present = set(table["backbone"].dropna().astype(str))
    missing = [n for n in wanted if n not in present]
    if missing:
        raise InsufficientDataError(f"backbone(s) {missing} are not in the table; it holds {sorted(present)}")
    out = table[table["backbone"].isin(wanted)].reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def placement_reference(table: pd.DataFrame, mine: pd.DataFrame, reference: str) -> pd.DataFrame:
    """What your backbones are placed among: with ``reference="own"`` the other backbones of your own ``table``
    (the settings you ran them all on), else the public table or results file ``reference`` names
    (:func:`bobkit.analysis.load.load_reference`: ``bob_retrieval``, ``timm``, a colleague's results file)."""
    if reference == OWN_REFERENCE:  # empty when every backbone is yours: nothing to place them among
        return table[~table["backbone"].isin(set(mine["backbone"]))].reset_index(drop=True)
    from bobkit.analysis.load import load_reference

    return load_reference(reference)
