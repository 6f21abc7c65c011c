"""Seaborn figures for the analysis notebooks, in one style (:func:`set_style`) with fixed colours per family and
pretraining-method kind, so a CNN or a CLIP model has the same colour in every figure.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``plt.show``; it raises
:class:`bobkit.analysis.errors.InsufficientDataError` when the data cannot make the figure. Figures are made to be
read at the book's column width (at most :data:`MAX_WIDTH` inches, :data:`DPI` dots per inch): backbone names in
full (wrapped, the figure grows), a unit on every numeric axis, legends beside the axes, and points a reader must
tell apart numbered with a key beneath the plot (:mod:`bobkit.analysis.figure_labels`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter

from bobkit.analysis.correlation import spearman
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.figure_labels import (
    NUMBER_ALL_UP_TO,
    add_key,
    backbone_names,
    figure_with_key,
    key_height,
    legend_outside,
    number_points,
    points_to_number,
    spread,
    with_unit,
    wrap_label,
)
from bobkit.analysis.id_ood import DEFAULT_SCALE, from_scale, to_scale

__all__ = ["FAMILY_COLORS", "METHOD_KIND_COLORS", "set_style", "palette_for", "save_figure", "wrap_label",
           "leaderboard_plot", "correlation_heatmap", "task_scatter", "scale_plot", "paired_plot", "slope_chart",
           "metric_scatter", "trend_scatter", "group_strip"]

#: Fixed colours (seaborn "colorblind" palette) for the schema's categories.
_CB = sns.color_palette("colorblind", 10)
FAMILY_COLORS: dict[str, tuple] = {"CNN": _CB[0], "ViT": _CB[1], "hierarchical-ViT": _CB[2], "other": _CB[7]}
METHOD_KIND_COLORS: dict[str, tuple] = {
    "supervised": _CB[0], "SSL": _CB[3], "vision-language": _CB[1], "generative": _CB[4], "depth": _CB[5],
    "random": _CB[7],
}
FIGSIZE = (6.4, 4.0)
#: Full-column display: the book stretches a figure to the column (about 750 px), so 150 dpi keeps it sharp and a
#: figure no wider than MAX_WIDTH keeps its text at a readable size there.
DPI = 150
MAX_WIDTH = 8.5
#: Heatmaps with more rows than this show numbers on their axes and the names in a key.
HEATMAP_NAMED_UP_TO = 16


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


def _hue(frame: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None or column not in frame:
        return pd.Series("all", index=frame.index)
    return frame[column].astype(object).where(frame[column].notna(), "unknown").astype(str)


# --------------------------------------------------------------------------------------------------------------------
# Leaderboard and correlations
# --------------------------------------------------------------------------------------------------------------------

def _label_height(labels: Sequence[str], per_line: float = 0.2, per_label: float = 0.08) -> float:
    """Inches a column of (wrapped) tick labels needs so that none crowds the next: the rows are evenly spaced, so
    each gets room for the longest label."""
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    return len(labels) * (per_line * lines + per_label)


def leaderboard_plot(
    board: pd.DataFrame,
    *,
    top: int = 20,
    color_by: str | None = "method_kind",
    title: str = "Leaderboard",
    xlabel: str = "score (mean z-score)",
) -> plt.Figure:
    """Horizontal bars of ``score`` with the bootstrap interval (``score_lo``/``score_hi``) for the ``top`` backbones;
    baselines (random-init controls, ``baseline`` column) are hatched and labelled. Names wrap and the figure grows
    with them; the legend sits beside the axes."""
    if board.empty:
        raise InsufficientDataError("no scored backbones to plot")
    data = board.head(top).iloc[::-1].reset_index(drop=True)
    hue = _hue(data, color_by)
    colors = palette_for(hue, color_by)
    baseline = data["baseline"].fillna(False).astype(bool) if "baseline" in data else pd.Series(False, index=data.index)
    labels = [wrap_label(s + (" (random init)" if b and "random" not in s.lower() else ""), 40)
              for s, b in zip(backbone_names(data), baseline)]
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.0, max(2.0, _label_height(labels) + 1.1)))
    y = np.arange(len(data))
    bars = ax.barh(y, data["score"], color=[colors[h] for h in hue], alpha=0.9)
    for bar, is_baseline in zip(bars, baseline):
        if is_baseline:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    limits = _baseline_clip_limits(data, baseline)
    clipped = (data["score"] < limits[0]).to_numpy() if limits else np.zeros(len(data), dtype=bool)
    if "score_lo" in data:
        # A clipped bar's interval would run through the score written over it; the table gives that interval.
        ok = (np.isfinite(data["score_lo"]) & np.isfinite(data["score_hi"])).to_numpy() & ~clipped
        if ok.any():
            err = np.vstack([data["score"] - data["score_lo"], data["score_hi"] - data["score"]])[:, ok].clip(min=0)
            ax.errorbar(data["score"][ok], y[ok], xerr=err, fmt="none", ecolor="0.2", elinewidth=1, capsize=2)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(data) - 0.4)
    if limits:
        ax.set_xlim(*limits)
        for yi, score in zip(y[clipped], data.loc[clipped, "score"]):
            ax.annotate(f"{score:.1f} ◀", (limits[0], yi), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize="small", color="0.25")
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel(with_unit(xlabel, "mean z-score"))
    ax.set_title(title)
    if color_by is not None and color_by in board:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in colors]
        ax.legend(handles, list(colors), title=color_by.replace("_", " "), loc="upper left",
                  bbox_to_anchor=(1.02, 1), fontsize="small", title_fontsize="medium")
    fig.tight_layout()
    return fig


def _baseline_clip_limits(data: pd.DataFrame, baseline: pd.Series) -> tuple[float, float] | None:
    """Random-init controls scored against the pretrained backbones' spread can sit dozens of units away: the x
    limits that keep the axis on the pretrained backbones, or None when every baseline fits on it anyway."""
    pretrained = data[~baseline.to_numpy()]
    if pretrained.empty or not baseline.any():
        return None
    ends = pd.concat([pretrained["score"], pretrained.get("score_lo", pretrained["score"]),
                      pretrained.get("score_hi", pretrained["score"])]).dropna()
    lo, hi = min(float(ends.min()), 0.0), max(float(ends.max()), 0.0)
    span = hi - lo or 1.0
    left, right = lo - 0.6 * span, hi + 0.15 * span
    if data.loc[baseline.to_numpy(), "score"].min() >= left:
        return None
    return left, right


def _category_ticks(ax: plt.Axes, labels: Sequence[str], named: bool) -> None:
    """Heatmap ticks: wrapped names, or numbers (every k-th when there are many) whose names are in the key."""
    n = len(labels)
    step = 1 if named else max(1, int(np.ceil(n / 20)))
    positions = np.arange(0, n, step) + 0.5
    shown = [labels[i] if named else str(i + 1) for i in range(0, n, step)]
    ax.set_xticks(positions, shown, rotation=90 if named and n > 3 else 0, fontsize="x-small" if n > 8 else None)
    ax.set_yticks(positions, shown, rotation=0, fontsize="x-small" if n > 8 else None)
    if not named:
        ax.set_xlabel("(number: see the key below)")
        ax.set_ylabel("(number: see the key below)")


def correlation_heatmap(matrix: pd.DataFrame, *, title: str = "Spearman correlation", annot: bool = True,
                        vmin: float = -1.0) -> plt.Figure:
    """Heatmap of a square correlation matrix (:func:`bobkit.analysis.correlation.correlation_matrix`). Up to
    :data:`HEATMAP_NAMED_UP_TO` rows are named on the axes; more are numbered, with their names in a key below."""
    if matrix.shape[0] < 2:
        raise InsufficientDataError("need at least two columns for a correlation heatmap")
    n = matrix.shape[0]
    names = [str(c) for c in matrix.columns]
    named = n <= HEATMAP_NAMED_UP_TO
    side = min(max(4.4, 1.8 + 0.42 * n), MAX_WIDTH - 2.0)  # at least as wide as the other figures, with its bar
    fig, ax, key_ax = figure_with_key(side + 2.0, side + (1.4 if named else 0.4), [] if named else names,
                                      columns=2, key_width=56)
    with warnings.catch_warnings():  # seaborn's own use of a matplotlib API on its way out: not the reader's concern
        warnings.filterwarnings("ignore", message="The set_bad function", category=PendingDeprecationWarning)
        sns.heatmap(matrix.astype(float), vmin=vmin, vmax=1, cmap="vlag", center=0, annot=annot and n <= 12,
                    fmt=".2f", annot_kws={"fontsize": 7 if n > 6 else 9}, square=True, ax=ax,
                    cbar_kws={"shrink": 0.7, "label": "Spearman rho (-1 to 1)"})
    ax.grid(False)  # the style's grid would cross the cells
    _category_ticks(ax, [wrap_label(c, 22) for c in names], named)
    ax.set_title(title)
    if key_ax is not None:
        add_key(key_ax, names, title="Rows and columns", columns=2, width=56)
    fig.tight_layout()
    return fig


def _numbered(ax: plt.Axes, data: pd.DataFrame, x: str, y: str, order_by: pd.Series, highlight: int) -> list[str]:
    """Number the points a reader must tell apart (all of them up to NUMBER_ALL_UP_TO, else the ``highlight`` with
    the largest ``order_by``); returns their names, in number order, for the key."""
    chosen = points_to_number(data, order_by, highlight)
    number_points(ax, chosen[x].to_numpy(), chosen[y].to_numpy())
    return backbone_names(chosen).tolist()


def _key_names(data: pd.DataFrame, order_by: pd.Series, highlight: int) -> list[str]:
    """The names :func:`_numbered` will number, known before the figure is made (it sizes the figure)."""
    return backbone_names(points_to_number(data, order_by, highlight)).tolist()


def _key_title(n_named: int, n_points: int) -> str:
    return "Key" if n_named == n_points else f"Key (the {n_named} highest of {n_points})"


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
    marker = family. Every backbone is numbered (up to NUMBER_ALL_UP_TO; beyond, the ``annotate`` best by x + y)
    and named in the key beneath the plot."""
    data = frame.dropna(subset=[x, y]).copy()
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two backbones have both {x!r} and {y!r}")
    # legend titles come from the column names (matplotlib hides labels that start with "_")
    hue_col, style_col, size_col = (hue or "all").replace("_", " "), (style or None), "params (M)"
    data[hue_col] = _hue(data, hue)
    if style_col:
        data[style_col] = _hue(data, style)
    sizes = pd.to_numeric(data[size], errors="coerce") if size in data else pd.Series(np.nan, index=data.index)
    data[size_col] = sizes.fillna(sizes.median() if sizes.notna().any() else 1.0).clip(lower=0.1)
    order_by = data[x] + data[y]
    names = _key_names(data, order_by, annotate)
    fig, ax, key_ax = figure_with_key(FIGSIZE[0] + 1.6, FIGSIZE[1] + 0.4, names)
    sns.scatterplot(data=data, x=x, y=y, hue=hue_col, style=style_col, size=size_col, sizes=(20, 300),
                    palette=palette_for(data[hue_col], hue), alpha=0.8, ax=ax, legend="brief")
    _numbered(ax, data, x, y, order_by, annotate)
    res = spearman(data[x], data[y], n_boot=0)
    ax.set_title(title or f"Spearman rho = {res['rho']:.2f} over {res['n']} backbones")
    ax.set_xlabel(with_unit(f"{x} score", "mean z-score"))
    ax.set_ylabel(with_unit(f"{y} score", "mean z-score", width=40))
    legend_outside(ax)
    add_key(key_ax, names, title=_key_title(len(names), len(data)))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------------
