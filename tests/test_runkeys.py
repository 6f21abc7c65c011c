"""Run keys follow the code: a copy of the package is edited and its keys, `bob status` and `bob build` follow.

Each test copies ``bobkit/`` and ``notebooks/tasks/`` into a temp folder (a checkout of its own: ``repo_root()``
is the copy) and runs ``python -m bobkit.cli`` there with that copy first on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bobkit.batch import codehash
from bobkit.batch.grid import cell_identity, code_version, make_cell, run_key
from bobkit.utils.paths import repo_root

SMOKE_GRID = "name: one\ngrid:\n  - task: smoke\n    value: 3.0\n"


def copy_checkout(dest: Path) -> Path:
    """The package and the task notebooks, copied to ``dest`` (caches left behind)."""
    shutil.copytree(repo_root() / "bobkit", dest / "bobkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo_root() / "notebooks" / "tasks", dest / "notebooks" / "tasks")
    return dest


def in_checkout(root: Path, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python *args`` with the checkout at ``root`` as the bobkit that is imported."""
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd or root, env=env,
                          timeout=timeout)


def versions(root: Path, tasks: tuple[str, ...] = ("smoke", "classification", "retrieval")) -> dict[str, str]:
    code = ("import json; from bobkit.batch.grid import code_version; "
            f"print(json.dumps({{t: code_version(t) for t in {list(tasks)!r}}}))")
    proc = in_checkout(root, "-c", code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_an_unchanged_checkout_keeps_its_keys_in_other_processes_and_folders(tmp_path: Path):
    here = {t: code_version(t) for t in ("smoke", "classification", "retrieval")}
    assert versions(repo_root()) == here  # another process
    assert versions(copy_checkout(tmp_path / "elsewhere")) == here  # another folder: contents, not paths
    params = make_cell("smoke", {"value": 2.0}).params
    proc = in_checkout(repo_root(), "-c", f"from bobkit.batch.grid import run_key; print(run_key('smoke', {params!r}))")
    assert proc.stdout.strip() == run_key("smoke", params)


def test_keys_change_with_the_task_source_and_the_modules_it_imports_only(tmp_path: Path):
    root = copy_checkout(tmp_path / "copy")
    before = versions(root)

    edit(root / "bobkit" / "report" / "site.py", '"""', '"""Edited. ')  # imported by no task
    assert versions(root) == before

    edit(root / "bobkit" / "tasks" / "smoke.py", "MODES = (", "MODES = (  # edited\n    ")
    after_task = versions(root)
    assert after_task["smoke"] != before["smoke"]
    assert {t: after_task[t] for t in ("classification", "retrieval")} == {
        t: before[t] for t in ("classification", "retrieval")}

    # A module the classification task reaches only through other modules (task -> features.extract -> ...).
    assert "bobkit.features.extract" in codehash.task_code_files("classification")
    edit(root / "bobkit" / "features" / "extract.py", '"""', '"""Edited. ')
    after_module = versions(root)
    assert after_module["classification"] != before["classification"]
    assert after_module["retrieval"] != before["retrieval"]  # it extracts features too
    assert after_module["smoke"] == after_task["smoke"]


def test_notebook_code_counts_but_its_markdown_and_outputs_do_not(tmp_path: Path):
    root = copy_checkout(tmp_path / "copy")
    before = versions(root, ("smoke",))
    path = root / "notebooks" / "tasks" / "smoke.ipynb"
    notebook = json.loads(path.read_text())
    notebook["cells"][0]["source"].append("\nMore prose.\n")  # Markdown
    notebook["metadata"]["widgets"] = {"state": {}}  # what JupyterLab adds on save
    path.write_text(json.dumps(notebook))
    assert versions(root, ("smoke",)) == before
    code = next(c for c in notebook["cells"] if c["cell_type"] == "code" and "smoke.run(" in "".join(c["source"]))
    code["source"].append("\nmetrics = dict(metrics)")
    path.write_text(json.dumps(notebook))
    assert versions(root, ("smoke",)) != before


def test_the_static_scan_resolves_relative_and_from_imports(tmp_path: Path):
    pkg = tmp_path / "bobkit"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks" / "__init__.py").write_text("from .helpers import thing\n")
    (pkg / "tasks" / "helpers.py").write_text("def f():\n    from ..lazy import g  # inside a function\n")
    (pkg / "tasks" / "mytask.py").write_text("from . import helpers\nfrom bobkit.tasks import thing\nimport os\n")
    (pkg / "lazy.py").write_text("import bobkit.unused_is_absent\n")
    (pkg / "unrelated.py").write_text("")
    found = codehash.module_closure({"bobkit.tasks.mytask"}, root=pkg)
    assert found == {"bobkit.tasks", "bobkit.tasks.mytask", "bobkit.tasks.helpers", "bobkit.lazy"}
    # each file's imports are parsed once per process: an edited file is read and followed again
    (pkg / "lazy.py").write_text("import bobkit.unrelated\n")
    found = codehash.module_closure({"bobkit.tasks.mytask"}, root=pkg)
    assert found == {"bobkit.tasks", "bobkit.tasks.mytask", "bobkit.tasks.helpers", "bobkit.lazy", "bobkit.unrelated"}


def test_a_cell_whose_code_changed_after_expansion_is_not_run_under_its_old_key(tmp_path: Path):
    root = copy_checkout(tmp_path / "copy")
    script = f"""
import json
from pathlib import Path
from bobkit.batch.grid import expand_grid
from bobkit.batch.runner import execute_cell
(cell,) = expand_grid({{"grid": [{{"task": "smoke"}}]}})
smoke = Path({str(root / "bobkit" / "tasks" / "smoke.py")!r})
smoke.write_text(smoke.read_text() + "# edited while the batch waited\\n")
outcome = execute_cell(cell, {str(tmp_path / "runs")!r})
print(json.dumps([outcome.status, outcome.kind, outcome.error]))
"""
    proc = in_checkout(root, "-c", script)
    assert proc.returncode == 0, proc.stderr
    status, kind, error = json.loads(proc.stdout)
    assert (status, kind) == ("failed", "code_changed") and "run the grid again" in error
    assert not (tmp_path / "runs").exists()  # nothing recorded under the old key


def test_identity_leaves_the_code_out_and_the_sidecar_carries_it():
    cell = make_cell("smoke", {"value": 2.0})
    assert cell_identity("smoke", cell.params) == cell_identity("smoke", {**cell.params, "device": "cuda"})
    assert cell_identity("smoke", cell.params) != cell_identity("smoke", {**cell.params, "value": 3.0})
    assert re.fullmatch(r"[0-9a-f]{16}", code_version("smoke"))


@pytest.mark.slow
def test_edited_code_makes_stale_cells_that_status_names_and_build_leaves_out(tmp_path: Path):
    root = copy_checkout(tmp_path / "copy")
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMOKE_GRID)
    runs = tmp_path / "runs"
    results = tmp_path / "results.parquet"
    first = in_checkout(root, "-m", "bobkit.cli", "run", str(grid), "--runs-dir", str(runs), "--no-progress")
    assert first.returncode == 0 and "1 complete" in first.stdout, first.stdout + first.stderr
    (old_key,) = [p.name for p in (runs / "smoke").iterdir()]

    edit(root / "bobkit" / "tasks" / "smoke.py", "MODES = (", "MODES = (  # edited\n    ")
    status = in_checkout(root, "-m", "bobkit.cli", "status", str(grid), "--runs-dir", str(runs))
    assert "0 done, 0 failed, 0 running, 0 pending, 1 stale" in status.stdout, status.stdout + status.stderr
    assert f"run key {old_key}; changed: bobkit.tasks.smoke)" in status.stdout
    assert f"bob run {grid} --runs-dir {runs}" in status.stdout  # how to rerun them

    build = in_checkout(root, "-m", "bobkit.cli", "build", "--runs-dir", str(runs), "--results", str(results))
    assert build.returncode == 0 and "(0 rows, 0 runs" in build.stdout, build.stdout + build.stderr
    assert "left out 1 stale run(s)" in build.stderr
    stale = in_checkout(root, "-m", "bobkit.cli", "build", "--runs-dir", str(runs), "--results", str(results),
                        "--include-stale")
    assert stale.returncode == 0 and "(1 rows, 1 runs" in stale.stdout, stale.stdout + stale.stderr

    again = in_checkout(root, "-m", "bobkit.cli", "run", str(grid), "--runs-dir", str(runs), "--no-progress")
    assert "executed 1 cell(s): 1 complete" in again.stdout, again.stdout + again.stderr
    new_key = ({p.name for p in (runs / "smoke").iterdir()} - {old_key}).pop()
    sidecar = json.loads((runs / "smoke" / new_key / "metrics.json").read_text())
    old = json.loads((runs / "smoke" / old_key / "metrics.json").read_text())
    assert sidecar["identity"] == old["identity"] and sidecar["code_version"] != old["code_version"]
    status = in_checkout(root, "-m", "bobkit.cli", "status", str(grid), "--runs-dir", str(runs))
    assert "1 done, 0 failed, 0 running, 0 pending, 0 stale" in status.stdout, status.stdout

    # A module the task's notebook imports, edited: stale again, and the change is named.
    edit(root / "bobkit" / "utils" / "files.py", '"""', '"""Edited. ')
    status = in_checkout(root, "-m", "bobkit.cli", "status", str(grid), "--runs-dir", str(runs))
    assert "1 stale" in status.stdout and "changed: bobkit.utils.files)" in status.stdout, status.stdout
