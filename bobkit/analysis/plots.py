"""Seaborn figures for the analysis notebooks, in one style (:func:`set_style`) with fixed colours per family and
pretraining-method kind, so a CNN or a CLIP model has the same colour in every figure.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show``; it raises
:class:`bobkit.analysis.errors.InsufficientDataError` when the data cannot make the figure.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter

from bobkit.analysis.correlation import spearman
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.id_ood import inverse_probit, probit

#: Fixed colours (seaborn "colorblind" palette) for the schema's categories.
_CB = sns.color_palette("colorblind", 10)
FAMILY_COLORS: dict[str, tuple] = {"CNN": _CB[0], "ViT": _CB[1], "hierarchical-ViT": _CB[2], "other": _CB[7]}
METHOD_KIND_COLORS: dict[str, tuple] = {
    "supervised": _CB[0], "SSL": _CB[3], "vision-language": _CB[1], "generative": _CB[4], "depth": _CB[5],
    "random": _CB[7],
}
FIGSIZE = (6.4, 4.0)
DPI = 100


def set_style(context: str = "notebook", font_scale: float = 0.9) -> None:
    """The one look of every figure: seaborn ``whitegrid``, colorblind palette, compact fonts, tight PNGs."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind", font_scale=font_scale)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "savefig.bbox": "tight", "figure.figsize": FIGSIZE,
                         "axes.titleweight": "bold", "legend.frameon": False})


