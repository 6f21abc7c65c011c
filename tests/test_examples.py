"""Every example command written in the README, CONTRIBUTING and the task notebooks is a test.

The commands are parsed out of the documents, so an example is tested the moment it is written:

* ``papermill notebooks/tasks/<task>.ipynb out.ipynb -p ...`` runs exactly as written (the real papermill CLI,
  its own casting of ``-p`` values), with tiny sizes appended for the parameters the example leaves out, and the
  task output must record the example's values;
* ``bob ...`` parses with ``bob``'s own parser and every grid it names validates; the offline ones run
  (``validate``, ``backbones``, ``data``, ``status``; ``run`` / ``build`` on a tiny copy of the grid, slow;
  ``--backend slurm`` as ``--dry-run``); ``bob data --download`` names manifest entries; ``bob report`` runs in
  tests/test_report.py;
* ``python <script>`` runs as written (from the project root);
* ``make <target>`` names a Makefile target (``make test`` is what CI runs); ``jupyter lab <notebook>`` names a
  notebook that exists.

A command of any other kind fails the test until this module learns how to run it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

from bobkit.tasks import get_spec

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "notebooks" / "tasks").glob("*.ipynb"))]
PROGRAMS = ("papermill", "bob", "python", "make", "jupyter", ".")
#: Sizes appended to a papermill example for the parameters it does not set (seconds on a CPU).
TINY = {
    "classification": dict(image_size=32, max_train=60, max_test=40, epochs=1, batch_size=16),
    "retrieval": dict(image_size=32, max_samples=100),
    "ood": dict(image_size=32, max_train=100, max_test=60, max_target=60, max_corrupted=20, severities="[1]"),
    "robustness": dict(image_size=32, max_train=100, max_test=60, max_attack=8, pgd_steps=1),
    "detection": dict(canvas_size=64, n_train=8, n_val=4, epochs=1, batch_size=4),
    "smoke": dict(),
    "transferability": dict(image_size=32, max_train=60),
}
ON_CPU = dict(device="cpu", num_threads=1)


@dataclass(frozen=True)
class Example:
    """One documented command: where it is written and its words."""

    source: str
    words: tuple[str, ...]

    @property
    def program(self) -> str:
        return self.words[0]

    def __str__(self) -> str:
        return f"{self.source}: {shlex.join(self.words)}"


def _markdown(path: Path) -> str:
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return path.read_text()


def _commands(text: str) -> list[str]:
    """Command lines of a Markdown text: fenced bash blocks (continuations joined) and inline code spans."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        commands += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += re.findall(r"`([^`\n]+)`", prose)
    return commands


def documented_examples() -> list[Example]:
    """Every command written in :data:`DOCUMENTS` whose program is one of :data:`PROGRAMS` (or unknown)."""
    examples = []
    for path in DOCUMENTS:
        for line in _commands(_markdown(path)):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if len(words) >= 2 and (words[0] in PROGRAMS or "/" in words[0] and words[0].endswith("bob")):
                examples.append(Example(str(path.relative_to(REPO)), tuple(words)))
    return list(dict.fromkeys(examples))


EXAMPLES = documented_examples()


def _of(program: str) -> list[Example]:
    return [e for e in EXAMPLES if e.program == program]


def test_the_documents_hold_the_examples_we_expect():
    tasks = {e.words[1] for e in _of("papermill")}
    assert {f"notebooks/tasks/{t}.ipynb" for t in ("classification", "retrieval", "ood", "robustness",
                                                   "detection")} <= tasks
    assert any(e.words[1] == "run" for e in _of("bob")) and any(e.words[1] == "validate" for e in _of("bob"))
    assert all(e.program in PROGRAMS for e in EXAMPLES), [str(e) for e in EXAMPLES if e.program not in PROGRAMS]


# ------------------------------------------------------------------------------------------------------------
# papermill: run as written, with tiny sizes
# ------------------------------------------------------------------------------------------------------------


def _papermill_parameters(words: tuple[str, ...]) -> dict[str, str]:
    """The ``-p`` / ``-r`` parameters of a papermill command, as the raw strings written."""
    given, i = {}, 3
    while i < len(words):
        if words[i] in ("-p", "--parameters", "-r", "--parameters_raw"):
            given[words[i + 1]] = words[i + 2]
            i += 3
        else:
            i += 1
    return given


def _task_notebook(example: Example) -> bool:
    return example.words[1].startswith("notebooks/tasks/")


def _selected(request: pytest.FixtureRequest, test_name: str) -> list[Example]:
    """The examples of test ``test_name`` this session runs (all of them, or those ``-k`` / node ids picked)."""
    return [item.callspec.params["example"] for item in request.session.items
            if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec")]


def _two_at_a_time(run, jobs: list) -> list:
    """``run(job)`` for each job, two processes at a time: each example is one single-threaded process (imports,
    a kernel with ``num_threads=1``), so a 2-core machine runs two side by side in the time of one."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, jobs))


def _papermill_words(example: Example, folder: Path) -> list[str]:
    """The example as written, with tiny sizes for the parameters it leaves out, writing into ``folder``."""
    given = _papermill_parameters(example.words)
    extra = {**TINY[Path(example.words[1]).stem], **ON_CPU, "output_dir": str(folder / "cell")}
    words = [sys.executable, "-m", "papermill", "--no-progress-bar", example.words[1], str(folder / "out.ipynb"),
             *example.words[3:]]
    for name, value in extra.items():
        if name not in given:
            words += ["-p", name, str(value)]
    return words


@pytest.fixture(scope="module")
def papermill_examples(request, tmp_path_factory):
    """``{example: (process, folder)}``: the selected papermill examples, run (two at a time) before their tests."""
    examples = _selected(request, "test_papermill_example_runs_with_tiny_sizes")
    folders = [tmp_path_factory.mktemp("papermill_example") for _ in examples]
    procs = _two_at_a_time(lambda job: subprocess.run(_papermill_words(*job), cwd=REPO, capture_output=True,
                                                      text=True, timeout=900), list(zip(examples, folders)))
    return {example: (proc, folder) for example, proc, folder in zip(examples, procs, folders)}


@pytest.mark.notebook
@pytest.mark.parametrize("example", [e for e in _of("papermill") if _task_notebook(e)], ids=str)
def test_papermill_example_runs_with_tiny_sizes(example, papermill_examples):
    task = Path(example.words[1]).stem
    given = _papermill_parameters(example.words)
    proc, folder = papermill_examples[example]
    assert proc.returncode == 0, f"{example}\n{proc.stderr[-3000:]}"
    output = json.loads((folder / "cell" / "task_metrics.json").read_text())
    spec = get_spec(task)
    expected = spec.validate({name: value for name, value in given.items()})  # the example's values, as declared
    for name in given:
        if name in output["setting_params"]:
            assert output["setting_params"][name] == expected[name], name
    assert output["metrics"] and output["primary"]


# ------------------------------------------------------------------------------------------------------------
# bob: parsed by bob's parser, grids validated, the offline commands run
# ------------------------------------------------------------------------------------------------------------


def _bob(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bobkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)


def _with_runs_dir(words: list[str], runs: Path) -> list[str]:
    """``words`` with ``--runs-dir runs`` in place of the one written (a shared folder that is not here)."""
    if "--runs-dir" in words:
        i = words.index("--runs-dir")
        words = words[:i] + words[i + 2:]
    return [*words, "--runs-dir", str(runs)]


def _write_example_folders() -> None:
    """Run the documented ``bob data --example-folder DIR`` commands (as written) whose folder is not there yet:
    the grids that read those folders validate only once they exist."""
    for example in _of("bob"):
        words = list(example.words[1:])
        if words[0] == "data" and "--example-folder" in words:
            folder = REPO / words[words.index("--example-folder") + 1]
            if not folder.is_dir():
                proc = _bob(*words)
                assert proc.returncode == 0, f"{example}\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("example", _of("bob"), ids=str)
def test_bob_example_parses_and_names_what_exists(example, monkeypatch):
    from bobkit.batch.grid import load_grid
    from bobkit.cli import build_parser
    from bobkit.data.manifest import load_manifest

    _write_example_folders()
    monkeypatch.setenv("BOB_REGISTRY", "")  # a grid's declarations stay in this test
    args = build_parser().parse_args(list(example.words[1:]))
    for path in [a for a in example.words[2:] if a.endswith(".yaml")]:
        assert load_grid(REPO / path), path
    if args.command == "data" and args.download:
        manifest = load_manifest()
        for name in args.download:
            manifest.entry(name)  # raises naming an unknown entry


def _offline_words(example: Example, runs: Path) -> tuple[str, ...] | None:
    """The ``bob`` arguments an offline example runs with (None: it needs the internet)."""
    words = list(example.words[1:])
    if words[0] == "data" and "--download" in words:
        return None  # needs the internet; its names are checked above
    if words[0] == "status":
        words = _with_runs_dir(words, runs)
    if "--backend" in words:  # a cluster is not here: the same grid and flags, listing its cells
        words = [*_with_runs_dir(words, runs), "--dry-run"]
    return tuple(words)


@pytest.fixture(scope="module")
def offline_bob(request, tmp_path_factory):
    """``{words: process}``: each distinct command of the selected offline examples, run once (two at a time)
    before their tests. The same words written in several documents (``bob backbones`` is in four) read the same
    files and print the same thing, so each of those examples checks the one run. Only read-only commands come
    here (``status`` and ``--dry-run`` get a fresh, empty runs folder)."""
    runs = tmp_path_factory.mktemp("offline_bob") / "runs"
    words = {_offline_words(e, runs) for e in _selected(request, "test_offline_bob_example_runs")} - {None}
    words = sorted(words)
    return {"runs": runs, **dict(zip(words, _two_at_a_time(lambda w: _bob(*w), words)))}


@pytest.mark.parametrize("example", [e for e in _of("bob") if e.words[1] in ("validate", "backbones", "data", "status")
                                     or "--backend" in e.words], ids=str)
def test_offline_bob_example_runs(example, offline_bob):
    words = _offline_words(example, offline_bob["runs"])
    if words is None:
        return  # needs the internet; its names are checked above
    proc = offline_bob[words]
    assert proc.returncode == 0, f"{example}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip()


def _tiny_grid(path: Path, out: Path) -> Path:
    """A copy of a grid with one backbone per block and tiny sizes, on the CPU."""
    grid = yaml.safe_load(path.read_text())
    grid.setdefault("base_dir", str(path.parent))  # the copy's relative paths still mean the original's files
    grid["defaults"] = {**(grid.get("defaults") or {}), **ON_CPU}
    for block in grid["grid"]:
        if isinstance(block.get("backbone"), list):
            block["backbone"] = block["backbone"][:1]
        names = get_spec(block["task"]).names()
        block.update({k: yaml.safe_load(str(v)) for k, v in TINY[block["task"]].items() if k in names})
        block.pop("lr_steps", None)  # epochs of the full schedule; None puts them at the paper's share of the tiny one
    out.write_text(yaml.safe_dump({k: v for k, v in grid.items() if not str(k).startswith("x-")}))
    return out


@pytest.mark.slow
def test_batch_examples_run_on_a_tiny_copy_of_their_grid(tmp_path):
    """`bob run ... --build`, `bob status`, `bob run --only-failed`, `bob build` as written, on tiny cells."""
    runs, results = tmp_path / "runs", tmp_path / "results.parquet"
    ran, since_last_run = [], set()
    _write_example_folders()
    for example in _of("bob"):
        words = list(example.words[1:])
        if words[0] not in ("run", "status", "build") or "--backend" in words:
            continue
        words = [str(_tiny_grid(REPO / w, tmp_path / Path(w).name)) if w.endswith(".yaml") else w for w in words]
        words = _with_runs_dir(words, runs) + (["--results", str(results)] if words[0] != "status" else [])
        if words[0] == "run":
            since_last_run = set()
        elif tuple(words) in since_last_run:
            continue  # `bob build` is written in README and CONTRIBUTING: the same command on the same runs
        since_last_run.add(tuple(words))
        proc = _bob(*words)
        assert proc.returncode == 0, f"{example}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran.append(words[0])
    assert "run" in ran and results.exists()
    sidecars = [json.loads(p.read_text()) for p in runs.glob("*/*/metrics.json")]
    assert sidecars and all(s["status"] == "complete" for s in sidecars), [s.get("error") for s in sidecars]
    # the analysis notebooks' examples, as written, on the table those runs built
    for example in [e for e in _of("papermill") if not _task_notebook(e)]:
        words = [sys.executable, "-m", "papermill", "--no-progress-bar", example.words[1], str(tmp_path / "out.ipynb"),
                 *example.words[3:], "-p", "results_path", str(results), "-p", "n_boot", "20",
                 "-p", "figures_dir", str(tmp_path / "figures")]
        proc = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{example}\n{proc.stderr[-3000:]}"
        summary = json.loads((tmp_path / "figures" / "summary.json").read_text())
        assert summary["notebook"] == Path(example.words[1]).stem
        yaml_given = [yaml.safe_load(example.words[i + 1]) for i, w in enumerate(example.words) if w == "-y"]
        given = {**_papermill_parameters(example.words), **{k: v for d in yaml_given for k, v in d.items()}}
        recorded = {name: value for name, value in given.items() if name in summary and name != "results_path"}
        assert recorded and all(summary[name] == value for name, value in recorded.items()), (recorded, summary)


# ------------------------------------------------------------------------------------------------------------
# python, make, jupyter
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", _of("python"), ids=str)
def test_python_example_runs(example):
    proc = subprocess.run([sys.executable, *example.words[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{example}\n{proc.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------------------------
# make, jupyter
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", _of("make") + _of("jupyter") + _of("."), ids=str)
def test_setup_examples_name_what_exists(example):
    if example.program == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M)
        assert set(example.words[1:]) <= set(targets)
    elif example.program == "jupyter":
        assert example.words[1] == "lab" and all((REPO / w).exists() for w in example.words[2:])
    else:
        assert example.words[1] == ".venv/bin/activate"  # made by `make` (tools/setup.sh)
