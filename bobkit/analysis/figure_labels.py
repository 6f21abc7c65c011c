"""Text in the analysis figures made to be read: full names that wrap, a unit on every numeric axis, legends outside
the data, and points a reader must tell apart numbered with a key beneath the plot.

:mod:`bobkit.analysis.plots` draws; this module only places and words text, so every figure follows the same rules:
a backbone name is never cut (:func:`wrap_label`), an axis label always says its unit (:func:`with_unit`), a legend
sits to the right of the axes (:func:`legend_outside`), and scatter points or lines that stand for backbones carry a
number whose full name is listed under the plot (:func:`number_points`, :func:`add_key`).
"""

from __future__ import annotations

import re
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

#: Units by what an axis shows (first match wins): metric names as the tasks record them, and the analysis' scores.
UNITS: tuple[tuple[str, str], ...] = (
    (r"effective robustness", "fraction correct above the ID trend"),
    (r"z-score|\bscore\b|overall", "mean z-score"),
    (r"\bece\b|calibration", "0-1"),
    (r"\bnll\b|\bloss\b", "nats"),
    (r"top-?[15]|(?<![a-z])acc|accuracy|recall|(?<![a-z])drop", "fraction correct"),
    (r"\bm?ap\b|box_ap|mask_ap|\bmrr|auroc|\bauc\b|mp@|map@", "0-1"),
    (r"\brho\b|spearman|pearson", "-1 to 1"),
)
#: Points (or lines) up to this many are all numbered; beyond, only the highlighted ones.
NUMBER_ALL_UP_TO = 20
# Inches per line of the key (its text is "small": about 9 pt), and characters per line by number of columns.
_KEY_LINE = 0.19
KEY_WIDTH = {1: 80, 2: 38}
# Where a point's number may go, in points from the point, tried in this order until it overlaps no other number.
_OFFSETS = ((3, 3), (3, -12), (-12, 3), (-12, -12), (9, 12), (-18, 12), (9, -20), (-18, -20), (18, 0), (-26, 0),
            (0, 20), (0, -28), (22, 16), (-30, 16), (22, -24), (-30, -24))


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


def unit_of(label: str) -> str:
    """The unit of an axis showing ``label`` (a metric, a score, a correlation), or ``"as recorded"``."""
    for pattern, unit in UNITS:
        if re.search(pattern, str(label), re.IGNORECASE):
            return unit
    return "as recorded"


def with_unit(label: str, unit: str | None = None, width: int = 60) -> str:
    """``label (unit)``, wrapped at ``width``; ``unit`` defaults to :func:`unit_of`; a label that already ends with
    a parenthesised unit (``parameters (M)``, ``top-1 (%)``) is kept."""
    label = " ".join(str(label).split())
    unit = unit or unit_of(label)
    if unit in label or re.search(r"\((M|%|[^()]*scale)\)$", label):
        return wrap_label(label, width)
    return wrap_label(f"{label} ({unit})", width)


def legend_outside(ax: plt.Axes, **options: object) -> None:
    """Move the axes' legend (when it has one) to the right of the plot, out of the data."""
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), fontsize="small", title_fontsize="medium",
                        **options)


# --------------------------------------------------------------------------------------------------------------------
# Numbered points and the key beneath the plot
# --------------------------------------------------------------------------------------------------------------------

def key_entries(names: Sequence[str]) -> list[str]:
    """``["1  name", "2  name", ...]`` for the key (names in full)."""
    return [f"{i}  {name}" for i, name in enumerate(names, start=1)]


def key_height(names: Sequence[str], columns: int | None = None, width: int | None = None) -> float:
    """Inches the key of ``names`` needs beneath a plot (small font; wrapped lines counted; ``columns`` None:
    :func:`key_columns`)."""
    if not names:
        return 0.0
    columns = columns or key_columns(names)
    width = width or KEY_WIDTH[min(columns, 2)]
    lines = [wrap_label(entry, width).count("\n") + 1 for entry in key_entries(names)]
    rows = int(np.ceil(len(lines) / columns))
    per_column = max(sum(lines[c * rows:(c + 1) * rows]) for c in range(columns))
    return 0.35 + _KEY_LINE * per_column


