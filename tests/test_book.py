"""The report book, built offline and opened in headless Chromium (DevTools protocol over a websocket).

One build of a small synthetic table (one backbone named ``<img src=x onerror=alert(1)>``), with run folders that
include a symlinked notebook, a failed run, and a decoy runs folder; then every page is visited once and checked:
the sidebar lists every chapter, search finds a backbone, images decode, no stderr box or Python warning, no index
column, no table wider than the column, nothing runs as script. Chromium comes with ``tools/setup.sh --test``
(Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from fixtures_analysis import make_results, with_transferability  # noqa: E402
from report_fixtures import PAYLOAD, fake_run, notebook_file  # noqa: E402

from bobkit.analysis import findings  # noqa: E402
from bobkit.report import sanitize, site  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

BOOK_NOTEBOOKS = ["01_leaderboard", "03_scale", "06_robustness_calibration", "09_transferability"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--window-size=1280,1600"]
# Installed before any page script: a dialog the page opens is recorded instead of shown.
ALERT_TRAP = ("window.__bobDialogs = []; ['alert', 'confirm', 'prompt'].forEach(function (name) { "
              "window[name] = function (message) { window.__bobDialogs.push(name + ': ' + String(message)); }; });")
NAMED = "Supervised ConvNeXt-B (IN-21k)"  # a readable backbone name the search must find


class Chromium:
    """Just enough of the DevTools protocol: open a page, evaluate JavaScript, notice dialogs."""

    def __init__(self, profile: Path) -> None:
        import websocket

        assert Path(CHROMIUM).exists(), "chromium is needed (tools/setup.sh --test installs Debian's chromium)"
        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            assert time.time() < deadline and self.process.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.call(method, session=True)
        self.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=ALERT_TRAP)

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})

    def _receive(self) -> dict[str, Any]:
        reply = json.loads(self.socket.recv())
        if "method" in reply:
            self.events.append(reply)
            if reply["method"] == "Page.javascriptDialogOpening":  # never left blocking the page
                self.socket.send(json.dumps({"id": 0, "sessionId": self.session, "method":
                                             "Page.handleJavaScriptDialog", "params": {"accept": True}}))
        return reply

    def open(self, url: str) -> None:
        start = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        deadline = time.time() + 60
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]):
            assert time.time() < deadline, f"{url} did not load"
            self._receive()

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def dialogs(self) -> list[str]:
        return [e["params"].get("message", "") for e in self.events if e.get("method") ==
                "Page.javascriptDialogOpening"]

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


# What every page is checked for, in one pass: the article is the part made from notebooks and tables.
PAGE_FACTS = r"""
(async () => {
  const article = document.querySelector('article') || document.body;
  const sources = Array.from(document.images).map((img) => img.currentSrc || img.src);
  const decoded = await Promise.all(sources.map((src) => new Promise((done) => {
    const probe = new Image();
    probe.onload = () => done([src, probe.naturalWidth]);
    probe.onerror = () => done([src, 0]);
    probe.src = src;
  })));
  const tables = Array.from(article.querySelectorAll('table'));
  return {
    sidebar: Array.from(document.querySelectorAll('nav.bd-docs-nav a')).map((a) => a.textContent.trim()),
    images: sources.length,
    broken: decoded.filter((d) => d[1] === 0).map((d) => d[0]),
    stderr: article.querySelectorAll('.stderr, [class*="stderr"]').length,
    warnings: article.innerText.match(/\b[A-Z]\w*Warning\b:?/g) || [],
    tables: tables.length,
    index_columns: tables.filter((t) => t.querySelector('tbody th') ||
      (t.querySelector('thead th') && t.querySelector('thead th').textContent.trim() === '')).length,
    handlers: document.querySelectorAll('article [onerror], article [onload], article [onclick]').length,
    // a table wider than the column hides its right-hand columns behind a scrollbar (collapsed ones opened)
    overflowing: Array.from(article.querySelectorAll('details')).map((d) => { d.open = true; return d; }) &&
      Array.from(article.querySelectorAll('.bob-table-wrap'))
      .filter((w) => w.scrollWidth > w.clientWidth + 2)
      .map((w) => (w.scrollWidth - w.clientWidth) + ' px too wide: ' +
        Array.from(w.querySelectorAll('thead th')).map((th) => th.textContent.trim()).join(' | ')),
    dialogs: window.__bobDialogs,
    text: article.innerText,
  };
})()
"""


def _make_inputs(root: Path) -> tuple[Path, Path, Path]:
    """A results table recording its runs folder, that folder (three runs, one symlinked notebook, one failed run
    outside the table) and a decoy runs folder the report must not read."""
    table = with_transferability(make_results(seeds=(0,), backbones=6))  # chapter 09's tables are on a page too
    names = table["backbone"].unique()
    table.loc[table["backbone"] == names[0], "display_name"] = PAYLOAD
    table.loc[table["backbone"] == "convnext_base.in22k", "display_name"] = NAMED
    runs_dir, decoy = root / "batch" / "runs", root / "runs"
    keys = table.drop_duplicates("run_key")[["task", "run_key", "backbone"]].head(3).to_dict("records")
    fake_run(runs_dir, keys[0]["task"], keys[0]["run_key"], backbone=keys[0]["backbone"],
             stderr="UserWarning: this should not be on any page\n 40%|####      | 4/10")
    fake_run(runs_dir, keys[1]["task"], keys[1]["run_key"], backbone=keys[1]["backbone"], label=f"label {PAYLOAD}")
    outside = notebook_file(root / "private" / "notes.ipynb", text="SECRET-OUTSIDE")
    fake_run(runs_dir, keys[2]["task"], keys[2]["run_key"], backbone=keys[2]["backbone"], notebook=False)
    (runs_dir / keys[2]["task"] / keys[2]["run_key"] / "executed.ipynb").symlink_to(outside)
    fake_run(runs_dir, "retrieval", "failed0000000001", status="failed", error=f"Traceback\nValueError: {PAYLOAD}")
    fake_run(decoy, "classification", "decoy00000000001")
    table.attrs["runs_dir"] = str(runs_dir)
    results = root / "results" / "results.parquet"
    results.parent.mkdir(parents=True)
    table.to_parquet(results, index=False)
    return results, runs_dir, decoy


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    results, _, decoy = _make_inputs(root)
    outcome = site.build_report(results, root / "site", runs_dir=decoy, notebooks=BOOK_NOTEBOOKS,
                                parameters={"n_boot": 30}, jobs=2)
    assert [(r.name, r.error) for r in outcome.failures] == []
    return outcome


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def pages(book, browser) -> dict[str, dict[str, Any]]:
    """Every page of the site, opened once: ``{path: facts}``."""
    html_dir = book.index.parent
    facts = {}
    for page in sorted(html_dir.rglob("*.html")):
        if page.relative_to(html_dir).parts[0] in {"_static", "_sources"}:  # theme assets, not pages
            continue
        browser.open(page.as_uri())
        facts[page.relative_to(html_dir).as_posix()] = browser.evaluate(PAGE_FACTS)
    facts["__dialogs__"] = browser.dialogs()
    return facts


def _content_pages(pages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: facts for name, facts in pages.items() if not name.startswith("__")}


def test_the_site_is_a_book_of_chapters(book, pages):
    html_dir = book.index.parent
    assert book.index == book.out_dir / "_build" / "html" / "index.html"
    expected = {"index.html", "provenance.html", "search.html", *(f"notebooks/{n}.html" for n in BOOK_NOTEBOOKS)}
    assert expected <= set(_content_pages(pages))
    sidebar = pages["index.html"]["sidebar"]
    chapters = ["Overview", "01 Leaderboard", "03 Scale", "06 Robustness and calibration vs accuracy",
                "Runs and provenance"]
    assert [name for name in sidebar if name in chapters] == chapters  # every chapter, in order
    for name, facts in _content_pages(pages).items():  # the same sidebar on every page
        if name not in {"search.html", "genindex.html"}:
            assert set(chapters) <= set(facts["sidebar"]), name
    chapter = (html_dir / "notebooks" / "03_scale.html").read_text()
    assert 'class="prev-next-area"' in chapter and "bd-toc" in chapter  # previous/next links, page contents
    assert (book.out_dir / "index.html").read_text().count("_build/html/index.html") >= 1  # site/index.html opens it


def test_search_finds_a_backbone(book, browser):
    search = book.index.parent / "search.html"
    browser.open(f"{search.as_uri()}?q={quote('ConvNeXt')}")
    deadline, found = time.time() + 30, []
    while time.time() < deadline and not found:
        found = browser.evaluate("Array.from(document.querySelectorAll('#search-results li a'))"
                                 ".map((a) => a.getAttribute('href'))")
        time.sleep(0.3)
    assert any(href.startswith(("index.html", "notebooks/")) for href in found), found


def test_searching_for_markup_in_a_name_runs_nothing(book, browser):
    # Sphinx's search page writes result titles as HTML: no title may hold a table value's markup
    search = book.index.parent / "search.html"
    browser.open(f"{search.as_uri()}?q={quote('onerror')}")
    deadline, found = time.time() + 30, []
    while time.time() < deadline and not found:
        found = browser.evaluate("Array.from(document.querySelectorAll('#search-results li a'))"
                                 ".map((a) => a.textContent)")
        time.sleep(0.3)
    assert found  # the name is indexed (as text) ...
    assert browser.evaluate("window.__bobDialogs.length + document.querySelectorAll('[onerror]').length") == 0
    assert browser.dialogs() == []  # ... and nothing ran


def test_no_image_is_broken(pages):
    content = _content_pages(pages)
    assert sum(f["images"] for f in content.values()) >= 4  # the chapters' figures are there
    assert {name: f["broken"] for name, f in content.items() if f["broken"]} == {}


def test_no_stderr_box_or_python_warning_on_any_page(book, pages):
    content = _content_pages(pages)
    assert {name: f["stderr"] for name, f in content.items() if f["stderr"]} == {}
    assert {name: f["warnings"] for name, f in content.items() if f["warnings"]} == {}
    run_pages = [name for name in content if name.startswith("runs/")]
    assert run_pages  # the run whose notebook wrote the warning is among the pages checked


def test_no_table_shows_an_index_column(pages):
    content = _content_pages(pages)
    assert sum(f["tables"] for f in content.values()) >= 5
    assert {name: f["index_columns"] for name, f in content.items() if f["index_columns"]} == {}


def test_every_table_fits_the_column(pages):
    content = _content_pages(pages)
    assert {name: f["overflowing"] for name, f in content.items() if f["overflowing"]} == {}


def test_table_and_sidecar_values_never_run_as_script(book, pages):
    assert pages["__dialogs__"] == []
    content = _content_pages(pages)
    assert {name: f["dialogs"] for name, f in content.items() if f["dialogs"]} == {}
    assert {name: f["handlers"] for name, f in content.items() if f["handlers"]} == {}
    assert PAYLOAD in content["index.html"]["text"]  # the backbone name shows, as text
    assert PAYLOAD in content["notebooks/01_leaderboard.html"]["text"]
    provenance = content["provenance.html"]["text"]
    assert f"ValueError: {PAYLOAD}" in provenance  # the failed run's error, as text
    assert sanitize.check_site(book.index.parent) == {}


def test_provenance_lists_exactly_the_runs_of_the_table(book, pages):
    table = pd.read_parquet(book.source.results_path)
    keys = set(table["run_key"].unique())
    assert {r.run_key for r in book.runs} == keys
    assert book.source.runs_dir == Path(table.attrs["runs_dir"])
    provenance = (book.index.parent / "provenance.html").read_text()
    assert all(key in pages["provenance.html"]["text"] for key in keys)  # as text (ids carry <wbr> break hints)
    assert "decoy00000000001" not in provenance  # the --runs-dir folder is not read when the table records one
    assert "failed0000000001" in provenance  # failed runs of the table's folder, listed apart
    statuses = {r.run_key: r.status for r in book.runs}
    assert sorted(statuses.values()).count("complete") == 3
    text = pages["provenance.html"]["text"]
    for heading in ("Runs behind the table", "Failed runs", "Analysis notebooks", "Code versions", "Packages",
                    "Devices"):
        assert heading in text
    assert "jupyter-book" in text and "cpu: test" in text


def test_a_symlinked_run_notebook_is_not_followed_into_the_site(book):
    site_files = [p for p in book.out_dir.rglob("*") if p.is_file() and p.suffix in {".html", ".ipynb", ".txt"}]
    assert site_files and not any("SECRET-OUTSIDE" in p.read_text(errors="replace") for p in site_files)
    linked = [r for r in book.runs if "symbolic link" in r.note]
    assert len(linked) == 1 and linked[0].href == ""


def test_overview_puts_the_papers_claims_beside_the_answers(book, pages):
    text = pages["index.html"]["text"]
    for question in findings.questions():
        assert question["title"] in text
    assert "Overall leaderboard" in text and "score [interval]" in text
    assert re.search(r"-?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\]", text)  # a value with its interval
    assert "Spearman rho ViT 0.58, CNN 0.35" in text  # the paper's stated values
    # each answer is the one its chapter recorded: the overview shows the notebook's own numbers
    recorded = json.loads((book.out_dir / "figures" / "03_scale" / "summary.json").read_text())["findings"]
    scale = recorded["scale_params"]
    if scale["shown"]:
        assert f"{scale['value']:.2f} [{scale['ci_low']:.2f}, {scale['ci_high']:.2f}]" in text
    else:
        assert "not measurable here: " in text
    assert any(verdict in text for verdict in ("✓ agrees", "✗ disagrees", "? unclear"))
    # notebooks not in this report: "not measurable here", with the reason
    assert "not measurable here: the notebook 02_task_correlation was not run for this report" in text
    overview = (book.index.parent / "index.html").read_text()
    for name in BOOK_NOTEBOOKS:
        assert f'href="notebooks/{name}.html"' in overview  # each question links to its chapter
    assert "DESIGN.md" not in overview and "Where each finding is stated" in text


def test_site_needs_no_network(book):
    html_dir = book.index.parent
    for page in html_dir.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(https?:)?//", text), page
    assert sanitize.check_site(html_dir) == {}


def test_screenshots_of_the_overview_and_a_chapter(book, browser, tmp_path):
    for page in ("index.html", "notebooks/01_leaderboard.html"):
        browser.open((book.index.parent / page).as_uri())
        shot = browser.screenshot(tmp_path / "shot.png").read_bytes()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000


# --------------------------------------------------------------------------------------------------------------------
# Figures: no backbone label is truncated (checked in the figure code, not by pixels)
# --------------------------------------------------------------------------------------------------------------------

LONG_NAMES = ["Supervised EfficientNet-Lite2 (IN-1k, packaged)", "Supervised EfficientNet-Lite0 (IN-1k, packaged)",
              "Supervised MobileNetV2 (IN-1k, torchvision, packaged)", "Random init ConvNeXt-Atto (untrained)"]


def _texts(fig) -> list[str]:
    """Every text of ``fig`` (tick labels, annotations, the key), whitespace removed: a wrapped name reads whole."""
    fig.canvas.draw()
    return ["".join(t.get_text().split()) for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_no_backbone_label_in_a_figure_is_truncated():
    import matplotlib.pyplot as plt

    from bobkit.analysis import plots

    board = pd.DataFrame({"backbone": [f"b{i}" for i in range(4)], "display_name": LONG_NAMES,
                          "score": [1.0, 0.5, 0.2, -1.0], "score_lo": [0.8, 0.3, 0.0, -1.2],
                          "score_hi": [1.2, 0.7, 0.4, -0.8], "method_kind": ["supervised"] * 3 + ["random"]})
    pairs = pd.DataFrame({"b_display": LONG_NAMES[:2], "a_score": [0.1, 0.2], "b_score": [0.3, 0.1],
                          "diff": [0.2, -0.1]})
    wide = board.assign(classification=[1.0, 0.6, 0.1, -1.1], retrieval=[0.9, 0.7, 0.0, -0.9], family="CNN",
                        params_millions=[6.1, 3.5, 4.7, 3.4], overall=[1.0, 0.6, 0.1, -1.0])
    comparison = board.assign(dataset="fashion_mnist", metric="top1", family="CNN", linear_probe=[0.8, 0.7, 0.6, 0.1],
                              finetune=[0.85, 0.72, 0.7, 0.2])
    figures = {"leaderboard_plot": (plots.leaderboard_plot(board), LONG_NAMES),
               "paired_plot": (plots.paired_plot(pairs), LONG_NAMES[:2]),
               # every backbone of a scatter is numbered and named in full in the key beneath it
               "task_scatter": (plots.task_scatter(wide, "classification", "retrieval"), LONG_NAMES),
               "scale_plot": (plots.scale_plot(wide), LONG_NAMES),
               "metric_scatter": (plots.metric_scatter(wide, "classification", "retrieval"), LONG_NAMES),
               "slope_chart": (plots.slope_chart(comparison), LONG_NAMES)}
    truncated = {}
    for name, (fig, expected) in figures.items():
        texts = _texts(fig)
        missing = [n for n in expected if not any("".join(n.split()) in t for t in texts)]
        if missing:
            truncated[name] = [t for t in texts if t.endswith("…")] or missing
        plt.close(fig)
    assert truncated == {}
