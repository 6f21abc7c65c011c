"""The report as a Jupyter Book: source layout, notebook preparation, configuration and the offline build.

The output folder is a Jupyter Book project (``jupyter-book build <out>`` rebuilds it by hand)::

    _config.yml, _toc.yml    book settings and chapters (overview, one chapter per analysis notebook, provenance)
    index.md                 the overview
    provenance.md            runs and provenance
    notebooks/NN_*.ipynb     executed analysis notebooks, sanitised (chapters)
    runs/<task>/<key>.ipynb  executed run notebooks, sanitised (pages under provenance)
    figures/NN_*/            each notebook's PNGs, CSVs and summary.json (copied into the site)
    _static/                 the report's CSS (bob.css, and bob-tables.css: the analysis' table style) and print script
    _work/                   raw papermill outputs (not published)
    _build/html/             the site: publish this folder

Notebooks are rendered as executed (``execute_notebooks: off``); the build needs no network (no MathJax, no
launch buttons, no remote fonts) and :func:`bobkit.report.sanitize.check_site` scans the result.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import nbformat
import yaml

from bobkit.analysis.tables import TABLE_CSS
from bobkit.report.sanitize import SanitizeReport, check_site, sanitize_notebook
from bobkit.utils.files import atomic_path

STATIC_DIR = Path(__file__).with_name("static")
HTML_DIR = Path("_build") / "html"
WORK_DIR = "_work"
TABLE_CSS_FILE = "bob-tables.css"
# The Jupyter Book command line, run in a child process (Sphinx keeps global state between builds).
_JUPYTER_BOOK = "import sys; from jupyter_book.cli.main import main; sys.exit(main())"


class UnsafeSiteError(RuntimeError):
    """The built site holds active content that sanitising should have removed; it is not left to publish."""


# --------------------------------------------------------------------------------------------------------------------
# Notebooks
# --------------------------------------------------------------------------------------------------------------------

def notebook_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The first Markdown heading of ``nb`` (``# 01 Leaderboard: ...``) without the hashes, or ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def short_title(title: str) -> str:
    """The sidebar title of a chapter: the part before the colon (``01 Leaderboard``)."""
    return title.split(":", 1)[0].strip()


def _error_cell(message: str | None) -> nbformat.NotebookNode:
    text = html.escape(message or "see the failing cell below")
    return nbformat.v4.new_markdown_cell(
        "<div class='admonition error'><p class='admonition-title'>This notebook failed</p>"
        f"<p><code>{text}</code></p></div>")


def _code_tag(cell: nbformat.NotebookNode, tags: list[str]) -> str:
    """How a code cell shows in the book: behind a "show code" toggle when it shows something or holds the
    parameters; left out when it shows nothing (a row of empty toggles tells a reader nothing; the executed
    notebook, one click away, keeps every cell)."""
    if cell.get("outputs") or {"parameters", "injected-parameters"} & set(tags):
        return "hide-input"
    return "remove-cell"


def prepare_notebook(source: Path, target: Path, *, title_cell: str | None = None, error: str | None = None
                     ) -> tuple[nbformat.NotebookNode, SanitizeReport]:
    """Copy an executed notebook into the book: outputs sanitised, code collapsed behind a toggle (code that shows
    nothing left out, :func:`_code_tag`), papermill's error banner replaced by one naming the error (escaped), an
    optional title cell (Markdown, already escaped) first. Never reads through a symbolic link."""
    if source.is_symlink():
        raise ValueError(f"refusing to publish {source}: it is a symbolic link")
    nb = nbformat.read(str(source), as_version=4)
    report = sanitize_notebook(nb)
    cells = []
    for cell in nb.cells:
        tags = list(cell.metadata.get("tags", []))
        if "papermill-error-cell-tag" in tags:
            cells.append(_error_cell(error))
            continue
        if cell.cell_type == "code":
            cell.metadata["tags"] = [*tags, _code_tag(cell, tags)]
        cells.append(cell)
    if title_cell:
        cells.insert(0, nbformat.v4.new_markdown_cell(title_cell))
    nb.cells = cells
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        nbformat.write(nb, str(tmp))
    return nb, report


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------

def book_config(title: str) -> dict[str, Any]:
    """``_config.yml``: no execution, no network, the report's CSS and print script, stderr never shown."""
    return {
        "title": title,
        "author": "bob-workbook",
        "copyright": "",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", WORK_DIR, "figures", "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off", "stderr_output": "remove"},
        # no dollarmath: math would load MathJax from a CDN; no linkify: table text stays text
        "parse": {"myst_enable_extensions": ["colon_fence"]},
        "html": {"use_multitoc_numbering": False, "home_page_in_navbar": True, "use_repository_button": False,
                 "use_issues_button": False, "use_edit_page_button": False,
                 "comments": {"hypothesis": False, "utterances": False}},
        "launch_buttons": {"binderhub_url": "", "jupyterhub_url": "", "colab_url": "", "thebe": False},
        "repository": {"url": "", "path_to_book": "", "branch": ""},
        "sphinx": {"config": {"html_static_path": ["_static"], "html_css_files": ["bob.css", TABLE_CSS_FILE],
                              "html_js_files": ["bob.js"], "html_show_sourcelink": False,
                              "html_last_updated_fmt": None, "nb_output_stderr": "remove",
                              "suppress_warnings": ["mystnb.unknown_mime_type"]}},
    }