def add_key(key_ax: plt.Axes, names: Sequence[str], *, title: str = "Key", columns: int | None = None,
            width: int | None = None) -> None:
    """List ``names`` as a numbered key in ``key_ax`` (an axes beneath the plot, turned off): one text per entry,
    wrapped, in ``columns`` columns (None: :func:`key_columns`)."""
    key_ax.axis("off")
    if not names:
        return
    columns = columns or key_columns(names)
    width = width or KEY_WIDTH[min(columns, 2)]
    entries = [wrap_label(entry, width) for entry in key_entries(names)]
    rows = int(np.ceil(len(entries) / columns))
    total = key_height(names, columns, width)
    line = _KEY_LINE / total  # one text line as a fraction of the key's height
    key_ax.text(0, 1, title, transform=key_ax.transAxes, va="top", ha="left", fontsize="medium", fontweight="bold")
    for column in range(columns):
        y = 1 - 1.6 * line
        for entry in entries[column * rows:(column + 1) * rows]:
            key_ax.text(column / columns, y, entry, transform=key_ax.transAxes, va="top", ha="left",
                        fontsize="small", linespacing=1.15)
            y -= line * (entry.count("\n") + 1)


def figure_with_key(width: float, height: float, names: Sequence[str], *, columns: int | None = None,
                    key_width: int | None = None) -> tuple[plt.Figure, plt.Axes, plt.Axes | None]:
    """A figure of ``width`` x ``height`` inches for the plot, grown by the key's height when ``names`` is not
    empty: ``(fig, ax, key_ax)`` (``key_ax`` None without a key). The plot is ``fig.axes[0]``."""
    extra = key_height(names, columns, key_width)
    if not extra:
        fig, ax = plt.subplots(figsize=(width, height))
        return fig, ax, None
    fig, (ax, key_ax) = plt.subplots(2, 1, figsize=(width, height + extra),
                                     gridspec_kw={"height_ratios": [height, extra]})
    return fig, ax, key_ax


def points_to_number(frame: pd.DataFrame, order_by: pd.Series, highlight: int,
                     limit: int = NUMBER_ALL_UP_TO) -> pd.DataFrame:
    """The rows whose points get a number: all of them (up to ``limit`` rows), else the ``highlight`` with the
    largest ``order_by``; numbered in that order (1 = largest)."""
    ranked = frame.assign(_order=order_by).sort_values("_order", ascending=False, kind="stable")
    return (ranked if len(ranked) <= limit else ranked.head(highlight)).drop(columns="_order")


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def number_points(ax: plt.Axes, x: Sequence[float], y: Sequence[float]) -> None:
    """Write 1, 2, ... beside the points at ``x``, ``y`` (bold, on a white halo), each where it overlaps no number
    placed before it (the first free spot of a few around the point, with a leader when it had to move)."""
    ax.get_xlim(), ax.get_ylim()  # settle the autoscaled limits before reading positions
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for i, (xi, yi) in enumerate(zip(x, y), start=1):
        px, py = ax.transData.transform((xi, yi)) * to_points
        width, height = 6.0 * len(str(i)) + 3, 10.0
        dx, dy = _OFFSETS[0]
        for dx, dy in _OFFSETS:
            box = (px + dx, py + dy, px + dx + width, py + dy + height)
            if not any(_overlaps(box, other) for other in placed):
                break
        placed.append((px + dx, py + dy, px + dx + width, py + dy + height))
        moved = (dx, dy) != _OFFSETS[0]
        ax.annotate(str(i), (xi, yi), xytext=(dx, dy), textcoords="offset points", fontsize=8, fontweight="bold",
                    color="0.1", va="bottom", ha="left",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"} if moved else None)


def backbone_names(frame: pd.DataFrame, name_col: str = "display_name") -> pd.Series:
    """The names to show for each row: ``display_name``, else the backbone id."""
    if name_col in frame and "backbone" in frame:
        return frame[name_col].fillna(frame["backbone"]).astype(str)
    if name_col in frame:
        return frame[name_col].astype(str)
    return frame["backbone"].astype(str)


def spread(values: Sequence[float], gap: float) -> np.ndarray:
    """Positions for labels of ``values`` (one axis) at least ``gap`` apart, in the same order and as close to the
    values as that allows: labels of nearby points no longer print over each other."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    positions = values[order].copy()
    for _ in range(100):  # push overlapping neighbours apart until none overlaps
        moved = False
        for i in range(1, len(positions)):
            if positions[i] - positions[i - 1] < gap - 1e-12:
                middle = (positions[i] + positions[i - 1]) / 2
                positions[i - 1], positions[i] = middle - gap / 2, middle + gap / 2
                moved = True
        if not moved:
            break
    out = np.empty_like(positions)
    out[order] = positions
    return out


def key_columns(names: Sequence[str]) -> int:
    """Two key columns for a long key of short names, else one."""
    return 2 if len(names) > 8 and max(len(str(n)) for n in names) <= KEY_WIDTH[2] - 4 else 1
