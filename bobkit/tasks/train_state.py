"""Training state that survives time limits, preemption and kill -9: saved atomically, verified before use.

A training loop keeps its state in a folder (``state_dir``: the runner passes ``<run dir>/train-state``; ``None``
keeps nothing and changes nothing). The folder holds:

* ``step-<step>.pt``: model, optimizer, scheduler and grad-scaler state, every RNG (torch CPU and CUDA, NumPy,
  Python; one set per training process) and the loop's own ``extra`` values (e.g. the losses so far), written
  with ``torch.save`` through a temp file, fsync and rename; the newest ``keep`` are kept;
* ``step-<step>.json``: its record (size and sha256, and the training's ``identity``), written after it; a state is
  used only once its file matches the record, and it is loaded with ``torch.load(weights_only=True)``; a damaged or
  unrecorded one is moved aside (``*.bad-<time>``) with a note in the attempt log, and the next older intact one (or
  a fresh start) is used. A state saved by another training (its recorded ``identity``, e.g. the recipe and data
  of a fine-tune, differs from this one's) is moved aside the same way, never resumed;
* ``attempts.jsonl``: one JSON line per event (``start``, ``save``, ``end`` with why it ended, ``set_aside``), so
  the steps each attempt ran can be checked (:func:`read_attempts`);
* ``pids/``: the training processes running now, so a scheduler's checkpoint can ask them to save
  (:func:`stop_training`); ``stop-request.json``: a stop asked by a process that is still running (a Slurm job
  about to requeue), which a training that starts after the signals went out obeys too.

The position in the data is the step index: the data order is a pure function of (items, global batch, steps,
seed), so a resumed run continues the same order from its step. A stop request (SIGTERM or SIGUSR2, handlers
installed only while training, chaining the previous handler) ends training after the current optimizer step,
with the state saved, by raising :class:`TrainingPreempted`; the runner records nothing for such a cell (it stays
pending) and its rerun resumes. In data-parallel training every rank holds a :class:`TrainState` with the same
folder and its ``world`` (:class:`bobkit.tasks.distributed.World`): the ranks agree on saving and stopping at the
same step through one small all-reduce per step, rank 0 alone writes, every rank restores its own RNG state.

Usage (one optimizer step per ``train_step`` call)::

    with TrainState(p["state_dir"], world=world) as state:
        start = state.restore(model, optimizer, scheduler, scaler)   # 0 on a fresh start
        losses = state.extra.get("losses", [])
        for step in range(start, total_steps):
            losses.append(train_step(step))
            state.after_step(step + 1, extra={"losses": losses})    # saves when due; raises when stopped
        state.finish(total_steps, extra={"losses": losses})
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from bobkit.utils.files import atomic_path, file_record, fsync_file, move_aside, record_problems, write_json
from bobkit.utils.processes import process_start_time, same_process_running

#: Seconds between saves while training runs (and at every stop signal).
DEFAULT_EVERY_SECONDS = 300.0
#: Saved states kept: the newest, and one before it in case the newest is found damaged.
DEFAULT_KEEP = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
#: The signal :func:`stop_training` sends (a scheduler's "save and stop").
STOP_SIGNAL = signal.SIGUSR2
ATTEMPTS_FILE = "attempts.jsonl"
PIDS_FOLDER = "pids"
#: Left by :func:`stop_training` (``leave_request=True``) while its requester lives: a training that starts or
#: steps after the request stops at once, even if it registered after the signals went out.
STOP_REQUEST_FILE = "stop-request.json"
STATE_FORMAT = 1
_STATE_NAME = re.compile(r"step-(\d{9})")


class TrainingPreempted(RuntimeError):
    """Training stopped on request after an optimizer step, with its state saved: a rerun resumes from ``step``.

    The runner classifies a cell that ended with this error as interrupted: no failed record, the cell stays
    pending (on Slurm the requeued job runs it again).
    """

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"training stopped ({reason}) after step {step} with its state saved; "
                         "a rerun of the cell resumes from there")
        self.step = step
        self.reason = reason


class World(Protocol):
    """What the state needs of the training processes (:class:`bobkit.tasks.distributed.World` provides it)."""

    rank: int
    size: int

    def max(self, value: int) -> int:
        """The largest ``value`` over all ranks (every rank calls it at the same step)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        ...

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        ...


