"""The report's own pages, written as MyST Markdown for the book: the overview and the provenance chapter.

Prose is fixed text; every value that came from a table, a sidecar or a notebook (backbone names, labels, error
messages, paths) goes into HTML built by :mod:`bobkit.analysis.tables` or :func:`html_text` (escaped, then cleaned by
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

from bobkit.analysis import findings as paper
from bobkit.analysis.notebook import read_summary
from bobkit.analysis.prose import leaderboard_notes, plain_text
from bobkit.analysis.tables import readable
from bobkit.report.answers import Answer
from bobkit.report.execute import NotebookRun
from bobkit.report.inputs import TableSource, shown_path
from bobkit.report.runs import RunRecord
from bobkit.report.sanitize import clean_html

LEADERBOARD_TOP = 10
LEADERBOARD_COLUMNS = ["rank", "display_name", "score", "gap_to_best", "family", "method_kind", "pretrain_data",
                       "params_millions"]
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
    answers: list[Answer]
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
        what = (f"the results table <code>{html_text(shown_path(source.results_path))}</code> ({source.n_rows:,} rows, "
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
    parts.append("Overall score: per-setting z-scores averaged within each task, then over the tasks every backbone "
                 "has; brackets are 95% bootstrap intervals over settings, seeds and test items. Gap to best: the "
                 "distance to the best pretrained backbone of each setting in the metric's own units (0 = the best), "
                 "averaged the same way.")
    notes = leaderboard_notes(read_summary(csv.parent))
    if notes:
        parts.append(markdown_text(plain_text(notes)))
    parts.append(html_block(readable(board.head(LEADERBOARD_TOP), columns=columns, collapse_after=None).to_html()))
    if len(board) > LEADERBOARD_TOP:
        parts.append(html_block(readable(board, columns=columns, caption=f"All {len(board)} backbones",
                                         collapse_after=0).to_html()))
    if "01_leaderboard" in chapters:
        parts.append(f"Per task, small backbones and the figure: {chapters['01_leaderboard'].link}.")
    return parts


def _answer_block(answer: Answer) -> str:
    """One finding: the paper's claim in a sentence, then its value beside this table's (interval, n, agreement)."""
    frame = pd.DataFrame([{"the paper's value": answer.stated, "this table": answer.answer or "–", "n": answer.n,
                           "agreement": answer.marked_verdict}])
    claim = f"<p class='bob-claim'><b>The paper:</b> {html_text(answer.claim)}</p>"
    if answer.assumed:
        claim += f"<p class='bob-claim'><i>Assumed here, not stated by the paper:</i> {html_text(answer.assumed)}</p>"
    # a number with its interval stays on one line; an answer in words wraps
    unbroken = ["this table"] if len(answer.answer) <= 24 else []
    table = readable(frame, caption=f"Measured here: {answer.measure}", collapse_after=None,
                     unbroken=unbroken).to_html()
    return html_block(claim + table)


def _paper_source() -> list[str]:
    """The citation, the caveat and where in the paper each finding is stated."""
    document = paper.load_findings()
    source = document["source"]
    where = pd.DataFrame([{"finding": " ".join(str(item["claim"]).split()), "where in the paper": item["where"],
                           "location checked": bool(item.get("where_verified", False))}
                          for item in document["findings"].values()])
    return ["", "## Source of the paper's values", "", markdown_text(source["citation"]),
            f"<{source['url']}>" if str(source.get("url", "")).startswith("https://") else "", "",
            markdown_text(document.get("note", "")), "",
            html_block(readable(where, caption="Where each finding is stated", collapse_after=0).to_html()), ""]


def overview_markdown(pages: ReportPages) -> str:
    """The overview page: what is analysed, failures, the leaderboard, then one section per question of the paper
    with each finding's stated value beside the answer its notebook recorded."""
    chapters = {c.name: c for c in pages.chapters}
    parts = ["# Overview", "", _what_is_analysed(pages), _failures(pages.chapters)]
    parts += _leaderboard(pages, chapters)
    parts += ["", "## The paper's questions", "",
              "Each finding of the paper beside this table's answer, as its chapter computed it: the value with its "
              "95% interval and n, and whether they agree. ✓ agrees, ✗ disagrees, ? unclear (the interval "
              "includes the paper's side and the other), – not measurable with this table (the reason is given)."]
    for question in paper.questions():
        rows = [a for a in pages.answers if a.question == question["id"]]
        if not rows:
            continue
        parts += ["", f"### {markdown_text(question['title'])}", ""]
        parts += [_answer_block(row) for row in rows]
        links = [chapters[name].link for name in dict.fromkeys(row.chapter for row in rows) if name in chapters]
        if links:
            parts.append("Details: " + ", ".join(links) + ".")
    parts += _paper_source()
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------------------------

