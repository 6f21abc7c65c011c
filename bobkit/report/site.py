"""``bob report``: run the analysis notebooks on a results table and publish them, with the runs behind the table,
as a book (Jupyter Book: sidebar of chapters, per-page contents, search, previous/next links, print style).

:func:`build_report` checks every input before anything runs (notebook names, the table, the output folder), runs
the notebooks with papermill, writes the overview (leaderboard, the paper's findings beside the answers the
notebooks recorded) and the provenance chapter (exactly the table's run keys, from the runs folder the table
records), and builds the site offline into ``<out>/_build/html``. A failing notebook does not stop the build: its chapter shows the error,
the overview lists it, and :attr:`ReportOutcome.failures` lets the caller refuse to publish.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bobkit.report import answers, book, pages
from bobkit.report.execute import NotebookJob, NotebookRun, run_notebooks
from bobkit.report.inputs import (
    TableSource,
    analysis_dir,
    check_out_dir,
    clear_out_dir,
    read_table_source,
    validate_notebook_names,
)
from bobkit.report.runs import RunRecord, failed_runs, report_environment, run_facts, runs_behind
from bobkit.utils.files import write_json

log = logging.getLogger(__name__)

TITLE = "bob-workbook report"


@dataclass
class ReportOutcome:
    """What a report build produced and what failed in it."""

    index: Path
    out_dir: Path
    source: TableSource
    notebooks: list[NotebookRun] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    failed_runs: list[RunRecord] = field(default_factory=list)

    stderr_removed: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> list[NotebookRun]:
        """The analysis notebooks that failed."""
        return [run for run in self.notebooks if not run.ok]


def _run_title(record: RunRecord) -> str:
    seed = f", seed {record.seed}" if record.seed != "" else ""
    return pages.title_text(f"{record.task}: {record.what_ran}{seed}")


def _run_title_cell(record: RunRecord) -> str:
    lines = [f"# {pages.markdown_text(_run_title(record))}", "",
             f"Run key {pages.markdown_text(record.run_key)}; status {pages.markdown_text(record.status)}"
             + (f"; device {pages.markdown_text(record.device)}" if record.device else "") + "."]
    if record.label:
        lines += ["", f"Label: {pages.markdown_text(record.label)}."]
    if record.error:
        lines += ["", f"Error: {pages.markdown_text(record.error)}"]
    return "\n".join(lines)


def publish_runs(records: Sequence[RunRecord], out: Path, *, render_runs: int) -> dict[str, list[tuple[str, str]]]:
    """Sanitised copies of the runs' executed notebooks under ``out/runs/<task>/<key>.ipynb``; returns the book
    pages per task (``{task: [(doc, title)]}``, each task with an index page listing its runs) when there are at
    most ``render_runs`` of them, else links to the notebooks only."""
    publishable = [r for r in records if r.notebook is not None]
    render = len(publishable) <= render_runs
    toc: dict[str, list[tuple[str, str]]] = {}
    for record in publishable:
        doc = f"runs/{record.task}/{record.run_key}"
        try:
            book.prepare_notebook(record.notebook, out / f"{doc}.ipynb", title_cell=_run_title_cell(record))
        except (OSError, ValueError) as exc:  # an unreadable notebook is listed, not published
            record.note = f"not published: {exc}"
            continue
        record.href = f"{doc}.html" if render else f"{doc}.ipynb"
        if render:
            toc.setdefault(record.task, []).append((doc, _run_title(record)))
    for task in toc:
        task_records = [r for r in records if r.task == task]
        book.write_text(out / "runs" / task / "index.md", pages.task_runs_markdown(task, task_records))
    return toc


def _chapters(runs: Sequence[NotebookRun], out: Path) -> list[pages.Chapter]:
    chapters = []
    for run in runs:
        if not run.executed.is_file():
            continue
        doc = f"notebooks/{run.name}"
        nb, cleaned = book.prepare_notebook(run.executed, out / f"{doc}.ipynb", error=run.error)
        title = pages.title_text(book.short_title(book.notebook_title(nb, run.name)))
        chapters.append(pages.Chapter(run.name, title, run, doc, stderr_removed=cleaned.stderr_removed))
    return chapters


def notebook_jobs(names: Sequence[str], source_dir: Path, out: Path, results_path: Path | None,
                  parameters: Mapping[str, Any] | None, notebook_parameters: Mapping[str, Mapping[str, Any]] | None
                  ) -> list[NotebookJob]:
    """One job per analysis notebook: its executed copy in the report's work folder, its figures folder and its
    parameters (the table, the shared ``parameters``, its own ``notebook_parameters``). The kernels run in ``out``
    and get the paths relative to it (:meth:`~bobkit.report.execute.NotebookJob.relative_parameters`)."""
    results_param = str(results_path) if results_path else None
    return [NotebookJob(name, source_dir / f"{name}.ipynb", out / book.WORK_DIR / f"{name}.ipynb",
                        out / "figures" / name,
                        {"results_path": results_param, **(parameters or {}),
                         **((notebook_parameters or {}).get(name, {}))}) for name in names]


def build_report(
    results_path: Path | str | None,
    out_dir: Path | str = Path("site"),
    *,
    runs_dir: Path | str | None = Path("runs"),
    notebooks: Sequence[str] | None = None,
    timeout: int = 600,
    parameters: Mapping[str, Any] | None = None,
    notebook_parameters: Mapping[str, Mapping[str, Any]] | None = None,
    jobs: int = 1,
    render_runs: int = 200,
    analysis_source: Path | None = None,
) -> ReportOutcome:
    """Run the analysis notebooks on a results table and build the report book.

    Parameters
    ----------
    results_path:
        The results table (parquet or CSV) the notebooks analyse; ``None``: the public reference tables.
    out_dir:
        The report folder (a Jupyter Book project, see :mod:`bobkit.report.book`); it must be new, empty or made
        by an earlier report, and is emptied first. The site is ``out_dir/_build/html``.
    runs_dir:
        Where to look for the table's runs when the table does not record its runs folder (tables from before
        ``bob build`` recorded it, CSV tables).
    notebooks:
        Names of the analysis notebooks to run (default: all).
    timeout:
        Seconds allowed per notebook cell.
    parameters, notebook_parameters:
        Extra papermill parameters for every notebook / per notebook name (e.g. ``{"n_boot": 200}``).
    jobs:
        Notebooks executed at once (each in its own kernel).
    render_runs:
        Runs' executed notebooks become book pages while there are at most this many; beyond, they are linked.
    analysis_source:
        The folder of analysis notebooks (default: the shipped ``notebooks/analysis``).
    """
    source_dir = analysis_source or analysis_dir()
    names = validate_notebook_names(notebooks, source_dir)
    unknown = sorted(set(notebook_parameters or {}) - set(names))
    if unknown:
        raise ValueError(f"notebook_parameters: no notebook {unknown} in this report; running {names}")
    source = read_table_source(results_path, runs_dir)
    out = check_out_dir(out_dir, protected=[source.results_path, source.runs_dir, source_dir])
    clear_out_dir(out)  # everything above is checked: from here on the folder is the report's

    jobs_to_run = notebook_jobs(names, source_dir, out, source.results_path, parameters, notebook_parameters)
    executed = run_notebooks(jobs_to_run, workers=jobs, timeout=timeout, cwd=out)
    for run in executed:
        if not run.ok:
            log.warning("analysis notebook %s failed: %s", run.name, run.error)
    chapters = _chapters(executed, out)

    records = runs_behind(source.runs, source.runs_dir)
    failed = failed_runs(source.runs_dir, exclude=set(source.runs["run_key"].astype(str)))
    run_pages = publish_runs([*records, *failed], out, render_runs=render_runs)

    failures = {run.name: run.error or "" for run in executed if not run.ok}
    content = pages.ReportPages(
        source=source, chapters=chapters, answers=answers.collect(out / "figures", failures),
        runs=records, failed=failed, environment=report_environment(),
        run_facts=run_facts(records, source.runs_dir), figures_root=out / "figures")
    book.write_text(out / "index.md", pages.overview_markdown(content))
    book.write_text(out / "provenance.md", pages.provenance_markdown(content))
    book.write_yaml(out / "_config.yml", book.book_config(TITLE))
    book.write_yaml(out / "_toc.yml", book.book_toc([(c.doc, c.title) for c in chapters], run_pages))
    book.copy_static(out)
    index = book.build_book(out, extra_files=("figures", "runs"))
    book.write_redirect(out / "index.html", index)

    outcome = ReportOutcome(index=index, out_dir=out, source=source, notebooks=executed, runs=records,
                            failed_runs=failed,
                            stderr_removed={c.name: c.stderr_removed for c in chapters if c.stderr_removed})
    _write_manifest(outcome, content.generated)
    return outcome


def _write_manifest(outcome: ReportOutcome, generated: str) -> None:
    source = outcome.source
    write_json(outcome.out_dir / "report.json", {
        "generated": generated, "built": _dt.datetime.now().isoformat(timespec="seconds"),
        "results_path": str(source.results_path) if source.results_path else None,
        "runs_dir": str(source.runs_dir) if source.runs_dir else None, "runs_dir_note": source.runs_dir_note,
        "site": str(outcome.index.parent),
        "notebooks": [{"name": r.name, "ok": r.ok, "seconds": r.seconds, "error": r.error}
                      for r in outcome.notebooks],
        "run_keys": [r.run_key for r in outcome.runs],
        "runs_not_found": [r.run_key for r in outcome.runs if r.status in {"not found", "not a run folder name"}],
        "failed_runs": [{"run_key": r.run_key, "task": r.task, "error": r.error} for r in outcome.failed_runs],
        "stderr_removed": outcome.stderr_removed,
    })
