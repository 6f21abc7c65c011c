"""z-scores, task and overall scores, their bootstrap, and leaderboards (every choice a parameter).

Conventions:

* a **setting** is one ``setting_id`` (:mod:`bobkit.analysis.settings`): rows are pooled only when it agrees;
* values of one backbone in one setting are averaged over seeds, the seeds of one execution only: runs on another
  device type or precision are not replicates (:func:`~bobkit.analysis.settings.one_execution_per_cell`; what is
  left out is named in ``attrs["execution_left_out"]``);
* lower-is-better metrics are negated (``negate_lower``) so that higher is always better;
* each setting is z-scored over the backbones of its **pool** (``ddof`` 0 as :func:`scipy.stats.zscore`; a setting
  where the pool ties scores 0; settings with fewer than ``min_backbones`` pool backbones are dropped). Random-init
  controls (``method_kind`` in ``pool_exclude``) are kept out of the pool by default: they are scored against the
  pretrained backbones' mean and spread and stay on the leaderboards as labelled baselines;
* z-scores over a small pool degenerate (with two pretrained backbones every one is exactly +-1; a control below a
  tight pool lands at a very large negative z): beside the z-score every leaderboard carries ``gap_to_best``, the
  signed distance to the best pretrained backbone of each setting in the metric's own units (0 for the best,
  negative behind it), aggregated exactly as the z-scores are, which stays meaningful for any pool size;
  ``attrs["min_pool"]`` is the smallest pool and ``attrs["small_pool"]`` says it is below :data:`SMALL_POOL`;
* a task score averages the z-scores of its settings (``setting_agg``; a backbone missing a setting is averaged
  over the settings it has), the overall score averages the task scores (``task_agg``) over the tasks **every**
  compared backbone has (``shared_tasks_only``): a backbone without a detection cell is not ranked above the others
  on fewer tasks; the tasks left out of the overall keep their own columns and are named
  (``attrs["tasks_not_in_overall"]``: task -> the backbones lacking it). With ``shared_tasks_only=False`` each
  backbone is averaged over the tasks it has and ``tasks_scored`` says which.

:func:`zscore_matrix` is the one z-score implementation; everything else calls it. Uncertainty comes from
:func:`bootstrap_scores`: each replicate resamples seeds within each backbone x setting, draws each seed's value from
N(value, within-cell standard error), resamples settings within each task, and recomputes everything from the
z-scores up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.settings import DEFAULT_SETTING_KEYS, one_execution_per_cell, setting_ids
from bobkit.analysis.uncertainty import percentile_interval, within_cell_stderr
from bobkit.results.schema import METADATA_COLUMNS

_AGG: dict[str, Callable[..., np.ndarray]] = {"mean": np.nanmean, "median": np.nanmedian}
#: Method kinds kept out of the z-score pools (and the scale correlations) unless asked for.
BASELINE_KINDS: tuple[str, ...] = ("random",)
RESAMPLE_UNITS: tuple[str, ...] = ("settings", "seeds", "items")
#: Fewest pretrained backbones in a setting's pool for its z-scores to say more than the order (with 2, every
#: backbone is at exactly -1 or +1; with 3, the z-scores of the middle one are pinned by the other two).
SMALL_POOL = 4


def backbone_metadata(results: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone with the metadata columns present in ``results`` (index ``backbone``)."""
    cols = [c for c in (*METADATA_COLUMNS, "pretrain_data_group", "tag") if c in results.columns]
    return results.drop_duplicates("backbone").set_index("backbone")[cols]


def baseline_mask(results: pd.DataFrame, pool_exclude: Sequence[str] = BASELINE_KINDS) -> pd.Series:
    """True for rows of baseline backbones (``method_kind`` in ``pool_exclude``, e.g. random init)."""
    if "method_kind" not in results or not pool_exclude:
        return pd.Series(False, index=results.index)
    return results["method_kind"].isin(list(pool_exclude))


def pretrained_only(frame: pd.DataFrame, pool_exclude: Sequence[str] = BASELINE_KINDS) -> tuple[pd.DataFrame, int]:
    """The rows of ``frame`` outside the random-init controls (``method_kind`` in ``pool_exclude``) and how many rows
    were left out: every pooled finding (a mean gain, a rank agreement, a correlation over backbones) uses the
    pretrained backbones only, as the z-score pools do; the controls stay in tables and charts as baselines."""
    controls = baseline_mask(frame, pool_exclude)
    return frame[~controls], int(controls.sum())


