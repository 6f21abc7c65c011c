"""The static report: run the analysis notebooks on a results table and publish them as a site that opens from disk.

:func:`build_report` executes ``notebooks/analysis/NN_*.ipynb`` with papermill (kernel ``python3``), converts each to
HTML with nbconvert (code hidden behind a "show code" toggle, figures inline as base64 PNG, no CDN scripts) and writes
``index.html`` with the leaderboard table, the headline numbers and the figures of every notebook, plus links to the
executed notebook of each run under ``runs/<task>/<run_key>/executed.ipynb``.

The analysis notebooks write their headline numbers with :class:`bobkit.analysis.notebook.Analysis`
(``summary.json`` in each notebook's figures folder); the index page reads them with :func:`read_summary`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.notebook import read_summary
from bobkit.results.sidecars import SIDECAR, read_sidecar
from bobkit.utils.files import atomic_path, write_json

log = logging.getLogger(__name__)

KERNEL = "python3"


def analysis_dir() -> Path:
    """The shipped analysis notebooks (``notebooks/analysis``)."""
    from bobkit.utils.paths import repo_root

    return repo_root() / "notebooks" / "analysis"


def analysis_notebooks() -> list[str]:
    """Names (stems) of the shipped analysis notebooks, in order: ``01_leaderboard``, ..."""
    return sorted(p.stem for p in analysis_dir().glob("[0-9][0-9]_*.ipynb"))


# --------------------------------------------------------------------------------------------------------------------
# Executing and converting notebooks
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class NotebookResult:
    """What happened to one analysis notebook in a report build."""

    name: str
    ok: bool
    seconds: float
    executed: str  # path relative to the site
    page: str  # path relative to the site
    figures_dir: str  # path relative to the site
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def execute_notebook(
    name: str,
    output: Path,
    parameters: dict[str, Any],
    *,
    timeout: int = 600,
    cwd: Path | None = None,
    source_dir: Path | None = None,
) -> tuple[bool, float, str | None]:
    """Run one analysis notebook with papermill (kernel ``python3``); returns ``(ok, seconds, error)``.

    The executed notebook is written to ``output`` even when a cell fails."""
    import papermill as pm

    source = (source_dir or analysis_dir()) / f"{name}.ipynb"
    if not source.exists():
        raise FileNotFoundError(f"no analysis notebook {source}")
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=KERNEL,
                            cwd=str(cwd) if cwd else None, execution_timeout=timeout, start_timeout=120,
                            progress_bar=False, log_output=False)
    except Exception as exc:  # noqa: BLE001 - a failed notebook is reported, the others still run
        error = f"{type(exc).__name__}: {exc}"
        log.warning("analysis notebook %s failed: %s", name, error.splitlines()[0] if error else "")
    return error is None, time.perf_counter() - start, error


def _execute_job(job: tuple[str, str, dict[str, Any], int, str, str | None]) -> tuple[str, bool, float, str | None]:
    name, output, params, timeout, cwd, source_dir = job
    ok, seconds, error = execute_notebook(name, Path(output), params, timeout=timeout, cwd=Path(cwd),
                                          source_dir=Path(source_dir) if source_dir else None)
    return name, ok, seconds, error


_TOGGLE_CSS = """
<style>
.jp-CodeCell .jp-Cell-inputWrapper { display: none; }
body.bob-show-code .jp-CodeCell .jp-Cell-inputWrapper { display: block; }
#bob-nav { position: sticky; top: 0; z-index: 10; background: #f7f7f7; border-bottom: 1px solid #ddd;
           padding: 6px 16px; font: 14px system-ui, sans-serif; }
