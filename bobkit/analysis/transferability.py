"""Rank before you run: do transferability estimators rank backbones as the measured battle does?

For every measured setting of a results table (task x dataset x protocol x metric x measurement parameters, each
task on its primary metrics), each **predictor**'s ranking of the backbones is compared with the measured ranking
of the same backbones:

* predictors: the ``transferability`` task's estimators on the setting's dataset (LogME, LEEP, NCE, H-score, kNN
  accuracy, computed on its training split), and the priors that need no target data
  (:mod:`bobkit.analysis.priors`: ImageNet top-1, the overall score in a reference table), for every setting;
* statistics (:data:`STATS`): Kendall's tau-b, weighted Kendall's tau (scipy's additive hyperbolic weighting, the
  average over both rankings: swaps among the top backbones count most), Spearman's rho, the top-1 hit (the
  predictor's best backbone is the measured best; ties split the credit) and the regret (measured value given up
  by taking the predictor's best, in the metric's units, sign-adjusted so that lower is better);
* uncertainty: a bootstrap over backbones (resampled with replacement) that also draws each measured value from
  N(value, its standard error over test items). Percentile intervals; NaN when fewer than half of the replicates
  hold ``min_backbones`` distinct backbones. With a handful of backbones the intervals are wide: they say so.

Per task, each statistic is averaged over the task's settings within each replicate. Each estimator is also
compared with the ImageNet-top-1 prior on the backbones both cover (:attr:`Agreement.prior_diff`): the interval of
the difference says whether the estimator beats the prior. Costs come from the sidecars behind the table
(``attrs["runs_dir"]``): each estimator's seconds against the wall time of the measured cells it predicts.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.priors import IMAGENET_TOP1, REFERENCE_OVERALL
from bobkit.analysis.rank_agreement import STATS, rank_stats_batch
from bobkit.analysis.settings import (
    PRIMARY_METRICS,
    one_execution_per_cell,
    one_setting_per_base,
    primary_metrics,
    setting_ids,
)
from bobkit.analysis.uncertainty import percentile_interval, within_cell_stderr

TASK = "transferability"
ESTIMATORS: tuple[str, ...] = ("logme", "leep", "nce", "h_score", "knn_acc")
PRIORS: tuple[str, ...] = (IMAGENET_TOP1, REFERENCE_OVERALL)
LABELS: dict[str, str] = {"logme": "LogME", "leep": "LEEP", "nce": "NCE", "h_score": "H-score",
                          "knn_acc": "kNN accuracy", IMAGENET_TOP1: "ImageNet top-1 (prior)",
                          REFERENCE_OVERALL: "reference overall score (prior)"}
#: The measured metrics each task is predicted on: the primary metrics, with OOD's mean corruption accuracy beside
#: its per-target accuracies (a corruption run has no ``acc/<target>``).
MEASURED_METRICS: dict[str, tuple[str, ...]] = {**PRIMARY_METRICS, "ood": (r"acc/[^/]+|mca",)}
SETTING_KEYS = ("setting_label", "task", "dataset", "protocol", "metric")
#: The statistics a task's predictors can be ranked by (higher: closer to the measured ranking), in words.
STAT_NAMES: dict[str, str] = {"kendall": "Kendall's tau", "weighted_kendall": "weighted Kendall's tau",
                              "spearman": "Spearman's rho", "top1_hit": "top-1 hit rate"}
#: Short headers for the tables notebook 09 shows (so they fit the page's column).
TABLE_LABELS: dict[str, str] = {
    "setting_label": "measured setting", "label": "predictor", "n_backbones": "n", "kendall": "Kendall's tau",
    "kendall_p": "p (random order)", "top1_hit": "top-1 hit", "weighted_kendall": "weighted tau",
    "spearman": "Spearman's rho", "diff_kendall": "tau minus prior's", "prior_n": "n with prior",
    "estimator_seconds": "estimator s", "measured_cell_seconds": "measured cell s", "estimator_share": "estimator share",
    "cell_share": "transfer cell share", "predicted": "measured cells"}
BEATS = "beats the prior"
#: The per-setting columns ``summary.json`` keeps.
AGREEMENT_COLUMNS = (*SETTING_KEYS, "predictor", "n_backbones", "kendall", "kendall_lo", "kendall_hi", "kendall_p",
                     "weighted_kendall", "spearman", "top1_hit", "diff_kendall", "diff_kendall_lo", "diff_kendall_hi")
NOT_COMPARABLE = "not comparable with the prior"
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# --------------------------------------------------------------------------------------------------------------------
# What is predicted and what predicts it
# --------------------------------------------------------------------------------------------------------------------

def _as_list(values: str | Sequence[str]) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def measured_values(table: pd.DataFrame, *, tasks: Sequence[str] | None = None,
                    protocols: Sequence[str] | None = None, primary_only: bool = True) -> pd.DataFrame:
    """One row per backbone x measured setting (every task but ``transferability``, or ``tasks`` / ``protocols``
    only): :data:`SETTING_KEYS`, ``backbone``, ``value`` (mean over seeds, negated when lower is better: higher is
    always better) and ``stderr`` (its standard error over test items; NaN when unknown)."""
    rows = table[table["task"] != TASK]
    if tasks is not None:
        rows = rows[rows["task"].isin(_as_list(tasks))]
    if protocols is not None:
        rows = rows[rows["protocol"].isin(_as_list(protocols))]
    if primary_only:
        rows = primary_metrics(rows, MEASURED_METRICS)
    rows, _ = one_execution_per_cell(rows.dropna(subset=["value"]))  # seeds of one execution are the replicates
    if rows.empty:
        raise InsufficientDataError("the table has no measured results to predict (only transferability cells?)")
    sign = np.where(rows["higher_is_better"].astype(bool), 1.0, -1.0)
    frame = rows.assign(setting_label=setting_ids(rows), signed=rows["value"].to_numpy(float) * sign,
                        se2=within_cell_stderr(rows) ** 2)
    out = frame.groupby(["setting_label", "backbone"], sort=True).agg(
        task=("task", "first"), dataset=("dataset", "first"), protocol=("protocol", "first"),
        metric=("metric", "first"), value=("signed", "mean"), n_seeds=("signed", "size"), se2=("se2", "mean"))
    out["stderr"] = np.sqrt(out.pop("se2") / out["n_seeds"])
    return out.reset_index()[[*SETTING_KEYS, "backbone", "value", "stderr"]]


def estimator_values(table: pd.DataFrame, estimators: Sequence[str] | None = None) -> pd.DataFrame:
    """The transferability cells: ``backbone``, ``dataset``, ``predictor`` (estimator), ``value`` (mean over
    seeds). One transferability setting per dataset x estimator (the one with most backbones; others are listed in
    ``attrs["left_out"]``)."""
    wanted = list(estimators) if estimators is not None else list(ESTIMATORS)
    unknown = sorted(set(wanted) - set(ESTIMATORS))
    if unknown:
        raise ValueError(f"estimators {unknown} are not among {list(ESTIMATORS)}")
    rows = table[(table["task"] == TASK) & table["metric"].isin(wanted)].dropna(subset=["value"])
    columns = ["backbone", "dataset", "predictor", "value"]
    if rows.empty:
        out = pd.DataFrame(columns=columns)
        out.attrs["left_out"] = []
        return out
    rows, left_out = one_setting_per_base(rows)
    out = (rows.groupby(["backbone", "dataset", "metric"], sort=True)["value"].mean().reset_index()
           .rename(columns={"metric": "predictor"}))[columns]
    out.attrs["left_out"] = left_out
    return out


def predictor_values(estimates: pd.DataFrame, priors: pd.DataFrame) -> pd.DataFrame:
    """Estimators (per dataset) and priors (``dataset`` None: they predict every setting) in one long frame, with
    ``key`` naming each predictor column (``logme@fashion_mnist``, ``imagenet_top1``)."""
    columns = ["backbone", "dataset", "predictor", "value"]
    frames = [f[columns] for f in (estimates, priors.assign(dataset=None)) if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*columns, "key"])
    out = pd.concat(frames, ignore_index=True).dropna(subset=["value"]).reset_index(drop=True)
    out["dataset"] = out["dataset"].astype(object).where(out["dataset"].notna(), None)
    out["key"] = [p if d is None else f"{p}@{d}" for p, d in zip(out["predictor"], out["dataset"])]
    return out


def predictor_table(predictors: pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The estimators' values as a page shows them: one row per backbone (its display name from ``names``, as the
    overview names it) and dataset, one column per estimator (``LogME``, ``H-score``, ...). The priors, one value
    per backbone whatever the dataset, have their own table."""
    estimates = predictors[predictors["dataset"].notna() & predictors["predictor"].isin(ESTIMATORS)]
    columns = [LABELS[e] for e in ESTIMATORS if e in set(estimates["predictor"])]
    if estimates.empty:
        return pd.DataFrame(columns=["backbone", "dataset", *columns])
    wide = estimates.pivot_table(index=["backbone", "dataset"], columns="predictor", values="value",
                                 aggfunc="first").rename(columns=LABELS)
    wide.columns.name = None
    wide = wide.reset_index()
    wide["backbone"] = wide["backbone"].map(lambda b: (names or {}).get(b, b))
    return wide[["backbone", "dataset", *columns]]


