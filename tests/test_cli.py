"""The `bob` command end to end on the runner's self-test task (fast: no model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GRID = "name: t\ngrid:\n  - task: smoke\n    value: [1, 2]\n"


def bob(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bobkit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_second_run_of_the_same_grid_executes_zero_cells(write_grid, tmp_path: Path):
    grid, runs = write_grid(GRID), tmp_path / "runs"
    first = bob("run", str(grid), "--runs-dir", str(runs), "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "executed 2 cell(s): 2 complete" in first.stdout
    sidecars = sorted(runs.glob("smoke/*/metrics.json"))
    assert len(sidecars) == 2
    stamps = [p.stat().st_mtime_ns for p in sidecars]
    second = bob("run", str(grid), "--runs-dir", str(runs), "--no-progress")
    assert "executed 0 cell(s)" in second.stdout and "2 already done" in second.stdout
    assert [p.stat().st_mtime_ns for p in sidecars] == stamps
    status = bob("status", str(grid), "--runs-dir", str(runs))
    assert "2 done, 0 failed, 0 running, 0 pending" in status.stdout


def test_dry_run_lists_cells_and_runs_nothing(write_grid, tmp_path: Path):
    proc = bob("run", str(write_grid(GRID)), "--runs-dir", str(tmp_path / "runs"), "--dry-run")
    assert proc.returncode == 0
    assert proc.stdout.count("smoke value=") == 2
    assert not (tmp_path / "runs").exists()


def test_validate_reports_cell_counts(write_grid):
    proc = bob("validate", str(write_grid(GRID)))
    assert proc.returncode == 0 and "2 cells" in proc.stdout


def test_strict_is_still_accepted_and_failures_fail_by_default(write_grid, tmp_path: Path):
    """``--strict`` (exit 1 on failures) is what ``bob run`` does now; old scripts passing it keep working."""
    proc = bob("run", str(write_grid(GRID)), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--strict")
    assert proc.returncode == 0 and proc.stdout.count("smoke value=") == 2
    help_text = bob("run", "--help").stdout
    assert "--allow-failures" in help_text and "--strict" not in help_text


def test_the_build_leaderboard_marks_random_init_controls(tmp_path: Path, capsys):
    """A control can score above a pretrained backbone on a task (robustness in the demo): the printout says which
    rows are controls, so it does not read as a contender."""
    from bobkit import cli
    from bobkit.batch.grid import code_version
    from bobkit.results.sidecars import write_sidecar

    runs = tmp_path / "runs"
    for key, backbone, top1 in (("k1", "mobilenetv2_100.packaged_tv_in1k", 0.5), ("k2", "resnet18.random_init", 0.6)):
        run_dir = runs / "classification" / key
        write_sidecar(run_dir, {
            "run_key": key, "task": "classification", "status": "complete",
            "code_version": code_version("classification"),
            "params": {"backbone": backbone, "dataset": "fashion_mnist", "protocol": "linear_probe", "seed": 0},
            "metrics": {"top1": top1}})
        (run_dir / "executed.ipynb").write_text("{}")
    assert cli.main(["build", "--runs-dir", str(runs), "--results", str(tmp_path / "results.parquet")]) == 0
    lines = capsys.readouterr().out.splitlines()
    control = next(line for line in lines if line.strip().startswith("resnet18.random_init"))
    pretrained = next(line for line in lines if line.strip().startswith("mobilenetv2_100"))
    assert "random-init control" in control and "random-init control" not in pretrained
    assert lines.index(control) < lines.index(pretrained)  # still ranked by its value, now labelled
