"""Where cells run: local worker processes, or Slurm through submitit. Both behind one small interface.

Every backend ends in :func:`bobkit.batch.runner.execute_cell` for each cell, so run keys, claims, sidecars, failure
records and the OOM retry are the same everywhere; a backend only decides where and when that call happens.

* :class:`LocalBackend`: ``workers`` concurrent papermill processes on this machine (:func:`bobkit.batch.runner.run_cells`).
* :class:`SubmititBackend`: one Slurm job-array task per cell, cells grouped into arrays by their resources
  (``timeout_min``, ``gpus``, ``cpus``, ``mem_gb``, ``partition``, ``slurm_array_parallelism``, ``processes``,
  ``max_requeues``, ``job_margin_min``, ``signal_delay_s`` from the params file). Each task is a :class:`CellJob`,
  a ``submitit.helpers.Checkpointable``: on preemption or at the time limit (Slurm's USR2, ``signal_delay_s``
  before the job's limit of ``timeout_min + job_margin_min``) submitit calls its ``checkpoint``, which first asks
  a running training to save its state and waits for it (up to the signal delay minus
  :data:`CHECKPOINT_MARGIN_S`), then requeues the same cell (at most ``max_requeues`` times) and hands the cell's
  claim over to the requeued job; that job re-runs the cell from its notebook and writes the same sidecar. A
  training cell resumes from its saved state (nothing of a saved optimizer step is redone; the kernel start and
  the model build are); other cells are redone (feature caches make that cheap). A data-parallel cell is one
  task on one node with ``--gpus-per-node=processes`` (and at least one CPU per process): its kernel starts
  torch's elastic launcher inside the allocation (:mod:`bobkit.tasks.distributed`). ``cluster="local"``
  (subprocesses) or ``"debug"`` (in-process) run the same path without Slurm, which is how it is tested.

Cells that make an artifact others need (:func:`bobkit.batch.grid.artifact_links`) are submitted first; each
consumer goes into an array of its own resources and producers whose Slurm dependency is
``afterok:<job>_<index>`` of its producers' array tasks (``--kill-on-invalid-dep=yes``: a producer job that fails
cancels it), so a consumer never starts before its producer's artifact exists. A producer whose cell failed inside
its job (a failed sidecar, a job that still exits 0) fails its consumers when they start, naming it; the
executors without Slurm (``local``, ``debug``) ignore dependencies, so a consumer's job also waits for its
producers' cells to end. Probe and model artifacts go to ``$BOB_ARTIFACTS_DIR`` (``bob run --artifacts-dir``), by
default ``<runs dir>/.artifacts``: the runs folder is the one folder every node of a batch is known to share (the
cache folder may be node-local).

On a real Slurm cluster (``tests/slurm``, ``make test-slurm``) the driver also records each cell's job
(:func:`bobkit.batch.scheduler.record_submission`; a second driver leaves cells whose job is still queued alone)
and follows its jobs with ``squeue`` (:mod:`bobkit.batch.scheduler`), so a requeued task is waited for, never
reported failed. A task that Slurm cancels or requeues gets SIGTERM first: the cell is stopped without a failed
record and the job asks Slurm why; cancelled -> the sidecar says ``cancelled`` (``bob run --only-failed`` re-runs
it); requeued -> the job exits without a result and its next run does the cell.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from bobkit.batch import scheduler
from bobkit.batch.claims import Claim, try_claim
from bobkit.batch.grid import Cell, artifact_links, producers_first, providers_of
from bobkit.batch.resources import (
    ResourceError,
    check_resources,
    job_margin_min_of,
    max_requeues_of,
    processes_of,
    signal_delay_s_of,
)
from bobkit.batch.runner import (
    OUTPUT_TAIL_CHARS,
    BatchSummary,
    CellOutcome,
    absolute_runs_dir,
    cell_env,
    cell_state,
    execute_cell,
    fail_for_producers,
    is_resumable,
    producer_failure_message,
    run_cells,
    run_dir_of,
    select_cells,
    stale_after,
    train_state_dir,
)
from bobkit.features.artifacts import ARTIFACTS_ENV
from bobkit.tasks.train_state import stop_training
from bobkit.utils.progress import progress_bar

try:  # submitit is optional (bobkit[cluster]); without it only the local backend works
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[assignment,misc]

# The job's time limit (timeout_min + job_margin_min), the USR2 delay and submitit's requeue limit are resources
# (bobkit.batch.resources: defaults 5 min, 120 s, 3). Of the USR2 delay, the checkpoint leaves this much for
# submitit's own requeue and the job's exit; the rest is the training's time to finish its step and save.
CHECKPOINT_MARGIN_S = 5
SUBMITIT_FOLDER = ".submitit"
#: The artifacts folder of a Slurm batch unless ``$BOB_ARTIFACTS_DIR`` says otherwise: inside the runs folder.
ARTIFACTS_FOLDER = ".artifacts"
#: How often a consumer's job looks whether its producers' cells ended (executors that ignore dependencies).
PRODUCER_POLL_SECONDS = 2.0
# A partition name (or a comma-separated list of them); anything else could end the #SBATCH line it goes into.
# How often the driver polls Slurm, unless told (``poll_seconds``).
POLL_ENV = "BOB_SLURM_POLL_SECONDS"


class Backend(Protocol):
    """Runs cells and reports what happened; the sidecars in ``runs_dir`` are the durable record."""

    def run(
        self, cells: Sequence[Cell], runs_dir: str | os.PathLike[str], *, only_failed: bool = False
    ) -> BatchSummary:
        """Run the cells that are not complete (or only the failed ones) and summarise the outcomes."""
        ...


@dataclass
class LocalBackend:
    """``workers`` papermill processes on this machine, one GPU each where there are GPUs."""

    workers: int = 1
    kernel: str | None = None
    progress: bool = True

    def run(
        self, cells: Sequence[Cell], runs_dir: str | os.PathLike[str], *, only_failed: bool = False
    ) -> BatchSummary:
        """See :func:`bobkit.batch.runner.run_cells`."""
        return run_cells(cells, runs_dir, workers=self.workers, only_failed=only_failed, kernel=self.kernel,
                         progress=self.progress)


@dataclass
class SubmititBackend:
    """Slurm job arrays through submitit (or its ``local`` / ``debug`` executors), waiting for the results.

    Parameters
    ----------
    cluster
        ``"slurm"``, ``"local"``, ``"debug"``, or ``None`` for Slurm when ``sbatch`` exists.
    folder
        submitit's logs and pickles (default ``<runs_dir>/.submitit``).
    progress
        Show a progress bar while waiting.
    poll_seconds
        How often to poll job states (default: 30 s on Slurm, 0.5 s otherwise).
    artifacts_dir
        Where the cells keep probe and model artifacts (default: ``$BOB_ARTIFACTS_DIR``, else
        ``<runs_dir>/.artifacts``); every node must see it.
    """

    cluster: str | None = None
    folder: str | os.PathLike[str] | None = None
    progress: bool = True
    poll_seconds: float | None = None
    artifacts_dir: str | os.PathLike[str] | None = None
    jobs: list[Any] = field(default_factory=list, repr=False)

    def run(
        self, cells: Sequence[Cell], runs_dir: str | os.PathLike[str], *, only_failed: bool = False
    ) -> BatchSummary:
        """Submit one array task per cell to run (cells complete or running elsewhere are not submitted)."""
        import submitit

        runs_dir = absolute_runs_dir(runs_dir)  # the compute nodes start elsewhere
        start = time.perf_counter()
        summary = BatchSummary()
        selected = select_cells(cells, runs_dir, only_failed)
        links = artifact_links(selected)
        todo = []
        for cell in producers_first(selected, links):
            state = cell_state(cell, runs_dir)
            if state in ("done", "running"):
                summary.outcomes.append(CellOutcome(cell, "skipped" if state == "done" else "busy"))
            else:
                todo.append(cell)
        cluster = resolve_cluster(self.cluster)
        if cluster == "slurm":
            todo = skip_queued_elsewhere(todo, runs_dir, summary)
        folder = Path(self.folder).resolve() if self.folder else runs_dir / SUBMITIT_FOLDER
        runner = {"backend": "submitit", "cluster": cluster, "batch_id": uuid.uuid4().hex[:12]}
        artifacts = batch_artifacts_dir(runs_dir, self.artifacts_dir)
        # Every array's parameters are checked before the first one is submitted.
        for resources, _ in group_by_resources(todo):
            executor_parameters(resources, cluster)
        job_of: dict[str, Any] = {}
        submitted: list[tuple[Any, Cell]] = []
        for wave in dependency_waves(todo, links):
            for resources, after, group in group_by_dependencies(wave, links, job_of):
                parameters = executor_parameters(resources, cluster)
                if after:
                    parameters["slurm_additional_parameters"] = slurm_dependency(after)
                executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                                 slurm_max_num_timeout=max_requeues_of(resources))
                executor.update_parameters(**parameters)
                producers = {cell.run_key: providers_of(links, cell) for cell in group}
                jobs = executor.map_array(CellJob(str(runs_dir), runner, producers=producers,
                                                  artifacts_dir=str(artifacts)), group)
                submitted.extend(zip(jobs, group))
                for job, cell in zip(jobs, group):
                    job_of[cell.run_key] = job
                if cluster == "slurm":
                    for job, cell in zip(jobs, group):
                        scheduler.record_submission(run_dir_of(cell, runs_dir), job.job_id, runner["batch_id"])
        self.jobs = [job for job, _ in submitted]
        summary.outcomes.extend(self._wait(submitted, runs_dir, cluster, links))
        summary.seconds = time.perf_counter() - start
        return summary

    def _wait(self, submitted: list[tuple[Any, Cell]], runs_dir: Path, cluster: str,
              links: dict[str, list[Any]] | None = None) -> list[CellOutcome]:
        from submitit.helpers import as_completed

        by_job = {id(job): cell for job, cell in submitted}
        bar = progress_bar(len(submitted), "jobs", "cell", self.progress)
        poll = self.poll_seconds if self.poll_seconds is not None else poll_default(cluster)
        outcomes = []
        jobs = [job for job, _ in submitted]
        if cluster == "slurm":
            follow_on_slurm(submitted, poll)
        # The debug executor runs a job when its result is asked for; as_completed would wait forever.
        finished = jobs if cluster == "debug" else as_completed(jobs, poll_frequency=poll)
        for job in finished:
            cell = by_job[id(job)]
            outcome = collect(job, cell, runs_dir, providers_of(links or {}, cell))
            outcomes.append(outcome)
            if bar is not None:
                bar.set_postfix_str(f"{outcome.status}: {outcome.cell.label}"[:60])
                bar.update(1)
        if bar is not None:
            bar.close()
        return outcomes


class CellJob(Checkpointable):
    """One cell as a submitit job; requeued (same cell, same run key, claim handed over) on preemption/timeout.

    Parameters
    ----------
    runs_dir
        The runs folder, as seen from the compute nodes.
    runner
        Batch description stored in the sidecar (backend, cluster, batch id); job id and requeue count are added.
    adopt_token
        The claim token handed over by the job this one requeues.
    requeues
        How many times this cell's job has been requeued.
    producers
        Run key -> the cells providing the artifacts that cell needs (it fails, naming them, when one failed).
    artifacts_dir
        ``$BOB_ARTIFACTS_DIR`` of the cell's kernel.
    """

    def __init__(self, runs_dir: str, runner: dict[str, Any], adopt_token: str | None = None,
                 requeues: int = 0, producers: dict[str, list[Cell]] | None = None,
                 artifacts_dir: str | None = None) -> None:
        self.runs_dir = runs_dir
        self.runner = runner
        self.adopt_token = adopt_token
        self.requeues = requeues
        self.producers = producers or {}
        self.artifacts_dir = artifacts_dir
        self._claim: Claim | None = None

    def __call__(self, cell: Cell) -> CellOutcome:
        runner = {**self.runner, "job_id": _job_id(), "requeues": self.requeues, "host": socket.gethostname(),
                  "pid": os.getpid()}
        producers = self.producers.get(cell.run_key, [])
        if producers:
            failed = wait_for_producers(producers, Path(self.runs_dir))
            if failed:
                return fail_for_producers(cell, self.runs_dir, failed, runner)
        env = {"BOB_NUM_THREADS": str(_job_threads(cell)), **cell_env(cell)}
        if self.artifacts_dir:
            env[ARTIFACTS_ENV] = self.artifacts_dir
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            return self._run_on_slurm(cell, runner, env)
        return execute_cell(cell, self.runs_dir, env=env, runner=runner, adopt_token=self.adopt_token,
                            on_claim=self._hold)

    def _run_on_slurm(self, cell: Cell, runner: dict[str, Any], env: dict[str, str]) -> CellOutcome:
        """Run the cell; on SIGTERM (Slurm cancels or requeues) stop it unrecorded and ask Slurm what happened."""
        restarts = scheduler.slurm_restart_count()
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        # A training cell's notebook may run until the job's limit: Slurm's USR2 (its state saved, the job
        # requeued) must come before the notebook's own timeout.
        timeout_s = job_time_limit_min(cell.resources) * 60 if is_resumable(cell) else None
        try:
            outcome = execute_cell(cell, self.runs_dir, env=env, runner={**runner, "slurm_restarts": restarts},
                                   adopt_token=self.adopt_token, on_claim=self._hold, stop=stop, timeout_s=timeout_s)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if not stop.is_set() or outcome.status in ("complete", "skipped", "busy"):
            return outcome
        return self._after_sigterm(cell, {**runner, "slurm_restarts": restarts})

    def _after_sigterm(self, cell: Cell, runner: dict[str, Any]) -> CellOutcome:
        job_id = str(runner["job_id"])
        cause, state = scheduler.termination_cause(job_id, runner["slurm_restarts"])
        if cause == "requeued":
            # No result: the driver keeps following this job id, whose next run does the cell.
            print(f"bob: Slurm requeued job {job_id} ({state.describe()}); its next run does {cell.label}",
                  file=sys.stderr, flush=True)
            raise SystemExit(0)
        if cause == "terminated":
            kind, message = "terminated", (f"SIGTERM while Slurm job {job_id} was still {state.state} (not a Slurm "
                                           "cancel or requeue: scancel --signal, kill...)")
        else:
            kind, message = scheduler.failure_from_state(
                scheduler.JobState(job_id, "TIMEOUT" if cause == "timeout" else "CANCELLED"))
        return record_job_failure(cell, Path(self.runs_dir), RuntimeError(message), kind=kind, message=message,
                                  runner=runner)

    def _hold(self, claim: Claim) -> None:
        self._claim = claim

    def checkpoint(self, cell: Cell) -> Any:
        """Let a running training save, then requeue the same cell; the requeued job adopts this job's claim (kept on
        disk, not released).

        Called by submitit's USR2 handler (time limit, preemption). The training processes registered in the
        cell's state folder are asked to save and stop (they may have had Slurm's USR2 already), and waited for up
        to the signal delay minus :data:`CHECKPOINT_MARGIN_S`; a stop request stays in the folder until this job
        ends, so a training that starts meanwhile stops at its first step.
        """
        from submitit.core.utils import DelayedSubmission

        if is_resumable(cell):
            state_dir = train_state_dir(run_dir_of(cell, Path(self.runs_dir)))
            wait_s = max(1, signal_delay_s_of(cell.resources) - CHECKPOINT_MARGIN_S)
            asked, running = stop_training(state_dir, wait_s=wait_s, leave_request=True)
            print(f"bob: checkpoint of {cell.label}: asked {asked} training process(es) to save; "
                  f"{running} still running after up to {wait_s} s", file=sys.stderr, flush=True)

        token = self._claim.hand_over() if self._claim is not None else self.adopt_token
        return DelayedSubmission(CellJob(self.runs_dir, self.runner, token, self.requeues + 1, self.producers,
                                         self.artifacts_dir), cell)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_claim": None}  # a live claim (heartbeat thread) does not travel


def run_submitit(
    cells: Sequence[Cell],
    runs_dir: str | os.PathLike[str],
    *,
    cluster: str | None = None,
    only_failed: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Run ``cells`` as Slurm job arrays through submitit (``cluster="local"`` / ``"debug"`` without Slurm)."""
    return SubmititBackend(cluster=cluster, progress=progress).run(cells, runs_dir, only_failed=only_failed)


