"""Data-parallel training on one node: torch.distributed (DDP) in N processes started by torch's elastic launcher.

A cell's process count comes from its ``processes`` resource: the runner puts it in ``$BOB_PROCESSES``
(:func:`processes_requested`; 1 when unset). With more than one, the notebook's kernel calls :func:`launch`, which
writes a job description (JSON: the target function's name and its parameters, nothing pickled) and runs::

    python -m bobkit.tasks.distributed agent --nproc N JOB.json
      -> torch.distributed.run --standalone --nproc-per-node N -m bobkit.tasks.distributed worker JOB.json

The ``agent`` step is torch's elastic launcher (``torch.distributed.run.main``), run in a process that dies with
the kernel (``PR_SET_PDEATHSIG``) and outlives the stop signal meant for the training (SIGUSR2); each worker dies
with the agent the same way, so a killed cell leaves no training behind. Every worker builds its model and data
from the parameters, trains its share of each global batch (:func:`rank_share`: a fixed slice, so two ranks at
32 are one rank at 64 as data), and rank 0 alone writes the result: the trained weights
(``weights.safetensors``) and a JSON record (losses...). The kernel then loads the weights and evaluates on its
own, so every test item is counted exactly once.

Devices: ``cuda:<local rank>`` with NCCL where CUDA is available, else the CPU with gloo (the tests' case).
A stop request (SIGTERM / SIGUSR2) reaches the workers through :mod:`bobkit.tasks.train_state`; the ranks agree
on it with one small all-reduce per step (:meth:`World.max`), rank 0 saves, every worker ends with exit code 0
and a ``preempted.json``, and :func:`launch` raises :class:`~bobkit.tasks.train_state.TrainingPreempted` in the
kernel, so the runner leaves the cell pending and its rerun resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from bobkit.tasks.contract import ParameterError
from bobkit.tasks.train_state import STOP_SIGNALS, TrainingPreempted, stop_training
from bobkit.utils.files import write_json

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Set by the runner from the cell's ``processes`` resource: how many training processes the cell may start.
PROCESSES_ENV = "BOB_PROCESSES"
WEIGHTS_FILE = "weights.safetensors"
RECORD_FILE = "result.json"
PREEMPTED_FILE = "preempted.json"
JOB_FILE = "job.json"
#: Only functions of bobkit modules can be a job's target (a job file names code, it does not carry it).
TARGET_PATTERN = re.compile(r"bobkit(\.[A-Za-z_]\w*)+:[A-Za-z_]\w*")
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


# ----------------------------------------------------------------------------------------------------------------
# The world: who this process is among the training processes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This training process among ``size`` on one node (``size == 1``: no process group, plain calls).

    Also what :class:`bobkit.tasks.train_state.TrainState` needs for its collective decisions.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes (state, result)."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """NCCL on GPUs, gloo on the CPU."""
        return "nccl" if self.device.startswith("cuda") else "gloo"

    def max(self, value: int) -> int:
        """The largest ``value`` over the ranks: one all-reduce of a single integer (cheap enough per step)."""
        if self.size == 1:
            return int(value)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def mean(self, value: float) -> float:
        """The mean of a float over the ranks (e.g. a loss, for the record)."""
        if self.size == 1:
            return float(value)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.size

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, small), in rank order."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current_world(device: str | None = None) -> World:
    """This process's world from torch's launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without them
    a world of one. ``device``: where a world of one trains (default: the CPU); ranks take ``cuda:<local rank>``
    when CUDA is available, else the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=device or "cpu")
    import torch

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    return World(rank=rank, size=size, local_rank=local_rank, device=f"cuda:{local_rank}" if on_gpu else "cpu")


