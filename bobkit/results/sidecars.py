"""The record formats, as the stages above the batch read them.

Sidecars (``runs/<task>/<run_key>/metrics.json``) are written by the batch and defined in
:mod:`bobkit.batch.sidecars`; the task output a notebook hands to the runner (``task_metrics.json``) is defined in
:mod:`bobkit.tasks.output`. This module only gathers both for the results, analysis and report stages.
"""

from bobkit.batch.sidecars import (
    NOTEBOOK,
    SCHEMA_VERSION,
    SIDECAR,
    SidecarRecord,
    SidecarScan,
    is_complete,
    is_current,
    iter_sidecars,
    read_sidecar,
    record_verdict,
    scan_sidecars,
    sidecar_problem,
    validation_problem,
    write_sidecar,
)
from bobkit.tasks.output import (
    COUNT_PREFIX,
    NON_SCORE_KEYS,
    NON_SCORE_PREFIXES,
    NON_SCORE_SUFFIXES,
    STDERR_PREFIX,
    TASK_OUTPUT,
    TASK_OUTPUT_FORMAT,
    TaskOutput,
    parse_task_output,
    save_cell_metrics,
    split_metrics,
    task_output,
)

__all__ = [
    "COUNT_PREFIX", "NON_SCORE_KEYS", "NON_SCORE_PREFIXES", "NON_SCORE_SUFFIXES", "NOTEBOOK", "SCHEMA_VERSION",
    "SIDECAR", "STDERR_PREFIX", "TASK_OUTPUT", "TASK_OUTPUT_FORMAT", "SidecarRecord", "SidecarScan", "TaskOutput",
    "is_complete", "is_current", "iter_sidecars", "parse_task_output", "read_sidecar", "record_verdict",
    "save_cell_metrics", "scan_sidecars", "sidecar_problem", "split_metrics", "task_output", "validation_problem",
    "write_sidecar",
]