def get_backend(name: str, **options: Any) -> Backend:
    """``"local"`` -> :class:`LocalBackend`; ``"slurm"`` / ``"submitit"`` -> :class:`SubmititBackend`."""
    if name == "local":
        return LocalBackend(**{k: v for k, v in options.items() if k in ("workers", "kernel", "progress")})
    if name in ("slurm", "submitit"):
        return SubmititBackend(**{k: v for k, v in options.items()
                                  if k in ("cluster", "folder", "progress", "artifacts_dir")})
    raise ValueError(f"unknown backend {name!r}; known: local, slurm")


def resolve_cluster(cluster: str | None) -> str:
    """The submitit cluster to use: the one named, or Slurm when ``sbatch`` is on the PATH."""
    if cluster is None:
        if shutil.which("sbatch") is None:
            raise ValueError("--backend slurm: no Slurm here (sbatch not found); use --cluster local to run the "
                             "Slurm path with submitit's local executor, or --backend local")
        return "slurm"
    from submitit.core import plugins

    known = sorted(plugins.get_executors())
    if cluster not in known:
        raise ValueError(f"unknown submitit cluster {cluster!r}; known: {', '.join(known)}")
    return cluster


def group_by_resources(cells: Iterable[Cell]) -> list[tuple[dict[str, Any], list[Cell]]]:
    """Cells with identical resources, in first-seen order: each group becomes one job array."""
    groups: dict[str, tuple[dict[str, Any], list[Cell]]] = {}
    for cell in cells:
        key = json.dumps(cell.resources, sort_keys=True, default=str)
        groups.setdefault(key, (dict(cell.resources), []))[1].append(cell)
    return list(groups.values())


