"""Records made by other code: sidecars whose code version is not the current one.

A run key hashes the cell and the code behind it (:func:`bobkit.batch.grid.run_key`), so after a code change a
cell has a new key and its old record stays under the old one. Such a record is *stale*: ``bob status`` finds it
through the cell's identity (the key without the code) and says what changed; ``bob build`` leaves it out of the
table unless asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bobkit.batch import codehash
from bobkit.batch.grid import cell_identity
from bobkit.batch.sidecars import current_code_version, is_current, record_verdict, scan_sidecars

__all__ = ["OlderRecord", "current_code_version", "is_current", "older_records", "record_identity"]


@dataclass(frozen=True)
class OlderRecord:
    """A complete record of a cell made by other code."""

    run_key: str
    code_version: str | None
    changed: tuple[str, ...]

    def describe(self) -> str:
        """``made by other code (run key K; changed: a, b)``."""
        what = f"; changed: {', '.join(self.changed)}" if self.changed else ""
        return f"made by other code (run key {self.run_key}{what})"


def record_identity(sidecar: dict[str, Any]) -> str | None:
    """The identity a record was made for (recorded, or computed from its parameters for older records)."""
    if sidecar.get("identity"):
        return str(sidecar["identity"])
    params = sidecar.get("params")
    return cell_identity(str(sidecar.get("task")), params) if isinstance(params, dict) else None


def older_records(runs_dir: str | os.PathLike[str], task: str) -> dict[str, OlderRecord]:
    """``{identity: OlderRecord}`` of the complete records of ``task`` made by other code.

    Where a cell has several, the newest (by its ``started`` time) stands for it: what changed since then is what
    ``bob status`` names.
    """
    current_files = _current_files(task)
    found: dict[str, OlderRecord] = {}
    started: dict[str, float] = {}
    for path, sidecar in scan_sidecars(runs_dir, task).sidecars:
        identity = record_identity(sidecar)
        if identity is None or record_verdict(path.parent, sidecar) != "stale":
            continue
        when = float(sidecar.get("started") or 0.0)
        if identity in started and when < started[identity]:
            continue
        started[identity] = when
        old_files = sidecar.get("code_files") if isinstance(sidecar.get("code_files"), dict) else {}
        changed = tuple(codehash.changed_files(old_files, current_files)) if old_files else ()
        found[identity] = OlderRecord(Path(path).parent.name, sidecar.get("code_version"), changed)
    return found


def _current_files(task: str) -> dict[str, str]:
    try:
        return codehash.task_code_files(task)
    except ValueError:
        return {}
