"""Was a process killed for memory? The kernel's OOM-kill counter of this process's cgroup (Linux).

Kept free of torch so the batch runner can ask it about every cell at no cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _cgroup_memory_files() -> list[Path]:
    """This process's cgroup files that count OOM kills: v2 ``memory.events``, v1 ``memory.oom_control``."""
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # cgroup v2 (unified)
            files.append(Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "memory.oom_control")
            files.append(Path("/sys/fs/cgroup/memory/memory.oom_control"))  # a container's own view
    return files


def oom_kill_count(files: Sequence[Path] | None = None) -> int | None:
    """How many processes the kernel's OOM killer has killed in this cgroup so far (None when unknown).

    A kernel that dies while this count rises was killed for memory, not by a bug: the runner records it as
    ``oom`` (and retries it at half the batch size) instead of ``dead_kernel``.
    """
    for path in files if files is not None else _cgroup_memory_files():
        try:
            for line in Path(path).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None