def executor_parameters(resources: dict[str, Any], cluster: str) -> dict[str, Any]:
    """submitit parameters for one array from a cell's resources (``bobkit.batch.resources.RESOURCE_KEYS``).

    The values are checked again here (a cell can be built without a grid file): nothing unchecked reaches a
    Slurm batch script. ``gpus: 0`` (the default) writes no ``--gpus-per-node`` line at all.
    """
    check_resources(resources, "resources")
    params: dict[str, Any] = {
        "name": "bob",
        "timeout_min": job_time_limit_min(resources),
        "nodes": 1,
        # One task per node: the cell's kernel starts its data-parallel processes itself (torch's launcher), with
        # at least one CPU each.
        "tasks_per_node": 1,
        "cpus_per_task": max(int(resources.get("cpus", 2)), processes_of(resources)),
        "mem_gb": float(resources.get("mem_gb", 16)),
        "slurm_signal_delay_s": signal_delay_s_of(resources),
    }
    if params["slurm_signal_delay_s"] >= params["timeout_min"] * 60:
        raise ResourceError(f"resources signal_delay_s={params['slurm_signal_delay_s']} is not shorter than the "
                            f"job's time limit of {params['timeout_min']} min (timeout_min + job_margin_min)")
    if resources.get("gpus"):
        params["gpus_per_node"] = int(resources["gpus"])
    if resources.get("partition"):
        params["slurm_partition"] = str(resources["partition"])
    if resources.get("slurm_array_parallelism"):
        params["slurm_array_parallelism"] = int(resources["slurm_array_parallelism"])
    if cluster != "slurm":
        params.pop("mem_gb")  # the local executors ignore it; keep their parameters honest
    return params


