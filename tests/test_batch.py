"""Batches that survive: SIGKILL and resume, two batches on one folder, Ctrl-C, and the submitit (Slurm) path.

These run real `bob run` processes on the runner's self-test task (``smoke``: no model, ~2-4 s a cell here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bobkit.batch.backends import SubmititBackend, executor_parameters, group_by_resources, run_submitit
from bobkit.batch.claims import read_claim
from bobkit.batch.grid import expand_grid, load_grid
from bobkit.batch.runner import run_dir_of
from bobkit.results.sidecars import iter_sidecars, read_sidecar
from bobkit.results.table import build_results

SLEEPY = "name: sleepy\ngrid:\n  - task: smoke\n    mode: sleep\n    sleep_seconds: {sleep}\n    value: {values}\n"
SUMMARY = re.compile(r"executed (\d+) cell\(s\): (\d+) complete, (\d+) failed; (\d+) already done, (\d+) running")


def start_bob(*args: str) -> subprocess.Popen[str]:
    """``bob run ...`` in a process group of its own (so the test can kill the group)."""
    return subprocess.Popen([sys.executable, "-m", "bobkit.cli", "run", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, ...]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    match = SUMMARY.search(out)
    assert match, out + err
    return tuple(int(g) for g in match.groups())


def wait_for(predicate, timeout: float = 120, every: float = 0.1) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(every)


def cell_processes(runs: Path) -> list[int]:
    """Pids of papermill processes still working on a cell under ``runs`` (their spec lives there)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(runs) in cmdline and "papermill_main" in cmdline:
                pids.append(int(proc.name))
    return pids


def table(runs: Path) -> pd.DataFrame:
    return build_results(runs)


@pytest.mark.slow
def test_sigkill_mid_batch_then_resume_records_each_cell_once(write_grid, tmp_path: Path):
    grid = write_grid(SLEEPY.format(sleep=1.5, values="[1, 2, 3]"))
    cells = load_grid(grid)
    runs = tmp_path / "runs"
    proc = start_bob(str(grid), "--runs-dir", str(runs))
    wait_for(lambda: any(runs.glob("smoke/*/metrics.json")))
    os.killpg(proc.pid, signal.SIGKILL)  # the batch and its process group, mid-run
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("smoke/*/metrics.json")}
    assert 1 <= len(done_before) < len(cells)
    # The in-flight papermill (its own session, outside the killed group) died with its parent.
    wait_for(lambda: not cell_processes(runs), timeout=10)

    resumed = finish(start_bob(str(grid), "--runs-dir", str(runs)))
    assert resumed[:2] == (len(cells) - len(done_before), len(cells) - len(done_before))
    assert resumed[3] == len(done_before)
    sidecars = list(iter_sidecars(runs))
    assert len(sidecars) == len(cells) and all(s["status"] == "complete" for s in sidecars)
    assert all(len(s["attempts"]) == 1 and not s["history"] for s in sidecars)
    assert {k: (runs / "smoke" / k / "metrics.json").stat().st_mtime_ns for k in done_before} == done_before
    assert not list(runs.glob("smoke/*/.work-*")) and not list(runs.glob("smoke/*/.claim"))

    reference = tmp_path / "reference"
    assert finish(start_bob(str(grid), "--runs-dir", str(reference)))[:2] == (len(cells), len(cells))
    pd.testing.assert_frame_equal(table(runs), table(reference))


@pytest.mark.slow
def test_two_concurrent_batches_on_one_folder_run_each_cell_once(write_grid, tmp_path: Path):
    grid = write_grid(SLEEPY.format(sleep=1, values="[1, 2, 3, 4]"))
    runs = tmp_path / "runs"
    first, second = start_bob(str(grid), "--runs-dir", str(runs)), start_bob(str(grid), "--runs-dir", str(runs))
    a, b = finish(first), finish(second)
    assert a[0] + b[0] == 4 and a[2] == b[2] == 0  # 4 executions in all, no failures
    assert a[0] + a[3] + a[4] == 4 and b[0] + b[3] + b[4] == 4  # each batch accounts for every cell
    sidecars = list(iter_sidecars(runs))
    assert len(sidecars) == 4 and all(s["status"] == "complete" and len(s["attempts"]) == 1 for s in sidecars)
    by_batch = pd.Series([s["runner"]["pid"] for s in sidecars]).value_counts()
    assert sorted(by_batch.to_dict().get(p.pid, 0) for p in (first, second)) == sorted([a[0], b[0]])


