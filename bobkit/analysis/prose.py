"""The sentences analysis notebooks show, computed from the tables, with every table value escaped.

Backbone names, dataset names, error messages and every other string that came from a table or a sidecar go
through :func:`md` before they enter Markdown: a ``display_name`` of ``<img src=x onerror=alert(1)>`` then shows
as text in the notebook and the published report instead of running.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

_MD_SPECIAL = re.compile(r"([\\`*\[\]])")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def md(value: Any) -> str:
    """``value`` as literal Markdown text: ``<`` becomes ``&lt;`` (no HTML tag, no autolink can start), Markdown's
    emphasis, code and link characters (``* ` [ ] \\``) are backslash-escaped, line breaks become spaces.
    Underscores stay: inside names (``vit_small_patch16``) they never start emphasis."""
    text = " ".join(str(value).split()).replace("<", "&lt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def neutralise_html(text: str) -> str:
    """``text`` with every HTML tag start (``<a``, ``</``, ``<!``, ``<?``) turned into the entity ``&lt;``: the
    analysis' own Markdown never uses raw HTML, so this stops markup that slipped in unescaped."""
    return _TAG_START.sub("&lt;", text)


def fmt_ci(value: float, low: float, high: float, digits: int = 2) -> str:
    """``0.58 [0.41, 0.72]`` (interval omitted when NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def describe_primary(scored: pd.DataFrame) -> str:
    """``Scored metrics per task: classification: top1; ood: acc/<target> (2 metrics).``"""
    parts = []
    for task, rows in scored.groupby("task", sort=True):
        names = sorted(map(str, rows["metric"].unique()))
        parts.append(f"{md(task)}: {', '.join(md(n) for n in names[:4])}"
                     + (f" (+{len(names) - 4} more)" if len(names) > 4 else ""))
    text = "Scored metrics per task: " + "; ".join(parts) + "." if parts else "No metric to score."
    if "mrr_bob" in set(scored["metric"].astype(str)):
        text += (" `mrr_bob` is the BoB paper code's MRR on revisited Oxford/Paris (ranks counted before junk images"
                 " are removed, every query in the denominator), not bobkit's `mrr`: the two are never pooled.")
    return text


def describe_correlations(table: pd.DataFrame, what: str) -> str:
    """One sentence per row of a :func:`~bobkit.analysis.correlation.correlate_by_group` table."""
    if table.empty:
        return f"No group has enough backbones to correlate {what}."
    parts = []
    for r in table.itertuples():
        clusters = getattr(r, "n_clusters", r.n)
        size = f"n = {r.n}" + (f" in {clusters} architectures" if clusters != r.n else "")
        parts.append(f"{md(r.group)}: rho = {fmt_ci(r.rho, r.ci_low, r.ci_high)} ({size})")
    return f"Spearman correlation of {what}: " + "; ".join(parts) + "."


def describe_difference(diff: Mapping[str, Any], what: str) -> str:
    """A :func:`~bobkit.analysis.correlation.correlation_difference` in a sentence."""
    return (f"{md(diff['a'])} minus {md(diff['b'])} in the correlation of {what}: "
            f"{fmt_ci(diff['diff'], diff['ci_low'], diff['ci_high'])} (rho {diff['rho_a']:.2f}, n = {diff['n_a']} vs "
            f"{diff['rho_b']:.2f}, n = {diff['n_b']}); {md(diff['a'])} higher in "
            f"{100 * diff['p_a_greater']:.0f}% of bootstrap replicates.")


def describe_leaderboard(board: pd.DataFrame, top: int = 3, name_col: str = "display_name") -> str:
    """``Top 3 of 14: A (score 1.20 [0.90, 1.40], rank 1-2); ... 3rd vs 4th: ...``; baselines are labelled."""
    if board.empty:
        return "No backbone could be scored."
    items = []
    for r in board.head(top).itertuples():
        name = md(getattr(r, name_col, r.backbone) or r.backbone)
        if getattr(r, "baseline", False):
            name += " (random-init baseline)"
        rank = f"rank {r.rank_lo:.0f}-{r.rank_hi:.0f}" if np.isfinite(r.rank_lo) else f"rank {r.rank}"
        items.append(f"{name} (score {fmt_ci(r.score, r.score_lo, r.score_hi)}, {rank})")
    text = f"Top {min(top, len(board))} of {len(board)}: " + "; ".join(items) + "."
    gap = board.attrs.get("top_gap")
    if gap:
        names = board.set_index("backbone")[name_col] if name_col in board else {}
        above, below = (md(names.get(gap[k], gap[k]) if len(names) else gap[k]) for k in ("above", "below"))
        text += (f" Is the top {gap['k']} separated? {ordinal(gap['k'])} ({above}) minus {ordinal(gap['k'] + 1)} "
                 f"({below}): {fmt_ci(gap['diff'], gap['ci_low'], gap['ci_high'])}; the {ordinal(gap['k'])} is ahead "
                 f"in {100 * gap['p_ahead']:.0f}% of bootstrap replicates.")
    if board["score_lo"].isna().all():
        text += (" No interval: nothing in this table varies between bootstrap replicates (one setting per task,"
                 " one seed, no recorded standard error over test items).")
    return text + describe_task_coverage(board.attrs) + describe_small_pool(board.attrs) + describe_executions(board.attrs)


def describe_executions(attrs: Mapping[str, Any], most: int = 3) -> str:
    """The runs left out of a backbone's seeds because they ran on another device type or precision (empty when
    none): never averaged with them as if they were replicates."""
    notes = list(attrs.get("execution_left_out") or [])
    if not notes:
        return ""
    more = f"; and {len(notes) - most} more" if len(notes) > most else ""
    return (" Runs on another device type or precision are not seeds of the same measurement: "
            + "; ".join(md(n) for n in notes[:most]) + more + ".")


#: The leaderboard ``attrs`` a notebook records for the pages that show its leaderboard (the report's overview).
LEADERBOARD_NOTES = ("overall_tasks", "tasks_not_in_overall", "uneven_overall", "min_pool", "small_pool",
                     "execution_left_out")


def leaderboard_notes(attrs: Mapping[str, Any]) -> str:
    """The caveats of a leaderboard in sentences: which tasks its overall covers and whether its z-score pools are
    too small (empty when neither applies)."""
    return (describe_task_coverage(attrs) + describe_small_pool(attrs) + describe_executions(attrs)).strip()


def describe_small_pool(attrs: Mapping[str, Any]) -> str:
    """A warning when some setting's z-score pool holds fewer than :data:`~bobkit.analysis.scores.SMALL_POOL`
    pretrained backbones (empty otherwise); ``attrs``: a leaderboard's ``attrs`` or what a notebook recorded of
    them."""
    if not attrs.get("small_pool"):
        return ""
    n = attrs["min_pool"]
    return (f" Caution: some settings have only {n} pretrained backbones to z-score over; with so few the z-scores "
            "degenerate (with two, every pretrained backbone is at exactly +1 or -1, and a control below a tight pool "
            "gets a very large negative score). Read gap_to_best beside them: the distance to the best pretrained "
            "backbone of each setting in the metric's own units (0 = the best), which does not depend on the pool's "
            "spread.")


def describe_task_coverage(attrs: Mapping[str, Any]) -> str:
    """Which tasks an overall leaderboard's scores cover, when not every backbone has every task (empty
    otherwise): the tasks left out of the overall score and who lacks them, or that each score averages the tasks
    its backbone has. ``attrs``: a leaderboard's ``attrs`` or what a notebook recorded of them."""
    left_out = attrs.get("tasks_not_in_overall") or {}
    text = ""
    if left_out:
        overall = ", ".join(md(t) for t in attrs.get("overall_tasks", []))
        text += f" The overall score averages the tasks every backbone has ({overall});"
        text += ";".join(f" {md(t)} is left out of the overall score ({_names(lacking)} "
                         f"{'lack' if len(lacking) > 1 else 'lacks'} it)" for t, lacking in left_out.items())
        text += ", and shown in its own column."
    if attrs.get("uneven_overall"):
        text += (" Not every backbone has every task: each overall score averages the tasks its backbone has "
                 "(column tasks_scored), so scores over different tasks are not like for like.")
    return text


def _names(names: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(md(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def describe_pairs(pairs: pd.DataFrame, what: str, threshold: float = 0.8) -> str:
    """``Median Spearman over 28 dataset pairs: 0.83 (range 0.41 to 0.97); 18 of 28 above 0.8.``"""
    from bobkit.analysis.correlation import pair_stats

    st = pair_stats(pairs, threshold)
    if st["n_pairs"] == 0:
        return f"No {what} had enough overlapping backbones to correlate."
    above = int(round(st["share_above"] * st["n_pairs"]))
    return (f"Median Spearman over {st['n_pairs']} {what}: {st['median']:.2f} (range {st['min']:.2f} to "
            f"{st['max']:.2f}); {above} of {st['n_pairs']} above {threshold:g}.")


def describe_paired(summary: Mapping[str, float], b: str, a: str) -> str:
    """Sentence for :func:`~bobkit.analysis.comparisons.paired_summary` of ``b - a`` differences."""
    if not summary.get("n"):
        return f"No {md(b)} backbone could be paired with a {md(a)} one."
    text = (f"Over {summary['n']} matched pairs, {md(b)} minus {md(a)} score: mean "
            f"{fmt_ci(summary['mean'], summary['ci_low'], summary['ci_high'])}, median {summary['median']:.2f}; "
            f"{md(b)} wins {summary['share_positive'] * 100:.0f}% of pairs")
    if np.isfinite(summary.get("wilcoxon_p", math.nan)):
        text += f" (Wilcoxon p = {summary['wilcoxon_p']:.3g})"
    return text + "."


def describe_group_difference(diff: Mapping[str, Any], value: str = "score") -> str:
    """Sentence for :func:`~bobkit.analysis.comparisons.group_difference`."""
    return (f"Mean {value} of {md(diff['b'])} (n = {diff['n_b']}) minus {md(diff['a'])} (n = {diff['n_a']}): "
            f"{fmt_ci(diff['diff'], diff['ci_low'], diff['ci_high'])}; {md(diff['b'])} higher in "
            f"{100 * diff['p_b_greater']:.0f}% of bootstrap replicates.")


def describe_best_group(summary: pd.DataFrame, by: str, what: str, diff: Mapping[str, Any] | None = None,
                        scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """``Highest mean <what> by <by>: <group> (mean [interval], n = ...); ahead of <next> by d [lo, hi] (ahead in
    p% of bootstrap replicates).`` from a :func:`~bobkit.analysis.comparisons.group_summary` and
    :func:`~bobkit.analysis.comparisons.best_vs_next`."""
    if summary.empty:
        return f"No group of {md(by)} has enough rows to compare {what}."
    best = summary.iloc[0]
    clusters = best.get("n_clusters", best["n"])
    size = f"n = {best['n']}" + (f" in {clusters} architectures" if clusters != best["n"] else "")
    mean = fmt_ci(scale * best["mean"], scale * best["ci_low"], scale * best["ci_high"], digits)
    text = f"Highest mean {what} by {md(by)}: {md(best[by])} ({mean}{unit}, {size})"
    if diff is not None:
        gap = fmt_ci(scale * diff["diff"], scale * diff["ci_low"], scale * diff["ci_high"], digits)
        text += (f"; ahead of {md(diff['a'])} by {gap}{unit} (ahead in {100 * diff['p_b_greater']:.0f}% of "
                 "bootstrap replicates)")
    return text + "."


def describe_regression(reg: Any) -> str:
    """R², n and the per-family slope on log10(params) of a
    :func:`~bobkit.analysis.regression.scale_regression` fit."""
    from bobkit.analysis.errors import InsufficientDataError
    from bobkit.analysis.regression import family_slopes

    text = f"OLS `{reg.formula}` on {int(reg.fit.nobs)} backbones: R² = {reg.fit.rsquared:.2f}."
    try:
        slopes = family_slopes(reg)
        text += " Score gain per 10x parameters (other terms fixed): " + "; ".join(
            f"{md(r.family)} {fmt_ci(r.slope_per_decade, r.ci_low, r.ci_high)}" for r in slopes.itertuples()) + "."
    except InsufficientDataError:
        pass
    if reg.dropped_terms:
        text += f" Dropped for lack of variation: {', '.join(reg.dropped_terms)}."
    return text


def describe_protocols(comparison: pd.DataFrame, agreement: pd.DataFrame, a: str, b: str,
                       gain: Mapping[str, float] | None = None) -> str:
    """Mean change from ``a`` to ``b`` over the pretrained backbones (with its interval when ``gain`` from
    :func:`~bobkit.analysis.comparisons.protocol_gain` is given) and the rank agreement between them; says how
    many random-init control pairs were left out of both."""
    from bobkit.analysis.scores import pretrained_only

    metric = comparison["metric"].iloc[0] if "metric" in comparison and len(comparison) else "value"
    pooled, n_controls = pretrained_only(comparison)
    mean = f"{pooled['delta'].mean():+.3f}"
    if gain is not None and np.isfinite(gain.get("ci_low", math.nan)):
        mean += f" [{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]"
    kind = "pretrained backbone" if n_controls else "backbone"
    text = (f"{md(b)} minus {md(a)} ({md(metric)}): mean {mean} over {len(pooled)} {kind} x dataset pairs, "
            f"positive for {(pooled['delta'] > 0).mean() * 100:.0f}%.")
    rho = agreement["rho"].dropna() if "rho" in agreement else pd.Series(dtype=float)
    if len(rho):
        text += f" Rank agreement between the protocols (Spearman, per dataset): median {rho.median():.2f}."
    if n_controls:
        text += f" {controls_left_out(n_controls, 'control pairs')}"
    return text


def controls_left_out(n: int, what: str = "controls") -> str:
    """The sentence a pooled finding adds when it left ``n`` random-init controls out (empty for none)."""
    if not n:
        return ""
    return (f"{n} random-init {what} left out of the pooled numbers, as they are of the z-score pools (they stay in "
            "the tables and charts as baselines).")


def describe_id_ood(dataset: str, corr: Mapping[str, float], trend: Mapping[str, Any],
                    id_name: str = "ImageNet") -> str:
    """ID-vs-OOD correlation and the fitted trend in a sentence, naming its axes (logit or probit), the ID reference
    and the models at 0% or 100% accuracy left out of the fit."""
    scale = trend.get("scale", "probit")
    text = (f"{md(dataset)}: over {corr['n']} models, OOD accuracy tracks {md(id_name)} accuracy with Pearson r = "
            f"{corr['pearson']:.3f} (probit scale {corr['pearson_probit']:.3f}, Spearman {corr['spearman']:.3f}); "
            f"the {scale} trend fitted on {trend.get('baseline_n', trend['n'])} baseline models has slope "
            f"{trend['slope']:.2f} [{trend['slope_low']:.2f}, {trend['slope_high']:.2f}] (R² {trend['r2']:.2f}).")
    dropped = int(trend.get("n_dropped", 0) or 0)
    if dropped:
        text += (f" {dropped} model{'s' if dropped > 1 else ''} at 0% or 100% accuracy left out of the fit (no place on "
                 f"{scale} axes).")
    return text


def describe_matches(matches: pd.DataFrame) -> str:
    """How your settings matched the reference's (:func:`~bobkit.analysis.settings.match_settings`), in words."""
    if matches.empty:
        return "You have no settings to match."
    parts = []
    exact = matches[matches["match"] == "exact"]
    if len(exact):
        parts.append(f"{len(exact)} of your {len(matches)} settings match a reference setting exactly")
    for r in matches[matches["match"] == "dropped"].itertuples():
        parts.append(f"{md(r.mine_label)} matches reference setting {md(r.reference_label)} only after dropping "
                     f"{md(r.dropped)}")
    for r in matches[matches["match"] == "ambiguous"].itertuples():
        parts.append(f"{md(r.mine_label)} is left out: another of your settings matches the same reference setting "
                     f"{md(r.reference_label)}, and two settings are never pooled")
    unmatched = matches[matches["match"] == "none"]
    if len(unmatched):
        conflicts = [f"{md(r.mine_label)} ({md(r.conflict)})" for r in unmatched.itertuples() if r.conflict]
        parts.append(f"{len(unmatched)} have no counterpart in the reference"
                     + (": different parameter values in " + "; ".join(conflicts[:4]) if conflicts else ""))
    return "; ".join(parts) + "."


def plain_text(markdown: str) -> str:
    """Markdown written here (values through :func:`md`, ``**`` emphasis, backtick code) as plain text: escapes
    undone, emphasis and code markers dropped, ``&lt;`` back to ``<``. For places that escape text themselves (the
    report's HTML tables), so a sentence recorded for a notebook reads the same there."""
    out, i = [], 0
    while i < len(markdown):
        char = markdown[i]
        if char == "\\" and i + 1 < len(markdown):
            out.append(markdown[i + 1])
            i += 2
            continue
        if char not in "*`":
            out.append(char)
        i += 1
    return "".join(out).replace("&lt;", "<")