# Scale, SSL vs supervised, protocols
# --------------------------------------------------------------------------------------------------------------------

_SIZE_LABELS = {"params_millions": ("parameters", "millions, log scale"),
                "pretrain_images": ("pretraining images", "count, log scale")}


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
    highlight: int = 5,
) -> plt.Figure:
    """Score against a size (log x axis) per family, with a least-squares line of ``y`` on ``log10(x)`` per family
    (statsmodels-free: :func:`numpy.polyfit`, the same fit seaborn's ``regplot(logx=True)`` draws). ``correlations``
    (:func:`bobkit.analysis.correlation.correlate_by_group`) adds each family's rho to its legend label. Backbones
    are numbered and named in a key (all up to NUMBER_ALL_UP_TO, else the ``highlight`` best)."""
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
    names = _key_names(data, data[y], highlight) if "backbone" in data or "display_name" in data else []
    fig, ax, key_ax = figure_with_key(FIGSIZE[0] + 1.4, FIGSIZE[1], names)
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
    if names:
        _numbered(ax, data, x, y, data[y], highlight)
    name, unit = _SIZE_LABELS.get(x, (x, "log scale"))
    ax.set_xlabel(with_unit(xlabel or name, unit))
    ax.set_ylabel(with_unit(f"{y} score", "mean z-score"))
    ax.set_title(title or f"{y} score vs {xlabel or name}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), title=hue.replace("_", " "),
              title_fontsize="medium")
    if key_ax is not None:
        add_key(key_ax, names, title=_key_title(len(names), len(data)))
    fig.tight_layout()
    return fig


