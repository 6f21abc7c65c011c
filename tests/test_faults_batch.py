"""Fault injection on the batch layer: each test reproduces one failure found by running it (issue 12).

Relative runs folders, a mistyped ``bob build --runs-dir``, failed cells and the exit code, a deleted executed
notebook, unsafe resource values, empty / raced claims, a failing heartbeat, corrupt sidecars and the OOM retry's
batch size. Tests marked slow run real papermill cells of the self-test task (``smoke``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bobkit.batch import claims
from bobkit.batch.backends import executor_parameters, sbatch_script
from bobkit.batch.claims import CLAIM, read_claim, try_claim
from bobkit.batch.grid import GridError, code_version, expand_grid, load_grid, make_cell
from bobkit.batch.record import cell_record, device_label
from bobkit.batch.runner import cell_state, execute_cell, run_dir_of
from bobkit.batch.status import format_status, grid_status
from bobkit.results.schema import read_results
from bobkit.results.sidecars import TaskOutput, is_complete, read_sidecar, write_sidecar
from bobkit.results.table import build_results
from bobkit.utils.paths import repo_root

ONE = "name: one\ngrid:\n  - task: smoke\n    value: {value}\n"


def bob(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root())}
    return subprocess.run([sys.executable, "-m", "bobkit.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def bob_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """``bob ARGS`` through its entry point in this process (``bobkit.cli.main``, what ``python -m bobkit.cli``
    exits with): the same exit status and output as :func:`bob` without a new interpreter importing torch again."""
    from bobkit.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["bob", *args], code, out, err)


def fake_record(runs: Path, value: float, notebook: bool = True) -> Path:
    """A complete run folder as the runner leaves it, for a smoke cell of ``value`` (no kernel needed)."""
    cell = make_cell("smoke", {"value": value})
    run_dir = run_dir_of(cell, runs)
    write_sidecar(run_dir, cell_record(cell, output=TaskOutput(metrics={"score": value}), params_used=cell.params,
                                       prov={"device": "cpu: test"}, error=None, started=time.time()))
    if notebook:
        (run_dir / "executed.ipynb").write_text("{}")
    return run_dir


# --- paths across process boundaries ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_relative_runs_dir_from_another_folder_records_there(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "grid.yaml").write_text(ONE.format(value=7.5))
    (cell,) = load_grid(elsewhere / "grid.yaml")
    proc = bob("run", "grid.yaml", "--runs-dir", "runs", "--no-progress", cwd=elsewhere)
    assert proc.returncode == 0 and "1 complete" in proc.stdout, proc.stdout + proc.stderr
    sidecar = read_sidecar(elsewhere / "runs" / "smoke" / cell.run_key)
    assert sidecar["status"] == "complete" and sidecar["metrics"] == {"score": 7.5}
    assert not (repo_root() / "runs" / "smoke" / cell.run_key).exists()  # nothing written into the checkout


# --- bob build: never a smaller table by accident --------------------------------------------------------------


def test_build_with_a_mistyped_runs_dir_keeps_the_existing_table(tmp_path: Path, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results" / "results.parquet"
    for value in (1.0, 2.0, 3.0):
        fake_record(runs, value)
    assert bob_here(capsys, "build", "--runs-dir", str(runs), "--results", str(results)).returncode == 0
    before = results.read_bytes()
    assert len(read_results(results)) == 3

    # one real process: the typo's exit status is the command's
    typo = bob("build", "--runs-dir", str(tmp_path / "rnus"), "--results", str(results))
    assert typo.returncode == 2 and "rnus" in typo.stderr and "does not exist" in typo.stderr
    (tmp_path / "empty").mkdir()
    empty = bob_here(capsys, "build", "--runs-dir", str(tmp_path / "empty"), "--results", str(results))
    assert empty.returncode == 2 and "no run records" in empty.stderr
    fewer = tmp_path / "fewer"
    fake_record(fewer, 1.0)
    refused = bob_here(capsys, "build", "--runs-dir", str(fewer), "--results", str(results))
    assert refused.returncode == 2 and "refusing to replace" in refused.stderr and "--force" in refused.stderr
    assert results.read_bytes() == before  # untouched by all three

    forced = bob_here(capsys, "build", "--runs-dir", str(fewer), "--results", str(results), "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(read_results(results)) == 1 and read_results(results).attrs["runs_dir"] == str(fewer.resolve())


# --- bob run's exit code --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bob_run_exits_non_zero_when_a_cell_failed_unless_allowed(write_grid, tmp_path: Path):
    grid = write_grid("name: f\ngrid:\n  - task: smoke\n    mode: raise\n")
    runs = str(tmp_path / "runs")
    failed = bob("run", str(grid), "--runs-dir", runs, "--no-progress")
    assert failed.returncode == 1 and "1 failed" in failed.stdout and "--allow-failures" in failed.stderr
    allowed = bob("run", str(grid), "--runs-dir", runs, "--no-progress", "--allow-failures")
    assert allowed.returncode == 0 and "1 failed" in allowed.stdout


# --- a deleted executed notebook ------------------------------------------------------------------------------------


def test_a_deleted_executed_notebook_no_longer_counts_as_done(write_grid, tmp_path: Path):
    grid = write_grid(ONE.format(value=2.0))
    runs = tmp_path / "runs"
    run_dir = fake_record(runs, 2.0)
    (cell,) = load_grid(grid)
    assert is_complete(run_dir) and cell_state(cell, runs) == "done"
    (run_dir / "executed.ipynb").unlink()
    assert not is_complete(run_dir) and cell_state(cell, runs) == "pending"
    assert "0 done, 0 failed, 0 running, 1 pending" in format_status(grid_status(grid, runs), grid, runs)


# --- resources ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resources, needle",
    [
        ({"partition": "gpu\ntouch /tmp/x\n#"}, "partition="),
        ({"partition": "a b"}, "partition="),
        ({"partition": "gpu\n"}, "partition="),  # a trailing newline ends the #SBATCH line too
        ({"partition": 5}, "partition=5"),
        ({"timeout_min": float("nan")}, "timeout_min=nan must be finite"),
        ({"timeout_min": float("inf")}, "timeout_min=inf must be finite"),
        ({"timeout_min": -5}, "timeout_min=-5 must be between"),
        ({"timeout_min": "30"}, "timeout_min='30' must be a number"),
        ({"mem_gb": 0}, "mem_gb=0 must be between"),
        ({"mem_gb": 1e9}, "mem_gb=1000000000.0 must be between"),
        ({"cpus": 0}, "cpus=0 must be between"),
        ({"cpus": 2.5}, "cpus=2.5 must be an integer"),
        ({"gpus": True}, "gpus=True must be an integer"),
        ({"slurm_array_parallelism": 0}, "slurm_array_parallelism=0"),
        ({"gpu_count": 1}, "unknown resource key"),
    ],
)
def test_unsafe_resource_values_are_rejected_naming_them(resources, needle):
    for spec in ({"resources": resources, "grid": [{"task": "smoke"}]},
                 {"grid": [{"task": "smoke", "resources": resources}]}):
        with pytest.raises(GridError, match=needle.replace("(", r"\(").replace(".", r"\.")):
            expand_grid(spec, source="g.yaml")


def test_bob_validate_rejects_a_partition_that_would_inject_shell(write_grid, capsys):
    grid = write_grid('resources: {partition: "gpu\\ntouch /tmp/x\\n#"}\ngrid:\n  - task: smoke\n')
    proc = bob_here(capsys, "validate", str(grid))
    assert proc.returncode == 2 and "partition=" in proc.stderr and "touch" in proc.stderr


def test_a_cell_built_without_a_grid_cannot_carry_bad_resources_to_slurm():
    cell = make_cell("smoke", {}, resources={"partition": "x\nrm -rf ~"})
    with pytest.raises(ValueError, match="partition"):
        executor_parameters(cell.resources, "slurm")


def test_unknown_defaults_keys_are_rejected_with_a_close_match():
    with pytest.raises(GridError, match="'valeu'.*did you mean 'value'"):
        expand_grid({"defaults": {"valeu": 3}, "grid": [{"task": "smoke"}]}, source="g.yaml")
    with pytest.raises(GridError, match="defaults"):
        expand_grid({"defaults": ["value"], "grid": [{"task": "smoke"}]})


def sbatch_lines(resources: dict, folder: Path) -> set[str]:
    """The ``#SBATCH`` lines of the script for one array with these resources (no Slurm needed)."""
    return {line for line in sbatch_script(resources, folder).splitlines() if line.startswith("#SBATCH")}


