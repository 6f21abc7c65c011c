"""A grid on a real Slurm: one job array per resource group, requests exactly as declared, two drivers at once."""

from __future__ import annotations

import re
from pathlib import Path

from slurm_helpers import bob, recorded_job, scontrol_job, wait_for

from bobkit.batch.grid import load_grid
from bobkit.batch.runner import run_dir_of
from bobkit.results.sidecars import iter_sidecars, read_sidecar
from bobkit.results.table import build_results

SUMMARY = re.compile(r"executed (\d+) cell\(s\): (\d+) complete, (\d+) failed; (\d+) already done, (\d+) running")

GRID = """\
name: arrays
resources: {timeout_min: 5, cpus: 1, mem_gb: 1}
grid:
  - task: smoke
    value: [1, 2]
  - task: smoke
    value: 3
    resources: {partition: alt, cpus: 2, mem_gb: 2, gpus: 1}
"""
# Every #SBATCH key submitit writes for bob; resource keys appear only when declared.
ALWAYS = {"job-name", "time", "nodes", "ntasks-per-node", "cpus-per-task", "mem", "signal", "output", "error",
          "open-mode", "wckey"}


def sbatch_lines(script: Path) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a submission script as a mapping (a repeated key fails the test)."""
    lines = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
    pairs = [ln[len("#SBATCH --"):].partition("=")[::2] for ln in lines]
    assert len({k for k, _ in pairs}) == len(pairs), lines
    return dict(pairs)


def counts(stdout: str) -> tuple[int, ...]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    return tuple(int(g) for g in match.groups())


def test_grid_runs_as_arrays_with_each_groups_requests_exactly_as_declared(write_grid, tmp_path: Path):
    grid = write_grid(GRID)
    runs = tmp_path / "runs"
    done = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs), "--build",
               "--results", str(tmp_path / "results.parquet"))
    assert done.returncode == 0, done.stderr
    assert counts(done.stdout) == (3, 3, 0, 0, 0)

    cells = load_grid(grid)
    sidecars = {c.params["value"]: read_sidecar(run_dir_of(c, runs)) for c in cells}
    assert {v: s["metrics"]["score"] for v, s in sidecars.items()} == {1: 1.0, 2: 2.0, 3: 3.0}
    jobs = {v: s["runner"]["job_id"] for v, s in sidecars.items()}
    # Cells 1 and 2 share resources: one array, tasks 0 and 1; cell 3 is a job of its own.
    array = jobs[1].split("_")[0]
    assert {jobs[1], jobs[2]} == {f"{array}_0", f"{array}_1"} and "_" not in jobs[3]
    assert {recorded_job(run_dir_of(c, runs)) for c in cells} == set(jobs.values())

    scripts = {p.name.split("_")[0]: p for p in (runs / ".submitit").glob("*_submission.sh")}
    assert sorted(scripts) == sorted([array, jobs[3]])
    plain, special = sbatch_lines(scripts[array]), sbatch_lines(scripts[jobs[3]])
    assert set(plain) == ALWAYS | {"array"} and plain["array"] == "0-1%2"
    assert (plain["cpus-per-task"], plain["mem"], plain["time"]) == ("1", "1GB", "10")
    assert set(special) == ALWAYS | {"partition", "gpus-per-node"}
    assert (special["cpus-per-task"], special["mem"], special["partition"], special["gpus-per-node"]) == (
        "2", "2GB", "alt", "1")
    for script in scripts.values():  # nothing but the parameters and submitit's command
        body = [ln for ln in script.read_text().splitlines() if ln and not ln.startswith("#")]
        assert body[0] == "export SUBMITIT_EXECUTOR=slurm" and body[1].startswith("srun ") and len(body) == 2

    # Slurm's own record of what each job got.
    for value in (1, 2):
        record = scontrol_job(jobs[value])
        assert (record["Partition"], record["NumCPUs"], record["MinMemoryNode"]) == ("main", "1", "1G")
        assert "TresPerNode" not in record and record["JobState"] == "COMPLETED"
    record = scontrol_job(jobs[3])
    assert (record["Partition"], record["NumCPUs"], record["MinMemoryNode"]) == ("alt", "2", "2G")
    assert record["TresPerNode"] == "gres:gpu:1" and record["JobState"] == "COMPLETED"

    table = build_results(runs).set_index("run_key")["value"]
    assert table.to_dict() == {c.run_key: float(c.params["value"]) for c in cells}


def test_a_partition_that_would_inject_script_lines_is_refused_before_any_submission(write_grid, tmp_path: Path):
    sentinel = tmp_path / "injected"
    grid = write_grid("grid:\n  - task: smoke\n    resources:\n      partition: \"main\\ntouch " + str(sentinel)
                      + "\\n#\"\n")
    runs = tmp_path / "runs"
    done = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    assert done.returncode == 2 and "partition" in done.stderr and "touch" in done.stderr, done.stderr
    assert not (runs / ".submitit").exists() and not sentinel.exists()


def test_a_second_driver_leaves_queued_cells_to_the_first_and_two_at_once_run_each_cell_once(
        write_grid, tmp_path: Path, start_driver):
    grid = write_grid(GRID.replace("value: [1, 2]", "value: [1, 2]\n    mode: sleep\n    sleep_seconds: 4"))
    runs = tmp_path / "runs"
    cells = load_grid(grid)
    first = start_driver(str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    wait_for(lambda: all(recorded_job(run_dir_of(c, runs)) for c in cells), what="the first driver's jobs")
    second = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    assert counts(out) == (3, 3, 0, 0, 0)
    assert counts(second.stdout)[:3] == (0, 0, 0) and sum(counts(second.stdout)[3:]) == 3  # queued or done
    assert len(list((runs / ".submitit").glob("*_submission.sh"))) == 2  # the second driver submitted nothing

    # Two drivers started together on new cells: both may submit, each cell still runs once.
    grid2 = write_grid(GRID.replace("[1, 2]", "[4, 5]").replace("value: 3", "value: 6"), name="grid2.yaml")
    a, b = (start_driver(str(grid2), "--backend", "slurm", "--runs-dir", str(runs)) for _ in range(2))
    (out_a, err_a), (out_b, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    ca, cb = counts(out_a), counts(out_b)
    assert ca[2] == cb[2] == 0 and ca[1] + cb[1] == 3  # three executions in all, no failure
    sidecars = list(iter_sidecars(runs))
    assert len(sidecars) == 6 and all(s["status"] == "complete" and len(s["attempts"]) == 1 for s in sidecars)
    assert len(build_results(runs)) == 6
