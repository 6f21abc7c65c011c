"""The report's own pages, written as MyST Markdown for the book: the overview and the provenance chapter.

Prose is fixed text; every value that came from a table, a sidecar or a notebook (backbone names, labels, error
messages, paths) goes into HTML built by :mod:`bobkit.report.tables` or :func:`html_text` (escaped, then cleaned by
:func:`bobkit.report.sanitize.clean_html`) or into Markdown through :func:`markdown_text` (every punctuation mark
backslash-escaped), so none of it can become markup.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from bobkit.report.claims import ClaimResult
from bobkit.report.execute import NotebookRun
from bobkit.report.inputs import TableSource
from bobkit.report.runs import RunRecord
from bobkit.report.sanitize import clean_html
from bobkit.report.tables import readable

LEADERBOARD_TOP = 10
LEADERBOARD_COLUMNS = ["rank", "display_name", "score", "family", "method_kind", "pretrain_data", "params_millions"]
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_text(value: Any) -> str:
    """``value`` as literal Markdown text: every ASCII punctuation mark backslash-escaped, newlines flattened."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).split()))


def title_text(value: Any) -> str:
    """``value`` fit for a page or section title: without ``< > & " '``. Titles reach places that unescape them
    (the book theme's print header takes ``title|striptags``; Sphinx's search shows section titles as HTML), so
    a title must not hold markup even when escaped."""
    text = " ".join(str(value).split())
    return text.translate(str.maketrans({"<": "‹", ">": "›", "&": "+", '"': "", "'": "’"}))


def html_text(value: Any) -> str:
    """``value`` escaped for HTML."""
    return html.escape("" if value is None else str(value))


def html_block(fragment: str) -> str:
    """A cleaned HTML fragment as one Markdown HTML block (one line, blank lines around it)."""
    return "\n" + clean_html(fragment).replace("\n", " ") + "\n"


@dataclass
class Chapter:
    """An analysis notebook as a chapter of the book."""

    name: str
    title: str
    run: NotebookRun
    doc: str  # the book path without suffix: notebooks/01_leaderboard
    stderr_removed: int = 0  # stderr outputs (warnings, progress bars) left out of the page

    @property
    def link(self) -> str:
        """A Markdown link to the chapter."""
        return f"[{markdown_text(self.title)}]({self.doc}.ipynb)"


@dataclass
class ReportPages:
    """Everything the overview and provenance pages show."""

    source: TableSource
    chapters: list[Chapter]
    claims: list[ClaimResult]
    claims_document: Mapping[str, Any]
    runs: list[RunRecord]
    failed: list[RunRecord]
    environment: Mapping[str, Any]
    run_facts: Mapping[str, Any]
    figures_root: Path
    generated: str = field(default_factory=lambda: _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))


# --------------------------------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------------------------------

def _what_is_analysed(pages: ReportPages) -> str:
    source = pages.source
    if source.results_path is None:
        what = "the public reference tables shipped with bobkit (timm's ImageNet results, the BoB retrieval snapshot)"
    else:
        what = (f"the results table <code>{html_text(source.results_path)}</code> ({source.n_rows:,} rows, "
                f"{len(source.runs):,} runs)")
    return html_block(f"<p class='bob-lead'>Battle of the Backbones analyses of {what}. Generated "
                      f"{html_text(pages.generated)}.</p>")


def _failures(chapters: Sequence[Chapter]) -> str:
    failed = [c for c in chapters if not c.run.ok]
    if not failed:
        return ""
    items = "".join(f"<li><b>{html_text(c.name)}</b>: <code>{html_text(c.run.error)}</code></li>" for c in failed)
    return html_block(f"<div class='admonition error bob-failures'><p class='admonition-title'>"
                      f"{len(failed)} analysis notebook(s) failed</p><ul>{items}</ul><p>Their chapters show the "
                      "failing cell. The numbers below that depend on them are marked not measurable.</p></div>")