# --------------------------------------------------------------------------------------------------------------------
# The backbone x setting x seed cube
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class SettingCube:
    """Signed values of every backbone x setting x seed (NaN padded) with their within-cell standard errors."""

    backbones: list[str]
    settings: list[str]
    tasks: list[str]
    task_of_setting: np.ndarray  # (S,) task index
    values: np.ndarray  # (B, S, K) signed seed values
    stderr: np.ndarray  # (B, S, K) within-cell standard errors (NaN unknown)
    pool: np.ndarray  # (B,) in the z-score pool
    setting_info: pd.DataFrame  # per setting label: task, dataset, protocol, metric, higher_is_better
    negate_lower: bool = True
    execution_left_out: list[str] | None = None  # runs not averaged with a cell's seeds (another execution)

    @property
    def n_seeds(self) -> np.ndarray:
        return np.isfinite(self.values).sum(axis=2)

    def seed_means(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(self.values, axis=2)


def setting_cube(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    min_backbones: int = 2,
    pool_exclude: Sequence[str] = BASELINE_KINDS,
) -> SettingCube:
    """Arrange ``results`` as a :class:`SettingCube`, dropping settings with fewer than ``min_backbones`` backbones
    in the pool (every backbone is in the pool when none would be)."""
    if results.empty:
        raise InsufficientDataError("the results table is empty")
    results, execution_left_out = one_execution_per_cell(results)
    frame = results.assign(setting_key=setting_ids(results, setting_keys), se=within_cell_stderr(results))
    frame = frame.dropna(subset=["value"])
    if frame.empty:
        raise InsufficientDataError("the results table has no non-missing values")
    sign = np.where(frame["higher_is_better"].astype(bool) | (not negate_lower), 1.0, -1.0)
    frame = frame.assign(signed=frame["value"].to_numpy(dtype=float) * sign,
                         in_pool=~baseline_mask(frame, pool_exclude))
    if not frame["in_pool"].any():
        frame["in_pool"] = True
    pool_counts = frame[frame["in_pool"]].groupby("setting_key")["backbone"].nunique()
    keep = pool_counts[pool_counts >= min_backbones].index
    frame = frame[frame["setting_key"].isin(keep)]
    if frame.empty:
        excluded = f" (baselines of kinds {list(pool_exclude)} are not in the pool)" if pool_exclude else ""
        raise InsufficientDataError(f"no setting has at least {min_backbones} backbones to z-score{excluded}")
    backbones = sorted(frame["backbone"].unique())
    settings = sorted(frame["setting_key"].unique())
    info = frame.drop_duplicates("setting_key").set_index("setting_key").loc[
        settings, ["task", "dataset", "protocol", "metric", "higher_is_better"]]
    tasks = sorted(info["task"].astype(str).unique())
    b_idx = pd.Index(backbones).get_indexer(frame["backbone"])
    s_idx = pd.Index(settings).get_indexer(frame["setting_key"])
    k_idx = frame.groupby(["backbone", "setting_key"]).cumcount().to_numpy()
    shape = (len(backbones), len(settings), int(k_idx.max()) + 1)
    values, stderr = np.full(shape, np.nan), np.full(shape, np.nan)
    values[b_idx, s_idx, k_idx] = frame["signed"].to_numpy(dtype=float)
    stderr[b_idx, s_idx, k_idx] = frame["se"].to_numpy(dtype=float)
    pool = frame.groupby("backbone")["in_pool"].all().reindex(backbones).to_numpy(dtype=bool)
    return SettingCube(backbones, settings, tasks, pd.Index(tasks).get_indexer(info["task"].astype(str)),
                       values, stderr, pool, info, negate_lower, execution_left_out)


def zscore_matrix(means: np.ndarray, pool: np.ndarray | None = None, ddof: int = 0) -> np.ndarray:
    """z-scores of a backbone x setting matrix: ``(value - mean) / std`` with mean and std over the ``pool`` rows of
    each setting (all rows when None); 0 where the pool ties; NaN where the value is missing."""
    pool = np.ones(means.shape[0], dtype=bool) if pool is None else np.asarray(pool, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(means[pool], axis=0, keepdims=True)
        sd = np.nanstd(means[pool], axis=0, ddof=ddof, keepdims=True)
    z = np.where(sd > 0, (means - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return np.where(np.isfinite(means), z, np.nan)


def gap_to_best_matrix(means: np.ndarray, pool: np.ndarray | None = None) -> np.ndarray:
    """Signed distance of each backbone x setting value to the best ``pool`` backbone of the setting (values
    already signed so that higher is better): 0 for the best, negative behind it, in the metric's units; NaN where
    the value or every pool value is missing. Meaningful for any pool size, unlike a z-score."""
    pool = np.ones(means.shape[0], dtype=bool) if pool is None else np.asarray(pool, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(np.where(np.isfinite(means[pool]), means[pool], -np.inf), axis=0, keepdims=True)
    best = np.where(np.isfinite(best), best, np.nan)
    return means - best


def pool_sizes(means: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Pretrained (pool) backbones with a value in each setting."""
    return np.isfinite(means[np.asarray(pool, dtype=bool)]).sum(axis=0)


def _long(cube: SettingCube, means: np.ndarray, z: np.ndarray | None) -> pd.DataFrame:
    b, s = np.nonzero(np.isfinite(means))
    info = cube.setting_info.iloc[s].reset_index(drop=True)
    sign = np.where(info["higher_is_better"].astype(bool).to_numpy() | (not cube.negate_lower), 1.0, -1.0)
    out = pd.DataFrame({"backbone": np.asarray(cube.backbones, dtype=object)[b],
                        "setting_id": np.asarray(cube.settings, dtype=object)[s]})
    out = pd.concat([out, info], axis=1)
    out["signed"] = means[b, s]
    out["n_seeds"] = cube.n_seeds[b, s]
    out["baseline"] = ~cube.pool[b]
    if z is not None:
        out["z"] = z[b, s]
    return out.assign(value=lambda d: d["signed"] * sign)


def setting_values(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
) -> pd.DataFrame:
    """One row per backbone x setting: ``value`` (seeds averaged), ``signed`` (negated when lower is better),
    ``n_seeds``, ``baseline``, plus ``task``, ``setting_id`` (the setting's label), ``dataset``, ``protocol``,
    ``metric``, ``higher_is_better``."""
    cube = setting_cube(results, setting_keys=setting_keys, negate_lower=negate_lower, min_backbones=1)
    return _long(cube, cube.seed_means(), None)


def zscores(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    pool_exclude: Sequence[str] = BASELINE_KINDS,
) -> pd.DataFrame:
    """Per-setting z-scores: :func:`setting_values` plus ``z`` (:func:`zscore_matrix` over each setting's pool).
    Settings with fewer than ``min_backbones`` pool backbones are dropped."""
    cube = setting_cube(results, setting_keys=setting_keys, negate_lower=negate_lower, min_backbones=min_backbones,
                        pool_exclude=pool_exclude)
    means = cube.seed_means()
    return _long(cube, means, zscore_matrix(means, cube.pool, ddof))


def task_scores(z: pd.DataFrame, *, setting_agg: str = "mean") -> pd.DataFrame:
    """Wide table backbone x task of aggregated setting z-scores (``z`` from :func:`zscores`)."""
    return z.pivot_table(index="backbone", columns="task", values="z", aggfunc=_AGG[setting_agg])


def shared_task_mask(task_matrix: np.ndarray) -> np.ndarray:
    """Tasks (columns of a backbone x task score matrix) that every backbone has a score on; every task when no
    task is shared by all (then no common ground exists and each backbone is averaged over what it has)."""
    shared = np.isfinite(np.asarray(task_matrix, dtype=float)).all(axis=0)
    return shared if shared.any() else np.ones_like(shared)


def tasks_not_in_overall(task_wide: pd.DataFrame, shared: np.ndarray) -> dict[str, list[str]]:
    """Task -> the backbones lacking it, for each task left out of the overall score."""
    return {str(t): sorted(map(str, task_wide.index[task_wide[t].isna()]))
            for t, keep in zip(task_wide.columns, shared) if not keep}


def tasks_scored(task_wide: pd.DataFrame) -> pd.Series:
    """Per backbone, the tasks it has a score on (``"classification, retrieval"``)."""
    return task_wide.notna().apply(lambda row: ", ".join(str(t) for t, has in row.items() if has), axis=1)


def overall_scores(task_wide: pd.DataFrame, *, task_agg: str = "mean", shared_tasks_only: bool = True) -> pd.Series:
    """Overall score per backbone: ``task_agg`` over the task scores every backbone has
    (:func:`shared_task_mask`; ``shared_tasks_only=False``: over the tasks each backbone has)."""
    matrix = task_wide.to_numpy(dtype=float)
    if shared_tasks_only:
        matrix = matrix[:, shared_task_mask(matrix)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return pd.Series(_AGG[task_agg](matrix, axis=1), index=task_wide.index, name="overall")


def scores(
    results: pd.DataFrame,
    *,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
    pool_exclude: Sequence[str] = BASELINE_KINDS,
    shared_tasks_only: bool = True,
) -> pd.DataFrame:
    """One row per backbone: a column per task score, ``overall`` (over the tasks every backbone has unless
    ``shared_tasks_only`` is False), ``n_settings``, ``n_tasks``, ``tasks_scored``, ``baseline`` and the metadata,
    sorted by ``overall`` (best first). ``attrs``: ``tasks``, ``overall_tasks``, ``tasks_not_in_overall``."""
    z = zscores(results, setting_keys=setting_keys, negate_lower=negate_lower, ddof=ddof,
                min_backbones=min_backbones, pool_exclude=pool_exclude)
    wide = task_scores(z, setting_agg=setting_agg)
    shared = shared_task_mask(wide.to_numpy(dtype=float)) if shared_tasks_only else np.ones(wide.shape[1], bool)
    out = wide.copy()
    out.columns = [str(c) for c in out.columns]
    out["overall"] = overall_scores(wide, task_agg=task_agg, shared_tasks_only=shared_tasks_only)
    out["n_settings"] = z.groupby("backbone")["setting_id"].nunique()
    out["n_tasks"] = wide.notna().sum(axis=1)
    out["tasks_scored"] = tasks_scored(wide)
    out["baseline"] = z.groupby("backbone")["baseline"].first()
    out = out.join(backbone_metadata(results))
    out = out.sort_values("overall", ascending=False)
    out.index.name = "backbone"
    out.attrs["tasks"] = [str(c) for c in wide.columns]
    out.attrs["overall_tasks"] = [str(c) for c, keep in zip(wide.columns, shared) if keep]
    out.attrs["tasks_not_in_overall"] = tasks_not_in_overall(wide, shared)
    return out.reset_index()


# --------------------------------------------------------------------------------------------------------------------
# Bootstrap over settings, seeds and test items
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ScoreBootstrap:
    """Point scores and bootstrap replicates of every backbone's task and overall scores."""

    backbones: list[str]
    tasks: list[str]
    point_overall: np.ndarray  # (B,)
    point_tasks: np.ndarray  # (B, T)
    overall: np.ndarray  # (n_boot, B)
    tasks_boot: np.ndarray  # (n_boot, B, T)
    pool: np.ndarray  # (B,) in the z-score pool (False: a baseline)
    n_settings_per_task: list[int]
    max_seeds: int
    resample: list[str]
    within_cell: bool  # some cell had a known standard error
    overall_tasks: list[str] | None = None  # the tasks the overall score averages (None: all)
    tasks_not_in_overall: dict[str, list[str]] | None = None  # task -> backbones lacking it
    uneven_overall: bool = False  # some backbone's overall averages fewer tasks than another's
    point_gap_overall: np.ndarray | None = None  # (B,) gap to the best pretrained backbone (see gap_to_best_matrix)
    point_gap_tasks: np.ndarray | None = None  # (B, T)
    gap_overall: np.ndarray | None = None  # (n_boot, B)
    gap_tasks_boot: np.ndarray | None = None  # (n_boot, B, T)
    pool_sizes: np.ndarray | None = None  # (S,) pretrained backbones per setting
    execution_left_out: list[str] | None = None  # runs not averaged with a cell's seeds (another execution)

    def gap_point(self, level: str = "overall") -> np.ndarray:
        """Point gaps to the best pretrained backbone at ``level``."""
        return self.point_gap_overall if level == "overall" else self.point_gap_tasks[:, self._task(level)]

    def gap_replicates(self, level: str = "overall") -> np.ndarray:
        """Replicates (``n_boot`` x backbones) of the gap to the best pretrained backbone at ``level``."""
        return self.gap_overall if level == "overall" else self.gap_tasks_boot[:, :, self._task(level)]

    def point(self, level: str = "overall") -> np.ndarray:
        """Point scores at ``level`` (``"overall"`` or a task)."""
        return self.point_overall if level == "overall" else self.point_tasks[:, self._task(level)]

    def replicates(self, level: str = "overall") -> pd.DataFrame:
        """Replicates at ``level`` as an ``n_boot`` x backbone frame."""
        reps = self.overall if level == "overall" else self.tasks_boot[:, :, self._task(level)]
        return pd.DataFrame(reps, columns=self.backbones)

    def _task(self, level: str) -> int:
        if level not in self.tasks:
            raise InsufficientDataError(f"no task {level!r} in the table; tasks: {self.tasks}")
        return self.tasks.index(level)


def _aggregate(z: np.ndarray, setting_cols: np.ndarray, task_of_setting: np.ndarray, n_tasks: int,
               setting_agg: str, task_agg: str, overall_tasks: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    task = np.full((z.shape[0], n_tasks), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(n_tasks):
            cols = setting_cols[task_of_setting[setting_cols] == t]
            if cols.size:
                task[:, t] = _AGG[setting_agg](z[:, cols], axis=1)
        overall = _AGG[task_agg](task if overall_tasks is None else task[:, overall_tasks], axis=1)
    return task, overall


def _draw_means(cube: SettingCube, rng: np.random.Generator, seeds: bool, items: bool) -> np.ndarray:
    values, stderr = cube.values, cube.stderr
    n_seeds = cube.n_seeds
    if seeds and values.shape[2] > 1:
        draws = np.floor(rng.random(values.shape) * np.maximum(n_seeds, 1)[..., None]).astype(int)
        values = np.take_along_axis(values, draws, axis=2)
        stderr = np.take_along_axis(stderr, draws, axis=2)
        slots = np.arange(values.shape[2])[None, None, :]
        values = np.where(slots < n_seeds[..., None], values, np.nan)
    if items:
        noise = rng.standard_normal(values.shape) * np.nan_to_num(stderr, nan=0.0)
        values = values + noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=2)


def bootstrap_scores(
    results: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    resample: Sequence[str] = RESAMPLE_UNITS,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
    pool_exclude: Sequence[str] = BASELINE_KINDS,
    shared_tasks_only: bool = True,
) -> ScoreBootstrap:
    """Bootstrap replicates of the task and overall scores (the overall over the tasks every backbone has, unless
    ``shared_tasks_only`` is False: see :func:`scores`).

    Each replicate does, for each unit named in ``resample``: ``seeds`` resamples the seeds of every backbone x
    setting (with replacement, keeping their number); ``items`` draws each seed's value from N(value, within-cell
    standard error) (:func:`bobkit.analysis.uncertainty.within_cell_stderr`; no noise where it is unknown);
    ``settings`` resamples the settings of every task (with replacement, keeping their number). Then it recomputes
    the per-setting z-scores and the aggregation exactly as :func:`scores` does.
    """
    unknown = set(resample) - set(RESAMPLE_UNITS)
    if unknown:
        raise ValueError(f"resample names {sorted(unknown)}; use any of {list(RESAMPLE_UNITS)}")
    cube = setting_cube(results, setting_keys=setting_keys, negate_lower=negate_lower, min_backbones=min_backbones,
                        pool_exclude=pool_exclude)
    rng = np.random.default_rng(seed)
    n_b, n_s, n_k = cube.values.shape
    n_t = len(cube.tasks)
    all_cols = np.arange(n_s)
    means = cube.seed_means()
    point_tasks, _ = _aggregate(zscore_matrix(means, cube.pool, ddof), all_cols, cube.task_of_setting, n_t,
                                setting_agg, task_agg)
    shared = shared_task_mask(point_tasks) if shared_tasks_only else np.ones(n_t, dtype=bool)
    point_tasks, point_overall = _aggregate(zscore_matrix(means, cube.pool, ddof), all_cols,
                                            cube.task_of_setting, n_t, setting_agg, task_agg, shared)
    point_gap_tasks, point_gap = _aggregate(gap_to_best_matrix(means, cube.pool), all_cols, cube.task_of_setting,
                                            n_t, setting_agg, task_agg, shared)
    boot_overall, boot_tasks = np.empty((n_boot, n_b)), np.empty((n_boot, n_b, n_t))
    gap_overall, gap_tasks = np.empty((n_boot, n_b)), np.empty((n_boot, n_b, n_t))
    by_task = [np.flatnonzero(cube.task_of_setting == t) for t in range(n_t)]
    for i in range(n_boot):
        draw = _draw_means(cube, rng, "seeds" in resample, "items" in resample)
        z = zscore_matrix(draw, cube.pool, ddof)
        cols = all_cols
        if "settings" in resample:
            cols = np.concatenate([rng.choice(c, size=c.size, replace=True) for c in by_task if c.size])
        boot_tasks[i], boot_overall[i] = _aggregate(z, cols, cube.task_of_setting, n_t, setting_agg, task_agg, shared)
        gap_tasks[i], gap_overall[i] = _aggregate(gap_to_best_matrix(draw, cube.pool), cols, cube.task_of_setting,
                                                  n_t, setting_agg, task_agg, shared)
    wide = pd.DataFrame(point_tasks, index=cube.backbones, columns=cube.tasks)
    return ScoreBootstrap(cube.backbones, cube.tasks, point_overall, point_tasks, boot_overall, boot_tasks,
                          cube.pool, [int(c.size) for c in by_task], int(n_k), list(resample),
                          bool(np.isfinite(cube.stderr).any()), [t for t, k in zip(cube.tasks, shared) if k],
                          tasks_not_in_overall(wide, shared), bool(~np.isfinite(point_tasks[:, shared]).all()),
                          point_gap, point_gap_tasks, gap_overall, gap_tasks, pool_sizes(means, cube.pool),
                          cube.execution_left_out or [])


def _ranks(score_matrix: np.ndarray) -> np.ndarray:
    """Rank 1 = best along the last axis (ties share the best rank); NaN stays NaN."""
    return sps.rankdata(-score_matrix, method="min", axis=-1, nan_policy="omit")


def rank_gap(boot: ScoreBootstrap, k: int = 3, level: str = "overall", ci: float = 0.95,
             backbones: Sequence[str] | None = None) -> dict[str, object] | None:
    """Is the top ``k`` separated from the rest? The score difference between the ``k``-th and the ``k+1``-th
    backbone (point ranking, among ``backbones`` when given) with its bootstrap interval and the share of replicates
    in which the ``k``-th is ahead. ``None`` with fewer than ``k + 1`` backbones."""
    point = boot.point(level)
    order = [i for i in np.argsort(-np.nan_to_num(point, nan=-np.inf), kind="stable") if np.isfinite(point[i])]
    if backbones is not None:
        allowed = set(backbones)
        order = [i for i in order if boot.backbones[i] in allowed]
    if len(order) <= k:
        return None
    a, b = order[k - 1], order[k]
    reps = boot.replicates(level).to_numpy()
    diff = reps[:, a] - reps[:, b]
    lo, hi = percentile_interval(diff, ci)
    return {"k": k, "above": boot.backbones[a], "below": boot.backbones[b], "diff": float(point[a] - point[b]),
            "ci_low": float(lo), "ci_high": float(hi), "p_ahead": float(np.nanmean(diff > 0))}


def leaderboard_from(boot: ScoreBootstrap, results: pd.DataFrame, *, level: str = "overall", ci: float = 0.95,
                     setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS, top_k: int = 3) -> pd.DataFrame:
    """The leaderboard of a :class:`ScoreBootstrap` (see :func:`leaderboard`)."""
    point, reps = boot.point(level), boot.replicates(level).to_numpy()
    keep = np.isfinite(point)
    if keep.sum() < 1:
        raise InsufficientDataError(f"no backbone has a {level} score")
    backbones = [b for b, k in zip(boot.backbones, keep) if k]
    point, reps = point[keep], reps[:, keep]
    lo, hi = percentile_interval(reps, ci)
    alpha = (1 - ci) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rlo, rhi = np.nanquantile(_ranks(reps), [alpha, 1 - alpha], axis=0)
    # a rank interval is shown only where the score has one (a clear winner may keep rank 1 in every replicate)
    rlo, rhi = np.where(np.isfinite(lo), rlo, np.nan), np.where(np.isfinite(lo), rhi, np.nan)
    table = pd.DataFrame({"backbone": backbones, "score": point, "score_lo": lo, "score_hi": hi,
                          "rank": _ranks(point).astype(int), "rank_lo": rlo, "rank_hi": rhi,
                          "baseline": ~boot.pool[keep]})
    if boot.point_gap_overall is not None:
        gap_lo, gap_hi = percentile_interval(boot.gap_replicates(level)[:, keep], ci)
        table["gap_to_best"], table["gap_lo"], table["gap_hi"] = boot.gap_point(level)[keep], gap_lo, gap_hi
    per_task = pd.DataFrame(boot.point_tasks[keep], columns=[str(t) for t in boot.tasks])
    table = pd.concat([table, per_task], axis=1)
    setting_counts = (results.assign(setting_key=setting_ids(results, setting_keys)).dropna(subset=["value"])
                      .groupby("backbone")["setting_key"].nunique())
    table["n_settings"] = table["backbone"].map(setting_counts).astype("Int64")
    table["n_tasks"] = per_task.notna().sum(axis=1).to_numpy()
    table["tasks_scored"] = tasks_scored(per_task).to_numpy()
    table = table.join(backbone_metadata(results), on="backbone")
    table = table.sort_values(["rank", "backbone"]).reset_index(drop=True)
    front = ["rank", "backbone", "display_name", "score", "score_lo", "score_hi", "rank_lo", "rank_hi", "gap_to_best",
             "gap_lo", "gap_hi", "baseline"]
    table = table[[c for c in front if c in table] + [c for c in table if c not in front]]
    pretrained = [b for b, p in zip(boot.backbones, boot.pool) if p]
    table.attrs.update(level=level, n_boot=len(boot.overall), ci=ci, resample=boot.resample, tasks=boot.tasks,
                       n_settings_per_task=boot.n_settings_per_task, max_seeds=boot.max_seeds,
                       within_cell=boot.within_cell, top_gap=rank_gap(boot, top_k, level, ci, pretrained),
                       overall_tasks=boot.overall_tasks if level == "overall" else [level],
                       tasks_not_in_overall=(boot.tasks_not_in_overall or {}) if level == "overall" else {},
                       uneven_overall=boot.uneven_overall and level == "overall",
                       min_pool=int(boot.pool_sizes.min()) if boot.pool_sizes is not None else None,
                       small_pool=bool(boot.pool_sizes is not None and boot.pool_sizes.min() < SMALL_POOL),
                       execution_left_out=list(boot.execution_left_out or []))
    return table


def leaderboard(
    results: pd.DataFrame,
    *,
    level: str = "overall",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    resample: Sequence[str] = RESAMPLE_UNITS,
    setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS,
    negate_lower: bool = True,
    ddof: int = 0,
    min_backbones: int = 2,
    setting_agg: str = "mean",
    task_agg: str = "mean",
    pool_exclude: Sequence[str] = BASELINE_KINDS,
    top_k: int = 3,
    shared_tasks_only: bool = True,
) -> pd.DataFrame:
    """Backbones ranked by score with percentile bootstrap intervals on score and rank.

    ``level`` is ``"overall"`` or a task name (rank on that task's score). Columns: ``rank``, ``backbone``,
    ``display_name``, ``score``, ``score_lo``, ``score_hi``, ``rank_lo``, ``rank_hi``, ``baseline`` (a random-init
    control outside the z-score pool), one column per task score, ``n_settings``, ``n_tasks`` and the metadata;
    best first. An interval is NaN when the bootstrap has nothing to vary (one setting, one seed, no known
    within-cell standard error): no interval rather than a zero-width one. ``attrs["top_gap"]``: the ``top_k``-th
    pretrained backbone against the next one (:func:`rank_gap`). The overall score averages the tasks every
    backbone has (``shared_tasks_only``, see :func:`scores`): ``attrs["overall_tasks"]`` names them,
    ``attrs["tasks_not_in_overall"]`` the others with the backbones lacking each, ``tasks_scored`` each backbone's
    tasks and ``attrs["uneven_overall"]`` whether some overall averages fewer tasks than another.
    """
    boot = bootstrap_scores(results, n_boot=max(n_boot, 1), seed=seed, resample=resample if n_boot > 0 else (),
                            setting_keys=setting_keys, negate_lower=negate_lower, ddof=ddof,
                            min_backbones=min_backbones, setting_agg=setting_agg, task_agg=task_agg,
                            pool_exclude=pool_exclude, shared_tasks_only=shared_tasks_only)
    return leaderboard_from(boot, results, level=level, ci=ci, setting_keys=setting_keys, top_k=top_k)
