"""Per-cell claims: an atomically created file that says who is running a cell.

A claim is written complete into a temp file and then hard-linked into place (``link`` fails when the name
exists, also on NFS), so two batches on one runs folder never run a cell twice and a claim file is never empty
(a kill or a full disk between create and write leaves only a temp file). A claim is stale when its process is
gone (same host: the pid is dead, or was reused by a process that started later) or its heartbeat is older than
``stale_after`` seconds (another host, e.g. a preempted Slurm job). An unreadable claim (empty or not JSON: left by
older code, or by a process killed between create and write where hard links are missing) names no process to
check, and a whole claim is never unreadable, so it is stale after a short grace (:data:`UNREADABLE_GRACE_SECONDS`)
instead of blocking its cell for the cell's whole timeout.

A stale claim is broken by renaming it to a unique name and then checking that what was renamed is the claim judged
stale (same token, same file); anything else (another host's fresh claim) is put back, so a taker never removes a
live claim nor, under it, the live work folder.

A claim can be handed over: a Slurm job that is preempted keeps its claim on disk (:meth:`Claim.hand_over`) and
the requeued job adopts it by token (``try_claim(..., adopt_token=...)``), so no other batch slips in between.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bobkit.utils.processes import pid_alive, process_start_time

CLAIM = ".claim"
HEARTBEAT_SECONDS = 30.0
# After an error (ESTALE on NFS, a full disk) the heartbeat tries again this much sooner than its period.
HEARTBEAT_RETRY_SECONDS = 5.0
STALE_PREFIX = f"{CLAIM}.stale-"
#: How long an unreadable claim counts as live: a writer fills the claim file right after creating it.
UNREADABLE_GRACE_SECONDS = 10.0
# errno values of file systems that cannot hard-link (some FUSE mounts): claims then fall back to O_EXCL.
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """A held claim; keep it alive with :meth:`start_heartbeat` and give it back with :meth:`release`."""

    path: Path
    token: str
    _stop: threading.Event | None = field(default=None, repr=False)
    _handed_over: bool = False

    def start_heartbeat(self, every: float = HEARTBEAT_SECONDS, retry: float = HEARTBEAT_RETRY_SECONDS) -> None:
        """Touch the claim file every ``every`` seconds, while it is ours, so other hosts can tell it is alive.

        An error (``ESTALE`` on NFS, ``ENOSPC``...) or a claim briefly missing (another taker checking it, see
        :func:`_break_stale`) is logged and retried after ``retry`` seconds; the beat stops on :meth:`release` or
        once another claim holds the file (:meth:`still_ours` then says so too).
        """
        self._stop = threading.Event()
        stop = self._stop

        def beat() -> None:
            wait = every
            while not stop.wait(wait):
                wait = min(retry, every)
                try:
                    if self._beat_once():
                        wait = every
                    else:
                        log.warning("claim %s is held by another batch now; heartbeat stopped", self.path)
                        return
                except Exception as exc:  # noqa: BLE001 - a dead heartbeat would let others break a live claim
                    name = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
                    log.warning("heartbeat of claim %s failed (%s: %s); retrying in %.0f s", self.path, name, exc,
                                wait)

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{self.path.parent.name}").start()

    def _beat_once(self) -> bool:
        """Touch the claim if it is ours; ``False`` when another claim holds it, an error when it is missing."""
        info = read_claim(self.path.parent)
        if info is None:
            raise FileNotFoundError(errno.ENOENT, "claim missing", str(self.path))
        if info.get("token") != self.token:
            return False
        os.utime(self.path)
        return True

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
    """The claim of ``run_dir`` with its ``mtime`` and ``file`` identity, or ``None`` when there is none.

    A claim that cannot be read (empty, not JSON) comes back as ``{"unreadable": True, "mtime", "file"}``.
    """
    return _read_claim_file(Path(run_dir) / CLAIM)


def _read_claim_file(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            raw = handle.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw.decode("utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        info = {"unreadable": True}
    info["mtime"] = stat.st_mtime
    info["file"] = [stat.st_dev, stat.st_ino]
    return info


def is_stale(info: dict[str, Any], stale_after: float) -> bool:
    """A claim whose process is gone (this host) or whose heartbeat stopped (any host); an unreadable claim once it
    is older than :data:`UNREADABLE_GRACE_SECONDS` (or ``stale_after``, when that is shorter)."""
    age = time.time() - float(info.get("mtime", 0))
    if info.get("unreadable"):
        return age > min(stale_after, UNREADABLE_GRACE_SECONDS)
    if info.get("host") == socket.gethostname() and not _same_process_alive(info):
        return True
    return age > stale_after


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
        if _create_complete(path, token):
            return Claim(path, token)
        info = read_claim(run_dir)
        if info is None:
            continue  # released in between: try again
        adopt = adopt_token is not None and info.get("token") == adopt_token
        if not adopt and not is_stale(info, stale_after):
            return None
        _break_stale(path, info)
    return None


def _create_complete(path: Path, token: str) -> bool:
    """Create ``path`` holding this process's claim, complete, or return ``False`` when it exists.

    The content goes to a temp file first (fsynced), which is then hard-linked to ``path``: other readers see
    no claim or a whole one.
    """
    tmp = path.with_name(f".{CLAIM.lstrip('.')}.{token}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            json.dump(_claim_content(token), handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the holder's clean-up took our temp file: the cell is held
            return False
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            return _create_exclusive(path, token)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, token: str) -> bool:
    """``O_CREAT | O_EXCL`` then write: for file systems without hard links (a crash here leaves an unreadable
    claim, which turns stale like any other)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(_claim_content(token), handle)
    return True


def _claim_content(token: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start_time(os.getpid()),
        "token": token,
        "started": time.time(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _same_claim(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Two reads of a claim are the same claim: the same token, or (unreadable) the same file."""
    if b is None:
        return False
    if a.get("unreadable") or b.get("unreadable"):
        return bool(a.get("unreadable")) and bool(b.get("unreadable")) and a.get("file") == b.get("file")
    return a.get("token") == b.get("token")


def _break_stale(path: Path, judged: dict[str, Any]) -> bool:
    """Break the claim judged stale: rename it to a unique name, then check that the renamed file is that claim.

    Another host may have broken it and claimed afresh between our read and our rename; then the fresh claim is
    linked back into place (unless a third claim already took the name: its holder's :meth:`Claim.still_ours`
    fails and it records nothing). Returns ``True`` when the judged claim was removed.
    """
    aside = path.with_name(f"{STALE_PREFIX}{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if _same_claim(judged, _read_claim_file(aside)):
            return True
        try:
            os.link(aside, path)  # not the claim we judged: put the live one back
        except FileExistsError:
            log.warning("claim %s changed hands while being broken; its holder will find it lost", path)
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
            if not path.exists():  # best effort where hard links are missing
                os.rename(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def _same_process_alive(info: dict[str, Any]) -> bool:
    """The claim's pid is alive and (where recorded) is still the process that wrote the claim."""
    pid = int(info.get("pid", -1))
    if not pid_alive(pid):
        return False
    recorded = info.get("pid_start")
    return recorded is None or process_start_time(pid) in (None, recorded)
