"""Runner and Slurm resources of a cell, checked before anything runs.

Resource values end up in a Slurm batch script (``#SBATCH --partition=...``) and in timeouts, so each is checked
here: names against a safe pattern (a newline in a partition would end the ``#SBATCH`` line and run the rest as
shell on the compute node), numbers finite, in range and of the right type (a boolean is not a number).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from bobkit.utils.text import short_repr


class ResourceError(ValueError):
    """A resources mapping with an unknown key or a bad value; the message names both."""


@dataclass(frozen=True)
class NumberRule:
    """Bounds of one numeric resource (inclusive); ``integer`` rejects fractions."""

    low: float
    high: float
    integer: bool


NAME_PATTERN = re.compile(r"[\w,.-]+", re.ASCII)  # fullmatch: "$" would let a trailing newline through
NAME_MAX_CHARS = 128
NUMBER_RULES: dict[str, NumberRule] = {
    "timeout_min": NumberRule(low=1 / 60, high=7 * 24 * 60, integer=False),  # 1 s .. 7 days
    "gpus": NumberRule(low=0, high=64, integer=True),
    "cpus": NumberRule(low=1, high=1024, integer=True),
    "mem_gb": NumberRule(low=0.001, high=16384, integer=False),
    "slurm_array_parallelism": NumberRule(low=1, high=100_000, integer=True),
    # Training processes of a data-parallel cell on one node (default: gpus when > 0, else 1).
    "processes": NumberRule(low=1, high=64, integer=True),
    # Slurm: how many times a cell's job is requeued after its time limit (submitit's max_num_timeout).
    "max_requeues": NumberRule(low=0, high=1000, integer=True),
    # Slurm: the job's time limit is timeout_min plus this margin (kernel start, papermill, the sidecar).
    "job_margin_min": NumberRule(low=0, high=24 * 60, integer=False),
    # Slurm: USR2 comes this long before the job's time limit (the training saves, then the job requeues).
    "signal_delay_s": NumberRule(low=0, high=65_535, integer=True),
}
NAME_KEYS = frozenset({"partition"})
# Keys that may be left empty (``partition:`` in YAML is null): the cluster's default applies.
OPTIONAL_KEYS = frozenset({"partition", "slurm_array_parallelism", "processes", "max_requeues", "job_margin_min",
                           "signal_delay_s"})
RESOURCE_KEYS = frozenset(NUMBER_RULES) | NAME_KEYS
DEFAULT_RESOURCES: dict[str, Any] = {"timeout_min": 60, "gpus": 0, "cpus": 2, "mem_gb": 16}
#: Defaults of the Slurm time-limit resources (not written into every cell's resources: cells keep what they declare).
DEFAULT_MAX_REQUEUES = 3
DEFAULT_JOB_MARGIN_MIN = 5.0
DEFAULT_SIGNAL_DELAY_S = 120


def processes_of(resources: Mapping[str, Any]) -> int:
    """Training processes of a cell: ``processes`` when declared, else ``gpus`` when > 0, else 1."""
    if resources.get("processes"):
        return int(resources["processes"])
    gpus = int(resources.get("gpus") or 0)
    return gpus if gpus > 0 else 1


def max_requeues_of(resources: Mapping[str, Any]) -> int:
    """How many times Slurm may requeue the cell's job after its time limit."""
    value = resources.get("max_requeues")
    return DEFAULT_MAX_REQUEUES if value is None else int(value)


def job_margin_min_of(resources: Mapping[str, Any]) -> float:
    """Minutes added to ``timeout_min`` for the Slurm job's time limit."""
    value = resources.get("job_margin_min")
    return DEFAULT_JOB_MARGIN_MIN if value is None else float(value)


def signal_delay_s_of(resources: Mapping[str, Any]) -> int:
    """Seconds before the job's time limit at which Slurm sends USR2."""
    value = resources.get("signal_delay_s")
    return DEFAULT_SIGNAL_DELAY_S if value is None else int(value)


def check_resources(resources: Any, where: str) -> None:
    """Raise :class:`ResourceError` naming the first unknown key or bad value of ``resources``.

    Parameters
    ----------
    resources
        A mapping of resource names (:data:`RESOURCE_KEYS`) to values.
    where
        The file and block the mapping comes from, for the message.
    """
    if not isinstance(resources, Mapping):
        raise ResourceError(f"{where}: 'resources' must be a mapping, got {short_repr(resources)}")
    unknown = set(resources) - RESOURCE_KEYS
    if unknown:
        raise ResourceError(f"{where}: unknown resource key(s) {sorted(map(str, unknown))}; "
                            f"known: {sorted(RESOURCE_KEYS)}")
    for key, value in resources.items():
        if value is None and key in OPTIONAL_KEYS:
            continue
        problem = _name_problem(value) if key in NAME_KEYS else _number_problem(value, NUMBER_RULES[key])
        if problem:
            raise ResourceError(f"{where}: resource {key}={short_repr(value)} {problem}")
    _check_processes(resources, where)


def _check_processes(resources: Mapping[str, Any], where: str) -> None:
    """``processes`` against ``gpus`` where the mapping holds both: one process per GPU."""
    processes, gpus = resources.get("processes"), resources.get("gpus")
    if processes is not None and gpus and processes != gpus:
        raise ResourceError(f"{where}: resources processes={processes} and gpus={gpus} differ: a data-parallel cell "
                            "runs one process per GPU (leave processes out to take gpus)")


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a name (a string)"
    if len(value) > NAME_MAX_CHARS:
        return f"is longer than {NAME_MAX_CHARS} characters"
    if not NAME_PATTERN.fullmatch(value):
        return "may hold only letters, digits, '_', ',', '.' and '-'"
    return None


def _number_problem(value: Any, rule: NumberRule) -> str | None:
    kind = "an integer" if rule.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {kind}"
    if not math.isfinite(value):
        return "must be finite"
    if rule.integer and value != int(value):
        return f"must be {kind}"
    if not rule.low <= value <= rule.high:
        return f"must be between {rule.low:g} and {rule.high:g}"
    return None