def _leaderboard(pages: ReportPages, chapters: Mapping[str, Chapter]) -> list[str]:
    parts = ["## Overall leaderboard", ""]
    csv = pages.figures_root / "01_leaderboard" / "leaderboard.csv"
    if not csv.is_file():
        parts.append("No overall leaderboard was computed for this table (see the leaderboard chapter).")
        return parts
    board = pd.read_csv(csv)
    columns = [c for c in LEADERBOARD_COLUMNS if c in board]
    parts.append("Overall score: per-setting z-scores averaged within each task, then over tasks; brackets are "
                 "95% bootstrap intervals over settings and seeds.")
    parts.append(html_block(readable(board.head(LEADERBOARD_TOP), columns=columns, collapse_after=None).to_html()))
    if len(board) > LEADERBOARD_TOP:
        parts.append(html_block(readable(board, columns=columns, caption=f"All {len(board)} backbones",
                                         collapse_after=0).to_html()))
    if "01_leaderboard" in chapters:
        parts.append(f"Per task, small backbones and the figure: {chapters['01_leaderboard'].link}.")
    return parts


def _claims_table(claims: Sequence[ClaimResult]) -> str:
    frame = pd.DataFrame([{"the paper says": c.claim, "paper": c.stated, "this table": c.answer, "n": c.n,
                           "verdict": c.marked_verdict + (f": {c.reason}" if c.reason else "")} for c in claims])
    return readable(frame, collapse_after=None).to_html()


