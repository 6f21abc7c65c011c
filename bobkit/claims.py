"""Per-cell claims: an atomically created file that says who is running a cell.

``O_CREAT | O_EXCL`` makes the claim atomic, so two batches on one runs folder never run a cell twice. A claim
is stale when its process is gone (same host) or its heartbeat is older than ``stale_after`` seconds (another
host, e.g. a preempted Slurm job); a stale claim is broken by renaming it away first, so only one taker wins.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLAIM = ".claim"
HEARTBEAT_SECONDS = 30.0


@dataclass
class Claim:
    """A held claim; keep it alive with :meth:`start_heartbeat` and give it back with :meth:`release`."""

    path: Path
    token: str
    _stop: threading.Event | None = None

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS) -> None:
        """Touch the claim file periodically so other hosts can tell it is alive."""
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(every):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{self.path.parent.name}").start()

    def still_ours(self) -> bool:
        """True when the claim file still carries this claim's token (nobody broke it as stale)."""
        info = read_claim(self.path.parent)
        return info is not None and info.get("token") == self.token

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still ours."""
        if self._stop is not None:
            self._stop.set()
        if self.still_ours():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def read_claim(run_dir: Path) -> dict[str, Any] | None:
    """The claim's content, or ``None`` when there is none (or it is being written)."""
    try:
        info = json.loads((run_dir / CLAIM).read_text())
        info["mtime"] = (run_dir / CLAIM).stat().st_mtime
        return info
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(info: dict[str, Any], stale_after: float) -> bool:
    """A claim whose process is dead (this host) or whose heartbeat stopped (any host)."""
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return True
    return time.time() - float(info.get("mtime", 0)) > stale_after


def try_claim(run_dir: Path, stale_after: float = 3600.0) -> Claim | None:
    """Claim ``run_dir`` for this process, breaking a stale claim; ``None`` when someone live holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # The flock serialises check-and-break between processes of this host; O_EXCL covers the rest.
    with open(run_dir / f"{CLAIM}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _claim_locked(run_dir, stale_after)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _claim_locked(run_dir: Path, stale_after: float) -> Claim | None:
    path = run_dir / CLAIM
    for _ in range(2):
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_claim(run_dir)
            if info is None:
                # Claim being written this instant, or just released: let the other side have it.
                time.sleep(0.05)
                info = read_claim(run_dir)
                if info is None:
                    continue
            if not is_stale(info, stale_after):
                return None
            _break_stale(path, info)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": token, "started": time.time()}, handle)
        return Claim(path, token)
    return None


def _break_stale(path: Path, info: dict[str, Any]) -> None:
    """Rename a stale claim away (atomic), but only if it is still the same stale claim."""
    current = read_claim(path.parent)
    if current is None or current.get("token") != info.get("token"):
        return
    try:
        os.replace(path, path.with_name(f"{CLAIM}.stale-{uuid.uuid4().hex[:8]}"))
    except FileNotFoundError:
        pass


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
