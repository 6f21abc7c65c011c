"""The runner: claims, failure classification and records, OOM retry, partial outputs, provenance, status.

Fast tests need no kernel; the tests marked slow run real papermill cells of the self-test task (``smoke``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bobkit.batch import provenance
from bobkit.batch.claims import CLAIM, is_stale, process_start_time, read_claim, try_claim
from bobkit.batch.grid import code_version, expand_grid, load_grid
from bobkit.batch.runner import cell_state, classify_failure, remove_leftovers, run_cells, run_dir_of, worker_env
from bobkit.batch.status import format_status, grid_status
from bobkit.results.sidecars import is_complete, read_sidecar, write_sidecar


def _hold_claim(run_dir: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    claim = try_claim(Path(run_dir))
    time.sleep(0.5)  # hold it while the others try
    if claim is not None:
        claim.release()
    results.put(claim is not None)


def test_claim_is_exclusive_across_processes(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_hold_claim, args=(str(tmp_path / "cell"), barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    won = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert sum(won) == 1
    assert not (tmp_path / "cell" / CLAIM).exists()


def test_claim_of_dead_or_reused_pid_is_stale_and_broken(tmp_path: Path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    (run_dir / CLAIM).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "token": "old"}))
    claim = try_claim(run_dir)
    assert claim is not None and read_claim(run_dir)["token"] == claim.token
    # Our own pid, but recorded with another start time: the pid was reused, the claimant is gone.
    reused = {"host": os.uname().nodename, "pid": os.getpid(), "pid_start": "1", "mtime": time.time()}
    assert process_start_time(os.getpid()) not in (None, "1")
    assert is_stale(reused, stale_after=3600)
    assert not is_stale({**reused, "pid_start": process_start_time(os.getpid())}, stale_after=3600)
    # Another host: alive until its heartbeat is older than stale_after.
    other = {"host": "elsewhere", "pid": 1, "mtime": time.time() - 100}
    assert not is_stale(other, stale_after=3600) and is_stale(other, stale_after=50)
    claim.release()
    assert not (run_dir / CLAIM).exists()


def test_live_claim_blocks_and_a_handed_over_claim_is_adopted(tmp_path: Path):
    run_dir = tmp_path / "cell"
    first = try_claim(run_dir)
    assert first is not None and try_claim(run_dir) is None
    token = first.hand_over()
    first.release()  # handed over: stays on disk for the requeued job
    assert read_claim(run_dir)["token"] == token
    assert try_claim(run_dir) is None  # still ours (a live pid), so nobody else gets it
    adopted = try_claim(run_dir, adopt_token=token)
    assert adopted is not None and adopted.token != token
    adopted.release()
    assert not (run_dir / CLAIM).exists()


@pytest.mark.parametrize(
    ("output", "returncode", "kind", "needle"),
    [
        ("    raise CellTimeoutError.error_from_timeout_and_cell(\nnbclient.exceptions.CellTimeoutError: A cell "
         "timed out while it was being executed, after 3 seconds.", 1, "timeout", "CellTimeoutError: A cell timed"),
        ("", -9, "timeout", "ran past the cell timeout"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "oom", "CUDA out of memory"),
        ("---\nMemoryError: simulated out of memory at batch_size=8\n", 1, "oom", "MemoryError: simulated"),
        ("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12 bytes", 1, "oom",
         "DefaultCPUAllocator"),
        ("nbclient.exceptions.DeadKernelError: Kernel died\nTraceback...\nRuntimeError: papermill", 1,
         "dead_kernel", "DeadKernelError: Kernel died"),
        ("FloatingPointError: NaN loss at step 3", 1, "nan", "FloatingPointError"),
        ("PapermillExecutionError\nValueError: bad input\n", 1, "exception", "ValueError: bad input"),
        ("", 0, "exception", "without saving metrics"),
    ],
)
def test_classify_failure(output: str, returncode: int, kind: str, needle: str):
    got_kind, message = classify_failure(output, returncode, wrote_metrics=False, killed_for_time=returncode == -9)
    assert got_kind == kind and needle in message


def test_a_silent_kernel_death_during_an_oom_kill_is_recorded_as_oom():
    dead = "nbclient.exceptions.DeadKernelError: Kernel died\n"
    kind, message = classify_failure(dead, 1, wrote_metrics=False, oom_killed=True)
    assert kind == "oom" and "OOM killer" in message
    assert classify_failure(dead, 1, wrote_metrics=False)[0] == "dead_kernel"  # count unchanged: a crash
    assert classify_failure("", -9, wrote_metrics=False, killed_for_time=True, oom_killed=True)[0] == "timeout"
    assert classify_failure("ValueError: bad\n", 1, wrote_metrics=False, oom_killed=True)[0] == "exception"


def test_oom_kill_count_reads_cgroup_v1_and_v2_files(tmp_path: Path):
    from bobkit.batch.oom import oom_kill_count

    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n")
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert oom_kill_count([tmp_path / "absent", v2]) == 2
    assert oom_kill_count([v1]) == 5
    assert oom_kill_count([tmp_path / "absent"]) is None


def test_partial_outputs_of_a_killed_cell_never_read_as_complete(tmp_path: Path):
    (cell,) = expand_grid({"grid": [{"task": "smoke"}]})
    run_dir = run_dir_of(cell, tmp_path)
    work = run_dir / ".work-deadbeef"
    work.mkdir(parents=True)
    (work / "task_metrics.json").write_text('{"score": 1.0}')  # the kernel finished, the batch died
    (run_dir / "executed.ipynb").write_text("{}")
    (run_dir / ".metrics.json.x1.tmp").write_text(json.dumps({"status": "complete"}))  # died mid-rename
    (run_dir / ".claim.stale-1234").write_text("{}")
    assert not is_complete(run_dir) and read_sidecar(run_dir) is None
    assert cell_state(cell, tmp_path) == "pending"
    remove_leftovers(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["executed.ipynb"]


def test_provenance_names_device_seed_threads_and_versions():
    prov = provenance.collect({"BOB_NUM_THREADS": "3"}, {"device": "cpu", "seed": 7}, {})
    assert prov["seed"] == 7 and prov["threads"] == 3 and prov["device"].startswith("cpu: ")
    assert prov["bobkit_version"] and prov["libraries"]["papermill"] and "git_commit" in prov
    assert provenance.collect({}, {"seed": 0}, {"threads": 2.0})["threads"] == 2  # what the task reported wins


def test_device_name_follows_the_request_and_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(provenance, "gpu_names", lambda: ("GPU-A", "GPU-B"))
    assert provenance.device_name("auto", None) == "cuda: GPU-A"
    assert provenance.device_name("auto", "1") == "cuda: GPU-B"
    assert provenance.device_name("cuda:1", "0,1") == "cuda: GPU-B"
    assert provenance.device_name("auto", "").startswith("cpu: ")  # no GPU visible
    assert provenance.device_name("cpu", "0").startswith("cpu: ")
    assert provenance.collect({}, {"seed": 1})["device"].startswith("cpu: ")  # a task without a device parameter


def test_worker_env_gives_each_worker_one_gpu_round_robin_and_a_thread_share(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    envs = [worker_env(slot, 3) for slot in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2"]
    assert all(int(e["BOB_NUM_THREADS"]) >= 1 for e in envs)
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(0, 1)  # one worker keeps every GPU


def test_status_counts_failures_running_and_rerun_command(write_grid, tmp_path: Path):
    grid = write_grid("name: s\ngrid:\n  - task: smoke\n    value: [1, 2, 3, 4]\n")
    runs = tmp_path / "runs"
    done, failed, running, _pending = load_grid(grid)
    write_sidecar(run_dir_of(done, runs), {"status": "complete", "run_key": done.run_key, "task": "smoke",
                                           "code_version": code_version("smoke")})
    (run_dir_of(done, runs) / "executed.ipynb").write_text("{}")
    write_sidecar(run_dir_of(failed, runs), {"status": "failed", "run_key": failed.run_key,
                                             "error": {"kind": "oom", "message": "MemoryError: too big\nmore"}})
    claim = try_claim(run_dir_of(running, runs))
    try:
        text = format_status(grid_status(grid, runs), grid, runs)
    finally:
        claim.release()
    assert f"{grid}: 1 done, 1 failed, 1 running, 1 pending" in text
    assert f"failed {failed.run_key}" in text and "[oom] MemoryError: too big" in text and "more" not in text
    assert f"running {running.run_key}" in text
    assert f"bob run {grid} --only-failed --runs-dir {runs}" in text


FAILURES = """
name: failures
grid:
  - task: smoke
    setting:
      - {mode: ok, value: 1.0}
      - {mode: raise}
      - {mode: die}
      - {mode: nan}
      - {mode: oom}
      - {mode: oom, oom_above_batch: 4, value: 5.0}
  - task: smoke
    resources: {timeout_min: 0.05}
    mode: sleep
    sleep_seconds: 60