def prior_table(prior_rows: pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The priors as a page shows them: the backbone's display name, the prior's label, its value and source."""
    out = prior_rows.assign(backbone=prior_rows["backbone"].map(lambda b: (names or {}).get(b, b)),
                            predictor=prior_rows["predictor"].map(lambda p: LABELS.get(p, p)))
    return out.rename(columns={"predictor": "prior"})[["backbone", "prior", "value", "source"]]


#: Relative spread under which a predictor gives every backbone the same value (it cannot rank them).
SATURATION_TOLERANCE = 1e-6


def drop_saturated(predictors: pd.DataFrame, rtol: float = SATURATION_TOLERANCE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(kept, saturated)``: a predictor (``key``) whose values on its dataset are all equal within ``rtol`` of
    their size ranks nothing (H-score at its ceiling gives every backbone the same value): it is left out of the
    comparison and listed in ``saturated`` (``key``, ``predictor``, ``dataset``, ``value``, ``n_backbones``)."""
    columns = ["key", "predictor", "dataset", "value", "n_backbones"]
    if predictors.empty:
        return predictors, pd.DataFrame(columns=columns)
    groups = predictors.groupby("key", sort=True)["value"]
    spread = groups.max() - groups.min()
    scale = groups.apply(lambda v: float(np.abs(v).max()) or 1.0)
    flat = spread.index[(spread <= rtol * scale) & (groups.size() >= 2)]
    saturated = (predictors[predictors["key"].isin(flat)].groupby("key", sort=True)
                 .agg(predictor=("predictor", "first"), dataset=("dataset", "first"), value=("value", "mean"),
                      n_backbones=("backbone", "nunique")).reset_index())[columns]
    return predictors[~predictors["key"].isin(flat)].reset_index(drop=True), saturated


def describe_saturated(saturated: pd.DataFrame) -> str:
    """The saturated predictors in a sentence (empty when none)."""
    from bobkit.analysis.prose import md

    if saturated.empty:
        return ""
    parts = [f"{md(LABELS.get(r.predictor, r.predictor))}"
             + (f" on {md(r.dataset)}" if isinstance(r.dataset, str) else "")
             + f" gives every backbone {r.value:.2f} ({r.n_backbones} backbones)" for r in saturated.itertuples()]
    return ("Saturated, so left out as predictors: " + "; ".join(parts) + ". A score that is the same for every "
            "backbone cannot rank them (H-score reaches its ceiling when the features separate the training classes "
            "perfectly).")


def describe_chance(n_backbones: int) -> str:
    """How often a random order ranks ``n_backbones`` backbones perfectly, in a sentence."""
    return (f"With {n_backbones} backbones a predictor ordering them at random ranks them perfectly once in "
            f"{math.factorial(n_backbones):,} tries.")


# --------------------------------------------------------------------------------------------------------------------
# Every setting x predictor, with the bootstrap
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Agreement:
    """Rank agreement of every (measured setting, predictor) pair, point values and bootstrap replicates.

    ``rows`` has one row per pair (:data:`SETTING_KEYS`, ``predictor``, ``n_backbones``, each statistic with
    ``_lo`` / ``_hi``, ``top1_hit_share``, ``kendall_p`` (:func:`kendall_p_value`), and for estimators ``prior_n`` and ``diff_<stat>`` with its interval:
    the estimator minus the prior on the backbones both cover). ``replicates`` and ``prior_diff`` are
    ``(n_boot, pairs, stats)``.
    """

    rows: pd.DataFrame
    replicates: np.ndarray
    prior_diff: np.ndarray
    prior: str
    ci: float
    n_backbones: int


def _matrix(frame: pd.DataFrame, index: list[str], columns: list, column: str, value: str) -> np.ndarray:
    wide = frame.pivot_table(index="backbone", columns=column, values=value, aggfunc="first", dropna=False)
    return wide.reindex(index=index, columns=columns).to_numpy(dtype=float)


def _pairs(settings: pd.DataFrame, keys: pd.DataFrame, measured: np.ndarray, predicted: np.ndarray,
           prior_col: int | None, min_backbones: int) -> list[tuple[int, int, np.ndarray, np.ndarray | None]]:
    """(setting index, predictor index, backbones with both values, backbones with the prior too) per pair."""
    out = []
    for s, dataset in enumerate(settings["dataset"]):
        for q, key in enumerate(keys.itertuples(index=False)):
            if key.dataset is not None and key.dataset != dataset:
                continue
            mask = np.isfinite(measured[:, s]) & np.isfinite(predicted[:, q])
            if mask.sum() < min_backbones:
                continue
            common = None
            if key.dataset is not None and prior_col is not None:
                common = mask & np.isfinite(predicted[:, prior_col])
                common = common if common.sum() >= min_backbones else None
            out.append((s, q, mask, common))
    return out


def _pair_stats(measured: np.ndarray, predicted: np.ndarray, pair, counts: np.ndarray, prior_col: int | None,
                min_backbones: int) -> tuple[np.ndarray, np.ndarray]:
    """Statistics (R x stats) of one pair over R samples (``counts``: R x backbones) of the pair's setting's
    ``measured`` values (R x backbones), and the estimator-minus-prior differences on the backbones both cover."""
    _, q, mask, common = pair
    value = rank_stats_batch(measured[:, mask], predicted[mask, q], counts[:, mask], min_backbones)
    diff = np.full_like(value, np.nan)
    if common is not None:
        diff = (rank_stats_batch(measured[:, common], predicted[common, q], counts[:, common], min_backbones)
                - rank_stats_batch(measured[:, common], predicted[common, prior_col], counts[:, common],
                                   min_backbones))
    return value, diff


def compare_rankings(measured: pd.DataFrame, predictors: pd.DataFrame, *, n_boot: int = 1000, ci: float = 0.95,
                     seed: int = 0, min_backbones: int = 3, items: bool = True,
                     prior: str = IMAGENET_TOP1) -> Agreement:
    """Rank agreement of each predictor with each measured setting (see the module docstring).

    Parameters
    ----------
    measured, predictors
        From :func:`measured_values` and :func:`predictor_values`.
    n_boot, ci, seed
        Bootstrap replicates over backbones, interval level, generator seed.
    min_backbones
        Backbones (distinct, with both values) a pair needs; pairs with fewer are left out.
    items
        Also draw each measured value from N(value, stderr) in every replicate.
    prior
        The prior each estimator is compared with.
    """
    settings = measured.drop_duplicates("setting_label")[list(SETTING_KEYS)].reset_index(drop=True)
    backbones = sorted(set(measured["backbone"]) & set(predictors["backbone"]))
    keys = predictors.drop_duplicates("key")[["key", "predictor", "dataset"]].reset_index(drop=True)
    labels = settings["setting_label"].tolist()
    m = _matrix(measured, backbones, labels, "setting_label", "value")
    se = np.nan_to_num(_matrix(measured, backbones, labels, "setting_label", "stderr"), nan=0.0)
    p = _matrix(predictors, backbones, keys["key"].tolist(), "key", "value")
    prior_col = next((q for q, key in enumerate(keys["key"]) if key == prior), None)
    pairs = _pairs(settings, keys, m, p, prior_col, min_backbones)
    if not pairs:
        raise InsufficientDataError(f"no measured setting shares at least {min_backbones} backbones with a "
                                    "predictor (transferability cells on its dataset, or a known prior)")
    ones = np.ones((1, len(backbones)))
    points = [tuple(x[0] for x in _pair_stats(m[:, [pair[0]]].T, p, pair, ones, prior_col, min_backbones))
              for pair in pairs]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(backbones), (n_boot, len(backbones)))
    counts = np.zeros((n_boot, len(backbones)))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    reps = np.full((n_boot, len(pairs), len(STATS)), np.nan)
    diffs = np.full_like(reps, np.nan)
    noisy: dict[int, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, pair in enumerate(pairs):
            s = pair[0]
            if s not in noisy:  # one draw per setting, the same for every predictor of it
                noise = np.random.default_rng([seed, s]).standard_normal((n_boot, len(backbones)))
                noisy[s] = m[:, s][None, :] + (noise * se[:, s][None, :] if items else 0.0)
            reps[:, k], diffs[:, k] = _pair_stats(noisy[s], p, pair, counts, prior_col, min_backbones)
    rows = [_pair_row(settings.iloc[pair[0]], keys.iloc[pair[1]], pair, point, reps[:, k], diffs[:, k], ci)
            | {"kendall_p": kendall_p_value(m[pair[2], pair[0]], p[pair[2], pair[1]])}
            for k, (pair, point) in enumerate(zip(pairs, points))]
    return Agreement(pd.DataFrame(rows), reps, diffs, prior, ci, len(backbones))


def kendall_p_value(measured: np.ndarray, predicted: np.ndarray) -> float:
    """The chance that a predictor ordering the backbones at random agrees at least this well: the one-sided
    p-value of Kendall's tau (scipy's exact test without ties, its normal approximation with them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.kendalltau(measured, predicted, alternative="greater").pvalue)


def _pair_row(setting: pd.Series, key: pd.Series, pair, point: tuple[np.ndarray, np.ndarray], reps: np.ndarray,
              diffs: np.ndarray, ci: float) -> dict:
    value, diff = point
    row = {**setting.to_dict(), "predictor": key["predictor"], "label": LABELS.get(key["predictor"], key["predictor"]),
           "n_backbones": int(pair[2].sum())}
    lo, hi = percentile_interval(reps, ci)
    for j, name in enumerate(STATS):
        row.update({name: value[j], f"{name}_lo": lo[j], f"{name}_hi": hi[j]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row["top1_hit_share"] = float(np.nanmean(reps[:, STATS.index("top1_hit")]))
    row["prior_n"] = int(pair[3].sum()) if pair[3] is not None else 0
    dlo, dhi = percentile_interval(diffs, ci)
    for j, name in enumerate(STATS[:4]):
        row.update({f"diff_{name}": diff[j], f"diff_{name}_lo": dlo[j], f"diff_{name}_hi": dhi[j]})
    return row


# --------------------------------------------------------------------------------------------------------------------
# Per task: which predictor to trust, and does it beat the prior?
# --------------------------------------------------------------------------------------------------------------------

def task_summary(agreement: Agreement) -> pd.DataFrame:
    """One row per task x predictor: each statistic averaged over the task's settings (``n_settings``), with the
    interval of that average over the same bootstrap replicates; for estimators the mean difference to the prior
    (``diff_<stat>`` with interval) and ``verdict`` (:func:`prior_verdict` on Kendall's tau)."""
    rows = []
    frame = agreement.rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for (task, predictor), group in frame.groupby(["task", "predictor"], sort=True):
            idx = group.index.to_numpy()
            row = {"task": task, "predictor": predictor, "label": LABELS.get(predictor, predictor),
                   "n_settings": len(idx), "n_backbones": int(group["n_backbones"].max())}
            reps = np.nanmean(agreement.replicates[:, idx], axis=1)
            lo, hi = percentile_interval(reps, agreement.ci)
            for j, name in enumerate(STATS):
                row.update({name: float(group[name].mean()), f"{name}_lo": lo[j], f"{name}_hi": hi[j]})
            compared = idx[frame.loc[idx, "prior_n"].to_numpy() > 0]
            row["prior_n"] = int(frame.loc[compared, "prior_n"].max()) if compared.size else 0
            dlo = dhi = np.full(len(STATS), np.nan)
            if compared.size:
                dlo, dhi = percentile_interval(np.nanmean(agreement.prior_diff[:, compared], axis=1), agreement.ci)
            for j, name in enumerate(STATS[:4]):
                point = float(frame.loc[compared, f"diff_{name}"].mean()) if compared.size else np.nan
                row.update({f"diff_{name}": point, f"diff_{name}_lo": dlo[j], f"diff_{name}_hi": dhi[j]})
            row["verdict"] = (prior_verdict(row["diff_kendall"], row["diff_kendall_lo"], row["diff_kendall_hi"])
                              if predictor not in PRIORS else "")
            rows.append(row)
    return pd.DataFrame(rows)


def prior_verdict(diff: float, low: float, high: float) -> str:
    """How an estimator compares with the prior from the interval of their difference: it ``beats the prior`` or
    is ``worse than the prior`` when the interval excludes 0, else ``no clear difference from the prior``; ``not
    comparable with the prior`` without a difference, ``no interval on the difference`` without an interval."""
    if not np.isfinite(diff):
        return NOT_COMPARABLE
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval on the difference"
    if low > 0:
        return BEATS
    if high < 0:
        return "worse than the prior"
    return "no clear difference from the prior"


def _best(rows: pd.DataFrame, stat: str) -> tuple[pd.Series | None, pd.DataFrame]:
    """The row with the highest ``stat`` among those covering the most backbones (taus over different backbone sets
    are not comparable), and the rows covering fewer backbones that score higher."""
    if rows.empty:
        return None, rows
    full = rows["n_backbones"].max()
    ranked = rows.sort_values(stat, ascending=False, na_position="last")
    best = ranked[ranked["n_backbones"] == full].iloc[0]
    better = ranked[(ranked["n_backbones"] < full) & (ranked[stat] > best[stat])]
    return best, better


def recommendations(summary: pd.DataFrame, stat: str = "kendall") -> pd.DataFrame:
    """Per task: the predictor with the highest mean ``stat`` (one of :data:`STAT_NAMES`) among those covering the
    most backbones, the best estimator likewise with its verdict against the prior, and (``fewer_backbones``) the
    predictors that score higher on fewer backbones (LEEP and NCE cover only backbones with an ImageNet head)."""
    if stat not in STAT_NAMES:
        raise ValueError(f"stat={stat!r} is not one of {list(STAT_NAMES)}")
    rows = []
    for task, group in summary.groupby("task", sort=True):
        best, better = _best(group, stat)
        est, _ = _best(group[~group["predictor"].isin(PRIORS)], stat)
        rows.append({
            "task": task, "best": best["predictor"], "best_label": best["label"], stat: best[stat],
            f"{stat}_lo": best[f"{stat}_lo"], f"{stat}_hi": best[f"{stat}_hi"],
            "n_backbones": int(best["n_backbones"]), "n_settings": int(best["n_settings"]),
            "best_estimator": est["predictor"] if est is not None else None,
            f"estimator_{stat}": est[stat] if est is not None else np.nan,
            f"estimator_{stat}_lo": est[f"{stat}_lo"] if est is not None else np.nan,
            f"estimator_{stat}_hi": est[f"{stat}_hi"] if est is not None else np.nan,
            "estimator_n_backbones": int(est["n_backbones"]) if est is not None else 0,
            "verdict": est["verdict"] if est is not None else "no estimator",
            "fewer_backbones": "; ".join(f"{r['label']} {r[stat]:.2f} ({int(r['n_backbones'])} backbones)"
                                         for _, r in better.iterrows()),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Cost: estimator seconds against the measured cells they predict
# --------------------------------------------------------------------------------------------------------------------

def _sidecar(runs_dir: Path, task: str, run_key: str) -> dict | None:
    from bobkit.results.sidecars import read_sidecar

    if not (_SAFE_PART.match(str(task)) and _SAFE_PART.match(str(run_key))) or ".." in str(run_key):
        return None  # a run key from a table never becomes a path outside the runs folder
    return read_sidecar(runs_dir / str(task) / str(run_key))


def run_timings(table: pd.DataFrame, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per run of ``table`` with a readable sidecar: ``run_key``, ``task``, ``backbone``, ``dataset``,
    ``protocol``, ``wall_seconds`` (the whole cell, kernel start included) and every ``*_seconds`` /
    ``feature_cache_hit`` descriptor. Runs come from ``runs_dir`` (default: the table's ``attrs["runs_dir"]``)."""
    folder = runs_dir or table.attrs.get("runs_dir")
    if not folder or not Path(folder).is_dir():
        raise InsufficientDataError("the table names no runs folder with its sidecars (attrs['runs_dir']): costs "
                                    "come from the runs `bob build` read")
    rows = []
    runs = table.drop_duplicates("run_key")[["run_key", "task", "backbone", "dataset", "protocol"]]
    for run in runs.itertuples(index=False):
        sidecar = _sidecar(Path(folder), run.task, run.run_key)
        if sidecar is None:
            continue
        timings = sidecar.get("timings") or {}
        row = {**run._asdict(), "wall_seconds": float(sidecar.get("wall_seconds") or np.nan)}
        row.update({k: float(v) for k, v in timings.items() if isinstance(v, (int, float))
                    and (k.endswith("_seconds") or k == "feature_cache_hit")})
        rows.append(row)
    if not rows:
        raise InsufficientDataError(f"no sidecar of the table's runs was found under {folder}")
    return pd.DataFrame(rows)


#: Timings that are not the measured cell's own work: the feature extraction an estimator shares (cached) and the
#: notebook around it.
_NOT_WORK = ("extract_seconds", "load_seconds", "papermill_process_seconds", "notebook_cells_seconds")


def _work_seconds(cells: pd.DataFrame) -> pd.Series:
    """Per cell, the seconds of its own work beyond extracting features (training, evaluation, attacks, ...)."""
    columns = [c for c in cells if c.endswith("_seconds") and c not in _NOT_WORK and c != "wall_seconds"]
    return cells[columns].sum(axis=1, min_count=1) if columns else pd.Series(np.nan, index=cells.index)


def estimator_costs(timings: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x estimator x measured task/protocol on that dataset: the estimator's median seconds per backbone
    (LEEP and NCE include the ImageNet head's predictions); the median wall time of a transferability cell (all
    five estimators, feature read, notebook start) and of the measured cells it predicts, and the estimator and the
    cell as shares of the latter; ``measured_work_seconds``, the measured cells' own work beyond feature extraction
    (a probe's fit and evaluation on the same cached features); ``feature_cache_hit``, the share of transferability
    cells served by the cache."""
    transfer = timings[timings["task"] == TASK]
    measured = timings[timings["task"] != TASK]
    if transfer.empty or measured.empty:
        raise InsufficientDataError("costs need sidecars of transferability cells and of the cells they predict")
    rows = []
    for dataset, cells in transfer.groupby("dataset", sort=True):
        predicted = measured[measured["dataset"] == dataset]
        cell_seconds = float(cells["wall_seconds"].median())
        for estimator in ESTIMATORS:
            column = f"{estimator}_seconds"
            if column not in cells or cells[column].isna().all():
                continue
            seconds = cells[column] + (cells.get("source_head_seconds", 0.0) if estimator in ("leep", "nce") else 0)
            median = float(seconds.median())
            for (task, protocol), group in predicted.groupby(["task", "protocol"], sort=True):
                wall = float(group["wall_seconds"].median())
                rows.append({
                    "dataset": dataset, "estimator": estimator, "n_backbones": int(seconds.notna().sum()),
                    "estimator_seconds": median, "transfer_cell_seconds": cell_seconds,
                    "feature_cache_hit": float(cells.get("feature_cache_hit", pd.Series(np.nan)).mean()),
                    "predicted": f"{task}/{protocol}", "measured_cell_seconds": wall,
                    "measured_work_seconds": float(_work_seconds(group).median()),
                    "estimator_share": median / wall if wall > 0 else np.nan,
                    "cell_share": cell_seconds / wall if wall > 0 else np.nan,
                })
    if not rows:
        raise InsufficientDataError("no measured cell shares a dataset with the transferability cells")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Words and a figure
# --------------------------------------------------------------------------------------------------------------------

def describe_recommendations(summary: pd.DataFrame, stat: str = "kendall") -> list[str]:
    """One sentence per task: the predictor that ranks closest, the ImageNet-top-1 prior, the best estimator with
    its verdict against that prior, and what scores higher on fewer backbones (Markdown, table values escaped)."""
    from bobkit.analysis.prose import fmt_ci, md

    sentences = []
    for row in recommendations(summary, stat).to_dict("records"):
        group = summary[summary["task"] == row["task"]]
        text = (f"**{md(row['task'])}** ({row['n_settings']} setting(s), {row['n_backbones']} backbones): "
                f"{md(row['best_label'])} ranks closest to the measured ranking, {STAT_NAMES[stat]} "
                f"{fmt_ci(row[stat], row[f'{stat}_lo'], row[f'{stat}_hi'])}")
        prior = group[group["predictor"] == IMAGENET_TOP1]
        if len(prior) and row["best"] != IMAGENET_TOP1:
            p = prior.iloc[0]
            text += (f"; the ImageNet-top-1 prior: {fmt_ci(p[stat], p[f'{stat}_lo'], p[f'{stat}_hi'])} "
                     f"({int(p['n_backbones'])} backbones)")
        if not isinstance(row["best_estimator"], str):
            text += "; no transferability cell covers this task's datasets."
        else:
            interval = fmt_ci(row[f"estimator_{stat}"], row[f"estimator_{stat}_lo"], row[f"estimator_{stat}_hi"])
            text += (f". Best estimator: {md(LABELS[row['best_estimator']])} ({interval}, "
                     f"{row['estimator_n_backbones']} backbones), {row['verdict']}.")
        if row["fewer_backbones"]:
            text += f" Higher on fewer backbones: {md(row['fewer_backbones'])}."
        sentences.append(text)
    return sentences


def describe_prior_question(summary: pd.DataFrame, n_backbones: int, ci: float = 0.95) -> str:
    """Does any estimator beat the ImageNet-top-1 prior (the interval of its mean Kendall difference above 0)?"""
    from bobkit.analysis.prose import fmt_ci, md

    estimators = summary[~summary["predictor"].isin(PRIORS)]
    compared = estimators[estimators["verdict"] != NOT_COMPARABLE]
    if compared.empty:
        return ("No estimator could be compared with the ImageNet-top-1 prior: no setting has enough backbones "
                "with both.")
    wins = compared[compared["verdict"] == BEATS]
    level = f"{ci:.0%}"
    if len(wins):
        named = "; ".join(f"{md(r.label)} on {md(r.task)} (Kendall difference "
                          f"{fmt_ci(r.diff_kendall, r.diff_kendall_lo, r.diff_kendall_hi)})" for r in wins.itertuples())
        text = f"**Yes, on some tasks:** {named}: the {level} interval of the difference lies above 0."
    else:
        best = compared.sort_values("diff_kendall", ascending=False).iloc[0]
        text = (f"**No estimator beats the ImageNet-top-1 prior** on this table: in none of {len(compared)} task x "
                f"estimator comparisons does the {level} interval of the Kendall difference lie above 0 (closest: "
                f"{md(best['label'])} on {md(best['task'])}, "
                f"{fmt_ci(best['diff_kendall'], best['diff_kendall_lo'], best['diff_kendall_hi'])}).")
    if n_backbones < 15:
        text += (f" With {n_backbones} backbones the intervals are wide: a missing win is weak evidence, not proof, "
                 "that the estimators add nothing to the prior.")
    return text


def predictor_colours(extra: Sequence[str] = ()) -> dict[str, tuple]:
    """One colour per predictor, the same in every figure: the estimators and priors in a fixed order, then any
    other predictor named in ``extra``."""
    from bobkit.analysis.plots import palette_for

    return palette_for([*ESTIMATORS, *PRIORS, *extra])


def agreement_plot(summary: pd.DataFrame, stat: str = "kendall", group: str = "task", title: str | None = None):
    """Forest plot: each predictor's mean ``stat`` per ``group`` (rows) with its interval (priors as diamonds); 0
    marked. A point without bars has no interval (too few backbones, or no replicate varied)."""
    import matplotlib.pyplot as plt

    from bobkit.analysis.plots import wrap_label

    if summary.empty:
        raise InsufficientDataError("no rank agreement to plot")
    groups = list(dict.fromkeys(summary[group]))
    predictors = list(dict.fromkeys(summary["predictor"]))
    colours = predictor_colours(predictors)
    step = 1.0 / (len(predictors) + 1)
    fig, ax = plt.subplots(figsize=(6.8, max(2.5, 0.9 + 0.5 * len(groups) * max(1, len(predictors)) ** 0.5)))
    for k, predictor in enumerate(predictors):
        rows = summary[summary["predictor"] == predictor]
        y = np.array([groups.index(g) for g in rows[group]]) + (k + 1) * step - 0.5
        x = rows[stat].to_numpy(float)
        err = np.vstack([x - rows[f"{stat}_lo"].to_numpy(float), rows[f"{stat}_hi"].to_numpy(float) - x])
        ax.errorbar(x, y, xerr=np.nan_to_num(err, nan=0.0), fmt="D" if predictor in PRIORS else "o",
                    color=colours[predictor], capsize=2, label=LABELS.get(predictor, predictor))
    ax.axvline(0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(range(len(groups)), [wrap_label(str(g), 30) for g in groups])
    ax.invert_yaxis()
    ax.set_xlabel({"kendall": "Kendall's tau", "weighted_kendall": "weighted Kendall's tau",
                   "spearman": "Spearman's rho"}.get(stat, stat) + " with the measured ranking")
    if stat in ("kendall", "weighted_kendall", "spearman"):
        ax.set_xlim(-1.05, 1.05)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    ax.set_title(title or "Predicted vs measured ranking")
    fig.tight_layout()
    return fig


def records(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> list[dict]:
    """``frame`` (or its ``columns``) as JSON-ready records for ``summary.json`` (NaN as null)."""
    view = frame[[c for c in columns if c in frame]] if columns is not None else frame
    return json.loads(view.to_json(orient="records"))


def describe_predictors(estimates: pd.DataFrame, priors: pd.DataFrame, backbones: Sequence[str]) -> str:
    """What predicts: the transferability cells' coverage (LEEP/NCE only where an ImageNet head exists) and the
    priors' coverage, in one paragraph."""
    from bobkit.analysis.prose import md

    n = len(set(backbones))
    if estimates.empty:
        text = "**Estimators:** the table has no transferability cells (run the `transferability` task)."
    else:
        datasets = ", ".join(md(d) for d in sorted(estimates["dataset"].unique()))
        covered = estimates.groupby("predictor")["backbone"].nunique()
        per = ", ".join(f"{LABELS[e]} {int(covered.get(e, 0))}" for e in ESTIMATORS if e in covered)
        text = (f"**Estimators** on {datasets}: backbones scored per estimator: {per} (of {n}). LEEP and NCE need the "
                "backbone's own ImageNet-1k head: random-init controls and headless weights have none.")
    for predictor, rows in priors.groupby("predictor", sort=False):
        known = int(rows["value"].notna().sum())
        text += f" **{LABELS.get(predictor, md(predictor))}:** known for {known} of {len(rows)} backbones."
    return text


def describe_costs(costs: pd.DataFrame, predicted: str = "classification/linear_probe") -> str:
    """Each estimator's median seconds against the measured cells it predicts (the linear probe when there): their
    wall time, and their own work beyond the shared features."""
    from bobkit.analysis.prose import md

    sentences = []
    for dataset, rows in costs.groupby("dataset", sort=True):
        target = predicted if predicted in set(rows["predicted"]) else str(rows["predicted"].iloc[0])
        rows = rows[rows["predicted"] == target]
        parts = ", ".join(f"{LABELS[r.estimator]} {r.estimator_seconds:.2g} s ({r.estimator_share:.1%})"
                          for r in rows.itertuples())
        first = rows.iloc[0]
        sentences.append(
            f"On {md(dataset)}, against a {md(target)} cell of {first['measured_cell_seconds']:.3g} s (median): "
            f"{parts} per backbone; the measured cell's own work beyond the shared features took "
            f"{first['measured_work_seconds']:.2g} s; a whole transferability cell (all five estimators, the feature "
            f"read and the notebook's start) took {first['transfer_cell_seconds']:.3g} s ({first['cell_share']:.0%}); "
            f"features from the cache in {first['feature_cache_hit']:.0%} of its cells.")
    return " ".join(sentences)
