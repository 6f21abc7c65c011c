"""OLS regressions of scores on scale and method (statsmodels formulas), with per-family slopes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.scores import BASELINE_KINDS


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
    exclude_kinds: tuple[str, ...] = BASELINE_KINDS,
) -> Regression:
    """OLS of a score on scale and method: by default
    ``score ~ C(family) * log_params + C(method_kind) + log_data``.

    Categorical references are ``CNN`` and ``supervised`` when present.
    ``log_params = log10(params_millions)``, ``log_data = log10(pretrain_images)`` (rows with unknown or zero data,
    i.e. random init, are dropped when the data term is used). Terms without variation in the data (one family, one
    method kind, one data size) are dropped and listed in ``dropped_terms``; pass ``formula`` (over ``score``,
    ``family``, ``method_kind``, ``log_params``, ``log_data``) to fix the model yourself. Backbones whose
    ``method_kind`` is in ``exclude_kinds`` (random-init controls) are left out: they say nothing about scale.
    """
    import statsmodels.formula.api as smf

    if exclude_kinds and "method_kind" in frame:
        frame = frame[~frame["method_kind"].isin(list(exclude_kinds))]
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