def palette_for(values: Sequence[object], column: str | None = None) -> dict[str, tuple]:
    """Colours for the categories in ``values``: the fixed ones for families and method kinds, then the rest."""
    fixed = {"family": FAMILY_COLORS, "method_kind": METHOD_KIND_COLORS}.get(column or "", {})
    cats = [str(v) for v in dict.fromkeys(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    extra = iter(sns.color_palette("tab20", 20))
    out: dict[str, tuple] = {}
    for c in cats:
        out[c] = fixed.get(c) or next(extra)
    return out


def save_figure(fig: plt.Figure, out_dir: str | os.PathLike[str] | None, name: str) -> Path | None:
    """Save ``fig`` as ``out_dir/name.png`` (atomic); ``None`` when ``out_dir`` is None."""
    if out_dir is None:
        return None
    from bobkit.utils.files import atomic_path

    path = Path(out_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _labels(frame: pd.DataFrame, name_col: str = "display_name") -> pd.Series:
    if name_col in frame:
        return frame[name_col].fillna(frame["backbone"]).astype(str)
    return frame["backbone"].astype(str)


def wrap_label(text: str, width: int = 36) -> str:
    """``text`` on lines of at most about ``width`` characters, broken after ``.``, ``_``, ``/``, spaces and before
    ``(`` (never inside ``IN-1k``): a long backbone name wraps instead of being cut, so names that differ only at the
    end stay distinguishable."""
    tokens = re.findall(r"[^._/ (]*(?:[._/ ]|$)|\([^._/ (]*(?:[._/ ]|$)", str(text))
    lines, line = [], ""
    for token in (t for t in tokens if t):
        if line and len(line) + len(token) > width:
            lines.append(line.rstrip())
            line = ""
        line += token
    lines.append(line.rstrip())
    return "\n".join(lines)


def _hue(frame: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None or column not in frame:
        return pd.Series("all", index=frame.index)
    return frame[column].astype(object).where(frame[column].notna(), "unknown").astype(str)


# --------------------------------------------------------------------------------------------------------------------
# Leaderboard and correlations
# --------------------------------------------------------------------------------------------------------------------

def leaderboard_plot(
    board: pd.DataFrame,
    *,
    top: int = 20,
    color_by: str | None = "method_kind",
    title: str = "Leaderboard",
    xlabel: str = "score (mean z-score)",
) -> plt.Figure:
    """Horizontal bars of ``score`` with the bootstrap interval (``score_lo``/``score_hi``) for the ``top`` backbones;
    baselines (random-init controls, ``baseline`` column) are hatched and labelled."""
    if board.empty:
        raise InsufficientDataError("no scored backbones to plot")
    data = board.head(top).iloc[::-1].reset_index(drop=True)
    hue = _hue(data, color_by)
    colors = palette_for(hue, color_by)
    baseline = data["baseline"].fillna(False).astype(bool) if "baseline" in data else pd.Series(False, index=data.index)
    labels = [wrap_label(s + (" (random init)" if b and "random" not in s.lower() else ""))
              for s, b in zip(_labels(data), baseline)]
    n_lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.0, max(2.0, 0.2 * n_lines + 0.1 * len(data) + 1.0)))
    y = np.arange(len(data))
    bars = ax.barh(y, data["score"], color=[colors[h] for h in hue], alpha=0.9)
    for bar, is_baseline in zip(bars, baseline):
        if is_baseline:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    if "score_lo" in data:
        ok = np.isfinite(data["score_lo"]) & np.isfinite(data["score_hi"])
        if ok.any():
            err = np.vstack([data["score"] - data["score_lo"], data["score_hi"] - data["score"]])[:, ok].clip(min=0)
            ax.errorbar(data["score"][ok], y[ok], xerr=err, fmt="none", ecolor="0.2", elinewidth=1, capsize=2)
    ax.set_yticks(y, labels)
    _clip_baselines(ax, data, baseline, y)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if color_by is not None and color_by in board:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in colors]
        ax.legend(handles, list(colors), title=color_by, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    return fig


def _clip_baselines(ax: plt.Axes, data: pd.DataFrame, baseline: pd.Series, y: np.ndarray) -> None:
    """Random-init controls scored against the pretrained backbones' spread can sit dozens of units away; keep the
    axis on the pretrained backbones and write a clipped baseline's score at the axis edge."""
    pretrained = data[~baseline.to_numpy()]
    if pretrained.empty or not baseline.any():
        return
    ends = pd.concat([pretrained["score"], pretrained.get("score_lo", pretrained["score"]),
                      pretrained.get("score_hi", pretrained["score"])]).dropna()
    lo, hi = min(float(ends.min()), 0.0), max(float(ends.max()), 0.0)
    span = hi - lo or 1.0
    left, right = lo - 0.6 * span, hi + 0.15 * span
    if data.loc[baseline.to_numpy(), "score"].min() >= left:
        return
    ax.set_xlim(left, right)
    for yi, score in zip(y[baseline.to_numpy()], data.loc[baseline.to_numpy(), "score"]):
        if score < left:
            ax.annotate(f"{score:.1f} ◀", (left, yi), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize="small", color="0.25")


def correlation_heatmap(matrix: pd.DataFrame, *, title: str = "Spearman correlation", annot: bool = True,
                        vmin: float = -1.0) -> plt.Figure:
    """Heatmap of a square correlation matrix (:func:`bobkit.analysis.correlation.correlation_matrix`)."""
    if matrix.shape[0] < 2:
        raise InsufficientDataError("need at least two columns for a correlation heatmap")
    n = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(min(max(5.0, 2.5 + 0.7 * n), 11), min(max(4.0, 2.0 + 0.6 * n), 10)))
    labels = [wrap_label(str(c), 30) for c in matrix.columns]
    sns.heatmap(matrix.astype(float), vmin=vmin, vmax=1, cmap="vlag", center=0, annot=annot and n <= 14,
                fmt=".2f", square=True, cbar_kws={"shrink": 0.7, "label": "rho"}, ax=ax,
                xticklabels=labels, yticklabels=labels)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def task_scatter(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    size: str = "params_millions",
    hue: str = "method_kind",
    style: str | None = "family",
    annotate: int = 3,
    title: str | None = None,
) -> plt.Figure:
    """Paper Figure 1 style: one task's score against another's, marker size = parameters, colour = method kind,
    marker = family; the ``annotate`` best backbones (by x + y) are labelled."""
    data = frame.dropna(subset=[x, y]).copy()
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two backbones have both {x!r} and {y!r}")
    # legend titles come from the column names (matplotlib hides labels that start with "_")
    hue_col, style_col, size_col = hue or "all", (style or None), "params (M)"
    data[hue_col] = _hue(data, hue)
    if style_col:
        data[style_col] = _hue(data, style)
    sizes = pd.to_numeric(data[size], errors="coerce") if size in data else pd.Series(np.nan, index=data.index)
    data[size_col] = sizes.fillna(sizes.median() if sizes.notna().any() else 1.0).clip(lower=0.1)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.6, FIGSIZE[1] + 0.4))
    sns.scatterplot(data=data, x=x, y=y, hue=hue_col, style=style_col, size=size_col, sizes=(20, 300),
                    palette=palette_for(data[hue_col], hue), alpha=0.8, ax=ax, legend="brief")
    best = data.assign(_sum=data[x] + data[y]).nlargest(annotate, "_sum")
    for i, (_, row) in enumerate(best.iterrows()):
        ax.annotate(wrap_label(str(row.get("display_name", row.get("backbone"))), 34), (row[x], row[y]),
                    fontsize=7, xytext=(-8, -12 - 11 * i), textcoords="offset points", ha="right",
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6})
    res = spearman(data[x], data[y], n_boot=0)
    ax.set_title(title or f"Spearman rho = {res['rho']:.2f} over {res['n']} backbones")
    ax.set_xlabel(wrap_label(f"{x} (score)", 60))
    ax.set_ylabel(wrap_label(f"{y} (score)", 60))
    _outside_legend(ax)
    fig.tight_layout()
    return fig


