"""What a cell's sidecar records: one builder for the runner's records and for jobs that died outside it.

Beside the scores, a record says which cell it is (``params``, ``identity``: the cell without the code), which
code made it (``code_version`` and the per-file hashes behind it, so ``bob status`` can say what changed), what
was measured (``setting_params``, ``stderr``, ``n_items``, ``higher_is_better``, ``primary``) and how it ran where
that can move a number (``device``, ``batch_size_used`` after an out-of-memory retry).
"""

from __future__ import annotations

import time
from typing import Any

from bobkit.batch import codehash, provenance
from bobkit.batch.grid import Cell, cell_identity, result_params
from bobkit.tasks.output import TaskOutput, higher_is_better

# Parameters that say which backbone or which repetition, not what is measured.
NOT_SETTING_PARAMS = frozenset({"backbone", "seed"})


def setting_params_of(params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter that changes what is measured: all but backbone, seed and the execution parameters."""
    return {k: v for k, v in sorted(result_params(params).items()) if k not in NOT_SETTING_PARAMS}


def device_label(prov: dict[str, Any], descriptors: dict[str, Any]) -> str:
    """``cpu`` or ``cuda:<GPU model>``: what the cell ran on (the task's own ``exec_cuda`` report wins)."""
    recorded = str(prov.get("device") or "cpu")
    kind, _, model = recorded.partition(": ")
    cuda = descriptors.get("exec_cuda")
    if cuda is not None:
        kind = "cuda" if float(cuda) else "cpu"
    if kind == "cuda":
        return f"cuda:{model}" if recorded.startswith("cuda") and model else "cuda"
    return "cpu"


def identity_fields(cell: Cell) -> dict[str, Any]:
    """The fields that name a cell and the code that made its record."""
    return {
        "run_key": cell.run_key, "task": cell.task, "label": cell.label, "params": cell.params,
        "identity": cell_identity(cell.task, cell.params), "code_version": codehash.code_version(cell.task),
        "code_files": codehash.task_code_files(cell.task), "resources": cell.resources, "source": cell.source,
    }


def cell_record(
    cell: Cell,
    *,
    output: TaskOutput | None,
    params_used: dict[str, Any],
    prov: dict[str, Any],
    error: dict[str, Any] | None,
    started: float,
    **extra: Any,
) -> dict[str, Any]:
    """A complete sidecar: ``output`` for a cell that finished, ``error`` for one that failed.

    Parameters
    ----------
    cell
        The cell the record is about.
    output
        The task's output (``None`` when the cell failed).
    params_used
        The parameters the last attempt ran with (``batch_size`` halved after an out-of-memory retry).
    prov
        Provenance of the run (:func:`bobkit.batch.provenance.collect`).
    error
        ``{"kind", "message", "output_tail"}`` for a failed cell, else ``None``.
    started
        When the cell started (epoch seconds).
    extra
        Further fields (``attempts``, ``runner``, ``timings``, ``history``...).
    """
    output = output or TaskOutput()
    setting = output.setting_params if output.setting_params is not None else setting_params_of(cell.params)
    reported_batch = output.descriptors.get("batch_size_used")
    batch_size_used = reported_batch if reported_batch is not None else params_used.get("batch_size")
    record: dict[str, Any] = {
        **identity_fields(cell),
        "params_used": params_used,
        "status": "complete" if error is None else "failed",
        "metrics": output.metrics if error is None else {},
        "stderr": output.stderr if error is None else {},
        "n_items": output.n_items if error is None else {},
        "higher_is_better": {m: bool(output.higher_is_better.get(m, higher_is_better(m))) for m in output.metrics},
        "primary": output.primary,
        "setting_params": setting,
        "device": device_label(prov, output.descriptors),
        "batch_size_used": batch_size_used,
        "provenance": prov,
        "error": error,
        "started": started,
        "wall_seconds": time.time() - started,
    }
    record.update(extra)
    return record


def job_failure_record(cell: Cell, error: dict[str, Any], runner: dict[str, Any]) -> dict[str, Any]:
    """The record of a cell whose job died outside the runner (killed, out of time too often)."""
    return cell_record(cell, output=None, params_used=cell.params, prov=provenance.collect({}, cell.params),
                       error=error, started=time.time(), attempts=[], runner=runner, timings={}, history=[])
