"""The helper every analysis notebook uses: notes, figures (PNG), tables (CSV) and headline numbers.

Headline numbers go to ``summary.json`` in the notebook's figures folder, which the report and the tests read
(:func:`read_summary`). Its keys: ``notebook``, ``headlines`` (Markdown sentences), ``skipped`` (section -> reason),
``figures``, ``tables``, ``findings`` (paper finding id -> the paper's value and this table's answer, see
:meth:`Analysis.finding`; the report's overview shows them), plus whatever a notebook records. Tables display as
the book shows them (:func:`bobkit.analysis.tables.readable`), in JupyterLab as in the published report. Text
that came from a table is escaped before it enters Markdown (:func:`bobkit.analysis.prose.md`), and
:meth:`Analysis.say` / :meth:`Analysis.note` neutralise any HTML tag left in their text.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd

from bobkit.analysis import findings as paper
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.prose import md, neutralise_html
from bobkit.analysis.tables import ReadableTable, readable
from bobkit.data.errors import MissingDataError
from bobkit.utils.files import atomic_path, write_json

SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------------------------------------------------

def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return False
    return get_ipython() is not None


def _display(obj: Any) -> None:
    if _in_ipython():
        from IPython.display import display

        display(obj)
    elif isinstance(obj, pd.DataFrame):
        print(obj.to_string(max_rows=20))
    elif isinstance(obj, ReadableTable):
        print(repr(obj))
    # figures outside a notebook are only saved


def shown_table(frame: pd.DataFrame, name: str, *, show: int, columns: Sequence[str] | None = None,
                digits: int = 2, labels: Mapping[str, str] | None = None) -> ReadableTable:
    """What :meth:`Analysis.table` displays: the first ``show`` rows of ``frame`` (``columns`` only) as a
    :class:`~bobkit.analysis.tables.ReadableTable`, captioned when rows are left out."""
    caption = f"First {show} of {len(frame):,} rows (all in {name}.csv)" if len(frame) > show else None
    return readable(frame.head(show), columns=[c for c in columns if c in frame] if columns else None,
                    caption=caption, digits=digits, collapse_after=None, labels=labels)


def _markdown(text: str) -> None:
    if _in_ipython():
        from IPython.display import Markdown, display

        display(Markdown(text))
    else:
        print(text)


class Analysis:
    """Outputs of one analysis notebook: notes, figures (PNG), tables (CSV) and headline numbers (``summary.json``).

    Parameters
    ----------
    name:
        The notebook's name (``01_leaderboard``), stored in the summary.
    figures_dir:
        Folder for the PNGs, CSVs and ``summary.json``; ``None`` keeps nothing on disk.
    show:
        Display notes, figures and tables (in a notebook) or not (scripts, tests).
    """

    def __init__(self, name: str, figures_dir: str | os.PathLike[str] | None, *, show: bool = True) -> None:
        self.name = name
        self.dir = Path(figures_dir) if figures_dir is not None else None
        self.show = show
        self.summary: dict[str, Any] = {"notebook": name, "headlines": [], "skipped": {}, "figures": [],
                                        "tables": [], "findings": {}}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write()

    # -- display -----------------------------------------------------------------------------------------------------
    def say(self, text: str, *, headline: bool = False) -> None:
        """Show computed prose (Markdown); ``headline`` also lists it on the report's index page. Table values in
        ``text`` must come through :func:`~bobkit.analysis.prose.md`; HTML tags are neutralised regardless."""
        text = neutralise_html(text)
        if headline:
            self.summary["headlines"].append(text)
            self._write()
        if self.show:
            _markdown(text)

    def note(self, text: str) -> None:
        """Show a note (why something is skipped, a caveat) as a Markdown quote (HTML tags neutralised)."""
        text = neutralise_html(text)
        if self.show:
            _markdown("> **Note.** " + text)

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a section; when the table lacks what it needs (:class:`InsufficientDataError`) or a public file is
        not downloaded yet (:class:`~bobkit.data.errors.MissingDataError`, whose message says how to get it) show
        a note instead of failing, and record the reason under ``skipped``."""
        try:
            yield
        except (InsufficientDataError, MissingDataError) as exc:
            self.summary["skipped"][what] = str(exc)
            self._write()
            self.note(f"*{md(what)}* is skipped: {md(exc)}")

    def require(self, condition: bool, reason: str) -> None:
        """Raise :class:`InsufficientDataError` (caught by :meth:`guard`) unless ``condition``."""
        if not condition:
            raise InsufficientDataError(reason)

    # -- outputs -----------------------------------------------------------------------------------------------------
    def figure(self, fig: Any, name: str) -> Path | None:
        """Save ``fig`` as ``<figures_dir>/<name>.png``, display it once, close it."""
        import matplotlib.pyplot as plt

        from bobkit.analysis.plots import save_figure

        path = save_figure(fig, self.dir, name)
        if path is not None:
            self.summary["figures"].append(path.name)
            self._write()
        if self.show:
            _display(fig)
        plt.close(fig)
        return path

    def table(self, frame: pd.DataFrame, name: str, *, show: int | None = 20, columns: Sequence[str] | None = None,
              digits: int = 2, labels: Mapping[str, str] | None = None) -> Path | None:
        """Save ``frame`` as ``<figures_dir>/<name>.csv`` (every row and column) and display its first ``show`` rows
        (``columns`` only, with the interval bounds that belong to them; ``labels``: header overrides) as the book
        shows tables (:func:`bobkit.analysis.tables.readable`: no index, integers as integers,
        ``0.51 [0.31, 0.71]``, full names); a caption says when rows are left out of the display."""
        path = None
        if self.dir is not None:
            path = self.dir / f"{name}.csv"
            with atomic_path(path) as tmp:
                frame.to_csv(tmp, index=False)
            self.summary["tables"].append(path.name)
            self._write()
        if self.show and show:
            _display(shown_table(frame, name, show=show, columns=columns, digits=digits, labels=labels))
        return path

    def record(self, **values: Any) -> None:
        """Store headline numbers in ``summary.json`` (merged into its top level)."""
        self.summary.update(values)
        self._write()

    # -- the paper ----------------------------------------------------------------------------------------------
    def claim(self, finding_id: str) -> None:
        """Show the paper's stated finding ``finding_id`` (``bobkit/reference/paper_findings.yaml``) with its
        source."""
        self.say(paper.claim_text(finding_id))

    def finding(self, finding_id: str, *, shown: bool, value: float | None = None, ci_low: float | None = None,
                ci_high: float | None = None, n: int | None = None, paper_value: float | None = None,
                statement: str = "", agreement: str | None = None, reason: str = "") -> None:
        """Record how this table answers the paper's finding ``finding_id`` under ``summary["findings"]``:
        ``shown`` (False: the table cannot show it, ``reason`` says why), this table's ``value`` with its interval
        and ``n``, the paper's value, ``agreement`` (``agrees`` / ``disagrees`` / ``unclear``; computed from the
        interval and the paper's value when not given) and a one-sentence ``statement`` (Markdown, table values
        escaped). The helpers of :mod:`bobkit.analysis.findings` return these keywords; the report's overview
        displays what is recorded here and computes nothing itself."""
        paper.finding(finding_id)  # a typo in an id fails here, not in the report
        entry: dict[str, Any] = {"shown": bool(shown), "statement": neutralise_html(statement),
                                 "paper_value": paper_value, "value": value, "ci_low": ci_low, "ci_high": ci_high,
                                 "n": n, "agreement": agreement if shown else None,
                                 "reason": "" if shown else neutralise_html(reason)}
        if shown and agreement is None and paper_value is not None and value is not None:
            entry["agreement"] = paper.agreement(value, ci_low if ci_low is not None else float("nan"),
                                                 ci_high if ci_high is not None else float("nan"), paper_value)
        self.summary["findings"][finding_id] = entry
        self._write()

    def describe_source(self, table: pd.DataFrame) -> None:
        """Say what table is analysed: source, rows, backbones, tasks, settings, families."""
        source = table.attrs.get("source", "a results table")
        n_settings = int(table["setting_id"].nunique()) if len(table) and "setting_id" in table else 0
        families = ", ".join(md(f) for f in sorted(map(str, table["family"].dropna().unique()))) or "unknown"
        tasks = ", ".join(md(t) for t in sorted(map(str, table["task"].unique()))) or "none"
        self.record(source=source, n_rows=int(len(table)), n_backbones=int(table["backbone"].nunique()),
                    n_settings=n_settings, tasks=sorted(map(str, table["task"].unique())))
        self.say(f"**Data:** {md(source)}: {len(table):,} rows, {table['backbone'].nunique():,} backbones, "
                 f"{n_settings} settings (task x dataset x protocol x metric x measurement parameters) over tasks "
                 f"{tasks}; families: {families}.")

    def _write(self) -> None:
        if self.dir is not None:
            write_json(self.dir / SUMMARY_FILE, self.summary)


def read_summary(figures_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``summary.json`` an analysis notebook wrote (empty dict when absent)."""
    try:
        return json.loads((Path(figures_dir) / SUMMARY_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
