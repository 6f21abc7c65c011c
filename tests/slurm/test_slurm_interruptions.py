"""What a real cluster does to running cells: ``scancel``, ``scontrol requeue`` and the time limit."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pytest
from slurm_helpers import bob, recorded_job, running_cell, squeue_state, wait_for

from bobkit.batch import backends
from bobkit.batch.grid import expand_grid, load_grid
from bobkit.batch.runner import run_dir_of
from bobkit.results.sidecars import iter_sidecars, read_sidecar
from bobkit.results.table import build_results

SUMMARY = re.compile(r"executed (\d+) cell\(s\): (\d+) complete, (\d+) failed; (\d+) already done, (\d+) running")
SLEEPY = """\
name: sleepy
resources: {{timeout_min: 5, cpus: 1, mem_gb: 1}}
grid:
  - task: smoke
    mode: sleep
    sleep_seconds: {sleep}
    value: {values}
"""
NOTE = "Slurm accounting is disabled on this cluster"


def counts(stdout: str) -> tuple[int, ...]:
    match = SUMMARY.search(stdout)
    assert match, stdout
    return tuple(int(g) for g in match.groups())


def status_lines(grid: Path, runs: Path) -> str:
    done = bob("status", str(grid), "--runs-dir", str(runs))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_scancel_records_cancelled_cells_that_only_failed_reruns(write_grid, tmp_path: Path, start_driver):
    # Three cells of 1 CPU on a 2-CPU node: two run, one waits.
    grid = write_grid(SLEEPY.format(sleep=15, values="[1, 2, 3]"))
    cells, runs = load_grid(grid), tmp_path / "runs"
    dirs = [run_dir_of(c, runs) for c in cells]
    driver = start_driver(str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    running = wait_for(lambda: running_cell(dirs), what="a running cell")
    pending = wait_for(lambda: next((d for d in dirs if recorded_job(d) and squeue_state(recorded_job(d))[0]
                                     == "PENDING"), None), what="a pending cell")
    status = status_lines(grid, runs)
    assert "0 failed" in status and "slurm's view (squeue)" in status
    assert f"job {recorded_job(running)} RUNNING" in status and f"job {recorded_job(pending)} PENDING" in status

    subprocess.run(["scancel", recorded_job(running), recorded_job(pending)], check=True, timeout=60)
    out, err = driver.communicate(timeout=300)
    assert counts(out)[:3] == (3, 1, 2), out + err
    assert err.count(NOTE) == 1  # said once, not at every poll

    for run_dir in (running, pending):
        sidecar = read_sidecar(run_dir)
        assert sidecar["status"] == "failed" and sidecar["error"]["kind"] == "cancelled", sidecar["error"]
        assert recorded_job(run_dir) in sidecar["error"]["message"]
        assert "exited with code" not in sidecar["error"]["message"]
    # (a pending array task Slurm still lists reads "CANCELLED"; one it dropped, "left the queue before it started")
    assert read_sidecar(running)["runner"]["job_id"] == recorded_job(running)  # the job recorded it itself
    assert not list(running.glob(".work-*")) and not (running / ".claim").exists()
    status = status_lines(grid, runs)
    assert status.count("[cancelled]") == 2 and "--only-failed" in status
    assert f"job {recorded_job(running)} CANCELLED" in status and status.count(NOTE) == 1

    again = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs), "--only-failed")
    assert again.returncode == 0 and counts(again.stdout)[:3] == (2, 2, 0), again.stdout + again.stderr
    sidecars = list(iter_sidecars(runs))
    assert len(sidecars) == 3 and all(s["status"] == "complete" for s in sidecars)
    assert [h["kind"] for h in read_sidecar(running)["history"]] == ["cancelled"]  # the record of what happened
    assert sorted(build_results(runs)["value"]) == [1.0, 2.0, 3.0]


def test_requeued_task_is_followed_by_the_driver_and_never_reported_failed(write_grid, tmp_path: Path,
                                                                          start_driver):
    grid = write_grid(SLEEPY.format(sleep=12, values="[1, 2]"))
    cells, runs = load_grid(grid), tmp_path / "runs"
    dirs = [run_dir_of(c, runs) for c in cells]
    seen_failed: list[str] = []
    stop = threading.Event()

    def watch_sidecars() -> None:  # a requeued cell must never be recorded as failed, not even for a moment
        while not stop.is_set():
            seen_failed.extend(s["run_key"] for s in iter_sidecars(runs) if s["status"] != "complete")
            stop.wait(0.2)

    watcher = threading.Thread(target=watch_sidecars, daemon=True)
    watcher.start()
    driver = start_driver(str(grid), "--backend", "slurm", "--runs-dir", str(runs), "--build",
                       "--results", str(tmp_path / "results.parquet"))
    running = wait_for(lambda: running_cell(dirs), what="a running cell")
    job = recorded_job(running)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    wait_for(lambda: squeue_state(job) == ("PENDING", 1), what="the requeued job pending again")
    status = status_lines(grid, runs)
    assert "0 failed" in status and f"job {job} REQUEUED: " in status and "restart 1" in status

    out, err = driver.communicate(timeout=300)
    stop.set()
    watcher.join(timeout=5)
    assert driver.returncode == 0 and counts(out)[:3] == (2, 2, 0), out + err
    assert err.count(f"Slurm requeued job {job}") == 1 and not seen_failed
    sidecar = read_sidecar(running)
    assert sidecar["status"] == "complete" and sidecar["runner"]["slurm_restarts"] == 1
    assert len(sidecar["attempts"]) == 1 and not sidecar["history"]
    assert [p.name for p in running.iterdir() if p.name == "metrics.json"] == ["metrics.json"]
    assert "results:" in out and "(2 rows, 2 runs," in out  # the table built at the end includes the cell
    assert sorted(build_results(runs)["value"]) == [1.0, 2.0]


def test_time_limit_checkpoints_requeues_and_resumes_without_redoing_work(tmp_path: Path, monkeypatch):
    # A 2-minute job told 60 s before its end (Slurm may tell up to ~30 s earlier): the resumable sleep of 60 s
    # cannot finish in its first run, so the job checkpoints through submitit's signal, requeues, and resumes.
    monkeypatch.setattr(backends, "JOB_MARGIN_MIN", 0)
    monkeypatch.setattr(backends, "SIGNAL_DELAY_S", 60)
    (cell,) = expand_grid({"resources": {"timeout_min": 2, "cpus": 1, "mem_gb": 1},
                           "grid": [{"task": "smoke", "mode": "sleep", "sleep_seconds": 60, "resumable": True,
                                     "value": 7}]})
    runs = tmp_path / "runs"
    summary = backends.SubmititBackend(cluster="slurm", progress=False, poll_seconds=2).run([cell], runs)
    assert [(o.status, o.error) for o in summary.outcomes] == [("complete", None)]
    sidecar = read_sidecar(run_dir_of(cell, runs))
    assert sidecar["metrics"] == {"score": 7.0}
    assert sidecar["runner"]["requeues"] >= 1 and sidecar["runner"]["slurm_restarts"] == sidecar["runner"]["requeues"]
    timings = sidecar["timings"]
    assert timings["resumed_seconds"] > 0 and timings["slept_seconds"] < 60
    assert timings["resumed_seconds"] + timings["slept_seconds"] == pytest.approx(60)  # each second slept once
    assert len(sidecar["attempts"]) == 1 and not sidecar["history"]
    logs = "".join(p.read_text() for p in (runs / ".submitit").glob("*_log.out"))
    assert "this job is timed-out" in logs and "Requeued job" in logs
    assert len(build_results(runs)) == 1
