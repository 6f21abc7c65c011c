"""Small helpers shared by the task modules."""

from __future__ import annotations

from typing import Any


def as_list(value: Any, cast: type) -> list[Any]:
    """A list parameter given as a list, a single value or a comma-separated string (YAML-grid friendly)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(v.strip()) if isinstance(v, str) else cast(v) for v in value]


def merge_params(task: str, defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` over the task's ``defaults``; an unknown name raises ``TypeError`` naming it."""
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(f"unknown {task} parameter(s): {', '.join(sorted(unknown))}")
    return {**defaults, **params}
