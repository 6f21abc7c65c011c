"""Training cells that survive: the runner's training state folder, kill -9 and a stop signal mid-training, resources
for data-parallel cells.

The training is the smoke task's stand-in (mode ``train``: a toy MLP trained through
:mod:`bobkit.tasks.train_state` and :mod:`bobkit.tasks.distributed`, the code a fine-tune uses).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bobkit.batch.backends import executor_parameters
from bobkit.batch.grid import expand_grid, load_grid, make_cell
from bobkit.batch.resources import ResourceError, check_resources, processes_of
from bobkit.batch.runner import (
    GpuPool,
    cell_env,
    classify_failure,
    is_resumable,
    remove_leftovers,
    run_dir_of,
    train_state_dir,
)
from bobkit.results.sidecars import read_sidecar
from bobkit.tasks import smoke
from bobkit.tasks.train_state import read_attempts, registered_pids

SUMMARY = re.compile(r"executed (\d+) cell\(s\): (\d+) complete, (\d+) failed")
# 40 steps of ~0.15 s, the state saved after every step: a kill lands mid-training and loses at most one step.
TRAIN = """\
name: resume
grid:
  - task: smoke
    mode: train
    steps: 40
    step_seconds: 0.15
    batch_size: 64
    state_every_min: 0
    value: {value}
