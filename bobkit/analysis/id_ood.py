"""In-distribution vs out-of-distribution accuracy: logit- or probit-scale trends, effective robustness, and the
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
from bobkit.analysis.settings import (
    CLEAN_ACCURACY,
    PRIMARY_METRICS,
    first_matching,
    one_execution_per_cell,
    one_setting_per_base,
)


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
    rows, _ = one_execution_per_cell(_filter(results, filters))
    rows, _ = one_setting_per_base(rows)
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
    """Per backbone, the mean over the seeds of one setting and one execution (device type and precision)."""
    rows, _ = one_execution_per_cell(rows)
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
# ID vs OOD trend on logit or probit axes, and effective robustness
# --------------------------------------------------------------------------------------------------------------------

#: Axes an ID-vs-OOD trend can be fitted on. Taori et al. (2020) fit it on **logit** axes: their testbed's plotting
#: code (modestyachts/imagenet-testbed, ``plotting/plotter.py``, ``transform='logit'`` by default, ``probit`` as an
#: option) fits ``logit(OOD) = a + b logit(ID)``; Miller et al. (2021, "accuracy on the line") use probit axes. The two
#: differ by a few points of effective robustness far from 50% accuracy, so every trend says which it used.
TREND_SCALES: tuple[str, ...] = ("logit", "probit")
#: The default: Taori et al.'s.
DEFAULT_SCALE = "logit"


def probit(p: Iterable[float] | float, eps: float = 1e-4) -> np.ndarray:
    """Inverse normal CDF of accuracies in [0, 1], clipped to ``[eps, 1 - eps]`` (for drawing axes; the trend fit
    leaves accuracies of exactly 0 or 1 out instead, :func:`fit_trend`)."""
    return sps.norm.ppf(np.clip(np.asarray(p, dtype=float), eps, 1 - eps))


def inverse_probit(z: Iterable[float] | float) -> np.ndarray:
    """Normal CDF: accuracy of a probit-scale value."""
    return sps.norm.cdf(np.asarray(z, dtype=float))


def to_scale(p: Iterable[float] | float, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """Accuracies on ``scale`` (``logit`` or ``probit``) without clipping: 0 and 1 map to -inf and +inf."""
    x = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "logit":
            return np.log(x) - np.log1p(-x)
        if scale == "probit":
            return sps.norm.ppf(x)
    raise ValueError(f"scale={scale!r}: use one of {list(TREND_SCALES)}")


def from_scale(z: Iterable[float] | float, scale: str = DEFAULT_SCALE) -> np.ndarray:
    """Accuracy of a value on ``scale`` (the inverse of :func:`to_scale`)."""
    z = np.asarray(z, dtype=float)
    if scale == "logit":
        return 1.0 / (1.0 + np.exp(-z))
    if scale == "probit":
        return sps.norm.cdf(z)
    raise ValueError(f"scale={scale!r}: use one of {list(TREND_SCALES)}")


def fit_trend(id_acc: Iterable[float], ood_acc: Iterable[float], *, scale: str = DEFAULT_SCALE) -> dict[str, Any]:
    """Linear fit ``T(ood) = intercept + slope * T(id)`` by statsmodels OLS, ``T`` the ``scale`` transform.

    A model with an accuracy of exactly 0 or 1 has no place on these axes: it is left out of the fit (clipping it to
    1e-4 would put it far from every other model and pull the line), and counted in ``n_dropped``. Returns
    ``scale``, ``slope``, ``intercept``, ``r2``, ``n`` (models fitted), ``n_dropped`` and the slope's 95% interval
    ``slope_low``/``slope_high``.
    """
    import statsmodels.api as sm

    if scale not in TREND_SCALES:
        raise ValueError(f"scale={scale!r}: use one of {list(TREND_SCALES)}")
    x, y = to_scale(list(id_acc), scale), to_scale(list(ood_acc), scale)
    present = ~(np.isnan(x) | np.isnan(y))
    ok = present & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        raise InsufficientDataError("need at least 3 models with accuracies strictly between 0 and 1 to fit an "
                                    "ID-vs-OOD trend")
    fit = sm.OLS(y[ok], sm.add_constant(x[ok])).fit()
    conf = fit.conf_int()
    return {"scale": scale, "intercept": float(fit.params[0]), "slope": float(fit.params[1]),
            "r2": float(fit.rsquared), "n": int(ok.sum()), "n_dropped": int((present & ~ok).sum()),
            "slope_low": float(conf[1][0]), "slope_high": float(conf[1][1])}


def fit_probit_trend(id_acc: Iterable[float], ood_acc: Iterable[float]) -> dict[str, Any]:
    """:func:`fit_trend` on probit axes."""
    return fit_trend(id_acc, ood_acc, scale="probit")


def effective_robustness(
    frame: pd.DataFrame,
    ood_col: str,
    *,
    id_col: str = "id_acc",
    baseline: pd.Series | str | None = None,
    scale: str = DEFAULT_SCALE,
) -> tuple[pd.Series, dict[str, Any]]:
    """Effective robustness of each row: OOD accuracy minus the accuracy the ``scale`` trend (:func:`fit_trend`,
    logit by default as Taori et al.) predicts from its ID accuracy; NaN where the ID accuracy is 0 or 1.

    The trend is fitted on the ``baseline`` rows (a boolean mask or a :meth:`pandas.DataFrame.query` string; ``None`` =
    all rows). Returns ``(series, trend)``; ``trend["baseline_n"]`` counts the baseline rows (before the models at
    0 or 1 accuracy are dropped, ``trend["n_dropped"]``).
    """
    if baseline is None:
        mask = pd.Series(True, index=frame.index)
    elif isinstance(baseline, str):
        mask = frame.index.isin(frame.query(baseline).index)
        mask = pd.Series(mask, index=frame.index)
    else:
        mask = pd.Series(baseline, index=frame.index).astype(bool)
    base = frame[mask]
    trend = fit_trend(base[id_col], base[ood_col], scale=scale)
    x = to_scale(frame[id_col], scale)
    predicted = np.where(np.isfinite(x), from_scale(trend["intercept"] + trend["slope"] * x, scale), np.nan)
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