@contextlib.contextmanager
def process_group(world: World) -> Iterator[World]:
    """Join the process group of ``world`` (torch's launcher set its address) and leave it afterwards."""
    if world.size == 1:
        yield world
        return
    import torch
    import torch.distributed as dist

    if world.device.startswith("cuda"):
        torch.cuda.set_device(world.device)
    dist.init_process_group(world.backend, rank=world.rank, world_size=world.size, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def processes_requested() -> int:
    """The training processes this cell may start (``$BOB_PROCESSES``, set by the runner; 1 when unset)."""
    value = os.environ.get(PROCESSES_ENV, "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${PROCESSES_ENV}={value!r}: must be a positive integer")
    return int(value)


# ----------------------------------------------------------------------------------------------------------------
# Splitting a global batch
# ----------------------------------------------------------------------------------------------------------------


def micro_batch_size(global_batch: int, processes: int, accum_steps: int = 1) -> int:
    """The size of each of the ``processes x accum_steps`` equal micro-batches of a global batch.

    Raises :class:`~bobkit.tasks.contract.ParameterError` naming the values when they do not divide (checked before
    any work: a global batch that cannot be split equally would be a different recipe).
    """
    parts = processes * accum_steps
    if processes < 1 or accum_steps < 1 or global_batch % parts:
        raise ParameterError(f"batch_size={global_batch} (the global batch) does not split into processes="
                             f"{processes} x accum_steps={accum_steps} equal micro-batches; use a batch size that is "
                             f"a multiple of {parts}")
    return global_batch // parts


def rank_share(batch: np.ndarray | torch.Tensor | list[int], world: World) -> Any:
    """This rank's fixed slice of a global batch's item indices: ``[rank * k, (rank + 1) * k)``, ``k = len // size``.

    A fixed slice (not a sampler's interleaving) makes N ranks at ``k`` the same data as one rank at ``N * k``.
    """
    if len(batch) % world.size:
        raise ValueError(f"a global batch of {len(batch)} items does not split into {world.size} equal shares")
    share = len(batch) // world.size
    return batch[world.rank * share:(world.rank + 1) * share]


def wrap_ddp(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there is more than one rank (gradients averaged over the ranks)."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.local_rank] if world.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


# ----------------------------------------------------------------------------------------------------------------
# Jobs: what the workers run
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A training job: ``target`` (``bobkit.module:function``) called with ``params`` (JSON values) in each worker.

    ``result_dir``: where rank 0 writes the result; ``state_dir``: the training state folder (``None``: none kept);
    ``threads``: torch threads per process on the CPU.
    """

    target: str
    params: dict[str, Any]
    result_dir: str
    state_dir: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if not TARGET_PATTERN.fullmatch(self.target):
            raise ValueError(f"job target {self.target!r} must name a function of a bobkit module "
                             "('bobkit.tasks.module:function')")

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the job as JSON (a value JSON cannot hold is an error: parameters only)."""
        json.dumps(self.params, allow_nan=False)  # fail here, naming nothing half-written
        write_json(path, asdict(self))
        return Path(path)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Job:
        """Read a job file written by :meth:`write`."""
        data = json.loads(Path(path).read_text())
        return cls(**{k: data[k] for k in ("target", "params", "result_dir", "state_dir", "threads") if k in data})

    def function(self) -> Callable[[Job, World], JobResult]:
        """The target function, imported."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


@dataclass
class JobResult:
    """What a job returns on every rank; rank 0's is written: ``weights`` (tensors by name, or ``None``) and
    ``record`` (JSON: losses, steps...)."""

    weights: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchResult:
    """Rank 0's result as the kernel reads it back."""

    folder: Path
    record: dict[str, Any]

    @property
    def weights_path(self) -> Path | None:
        """The trained weights (safetensors), when the job returned any."""
        path = self.folder / WEIGHTS_FILE
        return path if path.exists() else None

    def load_weights(self) -> dict[str, Any]:
        """The trained weights as tensors (``safetensors``: no pickle)."""
        from safetensors.torch import load_file

        if self.weights_path is None:
            raise FileNotFoundError(f"{self.folder}: the job wrote no weights")
        return load_file(self.weights_path)


def run_job(job: Job, world: World) -> JobResult:
    """Run ``job`` in this process as ``world``'s rank (threads set first)."""
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    return job.function()(job, world)


def write_result(result: JobResult, folder: str | os.PathLike[str]) -> None:
    """Rank 0: the weights as safetensors (contiguous CPU copies), then the record; each file atomic."""
    from bobkit.utils.files import atomic_path

    folder = Path(folder)
    if result.weights is not None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in result.weights.items()}
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
    write_json(folder / RECORD_FILE, result.record)


def launch(target: str, params: dict[str, Any], processes: int, *, work_dir: str | os.PathLike[str] | None = None,
           state_dir: str | os.PathLike[str] | None = None, threads: int | None = None,
           echo: Callable[[str], None] | None = None) -> LaunchResult:
    """Run the training job ``target(params)`` in ``processes`` processes through torch's elastic launcher.

    Parameters
    ----------
    target
        ``bobkit.module:function``; the function takes ``(job, world)`` and returns a :class:`JobResult`.
    params
        Its parameters (JSON values only: the job file carries no objects).
    processes
        How many training processes (ranks) on this node.
    work_dir
        Where the job file and rank 0's result go (default: a new temporary folder; the caller removes it).
    state_dir
        The training state folder (resumes from it; a stop signal saves into it).
    threads
        torch threads per process on the CPU.
    echo
        Where the launcher's output lines go (default: this process's stdout, i.e. the notebook).

    Raises
    ------
    TrainingPreempted
        The training was stopped by a signal after saving its state (a rerun resumes).
    RuntimeError
        The launcher or a worker failed; the message holds the end of their output.
    """
    if processes < 1:
        raise ValueError(f"processes={processes}: must be at least 1")
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="bob-launch-"))
    result_dir = folder / "result"
    result_dir.mkdir(parents=True, exist_ok=True)
    for stale in (WEIGHTS_FILE, RECORD_FILE, PREEMPTED_FILE):
        (result_dir / stale).unlink(missing_ok=True)
    job = Job(target, dict(params), str(result_dir), str(state_dir) if state_dir is not None else None, threads)
    job_file = job.write(folder / JOB_FILE)
    command = [sys.executable, "-m", "bobkit.tasks.distributed", "agent", "--nproc", str(processes), str(job_file)]
    env = {**os.environ, "BOB_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    echo = echo or (lambda line: print(line, end="", flush=True))
    tail: list[str] = []
    with _forward_stop_signals(state_dir):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                echo(line)
                tail = [*tail[-59:], line]
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    preempted = result_dir / PREEMPTED_FILE
    if preempted.exists():
        info = json.loads(preempted.read_text())
        raise TrainingPreempted(int(info["step"]), str(info["reason"]))
    if returncode != 0 or not (result_dir / RECORD_FILE).exists():
        raise RuntimeError(f"distributed training ({processes} processes, {target}) failed with exit code "
                           f"{returncode}; last output:\n{''.join(tail[-30:])}")
    return LaunchResult(result_dir, json.loads((result_dir / RECORD_FILE).read_text()))


def train(target: str, params: dict[str, Any], processes: int = 1, *,
          state_dir: str | os.PathLike[str] | None = None, work_dir: str | os.PathLike[str] | None = None,
          threads: int | None = None, device: str = "cpu") -> JobResult:
    """Run a training job: in this process when ``processes == 1`` (on ``device``), else through :func:`launch`.

    Returns rank 0's :class:`JobResult` (weights as tensors, record) either way, so the caller evaluates the same
    way after both; the job function is the same code in both cases. Without ``work_dir`` the launcher's files
    go to a temporary folder that is removed once the weights are read.
    """
    if processes == 1:
        job = Job(target, dict(params), "", str(state_dir) if state_dir is not None else None, threads)
        return run_job(job, World(device=device))
    with contextlib.ExitStack() as stack:
        folder = work_dir if work_dir is not None else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bob-launch-"))
        launched = launch(target, params, processes, work_dir=folder, state_dir=state_dir, threads=threads)
        weights = launched.load_weights() if launched.weights_path is not None else None
        return JobResult(weights, launched.record)


@contextlib.contextmanager
def _forward_stop_signals(state_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """While the kernel waits for the launcher: a stop signal is passed on to the training processes (which save
    and stop) instead of ending the kernel. Without a state folder nothing is installed (nothing could be saved)."""
    import threading

    if state_dir is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    folder = Path(state_dir)
    previous = {s: signal.signal(s, lambda *_: stop_training(folder, wait_s=0)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


# ----------------------------------------------------------------------------------------------------------------
# The two process entry points: the agent (torch's launcher) and a worker
# ----------------------------------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent (``$BOB_PARENT_PID``) dies; exit at once when it is already gone."""
    parent = os.environ.get("BOB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os._exit(1)


def agent_main(processes: int, job_file: str) -> None:
    """Run torch's elastic launcher for ``job_file`` with ``processes`` workers on this node."""
    die_with_parent()
    # SIGUSR2 asks the training to save; it must not end the launcher (a Python handler: the workers, exec'd
    # afterwards, start with the default again and install their own).
    signal.signal(signal.SIGUSR2, lambda *_: None)
    os.environ["BOB_PARENT_PID"] = str(os.getpid())  # the workers' parent is this process
    from torch.distributed.run import main as torchrun

    torchrun(["--standalone", f"--nproc-per-node={processes}", "--max-restarts=0",
              "-m", "bobkit.tasks.distributed", "worker", job_file])


def worker_main(job_file: str) -> int:
    """One rank: join the group, run the job, rank 0 writes the result (or ``preempted.json``); exit status."""
    die_with_parent()
    job = Job.read(job_file)
    world = current_world()
    with process_group(world):
        try:
            result = run_job(job, world)
        except TrainingPreempted as stop:
            if world.is_main:
                write_json(Path(job.result_dir) / PREEMPTED_FILE, {"step": stop.step, "reason": stop.reason})
            return 0  # saved and stopped on request: not a failure of the launch
        if world.is_main:
            write_result(result, job.result_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``agent --nproc N JOB.json`` or ``worker JOB.json``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bobkit.tasks.distributed")
    sub = parser.add_subparsers(dest="role", required=True)
    agent = sub.add_parser("agent", help="run torch's elastic launcher for a job")
    agent.add_argument("--nproc", type=int, required=True)
    agent.add_argument("job")
    worker = sub.add_parser("worker", help="one rank of a job (started by the launcher)")
    worker.add_argument("job")
    args = parser.parse_args(argv)
    if args.role == "agent":
        agent_main(args.nproc, args.job)
        return 0
    return worker_main(args.job)


if __name__ == "__main__":
    sys.exit(main())