def _outside_legend(ax: plt.Axes) -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize="x-small", title_fontsize="small")


# --------------------------------------------------------------------------------------------------------------------
# Scale, SSL vs supervised, protocols
# --------------------------------------------------------------------------------------------------------------------

def scale_plot(
    frame: pd.DataFrame,
    *,
    x: str = "params_millions",
    y: str = "overall",
    hue: str = "family",
    groups: Sequence[str] | None = None,
    correlations: pd.DataFrame | None = None,
    xlabel: str | None = None,
    title: str | None = None,
) -> plt.Figure:
    """Score against a size (log x axis) per family, with a least-squares line of ``y`` on ``log10(x)`` per family
    (statsmodels-free: :func:`numpy.polyfit`, the same fit seaborn's ``regplot(logx=True)`` draws). ``correlations``
    (:func:`bobkit.analysis.correlation.correlate_by_group`) adds each family's rho to its legend label."""
    data = frame.copy()
    data[x] = pd.to_numeric(data[x], errors="coerce")
    data = data[(data[x] > 0) & data[y].notna()]
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two backbones with a positive {x!r} and a {y!r}")
    data["_hue"] = _hue(data, hue)
    order = [g for g in (groups or sorted(data["_hue"].unique())) if g in set(data["_hue"])]
    colors = palette_for(order, hue)
    rhos = {}
    if correlations is not None and not correlations.empty:
        rhos = dict(zip(correlations["group"], correlations["rho"]))
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for g in order:
        part = data[data["_hue"] == g]
        label = f"{g} (n={len(part)}" + (f", rho={rhos[g]:.2f})" if g in rhos and np.isfinite(rhos[g]) else ")")
        ax.scatter(part[x], part[y], s=22, alpha=0.6, color=colors[g], label=label, edgecolors="none")
        lx = np.log10(part[x].to_numpy(dtype=float))
        if len(part) >= 3 and np.ptp(lx) > 0:
            slope, intercept = np.polyfit(lx, part[y].to_numpy(dtype=float), 1)
            grid = np.linspace(lx.min(), lx.max(), 50)
            ax.plot(10 ** grid, intercept + slope * grid, color=colors[g], lw=2)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(f"{y} score")
    ax.set_title(title or f"{y} score vs {xlabel or x}")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def paired_plot(pairs: pd.DataFrame, *, a_label: str = "supervised", b_label: str = "SSL",
                title: str | None = None) -> plt.Figure:
    """Dumbbell chart of :func:`bobkit.analysis.comparisons.matched_pairs`: for each pair, the ``a`` (supervised) and ``b`` (SSL)
    scores joined by a line, green when ``b`` wins."""
    if pairs.empty:
        raise InsufficientDataError("no matched pairs to plot")
    data = pairs.sort_values("diff").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], max(2.0, 0.35 * len(data) + 1.0)))
    y = np.arange(len(data))
    for i, row in data.iterrows():
        ax.plot([row["a_score"], row["b_score"]], [i, i], color=_CB[2] if row["diff"] > 0 else _CB[3], lw=2,
                alpha=0.8)
    ax.scatter(data["a_score"], y, color=METHOD_KIND_COLORS["supervised"], label=a_label, zorder=3)
    ax.scatter(data["b_score"], y, color=METHOD_KIND_COLORS["SSL"], marker="D", label=b_label, zorder=3)
    labels = [wrap_label(str(r.b_display), 40) for r in data.itertuples()]
    ax.set_yticks(y, labels)
    ax.set_xlabel("score")
    ax.set_title(title or f"{b_label} (diamond) vs matched {a_label} (circle)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def slope_chart(
    comparison: pd.DataFrame,
    *,
    a: str = "linear_probe",
    b: str = "finetune",
    hue: str = "family",
    facet: str | None = "dataset",
    max_facets: int = 6,
    title: str | None = None,
) -> plt.Figure:
    """Slope chart of :func:`bobkit.analysis.comparisons.protocol_comparison`: one line per backbone from its ``a`` value to its ``b``
    value, one panel per dataset (first ``max_facets``)."""
    if comparison.empty:
        raise InsufficientDataError("nothing to compare between protocols")
    panels = list(dict.fromkeys(comparison[facet])) if facet and facet in comparison else [None]
    panels = panels[:max_facets]
    colors = palette_for(_hue(comparison, hue), hue)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(3.2 * len(panels) + 1, 16), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        part = comparison if panel is None else comparison[comparison[facet] == panel]
        for _, row in part.iterrows():
            ax.plot([0, 1], [row[a], row[b]], marker="o", color=colors[_hue(part.loc[[_]], hue).iloc[0]], alpha=0.7)
        ax.set_xticks([0, 1], [a, b])
        ax.set_xlim(-0.2, 1.2)
        metric = part["metric"].iloc[0] if "metric" in part else "value"
        ax.set_title(f"{panel} ({metric})" if panel is not None else metric, fontsize="small")
    handles = [plt.Line2D([], [], color=c, marker="o") for c in colors.values()]
    axes[0][-1].legend(handles, list(colors), title=hue, fontsize="x-small", loc="upper left",
                       bbox_to_anchor=(1.02, 1))
    fig.suptitle(title or f"{a} vs {b}")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------------