def overview_markdown(pages: ReportPages) -> str:
    """The overview page: what is analysed, failures, the leaderboard, then one section per question."""
    chapters = {c.name: c for c in pages.chapters}
    parts = ["# Overview", "", _what_is_analysed(pages), _failures(pages.chapters)]
    parts += _leaderboard(pages, chapters)
    parts += ["", "## The paper's questions", "",
              "Each claim of the paper beside this table's answer: the value with its 95% interval and n, and "
              "whether they agree. ✓ agrees, ✗ disagrees, ? inconclusive (the interval includes the paper's side "
              "and the other), – not measurable with this table (the reason is given)."]
    for question in pages.claims_document.get("questions", []):
        rows = [c for c in pages.claims if c.question == question.get("id")]
        if not rows:
            continue
        parts += ["", f"### {markdown_text(question.get('title', question.get('id')))}", "",
                  html_block(_claims_table(rows))]
        chapter = chapters.get(str(question.get("chapter")))
        if chapter is not None:
            parts.append(f"Details: {chapter.link}.")
    source = " ".join(str(pages.claims_document.get("source", "")).split())
    note = " ".join(str(pages.claims_document.get("note", "")).split())
    parts += ["", "## Source of the paper's values", "", markdown_text(source), "", markdown_text(note), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------------

def _runs_frame(records: Iterable[RunRecord], *, with_error: bool = False) -> pd.DataFrame:
    """One row per run; the run key links to the run's page (or notebook), ``note`` says why there is none."""
    rows = []
    for r in records:
        row = {"run key": r.run_key, "href": r.href, "task": r.task, "backbone": r.backbone, "dataset": r.dataset,
               "protocol": r.protocol, "seed": r.seed, "status": r.status, "device": r.device,
               "code version": r.code_version[:12], "note": "" if r.href else r.note}
        if with_error:
            row["error"] = r.error
        rows.append(row)
    frame = pd.DataFrame(rows)
    if len(frame) and not frame["note"].astype(bool).any():
        frame = frame.drop(columns="note")
    return frame


def _facts_table(facts: Mapping[str, Any], label: str) -> str:
    frame = pd.DataFrame([{label: k, "runs": v} for k, v in dict(facts).items()])
    return readable(frame, collapse_after=15).to_html() if len(frame) else "<p>none recorded</p>"


def provenance_markdown(pages: ReportPages) -> str:
    """The provenance chapter: the table, the runs behind it, failures, notebooks, code, packages, devices."""
    source = pages.source
    parts = ["# Runs and provenance", "", "## The table", ""]
    table_facts = pd.DataFrame([
        {"what": "results table", "value": str(source.results_path or "public reference tables")},
        {"what": "rows", "value": f"{source.n_rows:,}"},
        {"what": "run keys in the table", "value": f"{len(source.runs):,}"},
        {"what": "runs folder", "value": str(source.runs_dir or "none")},
        {"what": "runs folder from", "value": source.runs_dir_note},
        {"what": "report generated", "value": pages.generated},
    ])
    parts.append(html_block(readable(table_facts, collapse_after=None).to_html()))
    parts += ["## Runs behind the table", ""]
    if pages.runs:
        parts.append(f"Exactly the {len(pages.runs):,} run keys of the table, each with its executed notebook.")
        parts.append(html_block(readable(_runs_frame(pages.runs), links={"run key": "href"},
                                         caption=f"The {len(pages.runs):,} runs", collapse_after=40).to_html()))
        tasks = sorted({r.task for r in pages.runs if r.href})
        if tasks:
            parts.append("By task: " + ", ".join(f"[{markdown_text(task)}](runs/{task}/index.md)" for task in tasks)
                         + ".")
    else:
        parts.append("This table has no runs behind it.")
    parts += ["", "## Failed runs", ""]
    if pages.failed:
        parts.append("Cells of the same runs folder that failed; the table, built from complete runs, leaves them "
                     "out.")
        parts.append(html_block(readable(_runs_frame(pages.failed, with_error=True), links={"run key": "href"},
                                         caption=f"{len(pages.failed):,} failed runs", collapse_after=40).to_html()))
    else:
        parts.append("No failed run is recorded in the runs folder.")
    parts += ["", "## Analysis notebooks", ""]
    notebooks = pd.DataFrame([{"notebook": c.title, "href": f"{c.doc}.html", "status": "ok" if c.run.ok else "failed",
                               "seconds": c.run.seconds, "stderr outputs left out": c.stderr_removed,
                               "error": c.run.error or ""} for c in pages.chapters])
    parts.append("Published notebooks leave out their stderr output (progress bars, Python warnings); the executed "
                 "originals keep it (the analysis notebooks' in `_work/` of the report folder, the runs' in the runs "
                 "folder).")
    parts.append(html_block(readable(notebooks, links={"notebook": "href"}, collapse_after=None).to_html()))
    parts += ["", "## Code versions", "", "Code version of each run (the hash in its sidecar):", "",
              html_block(_facts_table(pages.run_facts.get("code_version", {}), "code version")),
              "The report itself was built from:", "",
              html_block(readable(pd.DataFrame([
                  {"what": "code version", "value": pages.environment.get("code_version") or "not a git checkout"},
                  {"what": "python", "value": pages.environment.get("python", "")},
                  {"what": "platform", "value": pages.environment.get("platform", "")}]),
                  collapse_after=None).to_html())]
    parts += ["## Packages", "", "Installed when the report was built:", "",
              html_block(readable(pd.DataFrame([{"package": k, "version": v} for k, v in
                                                 pages.environment.get("packages", {}).items()]),
                                  collapse_after=None).to_html()),
              "Recorded by the runs:", "", html_block(_facts_table(pages.run_facts.get("libraries", {}), "package"))]
    parts += ["## Devices", "", html_block(_facts_table(pages.run_facts.get("device", {}), "device")), ""]
    return "\n".join(parts)


def task_runs_markdown(task: str, records: Sequence[RunRecord]) -> str:
    """A page per task under provenance: its runs (the book lists their pages beneath it)."""
    frame = _runs_frame(records).drop(columns=["task"])
    # links from runs/<task>/index.html: the run pages sit beside it
    frame["href"] = [href.split("/", 2)[-1] if href else "" for href in frame["href"]]
    return "\n".join([f"# {title_text(task)} runs", "",
                      f"The {len(records):,} {markdown_text(task)} runs of the table and the failed ones of its "
                      "runs folder, each with its executed notebook.",
                      html_block(readable(frame, links={"run key": "href"}, collapse_after=None).to_html())])