def test_the_slurm_script_holds_exactly_the_declared_resources(tmp_path: Path):
    (cell,) = expand_grid({"grid": [{"task": "smoke", "resources": {
        "partition": "gpu-long", "cpus": 8, "mem_gb": 64, "gpus": 2, "timeout_min": 30}}]})
    fixed = {f"#SBATCH --error={tmp_path}/%j_0_log.err", f"#SBATCH --output={tmp_path}/%j_0_log.out",
             "#SBATCH --job-name=bob", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
             "#SBATCH --open-mode=append", "#SBATCH --signal=USR2@120", "#SBATCH --wckey=submitit"}
    declared = {"#SBATCH --partition=gpu-long", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB",
                "#SBATCH --gpus-per-node=2", "#SBATCH --time=35"}  # the cell's timeout + the job margin
    assert sbatch_lines(cell.resources, tmp_path) == fixed | declared
    (plain,) = expand_grid({"grid": [{"task": "smoke"}]})  # defaults: 2 CPUs, 16 GB, no GPU, no partition
    assert sbatch_lines(plain.resources, tmp_path) == fixed | {
        "#SBATCH --cpus-per-task=2", "#SBATCH --mem=16GB", "#SBATCH --time=65"}


# --- claims ---------------------------------------------------------------------------------------------------------