"""


def bob_run(grid: Path, runs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bobkit.cli", "run", str(grid), "--runs-dir", str(runs),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def saved_steps(state_dir: Path) -> int:
    attempts = read_attempts(state_dir)
    return max((a.saved_step for a in attempts), default=0)


def wait_for(predicate, timeout: float = 240, every: float = 0.1):
    deadline = time.time() + timeout
    while not (value := predicate()):
        assert time.time() < deadline, "timed out waiting"
        time.sleep(every)
    return value


def uninterrupted(value: float) -> dict[str, float]:
    """The same cell's training run straight through, in this process (the runner's 2 threads, as its kernel)."""
    params = {**smoke.PARAMETERS, "mode": "train", "steps": 40, "batch_size": 64, "state_every_min": 0.0,
              "value": value}
    return smoke.run(**params).descriptors


@pytest.mark.slow
def test_a_training_cell_killed_then_stopped_resumes_to_the_uninterrupted_result(write_grid, tmp_path: Path):
    grid, runs = write_grid(TRAIN.format(value=5)), tmp_path / "runs"
    (cell,) = load_grid(grid)
    run_dir = run_dir_of(cell, runs)
    state_dir = train_state_dir(run_dir)

    # 1. kill -9 of the batch mid-training: the steps since the last save are lost, nothing is recorded.
    driver = bob_run(grid, runs)
    wait_for(lambda: saved_steps(state_dir) >= 5)
    os.killpg(driver.pid, signal.SIGKILL)  # the batch, its papermill and (through them) the kernel
    driver.communicate()
    wait_for(lambda: not registered_pids(state_dir), timeout=60)  # the kernel followed its parent
    killed_at = saved_steps(state_dir)
    assert 5 <= killed_at < 40 and read_sidecar(run_dir) is None

    # 2. The rerun resumes; SIGUSR2 (what Slurm sends before a time limit) stops it after a step, state saved:
    # the cell is interrupted, not failed, and stays pending.
    driver = bob_run(grid, runs)
    wait_for(lambda: saved_steps(state_dir) >= killed_at + 3)
    (kernel,) = registered_pids(state_dir)
    os.kill(kernel, signal.SIGUSR2)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0 and SUMMARY.search(out).groups() == ("0", "0", "0"), out + err
    assert "STOPPED" in out and "TrainingPreempted" in out and "pending" in out
    assert read_sidecar(run_dir) is None
    stopped = read_attempts(state_dir)[-1]
    assert stopped.start_step >= killed_at and stopped.why == "preempted (SIGUSR2)"
    assert stopped.saved_step == stopped.end_step  # nothing lost: the next run redoes no step

    # 3. The next rerun finishes from there, with the bits of a run that was never interrupted.
    again = bob_run(grid, runs)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and SUMMARY.search(out).groups() == ("1", "1", "0"), out + err
    sidecar = read_sidecar(run_dir)
    timings, straight = sidecar["timings"], uninterrupted(5)
    assert sidecar["metrics"] == {"score": 5.0}
    assert timings["train_resumed_step"] == stopped.saved_step and timings["train_attempts"] == 3
    assert timings["train_steps_run"] == 40 - stopped.saved_step and timings["train_steps_redone"] == 0
    assert (timings["train_final_loss"], timings["train_eval_loss"]) == (
        straight["train_final_loss"], straight["train_eval_loss"])  # the last loss and the trained weights' loss
    assert not state_dir.exists()  # removed with the complete sidecar; the attempts' log is kept beside it
    attempts = read_attempts(run_dir / "train-attempts.jsonl")
    assert [a.why for a in attempts] == ["killed", "preempted (SIGUSR2)", "finished"]
    assert [a.start_step for a in attempts] == [0, attempts[0].saved_step, stopped.saved_step]


def test_the_runner_passes_state_dir_to_training_tasks_and_keeps_it_between_attempts(tmp_path: Path):
    (smoke_cell,) = expand_grid({"grid": [{"task": "smoke", "mode": "train", "state_dir": "/ignored"}]})
    assert "state_dir" not in smoke_cell.params  # the runner sets it per run folder; never part of the run key
    assert is_resumable(smoke_cell)
    assert not is_resumable(make_cell("retrieval", {}))  # a task that does not declare it gets none
    run_dir = tmp_path / "runs" / "smoke" / smoke_cell.run_key
    (train_state_dir(run_dir) / "pids").mkdir(parents=True)
    (train_state_dir(run_dir) / "step-000000003.pt").write_bytes(b"state")
    (run_dir / ".work-0123abcd").mkdir()
    (run_dir / ".metrics.json.x.tmp").write_text("partial")
    remove_leftovers(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["train-state"]
    assert (train_state_dir(run_dir) / "step-000000003.pt").read_bytes() == b"state"


def test_a_training_stopped_with_its_state_saved_is_interrupted_not_failed():
    output = ("---------------------------------------------------------------------------\n"
              "TrainingPreempted: training stopped (SIGUSR2) after step 7 with its state saved; a rerun of the cell "
              "resumes from there\n")
    kind, message = classify_failure(output, 1, wrote_metrics=False)
    assert kind == "interrupted" and "after step 7" in message
    assert classify_failure(output, -9, wrote_metrics=False, killed_for_time=True)[0] == "timeout"


def test_processes_default_to_gpus_and_reach_the_cell_and_the_slurm_request():
    assert processes_of({}) == 1 and processes_of({"gpus": 4}) == 4 and processes_of({"processes": 2}) == 2
    (cpu_pair,) = expand_grid({"resources": {"processes": 2, "cpus": 2}, "grid": [{"task": "smoke"}]})
    assert cell_env(cpu_pair) == {"BOB_PROCESSES": "2"}
    with pytest.raises(ResourceError, match="processes=2 and gpus=4 differ"):
        check_resources({"processes": 2, "gpus": 4}, "grid.yaml")
    with pytest.raises(ResourceError, match="max_requeues=-1 must be between 0 and 1000"):
        check_resources({"max_requeues": -1}, "grid.yaml")
    four = executor_parameters({"timeout_min": 60, "gpus": 4, "cpus": 2, "job_margin_min": 0,
                                "signal_delay_s": 300}, "slurm")
    assert (four["gpus_per_node"], four["tasks_per_node"], four["cpus_per_task"]) == (4, 1, 4)
    assert (four["timeout_min"], four["slurm_signal_delay_s"]) == (60, 300)
    one_minute = executor_parameters({"timeout_min": 1, "job_margin_min": 0, "signal_delay_s": 40}, "slurm")
    assert one_minute["timeout_min"] == 1
    with pytest.raises(ResourceError, match="signal_delay_s=60 is not shorter than the job's time limit of 1 min"):
        executor_parameters({"timeout_min": 1, "job_margin_min": 0, "signal_delay_s": 60}, "slurm")


def test_the_local_gpu_pool_gives_each_cell_its_own_gpus():
    (two, one) = expand_grid({"grid": [{"task": "smoke", "value": 1, "resources": {"gpus": 2}},
                                       {"task": "smoke", "value": 2, "resources": {"gpus": 1}}]})
    pool = GpuPool(["0", "1", "3"])
    pool.check([two, one])
    first, second = pool.acquire(2), pool.acquire(1)
    assert (first, second) == (["0", "1"], ["3"])
    pool.release(first)
    assert pool.acquire(2) == ["0", "1"]
    with pytest.raises(ValueError, match="gpus=2, but this machine has 1 GPU"):
        GpuPool(["0"]).check([two])
    assert GpuPool([]).acquire(2) == []  # no GPUs here: the cell trains on CPU processes