"""


@pytest.mark.slow
def test_each_failure_kind_is_recorded_and_the_batch_goes_on(write_grid, tmp_path: Path):
    grid = write_grid(FAILURES)
    cells = load_grid(grid)
    runs = tmp_path / "runs"
    summary = run_cells(cells, runs, workers=2, progress=False)
    assert summary.executed == len(cells) == 7
    side = {(c.params["mode"], c.params["oom_above_batch"]): read_sidecar(run_dir_of(c, runs)) for c in cells}

    ok = side[("ok", None)]
    assert ok["status"] == "complete" and ok["metrics"] == {"score": 1.0} and ok["error"] is None
    assert set(ok["timings"]) >= {"task_seconds", "papermill_process_seconds", "notebook_cells_seconds"}
    prov = ok["provenance"]
    assert prov["device"].startswith("cpu") and prov["seed"] == 0 and prov["threads"] >= 1
    assert prov["bobkit_version"] and "git_commit" in prov and prov["libraries"]["nbclient"]

    expected = {
        ("raise", None): ("exception", "RuntimeError: smoke task asked to fail"),
        ("die", None): ("dead_kernel", "Kernel died"),
        ("nan", None): ("nan", "non-finite metric(s): score"),
        ("oom", None): ("oom", "MemoryError: simulated out of memory at batch_size=4"),
        ("sleep", None): ("timeout", "CellTimeoutError: A cell timed out"),
    }
    for key, (kind, needle) in expected.items():
        record = side[key]
        assert record["status"] == "failed" and record["metrics"] == {}, key
        assert record["error"]["kind"] == kind and needle in record["error"]["message"], record["error"]
        assert record["error"]["output_tail"], key
        assert (run_dir_of(cells[0], runs).parent / record["run_key"] / "executed.ipynb").exists()
    assert "RuntimeError" in side[("raise", None)]["error"]["output_tail"]

    # Out of memory retries once with half the batch: recorded, and the retry's result is the cell's result.
    always = side[("oom", None)]
    assert [a["kind"] for a in always["attempts"]] == ["oom", "oom"] and always["params_used"]["batch_size"] == 4
    retried = side[("oom", 4)]
    assert retried["status"] == "complete" and retried["metrics"] == {"score": 5.0}
    assert [a["kind"] for a in retried["attempts"]] == ["oom", "complete"]
    assert retried["attempts"][1]["retry"] == "out-of-memory: batch_size halved"
    assert retried["attempts"][1]["batch_size"] == 4 and retried["params"]["batch_size"] == 8
    assert retried["timings"]["batch_size_used"] == 4

    # Nothing left behind: no work folders, no claims.
    assert not list(runs.glob("smoke/*/.work-*")) and not list(runs.glob("smoke/*/.claim"))
    text = format_status(grid_status(grid, runs), grid, runs)
    assert "2 done, 5 failed, 0 running, 0 pending" in text and "--only-failed" in text

    # --only-failed re-runs exactly the failures, and keeps their earlier record in the history.
    again = run_cells([c for c in cells if c.params["mode"] in ("raise", "ok")], runs, only_failed=True,
                      progress=False)
    assert again.executed == 1 and again.outcomes[0].cell.params["mode"] == "raise"
    history = read_sidecar(run_dir_of(again.outcomes[0].cell, runs))["history"]
    assert len(history) == 1 and history[0]["kind"] == "exception"


@pytest.mark.slow
def test_cells_run_in_this_interpreter_despite_a_user_python3_kernelspec(tmp_path: Path, monkeypatch):
    bogus = tmp_path / "data" / "kernels" / "python3"
    bogus.mkdir(parents=True)
    (bogus / "kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                   "display_name": "elsewhere", "language": "python"}))
    # A user-level python3 kernelspec for another interpreter, preferred over the environment's (as outside a
    # virtual environment): plain papermill would start /bin/false as the kernel.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    (cell,) = expand_grid({"grid": [{"task": "smoke", "value": 4.0}]})
    summary = run_cells([cell], tmp_path / "runs", progress=False)
    assert summary.count("complete") == 1, summary.outcomes[0].error


# ----------------------------------------------------------------------------------------------------------------
# Out of memory in a training cell: the global batch (the recipe) stays, gradient accumulation doubles
# ----------------------------------------------------------------------------------------------------------------

FINETUNE_CELL = {"task": "classification", "backbone": "resnet18.random_init", "dataset": "fashion_mnist",
                 "protocol": "finetune", "image_size": 32, "max_train": 40, "max_test": 20, "epochs": 1,
                 "lr": 1e-3, "batch_size": 20, "num_threads": 1}


def test_the_oom_retry_of_a_training_cell_doubles_accum_steps_and_keeps_the_global_batch():
    from bobkit.batch.runner import oom_retry

    (cell,) = expand_grid({"grid": [FINETUNE_CELL]})
    params, why = oom_retry(cell, dict(cell.params))
    assert (params["batch_size"], params["accum_steps"]) == (20, 2) and "accum_steps doubled" in why
    assert oom_retry(cell, {**cell.params, "accum_steps": 4}) is None  # 20 does not split into 8 micro-batches
    (mixed,) = expand_grid({"grid": [{**FINETUNE_CELL, "batch_size": 12, "mixup": 0.8}]})
    assert oom_retry(mixed, dict(mixed.params))[0]["accum_steps"] == 2  # 12 / 2 = 6 items: even, as mixup needs
    assert oom_retry(mixed, {**mixed.params, "accum_steps": 2}) is None  # 12 / 4 = 3: odd
    (two,) = expand_grid({"grid": [{**FINETUNE_CELL, "batch_size": 40, "resources": {"processes": 2}}]})
    assert oom_retry(two, dict(two.params))[0]["accum_steps"] == 2 and oom_retry(
        two, {**two.params, "accum_steps": 2})[0]["accum_steps"] == 4  # 40 = 2 processes x 4 x 5
    (probe,) = expand_grid({"grid": [{**FINETUNE_CELL, "protocol": "linear_probe"}]})
    params, why = oom_retry(probe, dict(probe.params))  # not training: the inference batch is halved
    assert (params["batch_size"], params["accum_steps"], why) == (10, 1, "out-of-memory: batch_size halved")


@pytest.mark.slow
def test_an_injected_oom_in_a_fine_tune_cell_retries_it_with_doubled_accum_steps(tmp_path: Path, monkeypatch):
    from bobkit.batch import runner

    (cell,) = expand_grid({"grid": [FINETUNE_CELL]})
    real_attempt = runner._attempt
    seen: list[dict[str, Any]] = []

    def oom_first(cell, params, run_dir, *args, **kwargs):
        seen.append(dict(params))
        if len(seen) == 1:  # what a CUDA out-of-memory error in the kernel looks like to the runner
            work = run_dir / "work-injected"
            work.mkdir(parents=True)
            return runner._Attempt("oom", work, work / "executed.ipynb", 0.1, 1,
                                   "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", None,
                                   "torch.OutOfMemoryError: CUDA out of memory")
        return real_attempt(cell, params, run_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "_attempt", oom_first)
    runs = tmp_path / "runs"
    outcome = runner.execute_cell(cell, runs)
    assert outcome.status == "complete", outcome.error
    assert [(p["batch_size"], p["accum_steps"]) for p in seen] == [(20, 1), (20, 2)]
    sidecar = read_sidecar(run_dir_of(cell, runs))
    assert [a["kind"] for a in sidecar["attempts"]] == ["oom", "complete"]
    retry = sidecar["attempts"][1]
    assert retry["retry"] == "out-of-memory: accum_steps doubled (same global batch_size)"
    assert (retry["batch_size"], retry["accum_steps"]) == (20, 2)
    assert sidecar["params_used"]["accum_steps"] == 2 and sidecar["params_used"]["batch_size"] == 20
    assert sidecar["run_key"] == cell.run_key and sidecar["timings"]["exec_accum_steps"] == 2.0
    assert not (run_dir_of(cell, runs) / "train-state").exists()  # removed once the cell is recorded
