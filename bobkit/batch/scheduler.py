"""Slurm's own view of bob's jobs, read with ``squeue`` (and ``sacct`` for ended jobs when accounting is on).

Three readers:

* the Slurm backend follows its jobs with :class:`SlurmWatcher`: a requeued task is followed to its end (and
  said so once), never reported failed; a job that ended without a result is recorded with Slurm's reason
  (:func:`failure_from_state`: ``cancelled``, ``timeout``, ``oom`` or ``job_failed``);
* a job that receives SIGTERM asks :func:`termination_cause` whether Slurm cancelled it, requeued it (the
  requeued run will do the cell) or ran it out of time;
* ``bob status`` prints :func:`slurm_view` beside the sidecars' view.

Without accounting (no ``slurmdbd``) ``sacct`` fails and ``squeue`` forgets a job ``MinJobAge`` seconds after it
ended; this module says so once (:func:`accounting_note`) instead of warning at every poll, and a job that is
gone from ``squeue`` reads as :data:`ENDED`.

The driver records which Slurm job runs each cell in ``runs/<task>/<run_key>/.slurm-job.json``
(:func:`record_submission`), so ``bob status`` and a second driver can find it before the job has started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

from bobkit.utils.files import write_json

try:  # submitit is optional (bobkit[cluster]); only the Slurm backend follows jobs
    from submitit.core.core import InfoWatcher
except ImportError:  # pragma: no cover
    InfoWatcher = object  # type: ignore[assignment,misc]

JOB_RECORD = ".slurm-job.json"
ENDED = "ENDED"  # no longer known to squeue, and no accounting to ask
UNKNOWN = "UNKNOWN"  # the scheduler did not answer
# States in which a job may still run, or run again: whoever follows it keeps waiting.
LIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "SUSPENDED",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", UNKNOWN,
})
# How a job that ended without bob's result is recorded (the sidecar's error kind).
FAILURE_KINDS = {"CANCELLED": "cancelled", "PREEMPTED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout",
                 "OUT_OF_MEMORY": "oom"}
SQUEUE_FIELDS = ("JobArrayID", "JobID", "State", "Reason", "RestartCnt", "TimeUsed", "TimeLimit")
COMMAND_TIMEOUT_S = 60
# How long a job that got SIGTERM while Slurm still calls it RUNNING waits for Slurm's verdict (a preemption grace
# time is typically a minute or a few).
TERM_WAIT_S = 300.0


@dataclass(frozen=True)
class JobState:
    """One Slurm job (or array task) as the scheduler sees it now."""

    job_id: str
    state: str
    reason: str = ""
    restarts: int = 0
    seconds_used: float | None = None
    seconds_limit: float | None = None

    @property
    def live(self) -> bool:
        """Pending, running, being requeued...: the job may still produce a result."""
        return self.state in LIVE_STATES

    def describe(self) -> str:
        """``PENDING (Priority)``, ``REQUEUED: PENDING (BeginTime), restart 1``, ``CANCELLED``, ..."""
        text = self.state
        if self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if self.restarts and self.live:
            text = f"REQUEUED: {text}, restart {self.restarts}"
        elif self.restarts:
            text += f", after {self.restarts} requeue(s)"
        if self.state == ENDED:
            text += " (gone from squeue" + ("" if accounting_enabled() else "; no accounting to ask") + ")"
        return text


def query(job_ids: Iterable[str]) -> dict[str, JobState]:
    """Current state of each job id (``123`` or array task ``123_4``); ended jobs via ``sacct`` or :data:`ENDED`.

    Returns a mapping from every asked id to its state. Ids of array tasks are answered under both of their names
    (``123_4`` and the task's own job id) when the scheduler reports them.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return {j: JobState(j, UNKNOWN, "squeue not found") for j in ids}
    found = _squeue(ids)
    if found is None:  # the controller did not answer (busy, restarting): nothing is known, nothing has ended
        return {j: JobState(j, UNKNOWN, "squeue failed") for j in ids}
    missing = [j for j in ids if j not in found]
    if missing and accounting_enabled():
        found.update(_sacct(missing))
    return {j: found.get(j, JobState(j, ENDED)) for j in ids}


def _squeue(ids: list[str]) -> dict[str, JobState] | None:
    """The jobs squeue knows (``{}`` when it knows none of them); ``None`` when it did not answer."""
    fmt = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)
    command = ["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(ids)}", f"--Format={fmt}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None  # every one of them forgotten, or no answer
    states: dict[str, JobState] = {}
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < len(SQUEUE_FIELDS):
            continue
        array_id, job_id, state, reason, restarts, used, limit = parts[:len(SQUEUE_FIELDS)]
        info = JobState(array_id, state.split()[0] if state else UNKNOWN, reason,
                        int(restarts) if restarts.isdigit() else 0, slurm_seconds(used), slurm_seconds(limit))
        states[array_id] = info
        states.setdefault(job_id, info)
    return states


def _sacct(ids: list[str]) -> dict[str, JobState]:
    """Ended jobs from accounting (``sacct``): the state of the latest run of each."""
    command = ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(ids)}",
               "--format=JobID,State"]
    states = {}
    for line in (_run(command) or "").splitlines():
        job_id, _, state = line.partition("|")
        if job_id in ids and state:
            states[job_id] = JobState(job_id, state.split()[0])  # "CANCELLED by 0" -> CANCELLED
    return states