def test_an_empty_claim_is_busy_for_a_short_grace_then_stale_whatever_the_cells_timeout(write_grid, tmp_path: Path):
    """Issue 25 item 11: a claim is written whole before it is linked in place, so an empty one names no live
    process; it blocks its cell for seconds, not for the cell's timeout (here 60 min + 10 min)."""
    grid = write_grid("name: one\nresources: {timeout_min: 60}\ngrid:\n  - task: smoke\n")
    (cell,) = load_grid(grid)
    run_dir = run_dir_of(cell, tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / CLAIM).write_bytes(b"")  # killed between create and write (older code), or ENOSPC
    assert read_claim(run_dir)["unreadable"]
    stale_after = 60 * 60 + 600
    assert try_claim(run_dir, stale_after=stale_after) is None and cell_state(cell, tmp_path) == "running"
    text = format_status(grid_status(grid, tmp_path), grid, tmp_path)
    assert "unreadable claim, 0 s old" in text and "? pid ?" not in text
    old = time.time() - 2 * claims.UNREADABLE_GRACE_SECONDS
    os.utime(run_dir / CLAIM, (old, old))
    assert cell_state(cell, tmp_path) == "pending"
    claim = try_claim(run_dir, stale_after=stale_after)
    assert claim is not None and read_claim(run_dir)["token"] == claim.token
    claim.release()
    assert not (run_dir / CLAIM).exists()


def test_a_claim_is_never_left_empty_when_its_write_fails(tmp_path: Path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims.json, "dump", full_disk)
    with pytest.raises(OSError, match="No space"):
        try_claim(tmp_path / "cell")
    assert list((tmp_path / "cell").iterdir()) == [tmp_path / "cell" / f"{CLAIM}.lock"]  # no claim, no temp file


