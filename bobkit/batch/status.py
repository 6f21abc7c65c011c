"""``bob status``: where a grid stands in a runs folder, read from sidecars and claims (and, for cells sent to
Slurm, Slurm's own view beside them: :func:`slurm_lines`).

A pending cell that needs an artifact another cell of the grid provides and that is not done yet is shown as
waiting for that cell (``waiting for <producer label>``; :func:`bobkit.batch.grid.artifact_links`).

A cell is ``done`` (complete sidecar and executed notebook), ``failed``, ``running`` (a live claim), ``pending``,
or ``stale``: pending under the current code while a complete record of it made by other code exists (see
:mod:`bobkit.batch.stale`). Unreadable sidecars are listed, never fatal.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bobkit.batch.claims import UNREADABLE_GRACE_SECONDS, read_claim
from bobkit.batch.grid import Cell, artifact_links, cell_identity, load_grid, providers_of
from bobkit.batch.runner import cell_state, run_dir_of
from bobkit.batch.sidecars import read_sidecar, scan_sidecars
from bobkit.batch.stale import OlderRecord, older_records

STATES = ("done", "failed", "running", "pending", "stale")


@dataclass
class GridStatus:
    """Cells of a grid grouped by state, with the first error line (and kind) of each failure."""

    cells: dict[str, list[Cell]] = field(default_factory=lambda: {s: [] for s in STATES})
    errors: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    older: dict[str, OlderRecord] = field(default_factory=dict)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    #: Pending cells whose artifact providers are not done: run key -> (provider, its state).
    waits: dict[str, list[tuple[Cell, str]]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of cells per state."""
        return {state: len(cells) for state, cells in self.cells.items()}


def grid_status(params: str | Path, runs_dir: str | Path = "runs") -> GridStatus:
    """Read every cell's state from ``runs_dir``."""
    status = GridStatus()
    cells = load_grid(params)
    tasks = sorted({cell.task for cell in cells})
    older = {task: older_records(runs_dir, task) for task in tasks}
    for task in tasks:
        status.corrupt.extend(scan_sidecars(runs_dir, task).corrupt)
    for cell in cells:
        state = cell_state(cell, Path(runs_dir))
        record = older[cell.task].get(cell_identity(cell.task, cell.params)) if state == "pending" else None
        if record is not None:
            state = "stale"
            status.older[cell.run_key] = record
        status.cells[state].append(cell)
        run_dir = run_dir_of(cell, Path(runs_dir))
        if state == "failed":
            error = (read_sidecar(run_dir) or {}).get("error") or {}
            message = str(error.get("message") or "").strip()
            status.errors[cell.run_key] = message.splitlines()[0] if message else "unknown error"
            status.kinds[cell.run_key] = str(error.get("kind") or "exception")
        elif state == "running":
            status.where[cell.run_key] = claim_holder(read_claim(run_dir) or {})
    states = {c.run_key: s for s, group in status.cells.items() for c in group}
    links = artifact_links(cells)
    for cell in status.cells["pending"] + status.cells["stale"]:
        waits = [(provider, states.get(provider.run_key, "pending")) for provider in providers_of(links, cell)]
        waits = [(provider, state) for provider, state in waits if state != "done"]
        if waits:
            status.waits[cell.run_key] = waits
    return status


def claim_holder(claim: dict[str, Any]) -> str:
    """Who holds a claim: ``host pid N [job J]``, or how long an unreadable claim has been there."""
    if claim.get("unreadable"):
        age = max(0.0, time.time() - float(claim.get("mtime", 0)))
        return f"unreadable claim, {age:.0f} s old; broken as stale after {UNREADABLE_GRACE_SECONDS:.0f} s"
    job = f" job {claim['slurm_job_id']}" if claim.get("slurm_job_id") else ""
    return f"{claim.get('host', '?')} pid {claim.get('pid', '?')}{job}"


def rerun_command(params: str | Path, runs_dir: str | Path = "runs", only_failed: bool = True) -> str:
    """The command that re-runs the failed cells of ``params`` (or, ``only_failed=False``, every cell not done)."""
    args = ["bob", "run", str(params), *(["--only-failed"] if only_failed else [])]
    if str(runs_dir) != "runs":
        args += ["--runs-dir", str(runs_dir)]
    return shlex.join(args)


def format_status(status: GridStatus, params: str | Path, runs_dir: str | Path = "runs") -> str:
    """Human-readable status: counts, running cells, failures with kind and first error line, re-run command."""
    counts = status.counts()
    lines = [f"{params}: " + ", ".join(f"{counts[s]} {s}" for s in STATES)]
    for cell in status.cells["running"]:
        lines.append(f"  running {cell.run_key} {cell.label} ({status.where.get(cell.run_key, '?')})")
    for cell in status.cells["failed"]:
        kind = status.kinds.get(cell.run_key, "exception")
        lines.append(f"  failed {cell.run_key} {cell.label}: [{kind}] {status.errors[cell.run_key]}")
    for cell in status.cells["stale"]:
        lines.append(f"  stale {cell.run_key} {cell.label}: {status.older[cell.run_key].describe()}")
    for cell in status.cells["pending"] + status.cells["stale"]:
        for provider, state in status.waits.get(cell.run_key, []):
            lines.append(f"  waiting {cell.run_key} {cell.label}: waiting for {provider.label} ({provider.run_key}, "
                         f"{state})")
    for path, reason in status.corrupt:
        lines.append(f"  corrupt sidecar skipped: {path}: {reason}")
    if counts["failed"]:
        lines.append(f"re-run the failures: {rerun_command(params, runs_dir)}")
    if counts["stale"]:
        lines.append(f"re-run the stale cells with this code: {rerun_command(params, runs_dir, only_failed=False)}")
    lines.extend(slurm_lines(status, runs_dir))
    return "\n".join(lines)


def slurm_lines(status: GridStatus, runs_dir: str | Path = "runs") -> list[str]:
    """Slurm's own view (``squeue``/``sacct``) of the cells not done whose jobs went to Slurm; empty otherwise."""
    from bobkit.batch.scheduler import slurm_view

    cells = []
    for state in ("running", "pending", "failed"):
        for cell in status.cells[state]:
            run_dir = run_dir_of(cell, Path(runs_dir))
            claim = read_claim(run_dir) or {}
            cells.append((cell.run_key, cell.label, run_dir, claim.get("slurm_job_id")))
    return slurm_view(cells)