def paired_plot(pairs: pd.DataFrame, *, a_label: str = "supervised", b_label: str = "SSL",
                title: str | None = None) -> plt.Figure:
    """Dumbbell chart of :func:`bobkit.analysis.comparisons.matched_pairs`: for each pair, the ``a`` (supervised)
    and ``b`` (SSL) scores joined by a line, green when ``b`` wins; each row named by its ``b`` backbone in full."""
    if pairs.empty:
        raise InsufficientDataError("no matched pairs to plot")
    data = pairs.sort_values("diff").reset_index(drop=True)
    labels = [wrap_label(str(r.b_display), 40) for r in data.itertuples()]
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.0, max(2.0, _label_height(labels) + 1.2)))
    y = np.arange(len(data))
    for i, row in data.iterrows():
        ax.plot([row["a_score"], row["b_score"]], [i, i], color=_CB[2] if row["diff"] > 0 else _CB[3], lw=2,
                alpha=0.8)
    ax.scatter(data["a_score"], y, color=METHOD_KIND_COLORS["supervised"], label=a_label, zorder=3)
    ax.scatter(data["b_score"], y, color=METHOD_KIND_COLORS["SSL"], marker="D", label=b_label, zorder=3)
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(data) - 0.4)
    ax.set_xlabel(with_unit("score", "mean z-score"))
    ax.set_title(title or f"{b_label} (diamond) vs matched {a_label} (circle)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
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
    per_row: int = 3,
    title: str | None = None,
) -> plt.Figure:
    """Slope chart of :func:`bobkit.analysis.comparisons.protocol_comparison`: one line per backbone from its ``a``
    value to its ``b`` value, one panel per dataset (first ``max_facets``, ``per_row`` to a row). Lines are numbered
    at their right end with the backbones named in a key (up to NUMBER_ALL_UP_TO backbones)."""
    if comparison.empty:
        raise InsufficientDataError("nothing to compare between protocols")
    panels = list(dict.fromkeys(comparison[facet])) if facet and facet in comparison else [None]
    panels = panels[:max_facets]
    colors = palette_for(_hue(comparison, hue), hue)
    backbones = list(dict.fromkeys(comparison["backbone"]))
    numbered = len(backbones) <= NUMBER_ALL_UP_TO
    first = comparison.drop_duplicates("backbone").set_index("backbone").loc[backbones].reset_index()
    names = backbone_names(first).tolist() if numbered else []
    cols, rows = min(len(panels), per_row), int(np.ceil(len(panels) / per_row))
    extra = key_height(names)
    # never narrower than the other figures: the book stretches every figure to the column
    fig = plt.figure(figsize=(min(max(2.6 * cols + 1.9, FIGSIZE[0]), MAX_WIDTH), 3.4 * rows + extra))
    grid = fig.add_gridspec(rows + (1 if extra else 0), cols, height_ratios=[3.4] * rows + ([extra] if extra else []))
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(len(panels))]
    key_ax = fig.add_subplot(grid[rows, :]) if extra else None
    for panel_ax, panel in zip(axes, panels):
        part = comparison if panel is None else comparison[comparison[facet] == panel]
        for _, row in part.iterrows():
            panel_ax.plot([0, 1], [row[a], row[b]], marker="o", color=colors[_hue(part.loc[[_]], hue).iloc[0]],
                          alpha=0.7)
        if numbered:
            _number_line_ends(panel_ax, part[b].to_numpy(dtype=float),
                              [backbones.index(name) + 1 for name in part["backbone"]])
        panel_ax.set_xticks([0, 1], [wrap_label(a.replace("_", " "), 9), wrap_label(b.replace("_", " "), 9)],
                            fontsize="x-small")
        panel_ax.set_xlim(-0.25, 1.4)
        metric = part["metric"].iloc[0] if "metric" in part else "value"
        panel_ax.set_title(wrap_label(f"{panel} ({metric})" if panel is not None else str(metric), 24),
                           fontsize="small")
        panel_ax.set_ylabel(with_unit(str(metric), width=28), fontsize="small")
    handles = [plt.Line2D([], [], color=c, marker="o") for c in colors.values()]
    axes[cols - 1].legend(handles, list(colors), title=hue.replace("_", " "), fontsize="small", loc="upper left",
                          bbox_to_anchor=(1.05, 1), title_fontsize="medium")
    fig.suptitle(title or f"{a} vs {b}".replace("_", " "))
    if key_ax is not None:
        add_key(key_ax, names)
    fig.tight_layout()
    return fig


