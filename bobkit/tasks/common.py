"""Small torch-side helpers shared by the task modules (their parameter declarations are in :mod:`.blocks`)."""

from __future__ import annotations

from typing import Any

from bobkit.features.device import Execution, execution_defaults, resolve_execution


def as_list(value: Any, cast: type) -> list[Any]:
    """A list parameter given as a list, a single value or a comma-separated string (YAML-grid friendly)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(v.strip()) if isinstance(v, str) else cast(v) for v in value]


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
