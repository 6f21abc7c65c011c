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
}
NAME_KEYS = frozenset({"partition"})
# Keys that may be left empty (``partition:`` in YAML is null): the cluster's default applies.
OPTIONAL_KEYS = frozenset({"partition", "slurm_array_parallelism"})
RESOURCE_KEYS = frozenset(NUMBER_RULES) | NAME_KEYS
DEFAULT_RESOURCES: dict[str, Any] = {"timeout_min": 60, "gpus": 0, "cpus": 2, "mem_gb": 16}


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
