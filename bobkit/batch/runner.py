"""Execute cells: each one is a papermill run of its task notebook in a process of its own.

Per cell: skip when a complete sidecar exists; claim the cell (atomic, see :mod:`bobkit.batch.claims`); run papermill
(:mod:`bobkit.batch.papermill_main`) into a private work folder; then move ``executed.ipynb`` into place and write,
last and atomically, ``metrics.json``. Whatever is killed when, a cell is complete only once its sidecar says
so; a killed cell's work folder is removed by the next claimant. A failure (an exception, a dead kernel, a
timeout, out-of-memory, a NaN) is recorded in the sidecar with the error and the tail of the output, and the
batch goes on. Out-of-memory retries once with half the batch size.

Training cells (tasks that declare ``state_dir``) keep their training state in ``<run dir>/train-state``
(:mod:`bobkit.tasks.train_state`): the runner passes that folder, leaves it alone between attempts (a rerun of the
same run key resumes from it), and removes it once a complete sidecar is written, keeping its attempt log as
``train-attempts.jsonl``. A cell whose training stopped on a signal with its state saved (``TrainingPreempted``)
is interrupted, not failed: nothing is recorded and the cell stays pending. A batch that is stopped (Ctrl-C, the
job's SIGTERM) first asks a running training to save (up to :data:`STOP_GRACE_SECONDS`), then kills the cell.
Cells get ``$BOB_PROCESSES`` (their ``processes`` resource) and, on a machine with GPUs, a cell that asks for
``gpus: N`` gets N GPUs of its own (``CUDA_VISIBLE_DEVICES``) for as long as it runs.

Cells that make an artifact others need (:func:`bobkit.batch.grid.artifact_links`: a classification probe cell
and the OOD cell that uses its probe head) run first: a consumer is handed to a worker only once its providers
have ended, so it never holds a worker while it waits; a provider that failed fails its consumers, with its name
in their error (``producer_failed``), and a stopped one leaves them pending. A cell's sidecar keeps what it
declared (``needs``, ``produces``: artifact names) and the artifacts it loaded or published (``artifacts``: kind,
key, sha256, how), from the ledger its task wrote (:mod:`bobkit.features.artifacts`).

Papermill runs in a child process per cell (in a session of its own, killed with the batch through
``PR_SET_PDEATHSIG``); the local backend's worker threads only wait on those children.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bobkit.batch import codehash, provenance
from bobkit.batch.claims import Claim, is_stale, read_claim, try_claim
from bobkit.batch.grid import Cell, artifact_links, producers_first, providers_of, run_key
from bobkit.batch.oom import oom_kill_count
from bobkit.batch.record import cell_record
from bobkit.batch.resources import processes_of
from bobkit.batch.sidecars import NOTEBOOK, SIDECAR, is_complete, read_sidecar, record_outcome, set_aside_reason
from bobkit.features.artifacts import read_ledger
from bobkit.tasks import get_spec, notebook_path
from bobkit.tasks.distributed import PROCESSES_ENV
from bobkit.tasks.output import TASK_OUTPUT, TaskOutput, parse_task_output
from bobkit.tasks.train_state import ATTEMPTS_FILE, stop_training
from bobkit.utils.files import write_json
from bobkit.utils.paths import repo_root
from bobkit.utils.progress import progress_bar

OUTPUT_TAIL_CHARS = 4000
HISTORY_LIMIT = 20
# Past the cell timeout (papermill's own, per notebook cell), the whole papermill process gets this long for
# kernel start-up and tear-down before it is killed.
KILL_GRACE_SECONDS = 120
OOM_PATTERNS = (
    r"CUDA out of memory", r"OutOfMemoryError", r"\bMemoryError\b", r"DefaultCPUAllocator: can't allocate",
    r"not enough memory", r"CUBLAS_STATUS_ALLOC_FAILED", r"CUDA error: out of memory",
)
WORK_PREFIX = ".work-"
#: The training state folder of a cell's run folder, and where its attempt log goes once the cell is complete.
TRAIN_STATE = "train-state"
TRAIN_ATTEMPTS = "train-attempts.jsonl"
#: A stopped batch gives a running training this long to save its state before the cell is killed.
STOP_GRACE_SECONDS = 30.0
CODE_CHANGED = ("the code behind this cell changed after its run key was computed; nothing recorded: "
                "run the grid again to run it under its new key")


@dataclass
class CellOutcome:
    """What happened to one cell in this batch.

    ``status`` is ``complete`` | ``failed`` (both recorded in a sidecar by this batch), ``skipped`` (already
    complete), ``busy`` (claimed by a live batch elsewhere) or ``interrupted`` (the batch was stopped; nothing
    recorded, the cell stays pending).
    """

    cell: Cell
    status: str
    seconds: float = 0.0
    error: str | None = None
    kind: str | None = None


@dataclass
class BatchSummary:
    """Counts and outcomes of a batch."""

    outcomes: list[CellOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Number of outcomes with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def executed(self) -> int:
        """Cells this batch actually ran (complete or failed)."""
        return self.count("complete") + self.count("failed")


def run_dir_of(cell: Cell, runs_dir: str | os.PathLike[str]) -> Path:
    """``runs/<task>/<run_key>``."""
    return Path(runs_dir) / cell.task / cell.run_key


def absolute_runs_dir(runs_dir: str | os.PathLike[str]) -> Path:
    """``runs_dir`` made absolute against this process's working directory.

    Every path that crosses a process boundary (papermill's spec, the kernel's ``output_dir``, a Slurm job) is
    absolute: the kernel runs in the project root and a Slurm job wherever Slurm starts it.
    """
    return Path(runs_dir).expanduser().resolve()


def cell_state(cell: Cell, runs_dir: Path) -> str:
    """done | failed | running | pending, read from the runs folder (done: a complete sidecar and notebook)."""
    run_dir = run_dir_of(cell, runs_dir)
    sidecar = read_sidecar(run_dir)
    if is_complete(run_dir):
        return "done"
    claim = read_claim(run_dir)
    if claim is not None and not is_stale(claim, stale_after=stale_after(cell)):
        return "running"
    if sidecar and sidecar.get("status") == "failed":
        return "failed"
    return "pending"


def select_cells(cells: Iterable[Cell], runs_dir: Path, only_failed: bool) -> list[Cell]:
    """The cells a batch should consider: all of them, or only those whose sidecar says failed."""
    cells = list(cells)
    return [c for c in cells if cell_state(c, runs_dir) == "failed"] if only_failed else cells


def run_cells(
    cells: Iterable[Cell],
    runs_dir: str | os.PathLike[str] = "runs",
    *,
    workers: int = 1,
    only_failed: bool = False,
    kernel: str | None = None,
    progress: bool = True,
    on_outcome: Callable[[CellOutcome], None] | None = None,
) -> BatchSummary:
    """Run ``cells`` on this machine with ``workers`` concurrent papermill processes.

    Worker ``i`` sees one GPU (``CUDA_VISIBLE_DEVICES``, round robin) when there are GPUs and several workers,
    and ``cpu_count // workers`` threads. Providers of artifacts run before the cells that need them; a consumer
    is handed to a worker once its providers ended (it holds no worker while it waits) and fails, naming them, when
    one failed. Ctrl-C stops the batch: running cells are killed and left pending (no sidecar), queued cells never
    start.
    """
    runs_dir = absolute_runs_dir(runs_dir)
    cells = select_cells(cells, runs_dir, only_failed)
    links = artifact_links(cells)
    cells = producers_first(cells, links)
    summary = BatchSummary()
    start = time.perf_counter()
    n_workers = max(1, workers)
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(n_workers):
        slots.put(slot)
    stop = threading.Event()
    runner = {"backend": "local", "batch_id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}
    gpus = GpuPool(visible_gpus())
    gpus.check(cells)  # a cell asking for more GPUs than this machine has fails the batch before anything runs
    bar = progress_bar(len(cells), "cells", "cell", progress)

    def job(cell: Cell) -> CellOutcome:
        if stop.is_set():
            return CellOutcome(cell, "interrupted")
        slot = slots.get()
        held = gpus.acquire(int(cell.resources.get("gpus") or 0), stop)
        try:
            if stop.is_set():
                return CellOutcome(cell, "interrupted")
            env = {**worker_env(slot, n_workers), **cell_env(cell)}
            if held:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(held)
            return execute_cell(cell, runs_dir, kernel=kernel, env=env, stop=stop, runner={**runner, "worker": slot})
        finally:
            gpus.release(held)
            slots.put(slot)

    ended: dict[str, CellOutcome] = {}
    waiting = list(cells)
    running: dict[Future[CellOutcome], Cell] = {}
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="bob-worker")

    def record(outcome: CellOutcome) -> None:
        ended[outcome.cell.run_key] = outcome
        summary.outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
        if bar is not None:
            bar.set_postfix_str(f"{outcome.status}: {outcome.cell.label}"[:60])
            bar.update(1)

    def dispatch() -> None:
        """Hand every cell whose providers have ended to the pool (or settle it when one failed or stopped)."""
        for cell in list(waiting):
            providers = providers_of(links, cell)
            if any(provider.run_key not in ended for provider in providers):
                continue
            waiting.remove(cell)
            # A producer whose code changed under the batch recorded nothing: the consumer runs (and finds its own
            # code changed, or makes what it needs itself); only a recorded failure fails it.
            failed = [ended[p.run_key] for p in providers
                      if ended[p.run_key].status == "failed" and ended[p.run_key].kind != "code_changed"]
            if any(ended[p.run_key].status == "interrupted" for p in providers) or stop.is_set():
                record(CellOutcome(cell, "interrupted", error="its producer was interrupted"))
            elif failed:
                running[pool.submit(fail_for_producers, cell, runs_dir, failed, runner)] = cell
            else:
                running[pool.submit(job, cell)] = cell

    try:
        dispatch()
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                record(future.result())
            dispatch()
    except BaseException:
        stop.set()  # workers kill their papermill children and record nothing
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def producer_failure_message(failed: Iterable[CellOutcome]) -> str:
    """The error of a consumer whose producers failed: each producer's label, run key and error."""
    return "; ".join(f"producer {o.cell.label} ({o.cell.run_key}) failed: {o.error or o.kind or 'unknown error'}"
                     for o in failed)


