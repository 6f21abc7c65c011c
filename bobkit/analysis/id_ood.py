"""In-distribution vs out-of-distribution accuracy: probit-scale trends, effective robustness, and the
per-backbone pairs (clean accuracy against accuracy under shift or attack, or against calibration error).

Per-backbone means never average two settings: when the same task, dataset, protocol and metric was measured under
several parameter settings, the one with most backbones is used and the others are named in ``attrs["left_out"]``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.scores import backbone_metadata
from bobkit.analysis.settings import CLEAN_ACCURACY, PRIMARY_METRICS, first_matching, one_setting_per_base


def _filter(results: pd.DataFrame, filters: Mapping[str, Any]) -> pd.DataFrame:
    mask = pd.Series(True, index=results.index)
    for column, allowed in filters.items():
        if allowed is None:
            continue
        allowed = [allowed] if isinstance(allowed, (str, int, float, bool)) else list(allowed)
        mask &= results[column].isin(allowed)
    return results[mask]


def select_values(results: pd.DataFrame, **filters: Any) -> pd.Series:
    """Mean ``value`` per backbone over the rows matching ``filters`` (column -> value or list of values), one
    setting per task/dataset/protocol/metric (:func:`~bobkit.analysis.settings.one_setting_per_base`)."""
    rows, _ = one_setting_per_base(_filter(results, filters))
    return rows.groupby("backbone")["value"].mean()


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


def _per_backbone(rows: pd.DataFrame, name: str) -> tuple[pd.Series, list[str]]:
    kept, left_out = one_setting_per_base(rows)
    return kept.groupby("backbone")["value"].mean().rename(name), left_out


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
    :data:`~bobkit.analysis.settings.PRIMARY_METRICS` pattern, e.g. every ``acc/<attack>/<eps>`` with eps > 0),
    averaged per backbone. Clean accuracy is the run's own (``id_acc`` / ``top1`` of the same task) when the task
    reports one that differs from the robustness metric, else ``accuracy_metric`` of ``accuracy_task``. ``attrs``
    name both selections and the settings left out.
    """
    rows = results[results["task"] == task]
    if rows.empty:
        raise InsufficientDataError(f"the table has no {task!r} rows")
    pattern = metric if metric != "auto" else first_matching(rows["metric"], PRIMARY_METRICS.get(task, ("top1",)))
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
    xs, x_left = _per_backbone(x_rows, x_name)
    ys, y_left = _per_backbone(y_rows, y_name)
    both = pd.concat([xs, ys], axis=1).dropna()
    if both.empty:
        raise InsufficientDataError(f"no backbone has both {x_label} and {task} {pattern}")
    both.index.name = "backbone"
    out = both.join(backbone_metadata(results)).reset_index()
    y_metrics = sorted(map(str, y_rows["metric"].unique()))
    y_datasets = sorted(map(str, y_rows["dataset"].unique()))
    if len(y_metrics) > 1:
        y_label = f"{task}: mean of {', '.join(y_metrics[:3])}" + (" ..." if len(y_metrics) > 3 else "")
    else:
        y_label = f"{task} {y_metrics[0]}"
    if len(y_datasets) > 1:
        y_label += f" (mean over {', '.join(y_datasets[:4])}" + (" ...)" if len(y_datasets) > 4 else ")")
    out.attrs.update(x_label=x_label, y_label=y_label, y_metrics=y_metrics, left_out=x_left + y_left)
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
    xs, x_left = _per_backbone(x_rows, "accuracy")
    ys, y_left = _per_backbone(rows, "calibration")
    both = pd.concat([xs, ys], axis=1).dropna()
    if both.empty:
        raise InsufficientDataError(f"no backbone has both an accuracy and {metric!r}")
    both.index.name = "backbone"
    out = both.join(backbone_metadata(results)).reset_index()
    out.attrs.update(x_label=label, y_label=f"{metric} (lower is better)", left_out=x_left + y_left)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Probit-scale ID vs OOD trend and effective robustness
# --------------------------------------------------------------------------------------------------------------------

def probit(p: Iterable[float] | float, eps: float = 1e-4) -> np.ndarray:
    """Inverse normal CDF of accuracies in [0, 1], clipped to ``[eps, 1 - eps]``."""
    return sps.norm.ppf(np.clip(np.asarray(p, dtype=float), eps, 1 - eps))


def inverse_probit(z: Iterable[float] | float) -> np.ndarray:
    """Normal CDF: accuracy of a probit-scale value."""
    return sps.norm.cdf(np.asarray(z, dtype=float))
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


