"""Tables made to be read: the one styling helper for every table the analysis notebooks and the report show.

:func:`readable` turns a DataFrame into an HTML table without an index column, with integers as integers, large
sizes as ``1.28 M``, estimate/interval column triples merged into ``0.51 [0.31, 0.71]``, full backbone names that
wrap, numeric columns right-aligned (CSS class ``num``) and long tables collapsed behind a ``<details>`` element.
Every value is HTML-escaped: a ``display_name`` of ``<img src=x onerror=alert(1)>`` shows as that text.

It lives with the analysis so that a notebook opened in JupyterLab and the published book show the same table:
:meth:`bobkit.analysis.notebook.Analysis.table` displays through it, :func:`use_readable_tables` makes every
DataFrame a kernel displays render this way (``bob report`` turns it on in the kernels it starts), and the report's
own pages (:mod:`bobkit.report.pages`) build their tables with it. The look (wrapping, alignment, stripes) is
:data:`TABLE_CSS`: shipped with the table in a notebook, written into the book's static files for the site (where
notebook outputs lose their ``<style>``, see :mod:`bobkit.report.sanitize`).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

#: Readable headers for the results-table and leaderboard columns the analysis shows most.
COLUMN_LABELS: dict[str, str] = {
    "display_name": "backbone",
    "backbone": "model id",
    "params_millions": "params (M)",
    "pretrain_images": "pretraining images",
    "pretrain_data": "pretraining data",
    "method_kind": "method kind",
    "n_settings": "settings",
    "n_items": "test items",
    "pvalue": "p",
    "wilcoxon_p": "Wilcoxon p",
}
#: Columns holding names that must be shown in full (they wrap instead of being cut).
NAME_COLUMNS = frozenset({"display_name", "backbone", "name", "architecture", "model", "label", "run label"})
#: Decimals for columns whose values have a natural precision.
COLUMN_DIGITS: dict[str, int] = {"params_millions": 1}
P_VALUE_COLUMNS = frozenset({"p", "pvalue", "p_value", "wilcoxon_p"})
#: Counts and ranks: shown as integers even when a bootstrap bound between them is fractional.
INTEGER_COLUMNS = frozenset({"rank", "n", "n_settings", "n_tasks", "n_items", "n_pairs", "seed", "runs"})
# Bases an unprefixed ``ci_low``/``ci_high`` pair belongs to, in order of preference.
_UNPREFIXED_BASES = ("rho", "mean", "coef", "estimate", "value", "diff", "delta", "score", "median")
_BOUND_SUFFIXES = (("_lo", "_hi"), ("_low", "_high"), ("_ci_low", "_ci_high"))
_UNPREFIXED_BOUNDS = (("ci_low", "ci_high"), ("lo", "hi"), ("low", "high"))
# Where a long name may break: after these characters (<wbr> marks the spot; the text itself is unchanged).
_BREAK_AFTER = re.compile(r"([_./-])(?=\w)")
_LONG_WORD = re.compile(r"\S{21,}")
#: Values at or above this size are written with a unit (``1.28 M``, ``2.3 B``).
LARGE = 1e6
#: The tables' look, for JupyterLab (inline, before the table) and the book (``_static/bob-tables.css``).
TABLE_CSS = """\
.bob-table-wrap { overflow-x: auto; margin: 0.4rem 0 1rem; }
table.bob-table { border-collapse: collapse; font-size: 0.82rem; line-height: 1.35; width: auto;
                  margin-left: 0; margin-right: auto; }