# Robustness, calibration, ID vs OOD
# --------------------------------------------------------------------------------------------------------------------

def metric_scatter(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    hue: str = "family",
    size: str | None = "params_millions",
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    trend: bool = True,
) -> plt.Figure:
    """Robustness or calibration against accuracy: scatter coloured by ``hue`` with an overall OLS line
    (seaborn ``regplot``, no bootstrap band) and Spearman's rho in the title."""
    data = frame.dropna(subset=[x, y]).copy()
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two backbones have both {x!r} and {y!r}")
    hue_col = hue or "all"
    data[hue_col] = _hue(data, hue)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.0, FIGSIZE[1]))
    kwargs = {}
    if size and size in data and pd.to_numeric(data[size], errors="coerce").notna().any():
        data["params (M)"] = pd.to_numeric(data[size], errors="coerce").fillna(1.0)
        kwargs = {"size": "params (M)", "sizes": (15, 200)}
    sns.scatterplot(data=data, x=x, y=y, hue=hue_col, palette=palette_for(data[hue_col], hue), alpha=0.7, ax=ax,
                    **kwargs)
    if trend and len(data) >= 3 and data[x].nunique() > 1:
        sns.regplot(data=data, x=x, y=y, scatter=False, ci=None, color="0.3", line_kws={"lw": 1.2}, ax=ax)
    res = spearman(data[x], data[y], n_boot=0)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"Spearman rho = {res['rho']:.2f} over {res['n']} backbones")
    _outside_legend(ax)
    fig.tight_layout()
    return fig