def fail_for_producers(cell: Cell, runs_dir: str | os.PathLike[str], failed: list[CellOutcome],
                       runner: dict[str, Any] | None = None) -> CellOutcome:
    """Record ``cell`` failed because the cells providing what it needs failed (``producer_failed``, naming them);
    nothing is recorded when it is complete already or claimed by a live batch."""
    run_dir = run_dir_of(cell, absolute_runs_dir(runs_dir))
    if is_complete(run_dir):
        return CellOutcome(cell, "skipped")
    message = producer_failure_message(failed)
    claim = try_claim(run_dir, stale_after=stale_after(cell))
    if claim is None:
        return CellOutcome(cell, "busy", error=message)
    try:
        previous = read_sidecar(run_dir)
        keep_aside_if_corrupt(run_dir)
        error = {"kind": "producer_failed", "message": message[:500], "output_tail": ""}
        sidecar = cell_record(cell, output=None, params_used=cell.params, prov=provenance.collect({}, cell.params),
                              error=error, started=time.time(), attempts=[], runner=runner or {}, timings={},
                              history=_history(previous), **artifact_fields(cell, []))
        record_outcome(run_dir, sidecar)
    finally:
        claim.release()
    return CellOutcome(cell, "failed", 0.0, message, "producer_failed")


def artifact_fields(cell: Cell, used: list[dict[str, Any]]) -> dict[str, Any]:
    """What a sidecar says about artifacts: the names the cell declared it needs and produces, and the artifacts
    it loaded or published (kind, key, sha256, how)."""
    return {"needs": [ref.name for ref in cell.needs], "produces": [ref.name for ref in cell.produces],
            "artifacts": used}