def job_time_limit_min(resources: dict[str, Any]) -> int:
    """The Slurm job's time limit in whole minutes: ``timeout_min + job_margin_min``, rounded up."""
    return int(math.ceil(float(resources.get("timeout_min", 60)) + job_margin_min_of(resources)))


def sbatch_script(resources: dict[str, Any], folder: str | os.PathLike[str], command: str = "python -m job",
                  after: Sequence[str] = ()) -> str:
    """The Slurm batch script submitit writes for one array with ``resources`` (and, for consumers, the producer
    jobs ``after`` it waits for: :func:`slurm_dependency`), made without a Slurm install.

    submitit's executor refuses to exist where ``srun`` is missing; this applies the same conversions
    (:func:`executor_parameters`, submitit's generic-to-Slurm names and memory format, ``slurm_`` prefixes) and
    its own script template, so the script can be read (and tested) on any machine.
    """
    from submitit.slurm import slurm

    names = slurm.SlurmExecutor._equivalence_dict() or {}
    specific: dict[str, Any] = {}
    for key, value in executor_parameters(resources, "slurm").items():
        if key.startswith("slurm_"):
            specific[key.removeprefix("slurm_")] = value
        else:
            specific[names.get(key, key)] = value
    if "mem" in specific:
        specific["mem"] = slurm._convert_mem(specific["mem"])
    if after:
        specific["additional_parameters"] = slurm_dependency(after)
    return slurm._make_sbatch_string(command=command, folder=Path(folder), **specific)