def test_breaking_a_stale_claim_never_takes_another_hosts_fresh_claim(tmp_path: Path, monkeypatch):
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    (run_dir / CLAIM).write_text(json.dumps({"host": "node-a", "pid": 1, "token": "dead", "started": 0.0}))
    old = time.time() - 7200
    os.utime(run_dir / CLAIM, (old, old))
    live_work = run_dir / ".work-nodeb"
    live_work.mkdir()
    real_replace, real_rename = os.replace, os.rename

    def node_b_first(move):
        """Node B breaks the dead claim and claims the cell just before our rename (checked or not) runs."""
        def moved(src, dst, *args, **kwargs):
            if Path(src) == run_dir / CLAIM and not (run_dir / "b-claimed").exists():
                (run_dir / "b-claimed").touch()
                real_replace(run_dir / CLAIM, run_dir / f"{CLAIM}.stale-by-b")
                (run_dir / CLAIM).write_text(json.dumps({"host": "node-b", "pid": 1, "token": "fresh-b"}))
            return move(src, dst, *args, **kwargs)
        return moved

    monkeypatch.setattr(claims.os, "replace", node_b_first(real_replace))
    monkeypatch.setattr(claims.os, "rename", node_b_first(real_rename))
    assert try_claim(run_dir, stale_after=3600) is None  # it judged a stale claim, but B's fresh one is not that
    assert read_claim(run_dir)["token"] == "fresh-b" and live_work.is_dir()


def test_a_stale_claim_is_broken_and_taken(tmp_path: Path):
    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    (run_dir / CLAIM).write_text(json.dumps({"host": "node-a", "pid": 1, "token": "dead"}))
    old = time.time() - 7200
    os.utime(run_dir / CLAIM, (old, old))
    claim = try_claim(run_dir, stale_after=3600)
    assert claim is not None and read_claim(run_dir)["token"] == claim.token
    assert not list(run_dir.glob(f"{CLAIM}.stale-*"))  # the broken claim is gone, not piled up
    claim.release()


def test_the_heartbeat_logs_and_retries_errors_instead_of_dying(tmp_path: Path, monkeypatch, caplog):
    claim = try_claim(tmp_path / "cell")
    assert claim is not None
    old = time.time() - 1000
    os.utime(claim.path, (old, old))
    failures = {"left": 2}
    real_utime = os.utime

    def flaky_utime(path, *args, **kwargs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(claims.os, "utime", flaky_utime)
    with caplog.at_level(logging.WARNING, logger="bobkit.batch.claims"):
        claim.start_heartbeat(every=0.05, retry=0.01)
        deadline = time.time() + 10
        while claim.path.stat().st_mtime < old + 1 and time.time() < deadline:
            time.sleep(0.02)
        claim.release()
    assert claim.path.exists() is False and failures["left"] == 0
    assert sum("ESTALE" in r.getMessage() for r in caplog.records) == 2


def test_the_heartbeat_stops_once_another_claim_holds_the_cell(tmp_path: Path, caplog):
    claim = try_claim(tmp_path / "cell")
    (claim.path).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "other"}))
    with caplog.at_level(logging.WARNING, logger="bobkit.batch.claims"):
        claim.start_heartbeat(every=0.02)
        deadline = time.time() + 10
        while not any("held by another batch" in r.getMessage() for r in caplog.records):
            assert time.time() < deadline
            time.sleep(0.02)
    assert not claim.still_ours()
    claim.release()
    assert read_claim(tmp_path / "cell")["token"] == "other"  # release never removes another's claim


