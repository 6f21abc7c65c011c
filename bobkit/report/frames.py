"""Pandas tables in executed notebooks, published as the report shows every other table.

A task notebook run by ``bob run`` ends with a DataFrame (``result.to_frame()``) that Jupyter stored as pandas' own
HTML: an index column, ``1000.0`` for a count, six decimals everywhere. The report publishes stored outputs without
re-executing them, so it reads such a table back (the text of its cells only, never its markup) and shows it through
:func:`bobkit.analysis.tables.readable`. Anything else (a table with merged cells, a truncated one, HTML around it)
is left as it is. A long table pandas cut to its first and last rows keeps what it showed, with a caption that
says so.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd

from bobkit.analysis.tables import readable

# How pandas writes a missing value into its HTML.
MISSING_TEXT = frozenset({"", "NaN", "nan", "None", "<NA>", "NaT"})
_PANDAS_TABLE = re.compile(r'<table\b[^>]*class="dataframe"', re.IGNORECASE)
# The line pandas writes under a table it cut (display.max_rows): "70 rows × 5 columns".
_SHAPE_LINE = re.compile(r"^(\d+) rows × (\d+) columns$")
_ELLIPSIS = "..."


class _PandasTableReader(HTMLParser):
    """Rows of one pandas table as ``(section, [(tag, text), ...])`` and the text outside it; ``plain`` turns False
    on anything a plain one-level table does not hold (merged cells, a second table)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[tuple[str, list[tuple[str, str]]]] = []
        self.plain = True
        self.outside: list[str] = []
        self._section = ""
        self._cell: list[str] | None = None
        self._tables = 0
        self._skipping = 0  # inside <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "style":
            self._skipping += 1
        elif tag == "table":
            self._tables += 1
            self.plain &= self._tables == 1
        elif tag in {"thead", "tbody"}:
            self._section = tag
        elif tag == "tr":
            self.rows.append((self._section, []))
        elif tag in {"th", "td"}:
            self.plain &= not any(name in {"colspan", "rowspan"} for name, _ in attrs) and bool(self.rows)
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._skipping = max(0, self._skipping - 1)
        elif tag == "table":
            self._section = ""
        elif tag in {"th", "td"} and self._cell is not None and self.rows:
            self.rows[-1][1].append((tag, "".join(self._cell).strip()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._cell is not None:
            self._cell.append(data)
        elif data.strip() and not (self._tables and self._section):  # a "70 rows x 5 columns" line, a heading
            self.outside.append(data.strip())


def _column_values(texts: list[str]) -> pd.Series:
    """A column's cell texts as numbers when every present one is a number, as booleans when every one is True or
    False, else as text (missing as None)."""
    present = [t for t in texts if t not in MISSING_TEXT]
    if present and set(present) <= {"True", "False"}:
        return pd.Series([None if t in MISSING_TEXT else t == "True" for t in texts], dtype=object)
    numbers = pd.to_numeric(pd.Series(present, dtype=object), errors="coerce")
    if present and numbers.notna().all():
        return pd.to_numeric(pd.Series([None if t in MISSING_TEXT else t for t in texts], dtype=object))
    return pd.Series([None if t in MISSING_TEXT else t for t in texts], dtype=object)


def _default_positions(labels: pd.Series, rows_in_full: int) -> bool:
    """Whether index labels are row positions 0..n-1 (all of them, or the first and last pandas kept)."""
    values = list(labels)
    if not all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
        return False
    return values[0] == 0 and values[-1] == rows_in_full - 1 and all(a < b for a, b in zip(values, values[1:]))


def frame_from_pandas_html(fragment: str) -> pd.DataFrame | None:
    """The DataFrame a pandas HTML table shows, with its index as leading column(s) (a default 0..n-1 index is
    dropped), or None when ``fragment`` is not one plain pandas table."""
    if len(_PANDAS_TABLE.findall(fragment)) != 1:
        return None
    reader = _PandasTableReader()
    reader.feed(fragment)
    reader.close()
    head = [[text for _, text in cells] for section, cells in reader.rows if section == "thead"]
    body = [cells for section, cells in reader.rows if section == "tbody"]
    shape = _SHAPE_LINE.match(" ".join(reader.outside))
    if not reader.plain or not head or not body or (reader.outside and not shape):
        return None
    rows_in_full = int(shape.group(1)) if shape else len(body)
    body = [row for row in body if any(text != _ELLIPSIS for _, text in row)]  # the row marking a cut
    if not body or _ELLIPSIS in head[0]:  # columns cut: too wide to show as a table of the book
        return None
    n_index = sum(1 for tag, _ in body[0] if tag == "th")
    if any([tag for tag, _ in row[:n_index]] != ["th"] * n_index or len(row) != len(body[0]) for row in body):
        return None
    columns = head[0][n_index:]
    if len(head[0]) != len(body[0]) or len(head) > 2 or len(set(columns)) != len(columns):
        return None
    names = head[1][:n_index] if len(head) == 2 and not any(head[1][n_index:]) else [""] * n_index
    data = {}
    for position, name in enumerate(names):
        label = name or ("label" if n_index == 1 else f"label_{position}")
        data[label] = _column_values([row[position][1] for row in body])
    if n_index == 1 and not names[0] and _default_positions(data["label"], rows_in_full):
        del data["label"]  # the default index says nothing
    if set(data) & set(columns):
        return None
    for position, column in enumerate(columns, start=n_index):
        data[column] = _column_values([row[position][1] for row in body])
    frame = pd.DataFrame(data)
    frame.attrs["rows_in_full"] = rows_in_full
    return frame


def readable_html(fragment: str) -> str | None:
    """``fragment`` re-rendered through :func:`~bobkit.analysis.tables.readable` when it is one plain pandas table,
    else None: never collapsed (a run's own outputs are short), scores with three decimals and counts among them as
    whole numbers (a task's ``to_frame()`` lists both in one column)."""
    frame = frame_from_pandas_html(fragment)
    if frame is None:
        return None
    shown, total = len(frame), frame.attrs["rows_in_full"]
    caption = f"First and last {shown} of {total} rows, as the notebook showed them" if shown < total else None
    return readable(frame, caption=caption, collapse_after=None, digits=3, whole_cells=True).to_html()