def execute_cell(
    cell: Cell,
    runs_dir: str | os.PathLike[str],
    *,
    kernel: str | None = None,
    env: dict[str, str] | None = None,
    stop: threading.Event | None = None,
    runner: dict[str, Any] | None = None,
    adopt_token: str | None = None,
    on_claim: Callable[[Claim], None] | None = None,
    timeout_s: int | None = None,
) -> CellOutcome:
    """Run one cell unless it is complete or claimed by a live process; record the outcome in its sidecar.

    Parameters
    ----------
    cell, runs_dir
        The cell and the runs folder holding ``<task>/<run_key>/``.
    kernel
        Jupyter kernel name (default: the notebook's).
    env
        Extra environment for the papermill process and its kernel (GPU, threads).
    stop
        When set, the running papermill process is killed and the cell left pending (no sidecar).
    runner
        Who ran the cell (backend, batch id, job id...), stored in the sidecar.
    adopt_token, on_claim
        For requeued Slurm jobs: take over the claim an earlier job of this cell handed over, and learn the
        claim once held (see :mod:`bobkit.batch.backends`).
    timeout_s
        The notebook's execution timeout (default: the cell's ``timeout_min``; a Slurm job of a training cell
        passes its job's time limit, so that the scheduler's signal, which lets the training save, comes first).
    """
    run_dir = run_dir_of(cell, absolute_runs_dir(runs_dir))
    if is_complete(run_dir):
        return CellOutcome(cell, "skipped")
    fresh = codehash.code_version(cell.task, fresh=True)
    if run_key(cell.task, cell.params, fresh, needs=cell.needs or None) != cell.run_key:
        # Code edited after the keys were computed (a long batch, a Slurm job that waited): its numbers must
        # not be filed under the old key. Nothing is recorded; the cell runs again under its new key.
        return CellOutcome(cell, "failed", error=CODE_CHANGED, kind="code_changed")
    claim = try_claim(run_dir, stale_after=stale_after(cell), adopt_token=adopt_token)
    if claim is None:
        return CellOutcome(cell, "busy")
    claim.start_heartbeat()
    try:
        if is_complete(run_dir):  # finished by someone else between our check and our claim
            return CellOutcome(cell, "skipped")
        if on_claim is not None:
            on_claim(claim)
        return _execute_claimed(cell, run_dir, claim, kernel, env or {}, stop, runner or {}, timeout_s)
    finally:
        claim.release()