def _probit_axis(ax: plt.Axes, which: str, lo: float, hi: float) -> None:
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    ticks = ticks[(ticks >= lo - 1e-9) & (ticks <= hi + 1e-9)]
    pos = probit(ticks)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(pos))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * float(inverse_probit(v)):.0f}"))


def probit_scatter(
    frame: pd.DataFrame,
    ood_col: str,
    *,
    id_col: str = "id_acc",
    hue: str = "pretrain_data_group",
    trend: Mapping[str, float] | None = None,
    ood_label: str | None = None,
    id_label: str = "ImageNet top-1 (%)",
    title: str | None = None,
) -> plt.Figure:
    """ID vs OOD accuracy on probit axes (ticks in %), coloured by ``hue``, with the fitted linear trend
    (:func:`bobkit.analysis.id_ood.fit_probit_trend`) and the y = x line."""
    data = frame.dropna(subset=[id_col, ood_col]).copy()
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two models with {id_col!r} and {ood_col!r}")
    data["_x"] = probit(data[id_col])
    data["_y"] = probit(data[ood_col])
    data["_hue"] = _hue(data, hue)
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.2, FIGSIZE[1] + 0.6))
    counts = data["_hue"].value_counts()
    order = list(counts.index)
    sns.scatterplot(data=data, x="_x", y="_y", hue="_hue", hue_order=order, palette=palette_for(order, hue),
                    s=14, alpha=0.65, edgecolor="none", ax=ax)
    xs = np.linspace(data["_x"].min(), data["_x"].max(), 50)
    if trend is not None:
        ax.plot(xs, trend["intercept"] + trend["slope"] * xs, color="0.15", lw=1.5,
                label=f"trend (slope {trend['slope']:.2f})")
    lo = min(data["_x"].min(), data["_y"].min())
    hi = max(data["_x"].max(), data["_y"].max())
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1, label="y = x")
    ax.set_xlim(data["_x"].min() - 0.1, data["_x"].max() + 0.1)
    ax.set_ylim(data["_y"].min() - 0.1, data["_y"].max() + 0.1)
    _probit_axis(ax, "x", data[id_col].min(), data[id_col].max())
    _probit_axis(ax, "y", data[ood_col].min(), data[ood_col].max())
    ax.set_xlabel(id_label + ", probit scale")
    ax.set_ylabel(f"{ood_label or ood_col} top-1 (%), probit scale")
    ax.set_title(title or f"{ood_label or ood_col} vs ImageNet (n = {len(data)})")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1), title=hue)
    fig.tight_layout()
    return fig


def group_strip(
    frame: pd.DataFrame,
    value: str,
    by: str,
    *,
    order: Sequence[str] | None = None,
    hue: str | None = None,
    min_n: int = 1,
    title: str | None = None,
    xlabel: str | None = None,
) -> plt.Figure:
    """Box plot with the individual points of ``value`` per ``by`` group (effective robustness per pretraining data);
    groups with fewer than ``min_n`` rows are left out."""
    data = frame.dropna(subset=[value]).copy()
    data["_by"] = _hue(data, by)
    data = data[data.groupby("_by")["_by"].transform("size") >= min_n]
    if data.empty:
        raise InsufficientDataError(f"no {value!r} values to plot")
    order = list(order) if order is not None else list(data.groupby("_by")[value].median().sort_values().index[::-1])
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 0.8, max(2.4, 0.45 * len(order) + 1.2)))
    sns.boxplot(data=data, x=value, y="_by", order=order, color="0.9", fliersize=0, ax=ax)
    if hue and hue in data:
        data["_hue"] = _hue(data, hue)
        sns.stripplot(data=data, x=value, y="_by", order=order, hue="_hue", palette=palette_for(data["_hue"], hue),
                      size=3, alpha=0.6, ax=ax)
        ax.legend(fontsize="x-small", title=hue, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        sns.stripplot(data=data, x=value, y="_by", order=order, color=_CB[0], size=3, alpha=0.6, ax=ax)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_ylabel(by)
    ax.set_xlabel(xlabel or value)
    ax.set_title(title or f"{value} by {by}")
    fig.tight_layout()
    return fig