def _run(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def slurm_seconds(text: str) -> float | None:
    """Seconds in a Slurm duration (``[D-]HH:MM:SS``, ``MM:SS``); ``None`` for ``UNLIMITED`` or garbage."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


@lru_cache(maxsize=1)
def scheduler_config() -> dict[str, str]:
    """``scontrol show config`` as a mapping (empty when there is no Slurm to ask)."""
    out = _run(["scontrol", "show", "config"]) if shutil.which("scontrol") else None
    config = {}
    for line in (out or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def accounting_enabled() -> bool:
    """True when the cluster keeps job accounting (so ``sacct`` knows ended jobs)."""
    storage = scheduler_config().get("AccountingStorageType", "")
    return bool(storage) and not storage.endswith("/none")


def accounting_note() -> str | None:
    """One sentence on what a cluster without accounting means for following jobs; ``None`` when it has it."""
    if accounting_enabled() or not scheduler_config():
        return None
    age = scheduler_config().get("MinJobAge", "300 sec")
    return (f"Slurm accounting is disabled on this cluster (AccountingStorageType="
            f"{scheduler_config().get('AccountingStorageType', '?')}): job states come from squeue, which forgets "
            f"a job {age} after it ends; the sidecars stay the record")


_NOTED: set[str] = set()


def note_once(message: str | None, stream: Any = None) -> None:
    """Print ``message`` to stderr the first time it is seen in this process."""
    if message and message not in _NOTED:
        _NOTED.add(message)
        print(f"slurm: {message}", file=stream or sys.stderr, flush=True)


def failure_from_state(state: JobState) -> tuple[str, str]:
    """(error kind, message) for a job that ended without bob's result, from Slurm's final state."""
    kind = FAILURE_KINDS.get(state.state, "job_failed")
    detail = {"cancelled": "cancelled by the scheduler (scancel, or preempted without requeue)",
              "timeout": "ran out of its Slurm time limit", "oom": "killed by Slurm for exceeding its memory"}
    message = f"Slurm job {state.job_id} {state.state}: " + detail.get(kind, "ended without a result")
    return kind, message


def termination_cause(job_id: str, restarts_at_start: int, wait_s: float = TERM_WAIT_S) -> tuple[str, JobState]:
    """Why a running job got SIGTERM: ``requeued``, ``cancelled``, ``timeout`` or ``terminated``.

    Slurm updates the job before it signals it: a requeue raises the restart count at once; a cancellation or a
    time limit leaves the job ``COMPLETING`` (told apart by the time used against the limit). A job still
    ``RUNNING`` may be in a preemption grace time (SIGTERM first, requeue or cancel later): keep asking, up to
    ``wait_s``; still running then, the signal came from elsewhere (``scancel --signal``, ``kill``):
    ``terminated``. Slurm's SIGKILL may end the wait first; the driver then reads the final state itself.
    """
    deadline = time.monotonic() + wait_s
    while True:
        state = query([job_id]).get(job_id, JobState(job_id, UNKNOWN))
        if state.restarts > restarts_at_start or state.state in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
            return "requeued", state
        if state.state in ("TIMEOUT", "DEADLINE") or (
                state.state == "COMPLETING" and None not in (state.seconds_used, state.seconds_limit)
                and state.seconds_used >= state.seconds_limit):  # type: ignore[operator]
            return "timeout", state
        if state.state in ("CANCELLED", "PREEMPTED", "COMPLETING"):
            return "cancelled", state
        if time.monotonic() >= deadline:
            return "terminated", state
        time.sleep(0.5)


def record_submission(run_dir: Path, job_id: str, batch_id: str) -> None:
    """Remember which Slurm job runs the cell in ``run_dir`` (read by ``bob status`` and other drivers)."""
    write_json(Path(run_dir) / JOB_RECORD, {"job_id": job_id, "batch_id": batch_id, "submitted": time.time()})


def recorded_job(run_dir: Path) -> str | None:
    """The Slurm job id recorded for the cell in ``run_dir``, if any."""
    try:
        return str(json.loads((Path(run_dir) / JOB_RECORD).read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SlurmWatcher(InfoWatcher):
    """Follows submitit jobs with ``squeue`` (works with accounting disabled), reporting each requeue once.

    A submitit ``InfoWatcher`` (one scheduler call for all jobs, at most every ``delay_s``); attach it with
    :func:`follow`. ``on_requeue(job_id, state)`` is called when a job's restart count goes up.
    """

    def __init__(self, delay_s: float, on_requeue: Callable[[str, JobState], None] | None = None) -> None:
        super().__init__(delay_s=int(max(1, delay_s)))
        self._on_requeue = on_requeue
        self._restarts: dict[str, int] = {}

    def _make_command(self) -> list[str] | None:
        return None  # update() asks the scheduler itself

    def update(self) -> None:
        """Ask the scheduler about every job not known to be finished (one ``squeue`` call)."""
        to_check = self._registered - self._finished
        if not to_check:
            return
        self._num_calls += 1
        note_once(accounting_note())
        for job_id, state in query(to_check).items():
            if state.restarts > self._restarts.get(job_id, 0) and self._on_requeue is not None:
                self._on_requeue(job_id, state)
            self._restarts[job_id] = max(state.restarts, self._restarts.get(job_id, 0))
            self._info_dict[job_id] = {"State": state.state, "Reason": state.reason, "Restarts": str(state.restarts)}
        self._last_status_check = time.time()
        for job_id in to_check:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        """The job's last known state (asking the scheduler when the last answer is old enough)."""
        return self.get_info(job_id, mode=mode).get("State") or UNKNOWN

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Finished for good: not pending, running or being requeued."""
        return self.get_state(job_id, mode=mode) not in LIVE_STATES


def follow(jobs: Iterable[Any], delay_s: float, on_requeue: Callable[[str, JobState], None] | None = None) -> Any:
    """Make submitit ``jobs`` follow their state through ``squeue`` (a requeued task stays not-done)."""
    watcher = SlurmWatcher(delay_s, on_requeue)
    for job in jobs:
        job.watcher = watcher
        watcher.register_job(job.job_id)
    return watcher


def live_jobs(run_dirs: dict[str, Path]) -> dict[str, JobState]:
    """Of the cells whose run folder records a Slurm job, those whose job is still live (keyed like ``run_dirs``)."""
    recorded = {key: recorded_job(path) for key, path in run_dirs.items()}
    states = query(j for j in recorded.values() if j)
    return {key: states[j] for key, j in recorded.items() if j and j in states and states[j].live
            and states[j].state != UNKNOWN}


def slurm_view(cells: Iterable[tuple[str, str, Path, str | None]]) -> list[str]:
    """Lines for ``bob status``: Slurm's state of each cell's job, beside the sidecar's state.

    ``cells``: (run key, label, run folder, job id from a live claim or ``None``) of the cells not done. The job
    is the claim's (the one running the cell) or else the recorded one. Empty when no cell has a Slurm job;
    jobs squeue no longer knows are counted, not listed.
    """
    rows = []
    for run_key, label, run_dir, claim_job in cells:
        job = claim_job or recorded_job(run_dir)
        if job:
            rows.append((run_key, label, job))
    if not rows:
        return []
    if shutil.which("squeue") is None:
        return [f"slurm: {len(rows)} cell(s) have Slurm jobs, but squeue is not found here to ask about them"]
    states = query(job for _, _, job in rows)
    lines = ["slurm's view (squeue" + (", sacct" if accounting_enabled() else "") + "):"]
    lines += [f"  {run_key} {label}: job {states[job].job_id} {states[job].describe()}"
              for run_key, label, job in rows if states[job].state != ENDED]
    gone = sum(states[job].state == ENDED for _, _, job in rows)
    if gone:
        lines.append(f"  {gone} cell(s) whose last job squeue no longer knows")
    note = accounting_note()
    if note:
        lines.append(f"  note: {note}")
    return lines


def slurm_restart_count() -> int:
    """How many times Slurm has requeued the job this process runs in (0 outside Slurm)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(value) if value.isdigit() else 0