@pytest.mark.slow
def test_ctrl_c_kills_running_cells_and_leaves_them_pending(write_grid, tmp_path: Path):
    grid = write_grid(SLEEPY.format(sleep=60, values="[1, 2]"))
    runs = tmp_path / "runs"
    proc = start_bob(str(grid), "--runs-dir", str(runs))
    wait_for(lambda: any(runs.glob("smoke/*/.work-*/output.log")) and cell_processes(runs))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command to resume" in err
    assert not list(runs.glob("smoke/*/metrics.json"))  # interrupted is not failed
    assert not list(runs.glob("smoke/*/.work-*")) and not list(runs.glob("smoke/*/.claim"))
    wait_for(lambda: not cell_processes(runs), timeout=10)


def test_cells_are_grouped_into_arrays_by_resources():
    cells = expand_grid({
        "resources": {"timeout_min": 30, "gpus": 1},
        "grid": [
            {"task": "smoke", "value": [1, 2]},
            {"task": "smoke", "value": 3, "resources": {"partition": "long", "slurm_array_parallelism": 4,
                                                         "mem_gb": 64, "cpus": 8}},
        ],
    })
    groups = group_by_resources(cells)
    assert [len(g) for _, g in groups] == [2, 1]
    plain = executor_parameters(groups[0][0], "slurm")
    assert plain["timeout_min"] == 35 and plain["gpus_per_node"] == 1 and "slurm_partition" not in plain
    special = executor_parameters(groups[1][0], "slurm")
    assert special["slurm_partition"] == "long" and special["slurm_array_parallelism"] == 4
    assert special["mem_gb"] == 64 and special["cpus_per_task"] == 8 and special["slurm_signal_delay_s"] > 0
    assert "mem_gb" not in executor_parameters(groups[1][0], "local")


def test_slurm_backend_without_slurm_says_how_to_test_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(ValueError, match="--cluster local"):
        run_submitit(expand_grid({"grid": [{"task": "smoke"}]}), tmp_path / "runs", progress=False)


@pytest.mark.slow
def test_submitit_local_executor_runs_a_small_grid_to_completion(tmp_path: Path):
    cells = expand_grid({"grid": [{"task": "smoke", "setting": [{"value": 1.0}, {"mode": "raise"}]}]})
    runs = tmp_path / "runs"
    summary = run_submitit(cells, runs, cluster="local", progress=False)
    assert sorted(o.status for o in summary.outcomes) == ["complete", "failed"]
    ok, bad = (read_sidecar(run_dir_of(c, runs)) for c in cells)
    assert ok["status"] == "complete" and ok["metrics"] == {"score": 1.0}
    assert ok["runner"]["backend"] == "submitit" and ok["runner"]["cluster"] == "local" and ok["runner"]["job_id"]
    assert bad["status"] == "failed" and "RuntimeError" in bad["error"]["message"]
    assert list((runs / ".submitit").glob("*_log.out"))
    again = run_submitit(cells, runs, cluster="local", progress=False, only_failed=True)
    assert [o.status for o in again.outcomes] == ["failed"] and again.executed == 1
    assert run_submitit(cells[:1], runs, cluster="local", progress=False).count("skipped") == 1


@pytest.mark.slow
def test_submitit_preempted_cell_is_requeued_and_resumes(tmp_path: Path):
    (cell,) = expand_grid({"grid": [{"task": "smoke", "mode": "sleep", "sleep_seconds": 4, "value": 9.0}]})
    runs = tmp_path / "runs"
    run_dir = run_dir_of(cell, runs)
    preempted: list[int] = []

    def preempt() -> None:  # Slurm's preemption notice: USR2 to the job (the claim names its process)
        wait_for(lambda: read_claim(run_dir) is not None and any(run_dir.glob(".work-*/output.log")))
        time.sleep(1.0)
        pid = read_claim(run_dir)["pid"]
        os.kill(pid, signal.SIGUSR2)
        preempted.append(pid)

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    summary = SubmititBackend(cluster="local", progress=False).run([cell], runs)
    thread.join(timeout=5)
    assert preempted and [o.status for o in summary.outcomes] == ["complete"]
    sidecar = read_sidecar(run_dir)
    assert sidecar["status"] == "complete" and sidecar["metrics"] == {"score": 9.0}
    assert sidecar["runner"]["requeues"] == 1 and sidecar["runner"]["pid"] != preempted[0]
    assert len(sidecar["attempts"]) == 1 and not sidecar["history"]  # the preempted run recorded nothing
    assert not list(run_dir.glob(".work-*")) and read_claim(run_dir) is None
    logs = "".join(p.read_text() for p in (runs / ".submitit").glob("*_log.err"))
    assert "preempted" in logs and json.dumps(sidecar)  # submitit saw a preemption, not a crash