def _execute_claimed(
    cell: Cell, run_dir: Path, claim: Claim, kernel: str | None, env: dict[str, str],
    stop: threading.Event | None, runner: dict[str, Any], timeout_s: int | None = None,
) -> CellOutcome:
    started = time.time()
    previous = read_sidecar(run_dir)  # a failed record being retried (complete ones were skipped)
    keep_aside_if_corrupt(run_dir)
    remove_leftovers(run_dir)
    params = dict(cell.params)
    result = _attempt(cell, params, run_dir, kernel, env, stop, timeout_s)
    attempts = [result.summary()]
    if result.kind == "oom" and not (stop is not None and stop.is_set()):
        retry = oom_retry(cell, params)
        if retry is not None:
            result.discard()
            params, why = retry
            if params["batch_size"] != cell.params.get("batch_size"):
                remove_train_state(run_dir)  # saved at the other batch size: its data position means something else
            result = _attempt(cell, params, run_dir, kernel, env, stop, timeout_s)
            attempts.append({**result.summary(), "retry": why, "batch_size": params["batch_size"],
                             **({"accum_steps": params["accum_steps"]} if "accum_steps" in params else {})})
    ours = claim.still_ours()
    if result.kind == "interrupted" or (stop is not None and stop.is_set()) or not ours:
        # Stopped batch: leave the cell pending. Lost claim (broken as stale, e.g. a paused job): the new
        # holder owns the sidecar now.
        result.discard()
        why = (result.message if result.kind == "interrupted" else "interrupted") if ours else "claim lost"
        return CellOutcome(cell, "interrupted" if ours else "busy", time.time() - started, why)
    complete = result.kind == "complete"
    output = result.task_output if complete else None
    descriptors = output.descriptors if output else {}
    sidecar = cell_record(
        cell, output=output, params_used=params, prov=provenance.collect(env, params, descriptors),
        error=None if complete else result.error(), started=started,
        attempts=attempts, runner=runner, timings={**descriptors, **result.timings()}, history=_history(previous),
        **artifact_fields(cell, read_ledger(result.work) if complete else []),
    )
    if result.notebook.exists():
        os.replace(result.notebook, run_dir / NOTEBOOK)
    unrecorded = record_outcome(run_dir, sidecar)  # last, atomically: from here on the cell counts as recorded
    result.discard()
    if unrecorded is not None:  # a full disk: this cell is failed (or pending), the batch goes on
        return CellOutcome(cell, "failed", time.time() - started, unrecorded, "record")
    if complete:
        remove_train_state(run_dir)  # a failed cell keeps it: --only-failed resumes
    error = None if complete else sidecar["error"]["message"]
    return CellOutcome(cell, sidecar["status"], sidecar["wall_seconds"], error, None if complete else result.kind)