def _number_line_ends(ax: plt.Axes, ends: np.ndarray, numbers: Sequence[int]) -> None:
    """Numbers at the right ends (x = 1) of a slope chart's lines, spread apart where lines end close together,
    with a thin leader to the end they name."""
    low, high = ax.get_ylim()
    positions = spread(ends, gap=0.055 * (high - low))
    for end, position, number in zip(ends, positions, numbers):
        moved = abs(position - end) > 0.01 * (high - low)
        ax.annotate(str(number), (1, end), xytext=(1.1, position), textcoords="data", va="center", fontsize=7,
                    fontweight="bold", arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)


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
    highlight: int = 5,
) -> plt.Figure:
    """Robustness or calibration against accuracy: scatter coloured by ``hue`` with an overall OLS line
    (seaborn ``regplot``, no bootstrap band) and Spearman's rho in the title; backbones numbered and named in a key
    (all up to NUMBER_ALL_UP_TO, else the ``highlight`` highest)."""
    data = frame.dropna(subset=[x, y]).copy()
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two backbones have both {x!r} and {y!r}")
    hue_col = (hue or "all").replace("_", " ")
    data[hue_col] = _hue(data, hue)
    names = _key_names(data, data[y], highlight) if "backbone" in data or "display_name" in data else []
    fig, ax, key_ax = figure_with_key(FIGSIZE[0] + 1.4, FIGSIZE[1], names)
    kwargs = {}
    if size and size in data and pd.to_numeric(data[size], errors="coerce").notna().any():
        data["params (M)"] = pd.to_numeric(data[size], errors="coerce").fillna(1.0)
        kwargs = {"size": "params (M)", "sizes": (15, 200)}
    sns.scatterplot(data=data, x=x, y=y, hue=hue_col, palette=palette_for(data[hue_col], hue), alpha=0.7, ax=ax,
                    **kwargs)
    if trend and len(data) >= 3 and data[x].nunique() > 1:
        sns.regplot(data=data, x=x, y=y, scatter=False, ci=None, color="0.3", line_kws={"lw": 1.2}, ax=ax)
    if names:
        _numbered(ax, data, x, y, data[y], highlight)
    res = spearman(data[x], data[y], n_boot=0)
    ax.set_xlabel(with_unit(xlabel or x))
    ax.set_ylabel(with_unit(ylabel or y, width=40))
    ax.set_title(title or f"Spearman rho = {res['rho']:.2f} over {res['n']} backbones")
    legend_outside(ax)
    if key_ax is not None:
        add_key(key_ax, names, title=_key_title(len(names), len(data)))
    fig.tight_layout()
    return fig