@dataclass(frozen=True)
class OneProcess:
    """The world of a training that runs in one process: the collective operations are identities."""

    rank: int = 0
    size: int = 1

    def max(self, value: int) -> int:
        return value

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj


@dataclass
class Attempt:
    """One run of a training loop, read back from ``attempts.jsonl``.

    ``start_step``: where it began (the restored step); ``saved_step``: the last step it saved (what the next
    attempt resumes from); ``end_step``: the last step it completed (``None`` when it was killed without a
    word); ``why``: ``finished``, ``preempted (SIGUSR2)``, ``error: ...`` or ``killed`` (no end line).
    """

    attempt: str
    start_step: int
    saved_step: int
    end_step: int | None = None
    why: str = "killed"
    saves: list[int] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    world_size: int = 1

    @property
    def steps_lost(self) -> int | None:
        """Steps done after the last save, which the next attempt redoes (``None`` when unknown: killed)."""
        return None if self.end_step is None else self.end_step - self.saved_step


class TrainState:
    """Save and restore a training loop's state in ``folder`` (``None``: keep nothing; every call is cheap).

    Parameters
    ----------
    folder
        The state folder (the runner's ``state_dir``), created when needed.
    every_seconds
        Save at the first optimizer step this long after the start or the last save.
    keep
        How many saved states to keep (newest first).
    world
        The training processes (default: this process alone).
    identity
        What makes this training (JSON values: the run's recipe, data, seed...); recorded with every state, and a
        state whose recorded identity differs is set aside instead of resumed (``None``: not checked).
    """

    def __init__(self, folder: str | os.PathLike[str] | None, *, every_seconds: float = DEFAULT_EVERY_SECONDS,
                 keep: int = DEFAULT_KEEP, world: World | None = None,
                 identity: Mapping[str, Any] | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: at least one saved state must be kept")
        if every_seconds < 0:
            raise ValueError(f"every_seconds={every_seconds}: must be >= 0")
        self.folder = Path(folder) if folder is not None else None
        self.every_seconds = float(every_seconds)
        self.keep = keep
        self.world: World = world or OneProcess()
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True)) if identity is not None else None
        self.extra: dict[str, Any] = {}
        self.start_step = 0
        self.step = 0
        self.saved_step = 0
        self._objects: dict[str, Any] = {}
        self._stop: str | None = None
        self._agreed_stop = False
        self._last_save = time.monotonic()
        self._attempt = uuid.uuid4().hex[:12]
        self._previous_handlers: dict[int, Any] = {}
        self._pid_file: Path | None = None
        self._finished = False

    # -- context: signal handlers, the process registry and the attempt log ------------------------------------

    def __enter__(self) -> TrainState:
        if self.folder is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._install_handlers()
        self._pid_file = _register(self.folder, self.world.rank)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.folder is None:
            return
        try:
            if exc is None:
                why = "finished" if self._finished else "left the loop"
            elif isinstance(exc, TrainingPreempted):
                why = f"preempted ({exc.reason})"
            else:
                why = f"error: {type(exc).__name__}: {exc}"[:300]
            self._log("end", step=self.step, saved_step=self.saved_step, why=why)
        finally:
            if self._pid_file is not None:
                self._pid_file.unlink(missing_ok=True)
            self._restore_handlers()

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a loop elsewhere saves on its timer alone
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = signal.Signals(signum).name
        previous = self._previous_handlers.get(signum)
        if callable(previous):  # chain a handler someone else installed (not SIG_DFL: that would end us now)
            previous(signum, frame)

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to save and stop after the current optimizer step (what the stop signals do)."""
        self._stop = reason

    @property
    def stop_requested(self) -> bool:
        """A stop was asked for here, or (after :meth:`due`) on any rank."""
        return self._stop is not None or self._agreed_stop

    # -- restore ------------------------------------------------------------------------------------------------

    def restore(self, model: Any = None, optimizer: Any = None, scheduler: Any = None, scaler: Any = None) -> int:
        """Load the newest intact state into the given objects and RNGs; return its step (0: a fresh start).

        The objects are remembered for :meth:`save`. A model wrapped in DDP or ``torch.compile`` is unwrapped.
        Damaged states (size or sha256 off their record, unreadable, no record) are moved aside with a note.
        """
        self._objects = {"model": _unwrap(model), "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
        self._last_save = time.monotonic()
        if self.folder is None:
            return 0
        chosen, payload = self._choose_state() if self.world.rank == 0 else (None, None)
        chosen = self.world.broadcast(chosen)
        step = 0
        if chosen is not None:
            payload = payload if payload is not None else _load(self.folder / f"{chosen}.pt")
            self._apply(payload)
            step = int(payload["step"])
        self.start_step = self.step = self.saved_step = step
        self._log("start", step=step)
        return step

    def _choose_state(self) -> tuple[str | None, dict[str, Any] | None]:
        """Rank 0: the newest state whose file matches its record and loads (name, content); damaged ones are moved
        aside."""
        assert self.folder is not None
        for partial in self.folder.glob(".step-*.tmp"):  # a save killed before its rename: never a state
            partial.unlink(missing_ok=True)
        for orphan in sorted(self.folder.glob("step-*.pt")):  # written, never recorded (killed in between)
            if not (self.folder / f"{orphan.stem}.json").exists():
                self._set_aside(orphan.stem, "no record (killed between writing the state and its record)")
        for name in self._recorded_states():
            record_path = self.folder / f"{name}.json"
            try:
                record = json.loads(record_path.read_text())
                problems = record_problems(self.folder, {f"{name}.pt": record["file"]})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems = [f"unreadable record: {exc}"]
            if not problems and self.identity is not None and record.get("identity") != self.identity:
                problems = [f"saved by another training: its identity {_short(record.get('identity'))} is not this "
                            f"training's {_short(self.identity)}; a state is resumed only by the training that "
                            "saved it"]
            if not problems:
                try:
                    return name, _load(self.folder / f"{name}.pt")
                except Exception as exc:  # noqa: BLE001 - any unreadable pickle is a damaged state
                    problems = [f"torch.load failed: {type(exc).__name__}: {exc}"[:300]]
            self._set_aside(name, "; ".join(problems))
        return None, None

    def _recorded_states(self) -> list[str]:
        assert self.folder is not None
        names = {p.stem for p in self.folder.glob("step-*.json") if _STATE_NAME.fullmatch(p.stem)}
        return sorted(names, reverse=True)

    def _set_aside(self, name: str, problem: str) -> None:
        assert self.folder is not None
        moved = [move_aside(path).name for path in (self.folder / f"{name}.pt", self.folder / f"{name}.json")
                 if path.exists()]
        note = f"train state {name} set aside ({problem}); moved to {', '.join(moved) or 'nothing'}"
        print(f"bob: {note}", file=sys.stderr, flush=True)
        self._log("set_aside", state=name, problem=problem, moved=moved)

    def _apply(self, payload: dict[str, Any]) -> None:
        for key, target in self._objects.items():
            if target is not None and payload.get(key) is not None:
                target.load_state_dict(payload[key])
        self.extra = dict(payload.get("extra") or {})
        states = payload.get("rng") or []
        if states:
            set_rng_state(states[self.world.rank] if len(states) == self.world.size else states[0])

    # -- save ---------------------------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether to save now (on every rank alike): the save interval has passed, or a stop was requested.

        A collective call in data-parallel training: every rank calls it after the same optimizer step.
        """
        self.step = step
        if self.folder is None:
            return False
        if self._stop is None and stop_request_pending(self.folder):
            self._stop = "a stop request in the state folder"
        wanted = 2 if self._stop is not None else int(time.monotonic() - self._last_save >= self.every_seconds)
        agreed = self.world.max(wanted)
        self._agreed_stop = agreed == 2
        return agreed > 0

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Save the state after optimizer step ``step`` (collective: every rank's RNG is gathered; rank 0 writes).

        Atomic: the file is complete under its name or absent; its record follows, then older states are pruned.
        """
        self.step = step
        if self.folder is None:
            return
        rng = self.world.gather(rng_state())
        if self.world.rank == 0:
            self._write(step, rng, extra)
        self.saved_step = step
        self._last_save = time.monotonic()

    def after_step(self, step: int, extra: dict[str, Any] | Callable[[], dict[str, Any]] | None = None) -> None:
        """Call after each optimizer step: save when due; after a stop request raise :class:`TrainingPreempted`.

        ``extra`` may be a function, called only when a state is saved (on every rank: it may be collective, e.g.
        gathering the losses), so a step that saves nothing costs no host sync."""
        if self.due(step):
            self.save(step, extra() if callable(extra) else extra)
        if self._agreed_stop:
            raise TrainingPreempted(step, self._stop or "a stop request on another rank")

    def finish(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Training is complete at ``step``: save its final state (unless just saved), so a cell whose evaluation
        fails afterwards is rerun without training again; the runner removes the folder once the cell is recorded."""
        if self.folder is not None and self.saved_step != step:
            self.save(step, extra)
        self.step = step
        self._finished = True

    def _write(self, step: int, rng: list[dict[str, Any]], extra: dict[str, Any] | None) -> None:
        import torch

        assert self.folder is not None
        name = f"step-{step:09d}"
        payload = {
            "format": STATE_FORMAT, "step": step, "world_size": self.world.size, "rng": rng, "extra": extra or {},
            **{key: (obj.state_dict() if obj is not None else None) for key, obj in self._objects.items()},
        }
        target = self.folder / f"{name}.pt"
        with atomic_path(target) as tmp:
            torch.save(payload, tmp)
        write_json(self.folder / f"{name}.json", {
            "format": STATE_FORMAT, "step": step, "file": file_record(target), "world_size": self.world.size,
            "saved": time.time(), "host": socket.gethostname(), "identity": self.identity})
        self._log("save", step=step)
        for old in self._recorded_states()[self.keep:]:
            for path in (self.folder / f"{old}.pt", self.folder / f"{old}.json"):
                path.unlink(missing_ok=True)

    def _log(self, event: str, **fields: Any) -> None:
        if self.folder is None or self.world.rank != 0:
            return
        line = {"event": event, "attempt": self._attempt, "time": time.time(), "host": socket.gethostname(),
                "pid": os.getpid(), "world_size": self.world.size, **fields}
        path = self.folder / ATTEMPTS_FILE
        with open(path, "a", encoding="utf-8") as handle:  # one line per write: a torn last line is skipped
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        fsync_file(path)

    def summary(self) -> dict[str, float]:
        """Run descriptors of this training's attempts so far, for the cell's metrics: ``train_attempts``,
        ``train_resumed_step`` (where this attempt began) and ``train_steps_redone`` (steps done after the last save
        of an earlier attempt that ended with a word; what a kill -9 lost is not known here)."""
        if self.folder is None:
            return {"train_attempts": 1.0, "train_resumed_step": 0.0, "train_steps_redone": 0.0}
        attempts = read_attempts(self.folder)
        redone = sum(a.steps_lost or 0 for a in attempts if a.attempt != self._attempt)
        return {"train_attempts": float(len(attempts)), "train_resumed_step": float(self.start_step),
                "train_steps_redone": float(redone)}


# ----------------------------------------------------------------------------------------------------------------
# Reading the attempt log, stopping the training from outside
# ----------------------------------------------------------------------------------------------------------------


def read_attempts(where: str | os.PathLike[str]) -> list[Attempt]:
    """The attempts recorded in ``where/attempts.jsonl`` (or in the log file ``where``, e.g. the copy a complete
    cell keeps), oldest first; a torn or foreign line is skipped."""
    path = Path(where) if Path(where).is_file() else Path(where) / ATTEMPTS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    attempts: dict[str, Attempt] = {}
    for line in lines:
        try:
            event = json.loads(line)
            key, kind = str(event["attempt"]), event["event"]
        except (ValueError, KeyError, TypeError):
            continue
        if kind == "start":
            attempts[key] = Attempt(key, int(event["step"]), int(event["step"]), host=event.get("host", ""),
                                    pid=int(event.get("pid", 0)), world_size=int(event.get("world_size", 1)))
        elif key in attempts and kind == "save":
            attempts[key].saves.append(int(event["step"]))
            attempts[key].saved_step = int(event["step"])
        elif key in attempts and kind == "end":
            attempts[key].end_step = int(event["step"])
            attempts[key].why = str(event.get("why", ""))
    return list(attempts.values())


def stop_training(folder: str | os.PathLike[str], wait_s: float, poll_s: float = 0.2,
                  leave_request: bool = False) -> tuple[int, int]:
    """Ask the training processes registered in ``folder`` on this host to save and stop; wait for them.

    Sends :data:`STOP_SIGNAL` to each (a pid is signalled only while it is still the process that registered),
    then waits up to ``wait_s`` seconds for all of them to end. With ``leave_request``, a stop request stays in
    the folder for as long as this process runs, so a training that registers after the signals went out stops
    at its first step too (a Slurm job's checkpoint: the job ends right after). Returns (processes signalled,
    still running).
    """
    folder = Path(folder)
    if leave_request and folder.is_dir():
        write_json(folder / STOP_REQUEST_FILE, {"pid": os.getpid(), "start": process_start_time(os.getpid()),
                                                "host": socket.gethostname(), "time": time.time()})
    running = registered_pids(folder)
    signalled = []
    for pid in running:
        try:
            os.kill(pid, STOP_SIGNAL)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + max(0.0, wait_s)
    alive = list(signalled)
    while alive and time.monotonic() < deadline:
        time.sleep(poll_s)
        alive = [pid for pid in alive if same_process_running(pid, None)]
    return len(signalled), len(alive)


def stop_request_pending(folder: str | os.PathLike[str]) -> bool:
    """A stop request whose requester still runs on this host (a stale one is removed)."""
    path = Path(folder) / STOP_REQUEST_FILE
    if not path.exists():
        return False
    try:
        info = json.loads(path.read_text())
        live = info["host"] == socket.gethostname() and same_process_running(int(info["pid"]), info.get("start"))
    except (OSError, ValueError, KeyError, TypeError):
        live = False
    if not live:
        path.unlink(missing_ok=True)
    return live


def registered_pids(folder: str | os.PathLike[str]) -> list[int]:
    """Training processes registered in ``folder`` that run on this host now (stale entries are removed)."""
    pids = []
    for entry in sorted((Path(folder) / PIDS_FOLDER).glob("*.json")):
        try:
            info = json.loads(entry.read_text())
            pid, host, start = int(info["pid"]), info["host"], info.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            continue
        if same_process_running(pid, start):
            pids.append(pid)
        else:
            entry.unlink(missing_ok=True)  # killed without unregistering
    return pids


def _register(folder: Path, rank: int) -> Path:
    registry = folder / PIDS_FOLDER
    registry.mkdir(parents=True, exist_ok=True)
    registered_pids(folder)  # clears entries of processes that are gone
    entry = registry / f"{socket.gethostname()}-{os.getpid()}.json"
    write_json(entry, {"pid": os.getpid(), "start": process_start_time(os.getpid()), "host": socket.gethostname(),
                       "rank": rank})
    return entry


# ----------------------------------------------------------------------------------------------------------------
# RNG states and loading
# ----------------------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy's global, torch CPU, the current CUDA device when in use), in
    types ``torch.load(weights_only=True)`` reads back."""
    import numpy as np
    import torch

    _, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _load(path: Path) -> dict[str, Any]:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT or "step" not in payload:
        raise ValueError(f"{path.name} is not a training state of format {STATE_FORMAT}")
    return payload


def _short(identity: Any, limit: int = 160) -> str:
    """An identity as one short line for a message."""
    text = json.dumps(identity, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unwrap(model: Any) -> Any:
    """The module whose state is saved: DDP's ``.module``, ``torch.compile``'s ``_orig_mod``."""
    for _ in range(3):
        if model is None:
            return None
        if type(model).__name__ == "DistributedDataParallel":
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    return model
