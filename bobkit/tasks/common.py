"""Small helpers shared by the task modules."""

from __future__ import annotations

from typing import Any

from bobkit.features.device import PRECISIONS, Execution, execution_defaults, resolve_execution


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


# ------------------------------------------------------------------------------------------------------------
# Execution parameters (how fast, not what): the same five in every task's PARAMETERS
# ------------------------------------------------------------------------------------------------------------


#: Execution parameters (how fast, not what) shared by every task's PARAMETERS: None / "auto" take the
#: device's measured defaults (:func:`bobkit.features.device.resolve_execution`).
EXECUTION_PARAMETERS: dict[str, Any] = {
    "precision": "auto",
    "channels_last": None,
    "compile": False,
    "grad_checkpointing": False,
    "loader_workers": None,
}


def validate_execution_params(params: dict[str, Any]) -> None:
    """Reject bad execution parameters before anything runs, naming the value.

    Parameters
    ----------
    params : dict
        A task's merged parameters holding ``precision``, ``channels_last``, ``compile``, ``grad_checkpointing``
        and ``loader_workers``.

    Raises
    ------
    ValueError
        A precision outside :data:`bobkit.features.device.PRECISIONS`, a non-boolean flag, or a negative / non-integer
        ``loader_workers``.
    """
    if params["precision"] not in PRECISIONS:
        raise ValueError(f"precision={params['precision']!r} is not one of {PRECISIONS}")
    if params["channels_last"] is not None and not isinstance(params["channels_last"], bool):
        raise ValueError(f"channels_last={params['channels_last']!r} must be true, false or null (auto)")
    for name in ("compile", "grad_checkpointing"):
        if not isinstance(params[name], bool):
            raise ValueError(f"{name}={params[name]!r} must be true or false")
    workers = params["loader_workers"]
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"loader_workers={workers!r} must be a non-negative integer or null (auto)")


def resolve_task_execution(params: dict[str, Any]) -> Execution:
    """The :class:`~bobkit.features.device.Execution` of a task's (validated) parameters, ``auto`` resolved per device.

    ``channels_last=None`` stays unsettled (off) until :meth:`Execution.for_model` sees the model.
    """
    return resolve_execution(
        params["device"], params["precision"], channels_last=params["channels_last"], compile=params["compile"],
        loader_workers=params["loader_workers"], grad_checkpointing=params["grad_checkpointing"],
    )


def inference_batch_size(batch_size: int, execution: Execution) -> int:
    """Batch of a forward-only pass: at least the device's measured sweet spot (it does not change the outputs)."""
    return max(int(batch_size), int(execution_defaults(execution.device)["batch_size_hint"]))