def _scaled_axis(ax: plt.Axes, which: str, lo: float, hi: float, scale: str) -> None:
    ticks = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    ticks = ticks[(ticks >= lo - 1e-9) & (ticks <= hi + 1e-9)]
    pos = to_scale(ticks, scale)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(pos))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * float(from_scale(v, scale)):.0f}"))


def trend_scatter(
    frame: pd.DataFrame,
    ood_col: str,
    *,
    id_col: str = "id_acc",
    hue: str = "pretrain_data_group",
    trend: Mapping[str, Any] | None = None,
    scale: str | None = None,
    ood_label: str | None = None,
    id_label: str = "ImageNet top-1 (%)",
    title: str | None = None,
) -> plt.Figure:
    """ID vs OOD accuracy on logit or probit axes (``scale``; default the ``trend``'s, else logit; ticks in %),
    coloured by ``hue``, with the fitted linear trend (:func:`bobkit.analysis.id_ood.fit_trend`) and the y = x line.
    Models at 0% or 100% accuracy have no place on these axes and are left out (counted in the title). Up to
    NUMBER_ALL_UP_TO models (a results table's backbones) are numbered and named in a key; a public table's cloud
    of models is not."""
    scale = scale or (trend or {}).get("scale") or DEFAULT_SCALE
    data = frame.dropna(subset=[id_col, ood_col]).copy()
    data["_x"] = to_scale(data[id_col], scale)
    data["_y"] = to_scale(data[ood_col], scale)
    on_axes = np.isfinite(data["_x"]) & np.isfinite(data["_y"])
    n_off = int((~on_axes).sum())
    data = data[on_axes]
    if len(data) < 2:
        raise InsufficientDataError(f"fewer than two models with {id_col!r} and {ood_col!r} strictly between 0 and 1")
    data["_hue"] = _hue(data, hue)
    names = _key_names(data, data["_y"], 0) if "backbone" in data or "display_name" in data else []
    fig, ax, key_ax = figure_with_key(FIGSIZE[0] + 1.4, FIGSIZE[1] + 0.6, names)
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
    _scaled_axis(ax, "x", data[id_col].min(), data[id_col].max(), scale)
    _scaled_axis(ax, "y", data[ood_col].min(), data[ood_col].max(), scale)
    if names:
        _numbered(ax, data, "_x", "_y", data["_y"], 0)
    ax.set_xlabel(f"{id_label}, {scale} scale")
    ax.set_ylabel(wrap_label(f"{ood_label or ood_col} top-1 (%), {scale} scale", 40))
    off = f"; {n_off} at 0% or 100% not shown" if n_off else ""
    ax.set_title(title or f"{ood_label or ood_col} vs {id_label.split(' top-1')[0]} (n = {len(data)}{off})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), title=hue.replace("_", " "),
              title_fontsize="medium")
    if key_ax is not None:
        add_key(key_ax, names)
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
    labels = [wrap_label(g, 30) for g in order]
    fig, ax = plt.subplots(figsize=(FIGSIZE[0] + 1.2, max(2.4, _label_height(labels, per_label=0.2) + 1.2)))
    sns.boxplot(data=data, x=value, y="_by", order=order, color="0.9", fliersize=0, ax=ax)
    if hue and hue in data:
        data["_hue"] = _hue(data, hue)
        sns.stripplot(data=data, x=value, y="_by", order=order, hue="_hue", palette=palette_for(data["_hue"], hue),
                      size=3, alpha=0.6, ax=ax)
        ax.legend(fontsize="small", title=hue.replace("_", " "), loc="upper left", bbox_to_anchor=(1.02, 1),
                  title_fontsize="medium")
    else:
        sns.stripplot(data=data, x=value, y="_by", order=order, color=_CB[0], size=3, alpha=0.6, ax=ax)
    ax.set_yticks(range(len(order)), labels)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_ylabel(by.replace("_", " "))
    ax.set_xlabel(with_unit(xlabel or value))
    ax.set_title(title or f"{value} by {by}")
    fig.tight_layout()
    return fig