table.bob-table caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.3rem; }
table.bob-table th, table.bob-table td {
  padding: 0.25rem 0.3rem; vertical-align: top; text-align: left;
  border: none; border-bottom: 1px solid var(--pst-color-border, #d9d9d9);
}
table.bob-table thead th { border-bottom: 2px solid var(--pst-color-text-muted, #888); font-weight: 600; }
table.bob-table tbody tr:nth-child(even) { background: var(--pst-color-surface, #f5f6f7); }
/* numbers: right-aligned, digits in columns, never broken */
table.bob-table .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.bob-table thead th.num { white-space: normal; }
/* names: shown in full, wrapping between words and after _ . / - inside an id (<wbr>), mid-word only when a part
   is longer than the column */
table.bob-table .name { white-space: normal; overflow-wrap: break-word; min-width: 7rem; max-width: 24rem; }
table.bob-table .text { white-space: normal; overflow-wrap: break-word; min-width: 4rem; max-width: 34rem; }
table.bob-table td.keep { white-space: nowrap; }
details.bob-collapsible { margin: 0.4rem 0 1rem; }
details.bob-collapsible > summary { cursor: pointer; font-weight: 600; }
@media print {
  .bob-table-wrap { overflow: visible; }
  table.bob-table { font-size: 9pt; }
  table.bob-table tbody tr:nth-child(even) { background: none; }
  table.bob-table tr { break-inside: avoid; }
}
"""


# --------------------------------------------------------------------------------------------------------------------
# Formatting single values
# --------------------------------------------------------------------------------------------------------------------

def is_missing(value: Any) -> bool:
    """True for ``None``, NaN and pandas' missing markers."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a missing scalar
        return False


def human_size(value: float) -> str:
    """``1281167`` -> ``1.28 M``; ``2.3e9`` -> ``2.3 B``; three significant digits."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def format_number(value: float, *, integral: bool = False, digits: int = 2, p_value: bool = False,
                  tiny: bool = True) -> str:
    """One number as the tables show it: integers without decimals, large values with a unit, p-values in two
    significant digits, everything else with ``digits`` decimals (tiny values in two significant digits unless
    ``tiny`` is off, as inside an interval, whose parts share one format)."""
    if is_missing(value) or not math.isfinite(float(value)):
        return "" if is_missing(value) else str(value)
    value = float(value)
    if abs(value) >= LARGE:
        return human_size(value)
    if integral:
        return f"{int(round(value)):,}"
    if p_value:
        return f"{value:.2g}"
    if tiny and value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def format_interval(value: float, low: float, high: float, **number_format: Any) -> str:
    """``0.51 [0.31, 0.71]``; just the value when the bounds are missing. The three share one format."""
    if is_missing(low) or is_missing(high):
        return format_number(value, **number_format)
    number_format = {**number_format, "tiny": False}
    parts = [format_number(v, **number_format) for v in (value, low, high)]
    return f"{parts[0]} [{parts[1]}, {parts[2]}]"


# --------------------------------------------------------------------------------------------------------------------
# Columns: what each shows and how
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Column:
    """One shown column: its header, the source column(s) and how its cells are written."""

    label: str
    source: str
    low: str | None = None
    high: str | None = None
    numeric: bool = False
    integral: bool = False
    digits: int = 2
    p_value: bool = False
    name: bool = False
    unbroken: bool = False
    whole_cells: bool = False  # a whole number shows without decimals even among fractions

    def cell(self, row: Mapping[str, Any]) -> str:
        """The cell text (not yet escaped) for one row."""
        value = row.get(self.source)
        if not self.numeric:
            if is_missing(value):
                return ""
            if isinstance(value, bool):
                return "yes" if value else "no"
            return str(value)
        whole = self.whole_cells and not is_missing(value) and float(value).is_integer()
        number_format = {"integral": self.integral or whole, "digits": self.digits, "p_value": self.p_value}
        if self.low is not None and self.high is not None:
            return format_interval(value, row.get(self.low), row.get(self.high), **number_format)
        return format_number(value, **number_format)


def _is_number_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _all_integral(series: pd.Series) -> bool:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return bool(len(values)) and bool(((values % 1) == 0).all())


def _interval_bounds(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``{base: (low, high)}`` for every estimate column that has interval bounds beside it."""
    bounds: dict[str, tuple[str, str]] = {}
    columns = list(frame.columns)
    for column in columns:
        for low_suffix, high_suffix in _BOUND_SUFFIXES:
            high = column[: -len(low_suffix)] + high_suffix if column.endswith(low_suffix) else None
            base = column[: -len(low_suffix)] if high else None
            if base and base in frame and high in frame and base not in bounds:
                bounds[base] = (column, high)
    for low, high in _UNPREFIXED_BOUNDS:
        if low in frame and high in frame:
            base = next((b for b in _UNPREFIXED_BASES if b in frame and b not in bounds), None)
            if base is not None:
                bounds[base] = (low, high)
    return {b: lh for b, lh in bounds.items() if _is_number_column(frame[b])}


def _digits_for(frame: pd.DataFrame, columns: Sequence[str | None], digits: int, most: int = 4) -> int:
    """Decimals that show a column's values: ``digits``, or more (up to ``most``) when its typical value (the
    median size, interval bounds included) is small, so an effective robustness of 0.0077 reads 0.0077, not 0.01,
    and its interval is not [-0.00, 0.00]."""
    values = pd.concat([pd.to_numeric(frame[c], errors="coerce") for c in columns if c is not None and c in frame])
    sizes = values[np.isfinite(values) & (values != 0)].abs()
    if sizes.empty:
        return digits
    return int(min(most, max(digits, 1 - np.floor(np.log10(sizes.median())))))


def plan_columns(frame: pd.DataFrame, labels: Mapping[str, str] | None = None, digits: int = 2) -> list[Column]:
    """The columns :func:`readable` shows for ``frame``: bounds merged into their estimate, headers made readable."""
    overrides = dict(labels or {})
    labels = {**COLUMN_LABELS, **overrides}
    if "display_name" not in frame and "backbone" not in overrides:
        labels["backbone"] = "backbone"  # the only name column: no need to call it an id
    bounds = _interval_bounds(frame)
    merged = {c for pair in bounds.values() for c in pair}
    plan = []
    for column in frame.columns:
        if column in merged:
            continue
        series = frame[column]
        numeric = _is_number_column(series)
        low, high = bounds.get(column, (None, None))
        label = labels.get(column, str(column).replace("_", " "))
        if low is not None:
            label = f"{label} [interval]"
        plan.append(Column(
            label=label, source=column, low=low, high=high, numeric=numeric,
            integral=numeric and (str(column) in INTEGER_COLUMNS or (
                _all_integral(series) and (low is None or _all_integral(frame[[low, high]].stack())))),
            digits=COLUMN_DIGITS.get(str(column), _digits_for(frame, [column, low, high], digits)),
            p_value=str(column) in P_VALUE_COLUMNS,
            name=str(column) in NAME_COLUMNS or labels.get(column) in NAME_COLUMNS))
    return plan


# --------------------------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------------------------

def _without_index(frame: pd.DataFrame) -> pd.DataFrame:
    """An unnamed integer index (a RangeIndex, or the positions left after filtering rows) is dropped; any other
    index is data and becomes ordinary leading column(s), unless a column of that name already holds it."""
    unnamed = frame.index.nlevels == 1 and frame.index.name is None
    if unnamed and (isinstance(frame.index, pd.RangeIndex) or pd.api.types.is_integer_dtype(frame.index)):
        return frame.reset_index(drop=True)
    names = [n if n is not None else ("label" if frame.index.nlevels == 1 else f"label_{i}")
             for i, n in enumerate(frame.index.names)]
    if any(name in frame.columns for name in names):
        return frame.reset_index(drop=True)
    out = frame.copy()
    out.index = out.index.set_names(names)
    return out.reset_index()


@dataclass
class ReadableTable:
    """A DataFrame shown as the report shows tables (see the module docstring). Displays itself in notebooks.

    Parameters
    ----------
    frame:
        The table; its index is dropped when it is the default one, shown as leading columns otherwise.
    columns:
        Show only these columns (in this order; bounds of an interval come along with their estimate).
    labels:
        Header overrides, ``{column: header}``.
    caption:
        A short title above the table (also the summary line of a collapsed table).
    collapse_after:
        Tables with more rows than this are collapsed behind a "show" toggle; ``None`` never collapses.
    digits:
        Decimals for non-integer numbers.
    links:
        ``{column: href_column}``: cells of ``column`` link to the URL in ``href_column`` (not shown itself).
    unbroken:
        Columns whose cells never wrap (a text column holding ``0.51 [0.31, 0.71]``).
    whole_cells:
        A whole number shows without decimals in any numeric column, also among fractions (a run's outputs: a
        count such as ``n_test`` in the same column as the scores).
    """

    frame: pd.DataFrame
    columns: Sequence[str] | None = None
    labels: Mapping[str, str] | None = None
    caption: str | None = None
    collapse_after: int | None = 20
    digits: int = 2
    links: Mapping[str, str] | None = None
    unbroken: Sequence[str] = ()
    whole_cells: bool = False
    _plan: list[Column] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        frame = _without_index(self.frame)
        self._hrefs = {column: frame[href] if href in frame else None for column, href in (self.links or {}).items()}
        frame = frame.drop(columns=[h for h in (self.links or {}).values() if h in frame])
        if self.columns is not None:
            missing = [c for c in self.columns if c not in frame]
            if missing:
                raise ValueError(f"columns {missing} are not in the table; it has {list(frame.columns)}")
            keep = list(self.columns)
            extra = [c for base, pair in _interval_bounds(frame).items() if base in keep for c in pair
                     if c not in keep]
            frame = frame[keep + extra]
        self.frame = frame
        self._plan = plan_columns(frame, self.labels, self.digits)
        for column in self._plan:
            column.unbroken = column.source in self.unbroken
            column.whole_cells = self.whole_cells and column.numeric and column.low is None

    def to_html(self) -> str:
        """The table as an HTML fragment (classes only, no inline styles or scripts)."""
        header = "".join(f"<th class='{self._classes(c)}'>{html.escape(c.label)}</th>" for c in self._plan)
        rows = []
        for position, record in enumerate(self.frame.to_dict("records")):
            cells = "".join(f"<td class='{self._classes(c)}'>{self._cell_html(c, record, position)}</td>"
                            for c in self._plan)
            rows.append(f"<tr>{cells}</tr>")
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        table = (f"<div class='bob-table-wrap'><table class='bob-table'>{caption}<thead><tr>{header}</tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table></div>")
        n = len(self.frame)
        if self.collapse_after is not None and n > self.collapse_after:
            what = html.escape(self.caption) if self.caption else "Table"
            return (f"<details class='bob-collapsible'><summary>{what}: {n} rows (show)</summary>{table}"
                    "</details>")
        return table

    def _cell_html(self, column: Column, record: Mapping[str, Any], position: int) -> str:
        text = html.escape(column.cell(record))
        if column.name:  # an id like vit_small_patch16_224.dino may break after _ . / - and nowhere else
            text = _BREAK_AFTER.sub(r"\1<wbr>", text)
        elif not column.numeric:  # so may a long path or module name in a message, never a short word
            text = _LONG_WORD.sub(lambda word: _BREAK_AFTER.sub(r"\1<wbr>", word.group(0)), text)
        hrefs = self._hrefs.get(column.source)
        href = hrefs.iloc[position] if hrefs is not None else None
        if text and isinstance(href, str) and href:
            return f"<a href='{html.escape(href, quote=True)}'>{text}</a>"
        return text

    def _repr_html_(self) -> str:
        # the style travels with the table in JupyterLab; the book drops it and links TABLE_CSS instead
        return f"<style>{TABLE_CSS}</style>{self.to_html()}"

    def __repr__(self) -> str:
        return self.frame.to_string(index=False, max_rows=30)

    @staticmethod
    def _classes(column: Column) -> str:
        kinds = ("num" if column.numeric else "", "name" if column.name else "", "keep" if column.unbroken else "")
        return " ".join(c for c in kinds if c) or "text"


def readable(frame: pd.DataFrame, **options: Any) -> ReadableTable:
    """``frame`` as a :class:`ReadableTable` (options: ``columns``, ``labels``, ``caption``, ``collapse_after``,
    ``digits``, ``links``, ``unbroken``, ``whole_cells``)."""
    return ReadableTable(frame, **options)


def use_readable_tables(shell: Any = None) -> bool:
    """Make every DataFrame the running IPython kernel displays render through :func:`readable`; returns whether a
    shell was found (outside IPython nothing changes)."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython ships with ipykernel
            return False
        shell = get_ipython()
    if shell is None:
        return False
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(pd.DataFrame, lambda frame: readable(frame)._repr_html_())
    return True