def test_claims_work_where_hard_links_do_not(tmp_path: Path, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(claims.os, "link", no_links)
    claim = try_claim(tmp_path / "cell")
    assert claim is not None and read_claim(tmp_path / "cell")["token"] == claim.token
    assert try_claim(tmp_path / "cell") is None  # still exclusive
    claim.release()
    assert not (tmp_path / "cell" / CLAIM).exists()


def _race_for_claim(run_dir: str, barrier, results) -> None:
    barrier.wait()
    claim = try_claim(Path(run_dir), stale_after=3600)
    time.sleep(0.3)
    results.put(claim.token if claim else None)
    if claim:
        claim.release()


def test_many_takers_of_one_stale_claim_make_one_winner(tmp_path: Path):
    import multiprocessing

    run_dir = tmp_path / "cell"
    run_dir.mkdir()
    (run_dir / CLAIM).write_text(json.dumps({"host": "gone", "pid": 1, "token": "dead"}))
    old = time.time() - 7200
    os.utime(run_dir / CLAIM, (old, old))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race_for_claim, args=(str(run_dir), barrier, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    tokens = [results.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert sum(t is not None for t in tokens) == 1


# --- corrupt sidecars -------------------------------------------------------------------------------------------


def test_status_lists_corrupt_sidecars_and_goes_on(write_grid, tmp_path: Path):
    grid = write_grid("name: s\ngrid:\n  - task: smoke\n    value: [1.0, 2.0]\n")
    runs = tmp_path / "runs"
    first, second = load_grid(grid)
    fake_record(runs, 2.0)  # the second cell is done
    run_dir_of(first, runs).mkdir(parents=True)
    (run_dir_of(first, runs) / "metrics.json").write_bytes(b"\xff\xfe not utf-8")
    stray = runs / "smoke" / "0000000000000000"
    stray.mkdir()
    (stray / "metrics.json").write_text("[1, 2, 3]")
    text = format_status(grid_status(grid, runs), grid, runs)
    assert f"{grid}: 1 done, 0 failed, 0 running, 1 pending" in text
    assert text.count("corrupt sidecar skipped") == 2 and "JSON list" in text and "utf-8" in text


BAD_RECORDS = {
    "run_key missing": (lambda r: r.pop("run_key"), "run_key missing"),
    "metrics null": (lambda r: r.update(metrics=None), "metrics=None"),
    "metrics a list": (lambda r: r.update(metrics=[1, 2]), "metrics=[1, 2]"),
    "params null": (lambda r: r.update(params=None), "params=None"),
    "params a list": (lambda r: r.update(params=["seed", 0]), "params=['seed', 0]"),
    "seed not a number": (lambda r: r["params"].update(seed="zero"), "params.seed='zero'"),
    "a score that is text": (lambda r: r["metrics"].update(score="high"), "metrics.score='high'"),
    "run_key of another folder": (lambda r: r.update(run_key="0123456789abcdef"), "not its folder's name"),
    "complete without a task": (lambda r: r.pop("task"), "without task"),
}


def test_records_that_do_not_fit_the_schema_are_named_skipped_and_their_cells_run_again(write_grid, tmp_path: Path):
    """Issue 25 item 9: build, status and run agree about records that do not fit the sidecar schema."""
    from bobkit.batch.runner import keep_aside_if_corrupt

    values = [float(v) for v in range(len(BAD_RECORDS) + 1)]
    grid = write_grid(f"name: s\ngrid:\n  - task: smoke\n    value: {values}\n")
    runs = tmp_path / "runs"
    good_cell, *bad_cells = load_grid(grid)
    spoiled = {}
    for value, case in zip(values, ["good", *sorted(BAD_RECORDS)]):
        path = fake_record(runs, value) / "metrics.json"
        if case != "good":
            record = json.loads(path.read_text())
            BAD_RECORDS[case][0](record)
            path.write_text(json.dumps(record))
            spoiled[case] = (path, record)

    table = build_results(runs)  # never aborts on a bad file
    assert set(table["run_key"]) == {good_cell.run_key}
    assert sorted(table.attrs["corrupt"]) == sorted(str(path) for path, _ in spoiled.values())
    text = format_status(grid_status(grid, runs), grid, runs)
    assert f"1 done, 0 failed, 0 running, {len(bad_cells)} pending" in text  # not done: bob run runs them again
    lines = [ln for ln in text.splitlines() if "corrupt sidecar skipped" in ln]
    for case, (path, record) in spoiled.items():
        (line,) = [ln for ln in lines if str(path) in ln]
        assert BAD_RECORDS[case][1] in line and len(line) < 400, (case, line)
        assert not is_complete(path.parent)
        aside = keep_aside_if_corrupt(path.parent)  # what the runner does under the claim before it runs the cell
        assert aside is not None and json.loads(aside.read_text()) == record and not path.exists()
    assert all(cell_state(cell, runs) == "pending" for cell in bad_cells)


def test_a_record_whose_code_version_is_not_its_keys_is_stale_for_build_status_and_run(write_grid, tmp_path: Path,
                                                                                        capsys):
    """Issue 25 item 10: one definition of a current record; build's hint points at a status that lists it."""
    from bobkit.batch.runner import keep_aside_if_corrupt
    from bobkit.cli import main

    grid = write_grid(ONE.format(value=3.0))
    runs = tmp_path / "runs"
    (cell,) = load_grid(grid)
    run_dir = fake_record(runs, 3.0)
    record = json.loads((run_dir / "metrics.json").read_text())
    record["code_version"] = "0" * 16  # under the key of today's code, yet says another code made it
    (run_dir / "metrics.json").write_text(json.dumps(record))

    assert main(["build", "--runs-dir", str(runs), "--results", str(tmp_path / "results.parquet")]) == 0
    build = capsys.readouterr()
    assert "left out 1 stale run(s)" in build.err and "bob status" in build.err
    status = grid_status(grid, runs)
    assert status.counts()["stale"] == 1 and status.counts()["done"] == 0
    assert f"stale {cell.run_key}" in format_status(status, grid, runs)
    assert cell_state(cell, runs) != "done" and not is_complete(run_dir)  # bob run does not skip it
    aside = keep_aside_if_corrupt(run_dir)  # ... and keeps the old record before running the cell again
    assert aside is not None and json.loads(aside.read_text())["code_version"] == "0" * 16


@pytest.mark.slow
def test_a_corrupt_sidecar_does_not_stop_the_batch_and_is_kept_aside(write_grid, tmp_path: Path):
    grid = write_grid("name: s\ngrid:\n  - task: smoke\n    value: [1, 2]\n")
    runs = tmp_path / "runs"
    first, second = load_grid(grid)
    run_dir_of(first, runs).mkdir(parents=True)
    (run_dir_of(first, runs) / "metrics.json").write_text('["not", "a", "record"]')
    proc = bob("run", str(grid), "--runs-dir", str(runs), "--no-progress", "--build", "--results",
               str(tmp_path / "results.parquet"))
    assert proc.returncode == 0 and "2 complete" in proc.stdout, proc.stdout + proc.stderr
    assert "unusable sidecar" in proc.stderr
    assert read_sidecar(run_dir_of(first, runs))["status"] == "complete"
    (aside,) = run_dir_of(first, runs).glob("metrics.json.corrupt-*")
    assert aside.read_text() == '["not", "a", "record"]'  # kept, not overwritten
    assert read_results(tmp_path / "results.parquet")["run_key"].nunique() == 2


# --- a full disk -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sidecar_that_cannot_be_written_fails_its_cell_by_path_and_the_batch_goes_on(write_grid, tmp_path: Path,
                                                                                       monkeypatch):
    """Issue 25 item 15: a full disk at the record of one cell; the others run and are recorded."""
    from bobkit.batch import sidecars
    from bobkit.batch.runner import run_cells

    grid = write_grid("name: s\ngrid:\n  - task: smoke\n    value: [1.0, 2.0, 3.0]\n")
    small_fits, nothing_fits, fine = load_grid(grid)
    real_write = sidecars.write_json

    def full_disk(path, payload, **kwargs):
        key = Path(path).parent.name
        if key == nothing_fits.run_key or (key == small_fits.run_key and payload.get("status") == "complete"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, payload, **kwargs)

    monkeypatch.setattr(sidecars, "write_json", full_disk)
    runs = tmp_path / "runs"
    summary = run_cells([small_fits, nothing_fits, fine], runs, progress=False)
    outcomes = {o.cell.run_key: o for o in summary.outcomes}
    assert outcomes[fine.run_key].status == "complete" and is_complete(run_dir_of(fine, runs))
    for cell in (small_fits, nothing_fits):
        assert outcomes[cell.run_key].status == "failed" and outcomes[cell.run_key].kind == "record"
        assert f"could not write {run_dir_of(cell, runs) / 'metrics.json'}: No space left" in outcomes[cell.run_key].error
    record = read_sidecar(run_dir_of(small_fits, runs))  # the small failed record fitted
    assert record["status"] == "failed" and "No space left" in record["error"]["message"]
    assert cell_state(small_fits, runs) == "failed"
    assert not (run_dir_of(nothing_fits, runs) / "executed.ipynb").exists()  # nothing can pass for a record
    assert cell_state(nothing_fits, runs) == "pending" and "stays pending" in outcomes[nothing_fits.run_key].error


def test_build_refuses_a_csv_results_path_before_writing_anything(tmp_path: Path, capsys):
    """Issue 25 item 15: the parquet table is not written and then overwritten by its CSV twin."""
    from bobkit.cli import main

    runs = tmp_path / "runs"
    fake_record(runs, 1.0)
    assert main(["build", "--runs-dir", str(runs), "--results", str(tmp_path / "x.csv")]) == 2
    assert "name the parquet file" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    assert main(["build", "--runs-dir", str(runs), "--results", str(tmp_path / "x.parquet")]) == 0
    assert len(read_results(tmp_path / "x.parquet")) == 1 and (tmp_path / "x.csv").read_text().startswith("run_key")


# --- what moves a number is recorded -------------------------------------------------------------------------------


def test_device_labels_tell_cpu_from_gpu():
    assert device_label({"device": "cpu: AMD EPYC"}, {}) == "cpu"
    assert device_label({"device": "cuda: NVIDIA H200"}, {}) == "cuda:NVIDIA H200"
    assert device_label({"device": "cuda: NVIDIA H200"}, {"exec_cuda": 0.0}) == "cpu"  # the task ran on the CPU
    assert device_label({"device": "cpu: x"}, {"exec_cuda": 1.0}) == "cuda"


def test_a_record_carries_format_2_fields_and_the_code_that_made_it():
    cell = make_cell("smoke", {"value": 2.0, "batch_size": 8})
    output = TaskOutput(metrics={"score": 2.0}, stderr={"score": 0.1}, n_items={"score": 50},
                        higher_is_better={"score": False}, primary=["score"], setting_params={"value": 2.0},
                        descriptors={"batch_size_used": 4.0})
    record = cell_record(cell, output=output, params_used={**cell.params, "batch_size": 4},
                         prov={"device": "cuda: GPU-X"}, error=None, started=time.time())
    assert record["status"] == "complete" and record["stderr"] == {"score": 0.1} and record["n_items"] == {"score": 50}
    assert record["higher_is_better"] == {"score": False} and record["primary"] == ["score"]
    assert record["setting_params"] == {"value": 2.0} and record["batch_size_used"] == 4.0
    assert record["device"] == "cuda:GPU-X" and record["code_version"] == code_version("smoke")
    assert "bobkit.tasks.smoke" in record["code_files"] and len(record["identity"]) == 16


@pytest.mark.slow
def test_the_oom_retry_records_the_batch_size_used_and_the_device(tmp_path: Path):
    (cell,) = expand_grid({"grid": [{"task": "smoke", "mode": "oom", "oom_above_batch": 4, "value": 5.0}]})
    runs = tmp_path / "runs"
    outcome = execute_cell(cell, runs)
    assert outcome.status == "complete", outcome.error
    sidecar = read_sidecar(run_dir_of(cell, runs))
    assert sidecar["params"]["batch_size"] == 8 and sidecar["batch_size_used"] == 4
    assert sidecar["device"] == "cpu" and sidecar["run_key"] == cell.run_key  # same key, recorded difference
    row = build_results(runs).iloc[0]
    assert row.batch_size_used == 4 and row.device == "cpu" and row.value == 5.0


def test_one_way_to_write_atomically_and_to_show_progress():
    """Batch and results code writes through bobkit.utils.files and shows progress through bobkit.utils.progress."""
    root = repo_root() / "bobkit"
    for path in sorted([*(root / "batch").glob("*.py"), *(root / "results").glob("*.py")]):
        source = path.read_text()
        assert "tqdm" not in source and "mkstemp" not in source and "NamedTemporaryFile" not in source, path
        # papermill_main imports nothing from bobkit (start-up cost); its kernelspec lives in a private folder.
        if path.name != "papermill_main.py":
            assert ".write_text(" not in source and "json.dump(" not in source.replace("json.dump(_claim", ""), path
