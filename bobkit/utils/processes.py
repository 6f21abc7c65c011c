"""Processes on this machine (Linux ``/proc``): is a recorded pid still the process that wrote it, has it ended.

Claims (:mod:`bobkit.batch.claims`) and the training state's registry of training processes
(:mod:`bobkit.tasks.train_state`) record ``(pid, start time)`` pairs; a pid the kernel has handed to another
process since has a different start time, so it is never signalled or trusted by mistake.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), telling a reused pid from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None  # field 22 of the file, 20th after "pid (comm)"


def pid_alive(pid: int) -> bool:
    """A process with this pid exists (a zombie counts: it has not been waited for)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_running(pid: int) -> bool:
    """``pid`` exists and has not ended: a zombie (exited, not yet waited for by its parent) counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return pid_alive(pid) if not Path("/proc/self/stat").exists() else False
    state = stat[stat.rindex(")") + 2:].split()[:1]
    return state not in (["Z"], ["X"])


def same_process_running(pid: int, start_time: str | None) -> bool:
    """``pid`` is running and (where ``start_time`` was recorded) is still the process that recorded it."""
    if not process_running(pid):
        return False
    return start_time is None or process_start_time(pid) in (None, start_time)