def collect(job: Any, cell: Cell, runs_dir: Path, producers: Sequence[Cell] = ()) -> CellOutcome:
    """The outcome a job returned; a job that died without one gets a failed sidecar (unless the cell is done):
    ``producer_failed`` naming its producers when one of them failed (Slurm cancels a job whose dependency can no
    longer be met), else Slurm's verdict."""
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError, or unpickling
        failed = failed_producers(producers, runs_dir)
        if failed:
            return record_job_failure(cell, runs_dir, exc, _job_stderr(job), kind="producer_failed",
                                      message=producer_failure_message(failed))
        kind, message = slurm_verdict(job, exc)
        return record_job_failure(cell, runs_dir, exc, _job_stderr(job), kind=kind, message=message)


def failed_producers(producers: Sequence[Cell], runs_dir: Path) -> list[CellOutcome]:
    """The producers whose cells are recorded failed, as outcomes carrying their first error line."""
    from bobkit.batch.sidecars import read_sidecar

    failed = []
    for producer in producers:
        if cell_state(producer, runs_dir) == "failed":
            error = (read_sidecar(run_dir_of(producer, runs_dir)) or {}).get("error") or {}
            message = str(error.get("message") or "").strip()
            failed.append(CellOutcome(producer, "failed", error=message.splitlines()[0] if message else None,
                                      kind=error.get("kind")))
    return failed


