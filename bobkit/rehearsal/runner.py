"""``bob rehearse``: every distinct code path of a grid, in miniature, before any real run.

First the architecture groups on the meta device (every architecture at its real input size, seconds each), then
the pipeline groups end to end on the stand-ins (:mod:`bobkit.rehearsal.cells`), all inside a private
environment (:mod:`bobkit.rehearsal.environment`). A failure is recorded with its group and the first line of
its error, and the rehearsal goes on; the table lists every group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from bobkit.rehearsal.architectures import check_arch_group
from bobkit.rehearsal.cells import Outcome, first_line, run_group
from bobkit.rehearsal.environment import rehearsal_environment
from bobkit.rehearsal.groups import arch_groups, cell_groups
from bobkit.rehearsal.standins import Writer
from bobkit.rehearsal.twins import random_twins
from bobkit.utils.progress import progress_bar

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell


@dataclass
class Rehearsal:
    """Outcomes of every group, the cells they stand for, and the run's wall time."""

    cells: int
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    standins: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.failed


def _timed(label: str, kind: str, cells: int, work: Callable[[], object]) -> Outcome:
    start = time.perf_counter()
    try:
        work()
    except Exception as exc:  # a failing group is the finding: record it and go on with the others
        return Outcome(label, kind, cells, False, first_line(exc), time.perf_counter() - start)
    return Outcome(label, kind, cells, True, "", time.perf_counter() - start)


def rehearse(cells: Iterable[Cell], *, by: str = "family", threads: int = 1, keep: Path | None = None,
             overrides: Mapping[str, Writer] | None = None, progress: bool = True,
             on_outcome: Callable[[Outcome], None] | None = None) -> Rehearsal:
    """Rehearse ``cells``: architecture groups on the meta device, then pipeline groups on the stand-ins.

    Parameters
    ----------
    cells
        A grid's cells (:func:`bobkit.batch.grid.load_grid`).
    by
        ``family`` (default) or ``architecture``: what besides task, protocol and loaders makes a pipeline group.
    threads
        Torch threads of the rehearsed cells (1 is fastest on a few shared cores).
    keep
        Leave the stand-ins, caches and task outputs in this new folder.
    overrides
        Replacement stand-in writers by dataset name (to plant a wrong layout).
    progress
        Show a progress bar.
    on_outcome
        Called with each outcome as it is known (the command prints failures as they happen).
    """
    cells = list(cells)
    start = time.perf_counter()
    pipeline = cell_groups(cells, by=by)
    architectures = arch_groups(cells)
    result = Rehearsal(len(cells))
    datasets = {name for group in pipeline for name in group.datasets}
    names = {c.params["backbone"] for c in cells if "backbone" in c.params}
    bar = progress_bar(len(pipeline) + len(architectures), "rehearsal", unit="group", enabled=progress)

    def record(outcome: Outcome) -> None:
        result.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if bar is not None:
            bar.update(1)

    with rehearsal_environment(datasets, keep=keep, overrides=overrides) as env, random_twins(names) as twin:
        result.standins = env.written
        for group in architectures:
            record(_timed(group.label, "arch", group.cells, lambda g=group: check_arch_group(g, twin)))
        for index, group in enumerate(pipeline):
            out_dir = env.root / "outputs" / f"{index:03d}-{group.task}"
            record(_timed(group.label, "cell", len(group.cells),
                          lambda g=group, d=out_dir: run_group(g, twin, d, threads=threads)))
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def format_table(rehearsal: Rehearsal, width: int = 110) -> str:
    """The rehearsal table: one row per group (result, cells it stands for, seconds, the error's first line)."""
    rows = [("group", "result", "cells", "s", "error")]
    for o in rehearsal.outcomes:
        error = o.error if len(o.error) <= width else o.error[: width - 3] + "..."
        rows.append((o.label, "passed" if o.passed else "FAILED", str(o.cells), f"{o.seconds:.1f}", error))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + ("  " + r[4] if r[4] else "") for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    arch = [o for o in rehearsal.outcomes if o.kind == "arch"]
    cell = [o for o in rehearsal.outcomes if o.kind == "cell"]
    lines.append("")
    lines.append(f"{rehearsal.cells} cells in {len(cell)} pipeline groups and {len(arch)} architecture groups: "
                 f"{len(rehearsal.outcomes) - len(rehearsal.failed)} passed, {len(rehearsal.failed)} failed "
                 f"({rehearsal.seconds:.0f} s); stand-ins: {', '.join(rehearsal.standins) or 'none'}")
    return "\n".join(lines)