def is_training_cell(cell: Cell) -> bool:
    """A cell that trains end to end (a fine-tune, a detector): its ``batch_size`` is the recipe's global batch."""
    return cell.params.get("protocol") == "finetune" or cell.task == "detection"


def oom_retry(cell: Cell, params: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The parameters of the one retry after an out-of-memory failure, and why (``None``: no retry).

    A training cell with ``accum_steps`` keeps its global batch, so its recipe (and run key) stays: twice the
    gradient-accumulation steps, half the items per forward pass; it is retried only when the global batch splits
    into that many equal (and, with mixup/cutmix, even) micro-batches over its processes. Any other cell halves
    ``batch_size`` (an inference batch; the sidecar records the batch size used).
    """
    batch, accum = params.get("batch_size"), params.get("accum_steps")
    if is_training_cell(cell) and isinstance(accum, int) and isinstance(batch, int):
        parts = 2 * accum * processes_of(cell.resources)
        mixes = bool(params.get("mixup") or params.get("cutmix"))
        if batch % parts or (mixes and (batch // parts) % 2):
            return None
        return ({**params, "accum_steps": 2 * accum},
                "out-of-memory: accum_steps doubled (same global batch_size)")
    if isinstance(batch, int) and batch > 1:
        return {**params, "batch_size": batch // 2}, "out-of-memory: batch_size halved"
    return None


def keep_aside_if_corrupt(run_dir: Path) -> Path | None:
    """Rename an unusable sidecar (:func:`~bobkit.batch.sidecars.set_aside_reason`) to ``metrics.json.corrupt-<time>``
    (kept, not overwritten); call under the claim."""
    if set_aside_reason(run_dir) is None:
        return None
    aside = run_dir / f"{SIDECAR}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    os.replace(run_dir / SIDECAR, aside)
    return aside


def remove_leftovers(run_dir: Path) -> None:
    """Remove what killed attempts left behind (work folders, broken claims, temp files); call under the claim.

    The training state (``train-state/``) is not a leftover: the next attempt resumes from it.
    """
    for path in run_dir.iterdir():
        if path.name.startswith(WORK_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".claim.stale-") or (path.name.startswith(".") and path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)


def is_resumable(cell: Cell) -> bool:
    """The cell's task declares ``state_dir``: its training state survives in the run folder."""
    return any(p.name == "state_dir" for p in get_spec(cell.task).parameters)


def train_state_dir(run_dir: Path) -> Path:
    """``<run dir>/train-state``: where a training cell keeps the state a rerun resumes from."""
    return run_dir / TRAIN_STATE


def remove_train_state(run_dir: Path) -> None:
    """Remove a cell's training state (its attempt log is kept as ``train-attempts.jsonl``); call under the claim."""
    state = train_state_dir(run_dir)
    if not state.is_dir():
        return
    log = state / ATTEMPTS_FILE
    if log.exists():
        os.replace(log, run_dir / TRAIN_ATTEMPTS)
    shutil.rmtree(state, ignore_errors=True)


def cell_env(cell: Cell) -> dict[str, str]:
    """Environment a cell's kernel gets from its resources: ``$BOB_PROCESSES``, its training processes."""
    return {PROCESSES_ENV: str(processes_of(cell.resources))}


def _history(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Earlier failed records of this cell (kept when it is retried), newest last."""
    if not previous or previous.get("status") != "failed":
        return []
    error = previous.get("error") or {}
    entry = {"started": previous.get("started"), "kind": error.get("kind"), "message": error.get("message"),
             "runner": previous.get("runner")}
    return [*previous.get("history", []), entry][-HISTORY_LIMIT:]


@dataclass
class _Attempt:
    kind: str  # complete | exception | dead_kernel | timeout | oom | nan | interrupted
    work: Path
    notebook: Path
    seconds: float
    returncode: int
    output: str
    task_output: TaskOutput | None = None
    message: str = ""

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": round(self.seconds, 3), "returncode": self.returncode,
                "message": self.message}

    def error(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "output_tail": self.output[-OUTPUT_TAIL_CHARS:]}

    def timings(self) -> dict[str, float]:
        """Runner-side phases: the papermill process wall time and the time spent executing notebook cells."""
        out = {"papermill_process_seconds": round(self.seconds, 3)}
        cells = notebook_cell_seconds(self.notebook)
        if cells is not None:
            out["notebook_cells_seconds"] = round(cells, 3)
        return out

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def cell_timeout_seconds(cell: Cell) -> int:
    """The per-notebook-cell execution timeout from the cell's ``timeout_min`` resource."""
    return max(1, round(float(cell.resources.get("timeout_min", 60)) * 60))


def _attempt(
    cell: Cell, params: dict[str, Any], run_dir: Path, kernel: str | None, env: dict[str, str],
    stop: threading.Event | None, timeout_s: int | None = None,
) -> _Attempt:
    """One papermill execution in a private work folder (a leftover orphan can never write into a new attempt)."""
    work = run_dir / f"{WORK_PREFIX}{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    notebook = work / "executed.ipynb"
    timeout_s = timeout_s or cell_timeout_seconds(cell)
    state_dir = train_state_dir(run_dir) if is_resumable(cell) else None
    runner_params = {"output_dir": str(work), **({"state_dir": str(state_dir)} if state_dir else {})}
    spec = {
        "input": str(repo_root() / notebook_path(cell.task)),
        "output": str(notebook),
        "parameters": {**params, **runner_params},
        "cwd": str(repo_root()),
        "execution_timeout": timeout_s,
        "kernel": kernel,
    }
    write_json(work / "spec.json", spec)
    command = [sys.executable, "-m", "bobkit.batch.papermill_main", str(work / "spec.json")]
    child_env = {**os.environ, **env, "BOB_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    log = work / "output.log"
    start = time.perf_counter()
    oom_kills_before = oom_kill_count()
    with open(log, "wb") as handle:
        # Own session: a Ctrl-C meant for the batch does not reach the cell; the batch decides what to record.
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=child_env,
                                start_new_session=True)
        ended_by = _wait(proc, start + timeout_s + KILL_GRACE_SECONDS, stop, state_dir)
    seconds = time.perf_counter() - start
    output = log.read_text(errors="replace")
    attempt = _Attempt("complete", work, notebook, seconds, proc.returncode, output)
    if ended_by == "stop":
        attempt.kind, attempt.message = "interrupted", "the batch was stopped"
        return attempt
    metrics_file = work / TASK_OUTPUT
    if proc.returncode == 0 and metrics_file.exists() and ended_by == "exit":
        try:
            attempt.task_output = parse_task_output(json.loads(metrics_file.read_bytes().decode("utf-8")))
        except ValueError as exc:  # invalid UTF-8 or JSON, or not an object
            attempt.kind, attempt.message = "exception", f"unreadable {TASK_OUTPUT}: {exc}"[:500]
            return attempt
        bad = attempt.task_output.non_finite()
        if bad:
            attempt.kind, attempt.message = "nan", f"non-finite metric(s): {', '.join(bad)}"
        return attempt
    oom_kills_after = oom_kill_count()
    oom_killed = None not in (oom_kills_before, oom_kills_after) and oom_kills_after > oom_kills_before
    attempt.kind, attempt.message = classify_failure(output, proc.returncode, metrics_file.exists(),
                                                     killed_for_time=ended_by == "deadline", oom_killed=oom_killed)
    return attempt


def _wait(proc: subprocess.Popen[bytes], deadline: float, stop: threading.Event | None,
          state_dir: Path | None = None) -> str:
    """Wait for ``proc``: ``exit``, or kill it and say why (``deadline`` | ``stop``); kill it on any exception.

    On ``stop``, a training registered in ``state_dir`` is first asked to save and given
    :data:`STOP_GRACE_SECONDS` to end. The exception case matters for Slurm jobs: submitit's preemption handler
    raises ``SystemExit`` here.
    """
    try:
        while True:
            try:
                proc.wait(timeout=0.5)
                return "exit"
            except subprocess.TimeoutExpired:
                pass
            if stop is not None and stop.is_set():
                reason = "stop"
                if state_dir is not None and stop_training(state_dir, wait_s=STOP_GRACE_SECONDS)[0]:
                    try:
                        proc.wait(timeout=STOP_GRACE_SECONDS)  # the notebook ends on the training's error
                        return reason
                    except subprocess.TimeoutExpired:
                        pass
            elif time.perf_counter() > deadline:
                reason = "deadline"
            else:
                continue
            proc.kill()
            proc.wait()
            return reason
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def classify_failure(
    output: str, returncode: int, wrote_metrics: bool, killed_for_time: bool = False, oom_killed: bool = False
) -> tuple[str, str]:
    """Name the failure kind (timeout, oom, dead_kernel, nan, exception) and its first error line.

    ``oom_killed``: the cgroup's OOM-kill count rose while the cell ran (:func:`bobkit.batch.oom.oom_kill_count`);
    a kernel that then died silently was killed for memory.
    """
    error_line = _papermill_error(output)
    dead = "DeadKernelError" in output or re.search(r"[Kk]ernel died", output) is not None
    preempted = _last_match(output, r"\bTrainingPreempted: ")
    if preempted and not killed_for_time:  # stopped on a signal with its state saved: not a failure
        return "interrupted", preempted
    if oom_killed and not killed_for_time and (dead or returncode < 0):
        return "oom", "the kernel was killed by the Linux OOM killer (the cgroup's oom_kill count rose)"
    if killed_for_time or "CellTimeoutError" in output or "Cell execution timed out" in output:
        kind = "timeout"
        error_line = _last_match(output, r"CellTimeoutError: ") or _first_match(output, r"Cell execution timed out.*")
        fallback = "the papermill process ran past the cell timeout and was killed"
    elif any(re.search(p, output) for p in OOM_PATTERNS):
        kind, fallback = "oom", "out of memory"
        error_line = _last_match(output, "|".join(OOM_PATTERNS)) or error_line
    elif dead:
        kind, fallback = "dead_kernel", _first_match(output, r"(DeadKernelError.*|[Kk]ernel died.*)")
        error_line = fallback  # the last error line would be papermill's own traceback, not the cause
    elif re.search(r"FloatingPointError|non-finite|\bNaN loss", output):
        kind, fallback = "nan", "non-finite loss"
    else:
        kind, fallback = "exception", ""
    if returncode == 0 and not wrote_metrics and not error_line:
        error_line = "the notebook finished without saving metrics (save_cell_metrics not called)"
    return kind, error_line or fallback or f"papermill exited with code {returncode}"


def notebook_cell_seconds(notebook: Path) -> float | None:
    """Sum of papermill's per-cell execution durations in an executed notebook (``None`` when unreadable)."""
    try:
        cells = json.loads(notebook.read_text()).get("cells", [])
    except (OSError, ValueError):
        return None
    durations = [(c.get("metadata", {}).get("papermill") or {}).get("duration") for c in cells]
    return float(sum(d for d in durations if isinstance(d, (int, float))))


def _papermill_error(output: str) -> str:
    """The last ``SomeError: message`` line of the output (papermill prints the failing cell's error there)."""
    lines = [ln.strip() for ln in output.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception|Interrupt)\w*: ", ln)]
    return lines[-1][:500] if lines else ""


def _first_match(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(0).strip()[:300] if match else ""


def _last_match(text: str, pattern: str) -> str:
    """The last output line matching ``pattern`` (the error line, not an earlier warning)."""
    lines = [ln.strip() for ln in text.splitlines() if re.search(pattern, ln)]
    return lines[-1][:500] if lines else ""


def stale_after(cell: Cell) -> float:
    """A claim is stale once its heartbeat is older than the cell's timeout plus a margin."""
    return float(cell.resources.get("timeout_min", 60)) * 60 + 600


def visible_gpus() -> list[str]:
    """The GPUs this batch may hand out: ``$CUDA_VISIBLE_DEVICES`` when set, else every GPU of the machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(len(provenance.gpu_names()))]


def worker_env(slot: int, workers: int) -> dict[str, str]:
    """Environment of worker ``slot``: one GPU each (round robin) where there are GPUs, a share of CPU threads.

    A cell that asks for GPUs (``gpus: N``) gets its own N instead (:class:`GpuPool`); the thread share is the
    whole cell's, which its training processes divide among themselves.
    """
    env = {"BOB_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    gpus = visible_gpus()
    if workers > 1 and gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    return env


class GpuPool:
    """The machine's GPUs handed to cells that ask for ``gpus: N``: each gets N of its own while it runs.

    On a machine without GPUs the pool is empty and such a cell runs on the CPU (its ``processes`` as CPU
    processes, gloo); cells with ``gpus: 0`` keep the round-robin share of :func:`worker_env`.
    """

    def __init__(self, gpus: list[str]) -> None:
        self.gpus = list(gpus)
        self._free = list(gpus)
        self._changed = threading.Condition()

    def check(self, cells: Iterable[Cell]) -> None:
        """Raise ``ValueError`` naming the first cell that asks for more GPUs than the pool holds (when it has any)."""
        for cell in cells:
            wanted = int(cell.resources.get("gpus") or 0)
            if self.gpus and wanted > len(self.gpus):
                raise ValueError(f"{cell.label}: resources gpus={wanted}, but this machine has {len(self.gpus)} "
                                 f"GPU(s) ({','.join(self.gpus)}); run it with --backend slurm, or lower gpus")

    def acquire(self, count: int, stop: threading.Event | None = None) -> list[str]:
        """Take ``count`` free GPUs, waiting for them (none when ``count`` is 0 or the pool is empty)."""
        if count <= 0 or not self.gpus:
            return []
        with self._changed:
            while len(self._free) < count:
                if stop is not None and stop.is_set():
                    return []
                self._changed.wait(timeout=0.5)
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def release(self, gpus: list[str]) -> None:
        """Give GPUs back."""
        if not gpus:
            return
        with self._changed:
            self._free.extend(gpus)
            self._changed.notify_all()



__all__ = [
    "BatchSummary", "CellOutcome", "GpuPool", "SIDECAR", "TRAIN_STATE", "absolute_runs_dir", "artifact_fields",
    "cell_env", "cell_state", "classify_failure", "execute_cell", "fail_for_producers", "is_resumable",
    "is_training_cell", "oom_retry",
    "producer_failure_message", "remove_train_state", "run_cells", "run_dir_of", "select_cells", "train_state_dir",
    "worker_env",
]
