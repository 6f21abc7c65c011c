"""Per-cell claims: an atomically created file that says who is running a cell.

``O_CREAT | O_EXCL`` makes the claim atomic, so two batches on one runs folder never run a cell twice. A claim
is stale when its process is gone (same host: the pid is dead, or was reused by a process that started later)
or its heartbeat is older than ``stale_after`` seconds (another host, e.g. a preempted Slurm job); a stale claim
is broken by renaming it away first, so only one taker wins.

A claim can be handed over: a Slurm job that is preempted keeps its claim on disk (:meth:`Claim.hand_over`) and
the requeued job adopts it by token (``try_claim(..., adopt_token=...)``), so no other batch slips in between.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLAIM = ".claim"
HEARTBEAT_SECONDS = 30.0


@dataclass
class Claim:
    """A held claim; keep it alive with :meth:`start_heartbeat` and give it back with :meth:`release`."""

    path: Path
    token: str
    _stop: threading.Event | None = field(default=None, repr=False)
    _handed_over: bool = False

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> None:
        """Touch the claim file periodically so other hosts can tell it is alive."""
        self._stop = threading.Event()
        stop = self._stop

        def beat() -> None:
            while not stop.wait(every):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{self.path.parent.name}").start()

    def still_ours(self) -> bool:
        """True when the claim file still carries this claim's token (nobody broke it as stale)."""
        info = read_claim(self.path.parent)
        return info is not None and info.get("token") == self.token

    def hand_over(self) -> str:
        """Keep the claim file on :meth:`release` (for a requeued job to adopt); returns the token to adopt."""
        self._handed_over = True
        return self.token

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still ours (and was not handed over)."""
        if self._stop is not None:
            self._stop.set()
        if self._handed_over:
            return
        if self.still_ours():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def read_claim(run_dir: Path) -> dict[str, Any] | None:
    """The claim's content plus its ``mtime``, or ``None`` when there is none (or it is being written)."""
    try:
        path = Path(run_dir) / CLAIM
        info = json.loads(path.read_text())
        info["mtime"] = path.stat().st_mtime
        return info
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(info: dict[str, Any], stale_after: float) -> bool:
    """A claim whose process is gone (this host) or whose heartbeat stopped (any host)."""
    if info.get("host") == socket.gethostname() and not _same_process_alive(info):
        return True
    return time.time() - float(info.get("mtime", 0)) > stale_after


def try_claim(run_dir: Path, stale_after: float = 3600.0, adopt_token: str | None = None) -> Claim | None:
    """Claim ``run_dir`` for this process, breaking a stale claim; ``None`` when someone live holds it.

    Parameters
    ----------
    run_dir
        The cell's run folder (created if missing).
    stale_after
        Seconds without a heartbeat after which a claim from another host counts as abandoned.
    adopt_token
        Token of a claim handed over by an earlier job of this same cell (a requeue): a claim with this token is
        taken over even when it looks alive.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The flock serialises check-and-break between processes of this host; O_EXCL covers the rest.
    with open(run_dir / f"{CLAIM}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _claim_locked(run_dir, stale_after, adopt_token)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _claim_locked(run_dir: Path, stale_after: float, adopt_token: str | None) -> Claim | None:
    path = run_dir / CLAIM
    for _ in range(3):
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_claim(run_dir)
            if info is None:
                # Claim being written this instant (another host), or just released: look once more.
                time.sleep(0.05)
                info = read_claim(run_dir)
                if info is None:
                    continue
            adopt = adopt_token is not None and info.get("token") == adopt_token
            if not adopt and not is_stale(info, stale_after):
                return None
            _break_stale(path, info)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(_claim_content(token), handle)
        return Claim(path, token)
    return None


def _claim_content(token: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()),
        "token": token,
        "started": time.time(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _break_stale(path: Path, info: dict[str, Any]) -> None:
    """Rename a stale claim away (atomic), but only if it is still the same stale claim."""
    current = read_claim(path.parent)
    if current is None or current.get("token") != info.get("token"):
        return
    try:
        os.replace(path, path.with_name(f"{CLAIM}.stale-{uuid.uuid4().hex[:8]}"))
    except FileNotFoundError:
        pass


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), telling a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of the file, 20th after "pid (comm)"


def _same_process_alive(info: dict[str, Any]) -> bool:
    """The claim's pid is alive and (where recorded) is still the process that wrote the claim."""
    pid = int(info.get("pid", -1))
    if not _pid_alive(pid):
        return False
    recorded = info.get("pid_start")
    return recorded is None or process_start_time(pid) in (None, recorded)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