def book_toc(chapters: Sequence[tuple[str, str]], runs: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """``_toc.yml``: the overview, the analysis chapters (``(doc, title)``), provenance with a page per task
    (``runs/<task>/index``) and beneath it one page per run (``runs``: ``{task: [(doc, title)]}``)."""
    provenance: dict[str, Any] = {"file": "provenance", "title": "Runs and provenance"}
    if runs:
        provenance["sections"] = [
            {"file": f"runs/{task}/index", "title": f"{task} runs",
             "sections": [{"file": doc, "title": title} for doc, title in entries]}
            for task, entries in sorted(runs.items())]
    parts = []
    if chapters:
        parts.append({"caption": "Analysis", "chapters": [{"file": doc, "title": t} for doc, t in chapters]})
    parts.append({"caption": "Provenance", "chapters": [provenance]})
    return {"format": "jb-book", "root": "index", "parts": parts}


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """``data`` as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    """``text`` to ``path`` atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def copy_static(book: Path) -> None:
    """The report's CSS and JavaScript into ``book/_static``, with the tables' style (the one notebooks in
    JupyterLab get inline, :data:`bobkit.analysis.tables.TABLE_CSS`)."""
    target = book / "_static"
    target.mkdir(parents=True, exist_ok=True)
    for item in STATIC_DIR.iterdir():
        if item.is_file() and not item.is_symlink():
            shutil.copy2(item, target / item.name)
    write_text(target / TABLE_CSS_FILE, TABLE_CSS)


# --------------------------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------------------------

def _copy_plain_tree(source: Path, target: Path) -> None:
    """Copy regular files only (symbolic links are skipped, never followed)."""
    for path in sorted(source.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        if any(parent.is_symlink() for parent in path.relative_to(source).parents if str(parent) != "."):
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def build_book(book: Path, *, timeout: int = 900, extra_files: Sequence[str] = ("figures",)) -> Path:
    """Build ``book`` with Jupyter Book in a child process, copy ``extra_files`` folders into the site and scan it;
    returns ``_build/html/index.html``. A failed build raises ``RuntimeError`` with the end of the build log; a
    site with active content raises :class:`UnsafeSiteError` and its HTML is removed."""
    command = [sys.executable, "-c", _JUPYTER_BOOK, "build", str(book), "--builder", "html"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(book))
    log = book / "_build" / "build.log"
    write_text(log, result.stdout + "\n" + result.stderr)
    html_dir = book / HTML_DIR
    index = html_dir / "index.html"
    if result.returncode != 0 or not index.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}; full log {log}):\n{tail}")
    for name in extra_files:
        if (book / name).is_dir() and not (book / name).is_symlink():
            _copy_plain_tree(book / name, html_dir / name)
    problems = check_site(html_dir)
    if problems:
        shutil.rmtree(html_dir)
        listed = "; ".join(f"{page}: {', '.join(found[:3])}" for page, found in list(problems.items())[:5])
        raise UnsafeSiteError(f"the built site held active content and was removed: {listed}")
    return index


def write_redirect(page: Path, target: Path) -> Path:
    """A page at the report folder's top that opens the book (so ``<out>/index.html`` keeps working)."""
    href = html.escape(Path(target).relative_to(page.parent).as_posix(), quote=True)
    write_text(page, f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bob-workbook report</title>"
                     f"<meta http-equiv='refresh' content='0; url={href}'></head><body><p>The report is at "
                     f"<a href='{href}'>{href}</a>.</p></body></html>")
    return page
