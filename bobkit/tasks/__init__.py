"""Task registry: one module per task family, each declaring ``SPEC`` (its :class:`~bobkit.tasks.contract.TaskSpec`)
and exposing ``run(**params)``; ``PARAMETERS`` (the declared defaults) stays for existing callers."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from types import ModuleType
from typing import Any, Mapping

from bobkit.tasks.contract import ParameterError, TaskSpec, UnknownParameterError
from bobkit.tasks.harness import TaskResult, namespace_parameters

TASKS: dict[str, str] = {
    "classification": "bobkit.tasks.classification",
    "retrieval": "bobkit.tasks.retrieval",
    "ood": "bobkit.tasks.ood",
    "detection": "bobkit.tasks.detection",
    "robustness": "bobkit.tasks.robustness",
    "smoke": "bobkit.tasks.smoke",
    "transferability": "bobkit.tasks.transferability",
}

__all__ = ["TASKS", "ParameterError", "TaskResult", "TaskSpec", "UnknownParameterError", "UnknownTaskError",
           "get_spec", "get_task", "notebook_parameters", "notebook_path", "task_names"]


class UnknownTaskError(ValueError):
    """A task name that is not in :data:`TASKS`."""


def task_names() -> list[str]:
    """Names of the tasks whose module is importable."""
    return [name for name in TASKS if importlib.util.find_spec(TASKS[name]) is not None]


def get_task(name: str) -> ModuleType:
    """Import the task module registered under ``name``."""
    if name not in task_names():
        close = difflib.get_close_matches(str(name), task_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(task_names())}"
        raise UnknownTaskError(f"unknown task {name!r}{hint}")
    return importlib.import_module(TASKS[name])


def get_spec(name: str) -> TaskSpec:
    """The declaration of task ``name``: its typed parameters and its metrics."""
    return get_task(name).SPEC


def notebook_parameters(task: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a task notebook hands to ``run()`` (:func:`bobkit.tasks.harness.namespace_parameters` of the
    task's declaration): ``run(**notebook_parameters("classification", globals()))``."""
    return namespace_parameters(get_spec(task), namespace)


def notebook_path(name: str) -> str:
    """Relative path of the task's notebook inside the project."""
    return f"notebooks/tasks/{name}.ipynb"
