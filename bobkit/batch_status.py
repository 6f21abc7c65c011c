"""``bob status``: where a grid stands in a runs folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bobkit.grid import Cell, load_grid
from bobkit.results import read_sidecar
from bobkit.runner import cell_state, run_dir_of

STATES = ("done", "failed", "running", "pending")


@dataclass
class GridStatus:
    """Cells of a grid grouped by state, with the first error line of each failure."""

    cells: dict[str, list[Cell]] = field(default_factory=lambda: {s: [] for s in STATES})
    errors: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {state: len(cells) for state, cells in self.cells.items()}


def grid_status(params: str | Path, runs_dir: str | Path = "runs") -> GridStatus:
    """Read every cell's state from ``runs_dir``."""
    status = GridStatus()
    for cell in load_grid(params):
        state = cell_state(cell, Path(runs_dir))
        status.cells[state].append(cell)
        if state == "failed":
            sidecar = read_sidecar(run_dir_of(cell, Path(runs_dir))) or {}
            message = (sidecar.get("error") or {}).get("message") or "unknown error"
            status.errors[cell.run_key] = message.splitlines()[0] if message else "unknown error"
    return status


def format_status(status: GridStatus, params: str | Path, runs_dir: str | Path = "runs") -> str:
    """Human-readable status with the command that re-runs only the failures."""
    counts = status.counts()
    lines = [f"{params}: " + ", ".join(f"{counts[s]} {s}" for s in STATES)]
    for cell in status.cells["failed"]:
        lines.append(f"  failed {cell.run_key} {cell.label}: {status.errors[cell.run_key]}")
    if counts["failed"]:
        extra = "" if str(runs_dir) == "runs" else f" --runs-dir {runs_dir}"
        lines.append(f"re-run the failures: bob run {params} --only-failed{extra}")
    return "\n".join(lines)