def wait_for_producers(producers: Sequence[Cell], runs_dir: Path, poll_s: float = PRODUCER_POLL_SECONDS,
                       stop: threading.Event | None = None) -> list[CellOutcome]:
    """Wait until every producer's cell is done or failed (Slurm's ``afterok`` already waited; the executors
    without Slurm did not); returns the failed ones. Past the producers' stale time the wait ends: the consumer
    then makes what it needs itself."""
    deadline = time.monotonic() + max((stale_after(p) for p in producers), default=0.0)
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        if all(cell_state(p, runs_dir) in ("done", "failed") for p in producers):
            break
        time.sleep(poll_s)
    return failed_producers(producers, runs_dir)


def batch_artifacts_dir(runs_dir: Path, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The artifacts folder of a Slurm batch: the one given, ``$BOB_ARTIFACTS_DIR``, else ``<runs_dir>/.artifacts``
    (absolute: the compute nodes start elsewhere)."""
    chosen = explicit or os.environ.get(ARTIFACTS_ENV) or Path(runs_dir) / ARTIFACTS_FOLDER
    return Path(chosen).expanduser().resolve()


def dependency_waves(cells: Sequence[Cell], links: dict[str, list[Any]]) -> list[list[Cell]]:
    """``cells`` in submission waves: a cell comes after every wave holding one of its producers."""
    keys = {cell.run_key for cell in cells}
    placed: set[str] = set()
    remaining, waves = list(cells), []
    while remaining:
        wave = [cell for cell in remaining
                if all(p.run_key not in keys or p.run_key in placed for p in providers_of(links, cell))]
        wave = wave or remaining  # never happens (a producer needs nothing of its consumers); submit what is left
        placed.update(cell.run_key for cell in wave)
        remaining = [cell for cell in remaining if cell.run_key not in placed]
        waves.append(wave)
    return waves


def group_by_dependencies(cells: Iterable[Cell], links: dict[str, list[Any]],
                          job_of: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[str, ...], list[Cell]]]:
    """Cells with identical resources and identical producer jobs (``jobid_index`` of array tasks), in first-seen
    order: each group becomes one job array, with that dependency."""
    groups: dict[str, tuple[dict[str, Any], tuple[str, ...], list[Cell]]] = {}
    for cell in cells:
        after = tuple(sorted({str(job_of[p.run_key].job_id) for p in providers_of(links, cell)
                              if p.run_key in job_of}))
        key = json.dumps([cell.resources, after], sort_keys=True, default=str)
        groups.setdefault(key, (dict(cell.resources), after, []))[2].append(cell)
    return list(groups.values())


def slurm_dependency(after: Sequence[str]) -> dict[str, str]:
    """sbatch options of a consumer array: start after every producer task ended well; cancelled when one failed."""
    return {"dependency": "afterok:" + ":".join(after), "kill_on_invalid_dep": "yes"}


def record_job_failure(cell: Cell, runs_dir: Path, exc: BaseException, stderr: str = "", *,
                       kind: str = "job_failed", message: str | None = None,
                       runner: dict[str, Any] | None = None) -> CellOutcome:
    """Write a failed sidecar for a cell whose job died outside the runner (killed, cancelled, out of time).

    ``kind`` and ``message`` name the cause when it is known (Slurm's verdict: ``cancelled``, ``timeout``...);
    ``runner`` is the job's own description when the job records its end itself.
    """
    from bobkit.batch.record import job_failure_record
    from bobkit.batch.sidecars import write_sidecar

    state = cell_state(cell, runs_dir)
    if state == "done":
        return CellOutcome(cell, "complete")
    run_dir = run_dir_of(cell, runs_dir)
    claim = try_claim(run_dir, stale_after=stale_after(cell))
    if claim is None:  # requeued and running, or taken over by another batch
        return CellOutcome(cell, "busy", error=str(exc).splitlines()[0] if str(exc) else None)
    try:
        message = message or next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        error = {"kind": kind, "message": message[:500], "output_tail": (str(exc) + "\n" + stderr)[-OUTPUT_TAIL_CHARS:]}
        runner = runner or {"backend": "submitit", "host": socket.gethostname()}
        write_sidecar(run_dir, job_failure_record(cell, error, runner))
    finally:
        claim.release()
    return CellOutcome(cell, "failed", error=message, kind=kind)


def _job_stderr(job: Any) -> str:
    try:
        return job.stderr() or ""
    except Exception:  # noqa: BLE001 - the log may not exist
        return ""


def _job_id() -> str | None:
    try:
        from submitit import JobEnvironment

        return str(JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not inside a submitit job (e.g. called directly)
        return os.environ.get("SLURM_JOB_ID")


def _job_threads(cell: Cell) -> int:
    """Threads for the cell's kernel: the CPUs Slurm gave the job, else the cell's ``cpus`` resource."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return max(1, min(available, int(cell.resources.get("cpus", available))))



def poll_default(cluster: str) -> float:
    """Seconds between job-state polls: ``$BOB_SLURM_POLL_SECONDS``, else 30 s on Slurm and 0.5 s otherwise."""
    if os.environ.get(POLL_ENV):
        return float(os.environ[POLL_ENV])
    return 30.0 if cluster == "slurm" else 0.5


def skip_queued_elsewhere(cells: list[Cell], runs_dir: Path, summary: BatchSummary) -> list[Cell]:
    """Cells to submit: those without a live Slurm job already (queued by another driver, or requeued)."""
    live = scheduler.live_jobs({cell.run_key: run_dir_of(cell, runs_dir) for cell in cells})
    for cell in cells:
        if cell.run_key in live:
            state = live[cell.run_key]
            summary.outcomes.append(CellOutcome(cell, "busy", error=f"Slurm job {state.job_id} {state.describe()}"))
    return [cell for cell in cells if cell.run_key not in live]


def follow_on_slurm(submitted: list[tuple[Any, Cell]], poll: float) -> None:
    """Follow the jobs with ``squeue`` (accounting not needed) and say when Slurm requeues one."""
    labels = {job.job_id: cell.label for job, cell in submitted}

    def requeued(job_id: str, state: scheduler.JobState) -> None:
        print(f"bob: Slurm requeued job {job_id} ({labels.get(job_id, '?')}): {state.describe()}; waiting for it",
              file=sys.stderr, flush=True)

    scheduler.follow([job for job, _ in submitted], delay_s=poll, on_requeue=requeued)


def slurm_verdict(job: Any, exc: BaseException) -> tuple[str, str | None]:
    """(error kind, message) for a job that ended without a result: Slurm's final state when it is a Slurm job."""
    if not isinstance(getattr(job, "watcher", None), scheduler.SlurmWatcher):
        return "job_failed", None
    if "timed-out too many times" in str(exc):  # submitit's own limit on checkpoint-and-requeue cycles
        return "timeout", (f"Slurm job {job.job_id} reached its time limit more times than it may be requeued "
                           "(resource max_requeues); raise timeout_min or max_requeues")
    state = scheduler.query([job.job_id]).get(job.job_id)
    if state is None:
        return "job_failed", None
    if state.state == scheduler.ENDED and not job.paths.stdout.exists():
        # Gone without a trace and never started: a pending (array) task that was cancelled.
        return "cancelled", (f"Slurm job {job.job_id} left the queue before it started (cancelled while pending; "
                             "no accounting to say more)")
    kind, message = scheduler.failure_from_state(state)
    return (kind, message) if kind != "job_failed" else (kind, None)  # exc's own message says more
