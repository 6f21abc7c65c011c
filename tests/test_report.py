"""bobkit.report.site: the notebook helper, HTML conversion, and the static site rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fixtures_analysis import DATA_DIR, make_minimal_results, write_table  # noqa: E402

from bobkit.analysis import notebook as analysis_notebook  # noqa: E402
from bobkit.analysis.errors import InsufficientDataError  # noqa: E402
from bobkit.report import site as report  # noqa: E402

# a subset keeps the test fast: every notebook already runs under papermill in test_analysis_notebooks
REPORT_NOTEBOOKS = ["01_leaderboard", "06_robustness_calibration", "08_where_does_my_backbone_rank"]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


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


def _tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title\n\nSome prose."),
        nbformat.v4.new_code_cell("secret_code = 1 + 1\nsecret_code", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_notebook_to_html_hides_code_and_needs_no_network(tmp_path):
    source = _tiny_notebook(tmp_path / "nb" / "x.ipynb")
    page = report.notebook_to_html(source, tmp_path / "site" / "x.html")
    text = page.read_text()
    assert "Some prose." in text and "secret_code" in text  # code is there, behind the toggle
    assert ".jp-CodeCell .jp-Cell-inputWrapper { display: none; }" in text
    assert "Show code" in text and "report index" in text
    assert not re.search(r'<script[^>]*src="https?://', text)
    assert 'href="../nb/x.ipynb"' in text
    shown = report.notebook_to_html(source, tmp_path / "site" / "y.html", hide_code=False).read_text()
    assert ".jp-CodeCell .jp-Cell-inputWrapper { display: none; }" not in shown


def test_collect_runs(tmp_path):
    runs = _fake_runs(tmp_path / "runs")
    records = report.collect_runs(runs)
    assert [(r["task"], r["run_key"], r["status"]) for r in records] == [
        ("classification", "0123456789abcdef", "complete"), ("retrieval", "fedcba9876543210", "failed")]
    assert report.collect_runs(tmp_path / "missing") == []


def _fake_runs(runs: Path) -> Path:
    for task, key, status in (("classification", "0123456789abcdef", "complete"),
                              ("retrieval", "fedcba9876543210", "failed")):
        _tiny_notebook(runs / task / key / "executed.ipynb")
        (runs / task / key / "metrics.json").write_text(json.dumps({
            "status": status, "run_key": key, "task": task,
            "params": {"backbone": "resnet18.tv_in1k", "dataset": "fashion_mnist", "protocol": "linear_probe",
                       "seed": 0}}))
    return runs


def test_build_report_rejects_unknown_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown analysis notebooks"):
        report.build_report(None, tmp_path / "site", notebooks=["99_nope"])
    with pytest.raises(FileNotFoundError):
        report.build_report(tmp_path / "missing.parquet", tmp_path / "site", notebooks=["01_leaderboard"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """build_report on a demo-like table (one task, one family, no robustness rows) with two fake runs."""
    root = tmp_path_factory.mktemp("report")
    old = os.environ.get("BOB_DATA_DIR")
    os.environ["BOB_DATA_DIR"] = str(DATA_DIR)
    try:
        results = write_table(make_minimal_results(), root / "results" / "results.parquet")
        runs = _fake_runs(root / "runs")
        index = report.build_report(results, root / "site", runs_dir=runs, parameters={"n_boot": 50}, jobs=2,
                                    notebooks=REPORT_NOTEBOOKS)
    finally:
        if old is None:
            os.environ.pop("BOB_DATA_DIR", None)
        else:
            os.environ["BOB_DATA_DIR"] = old
    return index


@pytest.mark.notebook
@pytest.mark.slow
def test_build_report_writes_the_site(site):
    out = site.parent
    assert site == out / "index.html"
    meta = json.loads((out / "report.json").read_text())
    failures = {n["name"]: n["error"] for n in meta["notebooks"] if not n["ok"]}
    assert failures == {}
    assert [n["name"] for n in meta["notebooks"]] == REPORT_NOTEBOOKS
    for name in REPORT_NOTEBOOKS:
        page = (out / "notebooks" / f"{name}.html").read_text()
        assert "Show code" in page and "data:image/png;base64" in page
        assert not re.search(r'<script[^>]*src="https?://', page)
        assert (out / "notebooks" / f"{name}.ipynb").exists()
    index = site.read_text()
    assert "<table id='leaderboard'>" in index
    assert "data:image/png;base64" in index  # the leaderboard figure is embedded
    for src in re.findall(r"<img[^>]*src='([^']+)'", index):
        assert src.startswith("data:") or (out / src).exists(), src
    for href in re.findall(r"href='([^']+)'", index):
        assert (out / href).exists(), href
    assert "runs/classification/0123456789abcdef/executed.ipynb" in index
    assert (out / "runs" / "retrieval" / "fedcba9876543210" / "executed.html").exists()
    # the demo-like table lacks robustness rows and a second protocol: those sections are notes, not crashes
    notes = (out / "notebooks" / "06_robustness_calibration.html").read_text()
    assert "is skipped" in notes


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_index_renders_in_headless_chromium(site, tmp_path):
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", "--virtual-time-budget=5000"]
    url = site.resolve().as_uri()
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert '<table id="leaderboard">' in dom
    rows = re.findall(r"<tr>", dom.split('<table id="leaderboard">', 1)[1].split("</table>", 1)[0])
    assert len(rows) >= 3  # header + the three demo backbones
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert total >= 2 and loaded == total  # every figure decoded from disk, no server
    shot = tmp_path / "report_screenshot.png"
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                    "--window-size=1280,2000", url], capture_output=True, text=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