#bob-nav a { margin-right: 1em; }
#bob-nav button { float: right; }
</style>
"""
_TOGGLE_BAR = """
<div id="bob-nav"><a href="{index}">&larr; report index</a><a href="{ipynb}">executed notebook (.ipynb)</a>
<button type="button" onclick="document.body.classList.toggle('bob-show-code');
this.textContent = document.body.classList.contains('bob-show-code') ? 'Hide code' : 'Show code';">Show code</button>
</div>
"""


def notebook_to_html(notebook: Path, output: Path, *, title: str | None = None, index_href: str = "../index.html",
                     hide_code: bool = True) -> Path:
    """Convert an executed notebook to a standalone HTML page (lab template, images inline, CDN scripts removed);
    with ``hide_code`` code cells are hidden until the page's "Show code" button is pressed."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or notebook.stem}})
    # offline: no require.js / MathJax from a CDN (the analysis notebooks use neither widgets nor LaTeX)
    body = re.sub(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>', "", body)
    ipynb_href = os.path.relpath(notebook, output.parent)
    bar = _TOGGLE_BAR.format(index=html.escape(index_href), ipynb=html.escape(ipynb_href))
    if hide_code:
        body = body.replace("</head>", _TOGGLE_CSS + "</head>", 1)
    else:
        bar = bar.replace("Show code</button>", "</button>")
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + bar, body, count=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return output


# --------------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------------

def collect_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """One record per run folder ``runs/<task>/<run_key>/`` holding an ``executed.ipynb`` or a ``metrics.json``."""
    records = []
    if not runs_dir.is_dir():
        return records
    for run in sorted(p for p in runs_dir.glob("*/*") if p.is_dir()):
        notebook = run / "executed.ipynb"
        if not notebook.exists() and not (run / SIDECAR).exists():
            continue
        sidecar = read_sidecar(run) or {}
        params = sidecar.get("params") or {}
        records.append({
            "task": run.parent.name, "run_key": run.name, "status": sidecar.get("status", "unknown"),
            "backbone": params.get("backbone", ""), "dataset": params.get("dataset", ""),
            "protocol": params.get("protocol", ""), "seed": params.get("seed", ""),
            "notebook": notebook if notebook.exists() else None,
        })
    return records


# --------------------------------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------------------------------

_PAGE_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; color: #222; }
h1 { margin-top: 28px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; width: 360px; } .gallery img { width: 100%; border: 1px solid #ddd; }
.gallery figcaption { font-size: 12px; color: #555; }
.failed { color: #b00020; font-weight: bold; } .muted { color: #666; font-size: 13px; }
img.hero { max-width: 100%; border: 1px solid #ddd; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _inline_markdown(text: str) -> str:
    """Escape ``text`` and render the inline Markdown the notebooks' sentences use (``**bold**``, ```code```)."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _fmt(value: Any, digits: int = 2) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if number != number:
        return ""
    return f"{number:.{digits}f}"


def leaderboard_html(board: pd.DataFrame, *, max_rows: int = 50) -> str:
    """The leaderboard as an HTML ``<table id="leaderboard">``."""
    head = ("<tr><th>rank</th><th>backbone</th><th>score [95% interval]</th><th>rank interval</th><th>family</th>"
            "<th>method</th><th>pretraining data</th><th>params (M)</th><th>settings</th></tr>")
    rows = []
    for r in board.head(max_rows).to_dict("records"):
        interval = (f" [{_fmt(r.get('score_lo'))}, {_fmt(r.get('score_hi'))}]"
                    if _fmt(r.get("score_lo")) else "")
        rank_iv = (f"{_fmt(r.get('rank_lo'), 0)}&ndash;{_fmt(r.get('rank_hi'), 0)}"
                   if _fmt(r.get("rank_lo")) else "")
        rows.append(
            f"<tr><td class='num'>{_fmt(r.get('rank'), 0)}</td>"
            f"<td title='{_e(r.get('backbone'))}'>{_e(r.get('display_name') or r.get('backbone'))}</td>"
            f"<td class='num'>{_fmt(r.get('score'))}{interval}</td><td class='num'>{rank_iv}</td>"
            f"<td>{_e(r.get('family'))}</td><td>{_e(r.get('method'))} ({_e(r.get('method_kind'))})</td>"
            f"<td>{_e(r.get('pretrain_data'))}</td><td class='num'>{_fmt(r.get('params_millions'), 1)}</td>"
            f"<td class='num'>{_e(r.get('n_settings'))}</td></tr>")
    more = f"<p class='muted'>{len(board) - max_rows} more rows in the CSV.</p>" if len(board) > max_rows else ""
    return f"<table id='leaderboard'>{head}{''.join(rows)}</table>{more}"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def build_report(
    results_path: Path | str | None,
    out_dir: Path = Path("site"),
    *,
    runs_dir: Path = Path("runs"),
    notebooks: list[str] | None = None,
    timeout: int = 600,
    parameters: dict[str, Any] | None = None,
    notebook_parameters: dict[str, dict[str, Any]] | None = None,
    jobs: int = 1,
    render_runs: int = 200,
    strict: bool = False,
) -> Path:
    """Execute the analysis notebooks on a results table and write a static site; returns ``out_dir/index.html``.

    Parameters
    ----------
    results_path:
        The results table (parquet or CSV) every notebook analyses; ``None`` lets each notebook use its public
        reference tables (timm and the BoB retrieval snapshot).
    out_dir:
        The site folder: ``index.html``, ``notebooks/<name>.html`` and ``.ipynb`` (executed), ``figures/<name>/``
        (PNGs, CSVs, ``summary.json``), ``runs/...``, ``report.json`` (what ran, how long, what failed).
    runs_dir:
        Where ``bob run`` wrote ``<task>/<run_key>/executed.ipynb``; each is copied into the site and linked (and
        rendered to HTML while there are at most ``render_runs`` of them).
    notebooks:
        Names of the analysis notebooks to run (default: all of ``notebooks/analysis``).
    timeout:
        Seconds allowed per notebook cell.
    parameters, notebook_parameters:
        Extra papermill parameters for every notebook / per notebook name (e.g. ``{"n_boot": 200}``).
    jobs:
        Notebooks executed in parallel (each in its own kernel).
    strict:
        Raise :class:`RuntimeError` after writing the site when a notebook failed.
    """
    out_dir = Path(out_dir).resolve()
    runs_dir = Path(runs_dir).resolve()
    names = list(notebooks) if notebooks is not None else analysis_notebooks()
    unknown = [n for n in names if not (analysis_dir() / f"{n}.ipynb").exists()]
    if unknown:
        raise ValueError(f"unknown analysis notebooks {unknown}; available: {analysis_notebooks()}")
    results_abs = str(Path(results_path).resolve()) if results_path is not None else None
    if results_abs is not None and not Path(results_abs).exists():
        raise FileNotFoundError(f"no results table at {results_abs}")
    out_dir.mkdir(parents=True, exist_ok=True)
    nb_dir = out_dir / "notebooks"
    jobs_list = []
    for name in names:
        fig_dir = out_dir / "figures" / name
        if fig_dir.exists():
            shutil.rmtree(fig_dir)
        params = {"results_path": results_abs, "figures_dir": str(fig_dir), **(parameters or {}),
                  **((notebook_parameters or {}).get(name, {}))}
        jobs_list.append((name, str(nb_dir / f"{name}.ipynb"), params, timeout, str(out_dir), None))
    outcomes: dict[str, tuple[bool, float, str | None]] = {}
    if jobs > 1 and len(jobs_list) > 1:
        from concurrent.futures import ThreadPoolExecutor

        # threads are enough: each notebook runs in its own kernel process, papermill only waits on it
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for name, ok, seconds, error in pool.map(_execute_job, jobs_list):
                outcomes[name] = (ok, seconds, error)
    else:
        for job in jobs_list:
            name, ok, seconds, error = _execute_job(job)
            outcomes[name] = (ok, seconds, error)

    results: list[NotebookResult] = []
    for name in names:
        ok, seconds, error = outcomes[name]
        executed = nb_dir / f"{name}.ipynb"
        page = nb_dir / f"{name}.html"
        if executed.exists():
            notebook_to_html(executed, page, title=name)
        summary = read_summary(out_dir / "figures" / name)
        results.append(NotebookResult(
            name=name, ok=ok, seconds=round(seconds, 2), executed=f"notebooks/{name}.ipynb",
            page=f"notebooks/{name}.html" if page.exists() else "", figures_dir=f"figures/{name}",
            error=error.splitlines()[0][:500] if error else None, summary=summary))

    runs = _publish_runs(runs_dir, out_dir, render_runs=render_runs)
    board = _leaderboard_for_index(out_dir, results_abs)
    index = _write_index(out_dir, results_abs, results, board, runs)
    write_json(out_dir / "report.json", {
        "results_path": results_abs, "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "notebooks": [{k: v for k, v in asdict(r).items() if k != "summary"} for r in results],
        "runs": len(runs),
    })
    failed = [r.name for r in results if not r.ok]
    if failed and strict:
        raise RuntimeError(f"analysis notebooks failed: {failed} (see {out_dir / 'report.json'})")
    return index


def _publish_runs(runs_dir: Path, out_dir: Path, *, render_runs: int) -> list[dict[str, Any]]:
    runs = collect_runs(runs_dir)
    render = len(runs) <= render_runs
    target_root = out_dir / "runs"
    for run in runs:
        run["ipynb_href"] = run["html_href"] = None
        if run["notebook"] is None:
            continue
        target = target_root / run["task"] / run["run_key"] / "executed.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(run["notebook"]).resolve() != target.resolve():
            shutil.copy2(run["notebook"], target)
        run["ipynb_href"] = target.relative_to(out_dir).as_posix()
        if render:
            try:
                page = notebook_to_html(target, target.with_suffix(".html"), title=f"{run['task']} {run['run_key']}",
                                        index_href=os.path.relpath(out_dir / "index.html", target.parent),
                                        hide_code=False)
                run["html_href"] = page.relative_to(out_dir).as_posix()
            except Exception as exc:  # noqa: BLE001 - an unreadable run notebook still gets its .ipynb link
                log.warning("could not render %s: %s", target, exc)
    return runs


def _leaderboard_for_index(out_dir: Path, results_abs: str | None) -> pd.DataFrame | None:
    csv = out_dir / "figures" / "01_leaderboard" / "leaderboard.csv"
    if csv.exists():
        return pd.read_csv(csv)
    try:
        from bobkit.analysis.load import load_table
        from bobkit.analysis.scores import leaderboard

        table = load_table(results_abs, "bob_retrieval")
        return leaderboard(table, n_boot=200)
    except (InsufficientDataError, FileNotFoundError, ValueError) as exc:
        log.warning("no leaderboard for the index page: %s", exc)
        return None


def _write_index(out_dir: Path, results_abs: str | None, results: list[NotebookResult],
                 board: pd.DataFrame | None, runs: list[dict[str, Any]]) -> Path:
    source = (f"results table <code>{_e(results_abs)}</code>" if results_abs else
              "the public reference tables (timm ImageNet/-R/-A; BoB retrieval snapshot)")
    parts = [f"<h1>bob-workbook report</h1><p>Battle of the Backbones analyses of {source}. "
             f"Generated {_e(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}.</p>"]
    # leaderboard
    parts.append("<h2 id='leaderboard-section'>Leaderboard</h2>")
    hero = out_dir / "figures" / "01_leaderboard" / "leaderboard.png"
    if board is not None and len(board):
        parts.append("<p class='muted'>Overall score = mean over tasks of the mean per-setting z-score; intervals: "
                     "bootstrap over settings and seeds (see notebook 01).</p>")
        parts.append(leaderboard_html(board))
        if hero.exists():
            parts.append(f"<p><img class='hero' alt='leaderboard figure' src='{_png_data_uri(hero)}'></p>")
    else:
        parts.append("<p>No leaderboard could be computed from this table.</p>")
    # headlines
    parts.append("<h2>What the data shows</h2><ul>")
    for r in results:
        for line in r.summary.get("headlines", []):
            parts.append(f"<li><b>{_e(r.name)}</b>: {_inline_markdown(line)}</li>")
    parts.append("</ul>")
    # notebooks + figures
    parts.append("<h2>Analysis notebooks</h2>")
    for r in results:
        status = "" if r.ok else f" <span class='failed'>failed: {_e(r.error)}</span>"
        link = f"<a href='{_e(r.page)}'>{_e(r.name)}</a>" if r.page else _e(r.name)
        parts.append(f"<h3>{link}{status}</h3><p class='muted'>{r.seconds:.1f} s &middot; "
                     f"<a href='{_e(r.executed)}'>executed .ipynb</a></p>")
        skipped = r.summary.get("skipped") or {}
        if skipped:
            parts.append("<p class='muted'>Skipped for lack of data: " +
                         "; ".join(f"{_e(k)}" for k in skipped) + "</p>")
        figs = sorted((out_dir / r.figures_dir).glob("*.png"))
        if figs:
            parts.append("<div class='gallery'>")
            for fig in figs:
                rel = fig.relative_to(out_dir).as_posix()
                parts.append(f"<figure><a href='{_e(r.page or rel)}'><img src='{_e(rel)}' alt='{_e(fig.stem)}' "
                             f"></a><figcaption>{_e(fig.stem)}</figcaption></figure>")
            parts.append("</div>")
    # runs
    parts.append("<h2 id='runs'>Runs</h2>")
    if runs:
        rows = []
        for run in runs:
            links = []
            if run.get("html_href"):
                links.append(f"<a href='{_e(run['html_href'])}'>page</a>")
            if run.get("ipynb_href"):
                links.append(f"<a href='{_e(run['ipynb_href'])}'>executed.ipynb</a>")
            rows.append(f"<tr><td>{_e(run['task'])}</td><td><code>{_e(run['run_key'])}</code></td>"
                        f"<td>{_e(run['backbone'])}</td><td>{_e(run['dataset'])}</td><td>{_e(run['protocol'])}</td>"
                        f"<td>{_e(run['seed'])}</td><td>{_e(run['status'])}</td><td>{' '.join(links)}</td></tr>")
        parts.append("<table id='runs-table'><tr><th>task</th><th>run key</th><th>backbone</th><th>dataset</th>"
                     "<th>protocol</th><th>seed</th><th>status</th><th>notebook</th></tr>" + "".join(rows) + "</table>")
    else:
        parts.append("<p class='muted'>No run notebooks were found (the analysis used published tables or the runs "
                     "folder was not given).</p>")
    # after load, the body records how many images decoded (a check for headless browsers and broken links)
    script = ("<script>window.addEventListener('load', function () { var ok = 0; for (var i = 0; i < "
              "document.images.length; i++) { if (document.images[i].complete && document.images[i].naturalWidth > 0)"
              " { ok++; } } document.body.setAttribute('data-images-loaded', ok); "
              "document.body.setAttribute('data-images-total', document.images.length); });</script>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bob-workbook report</title>"
            f"<style>{_PAGE_CSS}</style></head><body>{''.join(parts)}{script}</body></html>")
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index
