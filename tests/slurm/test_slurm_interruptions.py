"""What a real cluster does to running cells: ``scancel``, ``scontrol requeue`` and the time limit."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from slurm_helpers import bob, recorded_job, running_cell, squeue_state, wait_for

from bobkit.batch import backends
from bobkit.batch.grid import expand_grid, load_grid
from bobkit.batch.runner import run_dir_of
from bobkit.results.sidecars import iter_sidecars, read_sidecar
from bobkit.results.table import build_results
from bobkit.tasks import smoke
from bobkit.tasks.train_state import read_attempts

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


def test_a_training_cell_with_a_1_minute_limit_finishes_over_several_requeues_with_no_step_done_twice(
        tmp_path: Path):
    # A 1-minute job asked for USR2 10 s before its end. Slurm checks its jobs every 30 s and signals when the next
    # check could be too late, so a run gets 20-50 s, kernel start (papermill, torch) included. 30 steps of 1.5 s
    # (45 s) cannot fit in one run: each run trains until the signal, saves, and the job is requeued; a run whose
    # kernel is still starting at the signal is requeued without training (the spare requeues cover those).
    steps = 30
    (cell,) = expand_grid({
        "resources": {"timeout_min": 1, "job_margin_min": 0, "signal_delay_s": 10, "max_requeues": 10, "cpus": 1,
                      "mem_gb": 2},
        "grid": [{"task": "smoke", "mode": "train", "steps": steps, "step_seconds": 1.5, "batch_size": 64,
                  "value": 7}]})
    runs = tmp_path / "runs"
    started = time.time()
    summary = backends.SubmititBackend(cluster="slurm", progress=False, poll_seconds=2).run([cell], runs)
    assert [(o.status, o.error) for o in summary.outcomes] == [("complete", None)]
    run_dir = run_dir_of(cell, runs)
    sidecar = read_sidecar(run_dir)
    assert sidecar["metrics"] == {"score": 7.0}
    assert sidecar["runner"]["requeues"] >= 1 and sidecar["runner"]["slurm_restarts"] == sidecar["runner"]["requeues"]
    assert len(sidecar["attempts"]) == 1 and not sidecar["history"]
    assert not (run_dir / "train-state").exists()

    attempts = read_attempts(run_dir / "train-attempts.jsonl")
    done = [a.saved_step - a.start_step for a in attempts]
    assert sum(n > 0 for n in done) >= 2, attempts  # several runs did part of the training
    assert attempts[0].start_step == 0 and attempts[-1].why == "finished" and attempts[-1].end_step == steps
    for before, after in zip(attempts, attempts[1:]):  # contiguous: each run starts where the last one saved
        assert after.start_step == before.saved_step, attempts
    for attempt in attempts:  # every run ended with its last step saved (a signal, or the end): none lost
        assert attempt.end_step == attempt.saved_step, attempts
        assert attempt.why in ("preempted (SIGUSR2)", "finished"), attempts
    assert sum(done) == steps  # the planned steps, each done once
    timings = sidecar["timings"]
    assert timings["train_steps_redone"] == 0 and timings["train_attempts"] == len(attempts)
    logs = "".join(p.read_text() for p in (runs / ".submitit").glob("*_log.*"))
    assert "this job is timed-out" in logs and "asked 1 training process(es) to save" in logs
    print(f"1-minute limit: {sidecar['runner']['requeues']} requeues, {len(attempts)} training runs, steps "
          f"per run {done}, {time.time() - started:.0f} s in all")
    assert len(build_results(runs)) == 1


def test_a_two_process_cell_trains_data_parallel_in_one_slurm_job(write_grid, tmp_path: Path):
    grid = write_grid(TWO_PROCESSES)
    runs = tmp_path / "runs"
    done = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    assert done.returncode == 0 and counts(done.stdout)[:3] == (1, 1, 0), done.stdout + done.stderr
    (cell,) = load_grid(grid)
    sidecar = read_sidecar(run_dir_of(cell, runs))
    assert sidecar["status"] == "complete" and sidecar["timings"]["train_processes"] == 2
    # One task on one node with both CPUs; the kernel started the two ranks itself (torch's launcher, gloo).
    script = next((runs / ".submitit").glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --cpus-per-task=2" in script
    assert "gpus-per-node" not in script
    log = next((runs / ".submitit").glob("*_log.out")).read_text() + next(
        (runs / ".submitit").glob("*_log.err")).read_text()
    one = smoke.run(**{**smoke.PARAMETERS, "mode": "train", "steps": 12, "batch_size": 64}).descriptors
    # Two ranks at 32 and one at 64: the same training up to float32 summation order (tests/test_distributed.py).
    assert sidecar["timings"]["train_final_loss"] == pytest.approx(one["train_final_loss"], rel=1e-5), log


TWO_PROCESSES = """\
name: ddp
resources: {timeout_min: 5, cpus: 2, mem_gb: 4, processes: 2}
grid:
  - task: smoke
    mode: train
    steps: 12
    batch_size: 64
"""


def test_a_two_process_real_fine_tune_equals_its_one_process_run(write_grid, tmp_path: Path, monkeypatch):
    """The classification task's fine-tune (ViT-Tiny, Fashion-MNIST) as a two-process cell of one Slurm job: the
    ranks at 32 images follow one process at 64 (tests/test_distributed.py states the tolerances)."""
    from bobkit.features import artifacts
    from bobkit.tasks import classification

    grid = write_grid(REAL_TWO_PROCESSES)
    runs = tmp_path / "runs"
    done = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    assert done.returncode == 0 and counts(done.stdout)[:3] == (1, 1, 0), done.stdout + done.stderr
    (cell,) = load_grid(grid)
    sidecar = read_sidecar(run_dir_of(cell, runs))
    assert sidecar["status"] == "complete" and sidecar["timings"]["train_processes"] == 2
    assert not (run_dir_of(cell, runs) / "train-state").exists()  # a finished cell removes its state
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "one-process-store"))
    one = classification.run(**{**{k: v for k, v in cell.params.items() if k not in ("output_dir", "state_dir")},
                                "num_threads": 1})
    assert one["train_processes"] == 1
    assert abs(sidecar["metrics"]["top1"] - one["top1"]) <= 1 / 60  # at most one of the 60 test items moves


REAL_TWO_PROCESSES = """\
name: ddp-real
resources: {timeout_min: 10, cpus: 2, mem_gb: 6, processes: 2}
grid:
  - task: classification
    backbone: vit_tiny_patch16_224.random_init
    dataset: fashion_mnist
    protocol: finetune
    image_size: 32
    max_train: 128
    max_test: 60
    epochs: 3
    lr: 1.0e-3
    batch_size: 64
    device: cpu
    seed: 0
"""