def _what_ran(record: RunRecord, *, with_task: bool = True) -> str:
    """``classification · resnet18.tv_in1k · fashion_mnist · linear_probe · seed 0`` (one cell that wraps)."""
    parts = [record.task] if with_task else []
    parts += [record.what_ran]
    seed = [f"seed {record.seed}"] if record.seed != "" else []
    return " · ".join(str(p) for p in [*parts, *seed] if p)


def _runs_frame(records: Iterable[RunRecord], *, with_task: bool = True) -> pd.DataFrame:
    """One row per run: the run key (linked to the run's page or notebook), what ran in one wrapping cell, the
    status (with the reason a run has no page) and the code version; the device is on the run's page and counted
    under Devices. Few columns, so the table fits the page's column."""
    rows = [{"run key": r.run_key, "href": r.href, "what ran": _what_ran(r, with_task=with_task),
             "status": r.status + ("" if r.href or not r.note else f" ({r.note})"),
             "code version": r.code_version[:12]} for r in records]
    return pd.DataFrame(rows, columns=["run key", "href", "what ran", "status", "code version"])


def _failed_runs_html(records: Sequence[RunRecord], collapse_after: int = 10) -> str:
    """Each failed run on its own lines: the run key (linked to its notebook), what it ran, and its error in full
    (an error is a sentence with paths in it: a table column would squeeze it or push the table off the page)."""
    items = []
    for r in records:
        key = html_text(r.run_key)
        link = f"<a href='{html_text(r.href)}'>{key}</a>" if r.href else key
        what = " · ".join(html_text(v) for v in (r.task, r.backbone, r.dataset, r.protocol, r.setting_detail) if v)
        seed = f" · seed {html_text(r.seed)}" if r.seed != "" else ""
        error = html_text(r.error).replace("\n", "<br>")  # the page's HTML block is one line
        items.append(f"<li><p><b>{link}</b>: {what}{seed}</p><pre class='bob-error'>{error}</pre></li>")
    listing = f"<ul class='bob-failed'>{''.join(items)}</ul>"
    if len(records) > collapse_after:
        return (f"<details class='bob-collapsible'><summary>{len(records):,} failed runs (show)</summary>"
                f"{listing}</details>")
    return listing


def _facts_table(facts: Mapping[str, Any], label: str) -> str:
    frame = pd.DataFrame([{label: k, "runs": v} for k, v in dict(facts).items()])
    return readable(frame, collapse_after=15).to_html() if len(frame) else "<p>none recorded</p>"


def provenance_markdown(pages: ReportPages) -> str:
    """The provenance chapter: the table, the runs behind it, failures, notebooks, code, packages, devices."""
    source = pages.source
    parts = ["# Runs and provenance", "", "## The table", ""]
    table_facts = pd.DataFrame([
        {"what": "results table",
         "value": shown_path(source.results_path) if source.results_path else "public reference tables"},
        {"what": "rows", "value": f"{source.n_rows:,}"},
        {"what": "run keys in the table", "value": f"{len(source.runs):,}"},
        {"what": "runs folder", "value": shown_path(source.runs_dir) if source.runs_dir else "none"},
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
        parts.append(html_block(_failed_runs_html(pages.failed)))
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
    frame = _runs_frame(records, with_task=False)
    # links from runs/<task>/index.html: the run pages sit beside it
    frame["href"] = [href.split("/", 2)[-1] if href else "" for href in frame["href"]]
    return "\n".join([f"# {title_text(task)} runs", "",
                      f"The {len(records):,} {markdown_text(task)} runs of the table and the failed ones of its "
                      "runs folder, each with its executed notebook.",
                      html_block(readable(frame, links={"run key": "href"}, collapse_after=None).to_html())])
