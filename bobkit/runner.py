"""Execute cells: each one is a papermill run of its task notebook in a process of its own.

Per cell: skip when a complete sidecar exists; claim the cell (atomic, see :mod:`bobkit.claims`); run papermill
into a private work folder; then write ``executed.ipynb`` and, last and atomically, ``metrics.json``. A failure
(an exception, a dead kernel, a timeout, out-of-memory, a NaN) is recorded in the sidecar with the error and the
tail of the output, and the batch goes on. Out-of-memory retries once with half the batch size.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from bobkit import provenance
from bobkit.claims import try_claim
from bobkit.grid import Cell
from bobkit.paths import repo_root
from bobkit.results import TASK_OUTPUT, is_complete, read_sidecar, split_metrics, write_sidecar
from bobkit.tasks import notebook_path

OUTPUT_TAIL_CHARS = 4000
OOM_PATTERNS = (
    r"CUDA out of memory", r"OutOfMemoryError", r"\bMemoryError\b", r"DefaultCPUAllocator: can't allocate",
    r"not enough memory", r"CUBLAS_STATUS_ALLOC_FAILED",
)


@dataclass
class CellOutcome:
    """What happened to one cell in this batch."""

    cell: Cell
    status: str  # complete | failed | skipped | busy
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BatchSummary:
    """Counts and outcomes of a batch."""

    outcomes: list[CellOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def executed(self) -> int:
        """Cells this batch actually ran (complete or failed)."""
        return self.count("complete") + self.count("failed")


def run_dir_of(cell: Cell, runs_dir: Path) -> Path:
    """``runs/<task>/<run_key>``."""
    return Path(runs_dir) / cell.task / cell.run_key


def cell_state(cell: Cell, runs_dir: Path) -> str:
    """done | failed | running | pending, read from the runs folder."""
    from bobkit.claims import is_stale, read_claim

    run_dir = run_dir_of(cell, runs_dir)
    sidecar = read_sidecar(run_dir)
    if sidecar and sidecar.get("status") == "complete":
        return "done"
    claim = read_claim(run_dir)
    if claim is not None and not is_stale(claim, stale_after=_stale_after(cell)):
        return "running"
    if sidecar and sidecar.get("status") == "failed":
        return "failed"
    return "pending"


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
    """Run ``cells`` on the local machine with ``workers`` concurrent papermill processes.

    Worker ``i`` sees GPU ``i`` only (``CUDA_VISIBLE_DEVICES``) when there are enough GPUs, and
    ``cpu_count // workers`` threads. Threads here only wait on child processes: every kernel is its own process.
    """
    runs_dir = Path(runs_dir)
    cells = list(cells)
    if only_failed:
        cells = [c for c in cells if cell_state(c, runs_dir) == "failed"]
    summary = BatchSummary()
    start = time.perf_counter()
    slots = list(range(max(1, workers)))
    free_slots = list(slots)
    bar = _progress_bar(len(cells), progress)

    def job(cell: Cell) -> CellOutcome:
        slot = free_slots.pop()
        try:
            return execute_cell(cell, runs_dir, kernel=kernel, env=_worker_env(slot, len(slots)))
        finally:
            free_slots.append(slot)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        futures = [pool.submit(job, cell) for cell in cells]
        for future in as_completed(futures):
            outcome = future.result()
            summary.outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
            if bar is not None:
                bar.set_postfix_str(f"{outcome.status}: {outcome.cell.label}"[:60])
                bar.update(1)
    if bar is not None:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def execute_cell(
    cell: Cell,
    runs_dir: str | os.PathLike[str],
    *,
    kernel: str | None = None,
    env: dict[str, str] | None = None,
) -> CellOutcome:
    """Run one cell unless it is complete or claimed by a live process; record the outcome in its sidecar."""
    run_dir = run_dir_of(cell, Path(runs_dir))
    if is_complete(run_dir):
        return CellOutcome(cell, "skipped")
    claim = try_claim(run_dir, stale_after=_stale_after(cell))
    if claim is None:
        return CellOutcome(cell, "busy")
    claim.start_heartbeat()
    try:
        if is_complete(run_dir):  # finished by someone else between our check and our claim
            return CellOutcome(cell, "skipped")
        return _execute_claimed(cell, run_dir, claim, kernel, env or {})
    finally:
        claim.release()


def _execute_claimed(cell: Cell, run_dir: Path, claim: Any, kernel: str | None, env: dict[str, str]) -> CellOutcome:
    started = time.time()
    attempts: list[dict[str, Any]] = []
    params = dict(cell.params)
    result = _attempt(cell, params, run_dir, kernel, env)
    attempts.append(result.summary())
    if result.kind == "oom" and isinstance(params.get("batch_size"), int) and params["batch_size"] > 1:
        result.discard()
        params["batch_size"] = params["batch_size"] // 2
        result = _attempt(cell, params, run_dir, kernel, env)
        attempts.append({**result.summary(), "retry": "out-of-memory: batch_size halved",
                         "batch_size": params["batch_size"]})
    sidecar = {
        "run_key": cell.run_key,
        "task": cell.task,
        "label": cell.label,
        "params": cell.params,
        "params_used": params,
        "source": cell.source,
        "attempts": attempts,
        "provenance": provenance.collect(env),
        "started": started,
        "wall_seconds": time.time() - started,
    }
    if not claim.still_ours():
        # Our claim was broken as stale (e.g. a paused job): the new holder owns the sidecar now.
        result.discard()
        return CellOutcome(cell, "busy", time.time() - started, "claim lost")
    if result.kind == "complete":
        scores, info = split_metrics(result.metrics)
        sidecar.update(status="complete", metrics=scores, timings=info, error=None)
        os.replace(result.notebook, run_dir / "executed.ipynb")
    else:
        sidecar.update(status="failed", metrics={}, timings={}, error=result.error())
        if result.notebook.exists():
            os.replace(result.notebook, run_dir / "executed.ipynb")
    write_sidecar(run_dir, sidecar)
    result.discard()
    return CellOutcome(cell, sidecar["status"], sidecar["wall_seconds"],
                       None if result.kind == "complete" else sidecar["error"]["message"])


@dataclass
class _Attempt:
    kind: str  # complete | exception | dead_kernel | timeout | oom | nan
    work: Path
    notebook: Path
    seconds: float
    returncode: int
    output: str
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "seconds": round(self.seconds, 3), "returncode": self.returncode,
                "message": self.message}

    def error(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "output_tail": self.output[-OUTPUT_TAIL_CHARS:]}

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _attempt(cell: Cell, params: dict[str, Any], run_dir: Path, kernel: str | None, env: dict[str, str]) -> _Attempt:
    """One papermill execution in a private work folder (a leftover orphan can never write into a new attempt)."""
    work = run_dir / f".work-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    notebook = work / "executed.ipynb"
    (work / "params.yaml").write_text(yaml.safe_dump({**params, "output_dir": str(work)}, sort_keys=True))
    timeout_s = int(float(cell.resources.get("timeout_min", 60)) * 60)
    command = [
        sys.executable, "-m", "papermill", str(repo_root() / notebook_path(cell.task)), str(notebook),
        "-f", str(work / "params.yaml"), "--cwd", str(repo_root()), "--log-output", "--no-progress-bar",
        "--execution-timeout", str(timeout_s),
    ]
    if kernel:
        command += ["-k", kernel]
    start = time.perf_counter()
    log = work / "output.log"
    with open(log, "w") as handle:
        try:
            proc = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env},
                timeout=timeout_s + 120, preexec_fn=_die_with_parent,
            )
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = -signal.SIGKILL
    seconds = time.perf_counter() - start
    output = log.read_text(errors="replace")
    attempt = _Attempt("complete", work, notebook, seconds, returncode, output)
    metrics_file = work / TASK_OUTPUT
    if returncode == 0 and metrics_file.exists():
        attempt.metrics = json.loads(metrics_file.read_text())
        bad = [k for k, v in attempt.metrics.items() if v is None or (isinstance(v, float) and v != v)]
        if bad:
            attempt.kind, attempt.message = "nan", f"non-finite metric(s): {', '.join(sorted(bad))}"
        return attempt
    attempt.kind, attempt.message = classify_failure(output, returncode, metrics_file.exists())
    return attempt


def classify_failure(output: str, returncode: int, wrote_metrics: bool) -> tuple[str, str]:
    """Name the failure kind (timeout, oom, dead_kernel, nan, exception) and its first error line."""
    error_line = _papermill_error(output)
    if returncode == -signal.SIGKILL or "CellTimeoutError" in output or "Cell execution timed out" in output:
        kind, fallback = "timeout", _first_match(output, r"(Cell execution timed out.*|CellTimeoutError.*)")
    elif any(re.search(p, output) for p in OOM_PATTERNS):
        kind, fallback = "oom", "out of memory"
    elif "DeadKernelError" in output or re.search(r"[Kk]ernel died", output):
        kind, fallback = "dead_kernel", _first_match(output, r"(DeadKernelError.*|[Kk]ernel died.*)")
    elif re.search(r"FloatingPointError|non-finite|\bNaN loss", output):
        kind, fallback = "nan", "non-finite loss"
    else:
        kind, fallback = "exception", ""
    if kind == "dead_kernel":
        error_line = fallback  # the last error line would be papermill's own traceback, not the cause
    if returncode == 0 and not wrote_metrics and not error_line:
        error_line = "the notebook finished without saving metrics (save_cell_metrics not called)"
    return kind, error_line or fallback or f"papermill exited with code {returncode}"


def _papermill_error(output: str) -> str:
    """The last ``SomeError: message`` line of the output (papermill prints the failing cell's error there)."""
    lines = [ln.strip() for ln in output.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception|Interrupt)\w*: ", ln)]
    return lines[-1][:500] if lines else ""


def _first_match(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(0).strip()[:300] if match else ""


def _stale_after(cell: Cell) -> float:
    """A claim is stale once its heartbeat is older than the cell's timeout plus a margin."""
    return float(cell.resources.get("timeout_min", 60)) * 60 + 600


def _worker_env(slot: int, workers: int) -> dict[str, str]:
    """Environment of worker ``slot``: one GPU each where there are enough, an equal share of CPU threads."""
    env = {"BOB_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)), "PYTHONUNBUFFERED": "1"}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(_gpu_count())]
    if workers > 1 and len(gpus) >= workers:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no CUDA runtime means no GPUs
        return 0


def _die_with_parent() -> None:
    """Linux: the papermill child gets SIGKILL when the batch dies, so no orphan keeps a cell half-done."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True)
