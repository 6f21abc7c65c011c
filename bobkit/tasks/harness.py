"""The task harness: what every task's ``run()`` does around its own computation, written once.

:func:`run_task` validates the parameters against the task's :class:`~bobkit.tasks.contract.TaskSpec` (unknown
names and bad values fail before any work), sets threads and the seed, resolves the execution settings, measures
peak memory, and returns a :class:`TaskResult`; with ``output_dir`` set it also writes the task output (format 2,
:meth:`TaskResult.output`) for the runner. :func:`task_entry` turns a task's body into its ``run(**params)``
with the declared signature and documentation. :func:`namespace_parameters` collects a notebook's parameters,
including names injected by papermill that the task does not declare (so a misspelled ``-p`` name fails).
"""

from __future__ import annotations

import ast
import functools
from typing import Any, Callable, Iterable, Mapping

from bobkit.tasks.contract import PARAMETERS_HEADER, Metric, TaskSpec
from bobkit.tasks.output import (
    COUNT_PREFIX,
    STDERR_PREFIX,
    TASK_OUTPUT_FORMAT,
    higher_is_better,
    save_cell_metrics,
    split_metrics,
)

#: The first line of the cell papermill injects (``-p``, ``-y``, ``-f``).
PAPERMILL_HEADER = "# Parameters"

Body = Callable[[dict[str, Any], Any], Any]


class TaskResult(dict):
    """A cell's outputs as the task computed them (metric name -> float), with the declaration's views.

    Indexing works as on the flat dict the task returned (``result["top1"]``, ``result["se/top1"]``);
    :attr:`scores`, :attr:`stderr`, :attr:`descriptors`, ... split it by the task's metric declarations, and
    :meth:`output` is the task output the runner copies into the sidecar. ``details`` holds what a task returns
    besides its metrics (robustness: the reliability diagrams); ``artifacts`` the probe heads and weights it loaded
    or published (kind, key, sha256, how).
    """

    def __init__(self, spec: TaskSpec, params: Mapping[str, Any], values: Mapping[str, float], details: Any = None):
        super().__init__(values)
        self.spec = spec
        self.params = dict(params)
        self.details = details
        self.artifacts: list[dict[str, Any]] = []  # artifacts loaded or published (bobkit.features.artifacts)

    def declaration(self, name: str) -> Metric | None:
        """The task's declaration of output ``name`` (``None``: undeclared; the name-based fallback applies)."""
        return self.spec.metric(name)

    def is_score(self, name: str) -> bool:
        """Whether output ``name`` is a score (declared, else guessed from its name as before declarations)."""
        if name.startswith((STDERR_PREFIX, COUNT_PREFIX)):
            return False
        declared = self.declaration(name)
        if declared is not None:
            return declared.kind == "score"
        return name in split_metrics({name: 0.0})[0]

    @property
    def scores(self) -> dict[str, float]:
        """Scores (the results table's values)."""
        return {k: v for k, v in self.items() if self.is_score(k)}

    @property
    def stderr(self) -> dict[str, float]:
        """Sampling standard error of a score over the cell's test items (``se/<metric>`` keys)."""
        return {k[len(STDERR_PREFIX):]: v for k, v in self.items() if k.startswith(STDERR_PREFIX)}

    @property
    def descriptors(self) -> dict[str, float]:
        """Run descriptors: timings, sizes, execution settings, peak memory, selected values."""
        return {k: v for k, v in self.items()
                if not k.startswith((STDERR_PREFIX, COUNT_PREFIX)) and not self.is_score(k)}

    @property
    def n_items(self) -> dict[str, int]:
        """Test items behind each score: its own ``n/<metric>`` output, else the count descriptor its declaration
        names (``n_test``, ``n_queries``), when the cell reported one."""
        out = {}
        for name in self.scores:
            declared = self.declaration(name)
            count = self.get(COUNT_PREFIX + name)
            if count is None and declared is not None and declared.n_items:
                count = self.get(declared.n_items)
            if count is not None and count == count:
                out[name] = int(count)
        return out

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of each score, from its declaration (undeclared: guessed from the name)."""
        out = {}
        for name in self.scores:
            declared = self.declaration(name)
            out[name] = bool(declared.higher_is_better) if declared is not None else higher_is_better(name)
        return out

    @property
    def primary(self) -> list[str]:
        """The task's primary metrics present in this cell."""
        return [name for name in self.scores if (m := self.declaration(name)) is not None and m.primary]

    @property
    def setting_params(self) -> dict[str, Any]:
        """Every parameter that changes what is measured (not backbone, seed or execution)."""
        return self.spec.setting_params(self.params)

    def undeclared(self) -> list[str]:
        """Outputs the task does not declare (direction and kind then come from the name)."""
        names = (k.split("/", 1)[1] if k.startswith((STDERR_PREFIX, COUNT_PREFIX)) else k for k in self)
        return sorted({name for name in names if self.declaration(name) is None})

    def output(self) -> dict[str, Any]:
        """The task output, format 2 (``task_metrics.json``; the runner copies it into the sidecar)."""
        return {
            "format": TASK_OUTPUT_FORMAT,
            "metrics": self.scores,
            "stderr": self.stderr,
            "n_items": self.n_items,
            "higher_is_better": self.higher_is_better,
            "primary": self.primary,
            "setting_params": self.setting_params,
            "descriptors": self.descriptors,
        }

    def to_frame(self):
        """One row per output: value, standard error, items, score or descriptor, direction (for notebooks)."""
        import pandas as pd

        stderr, n_items, direction = self.stderr, self.n_items, self.higher_is_better
        rows = [{"metric": name, "value": value, "stderr": stderr.get(name), "n_items": n_items.get(name),
                 "kind": "score" if name in direction else "descriptor", "higher_is_better": direction.get(name)}
                for name, value in self.items() if not name.startswith(STDERR_PREFIX)]
        return pd.DataFrame(rows).set_index("metric")


def run_task(spec: TaskSpec, overrides: Mapping[str, Any], body: Body) -> TaskResult:
    """Run one cell of ``spec``'s task: validate, set up, call ``body(params, execution)``, wrap the outputs.

    Parameters
    ----------
    spec : TaskSpec
        The task's declaration.
    overrides : mapping
        Parameters given by the caller (notebook, runner, test); the declared defaults fill the rest.
    body : callable
        ``body(params, execution)`` with the validated parameters and the resolved
        :class:`~bobkit.features.device.Execution` (``None`` for a task without a ``device`` parameter); returns
        the flat metrics dict, or an object with a ``metrics`` dict (kept as :attr:`TaskResult.details`).

    Raises
    ------
    bobkit.tasks.contract.ParameterError
        A bad or unknown parameter, before any work.
    """
    from bobkit.features import artifacts

    params = spec.validate(overrides)
    artifacts.reset_ledger()  # the artifacts this cell loads or publishes, for its sidecar
    if "device" in params:
        out = _run_on_device(spec, params, body)
    else:  # no model (the smoke task): no torch import, no threads
        out = body(params, None)
    values = out.metrics if hasattr(out, "metrics") else out
    result = TaskResult(spec, params, values, details=None if out is values else out)
    result.artifacts = artifacts.ledger()
    if params.get("output_dir") is not None:
        artifacts.write_ledger(params["output_dir"])
        save_cell_metrics(result, params["output_dir"])
    return result


def _run_on_device(spec: TaskSpec, params: dict[str, Any], body: Body) -> Any:
    import torch

    from bobkit.features.device import peak_memory, reset_peak_memory, set_threads
    from bobkit.tasks.common import resolve_task_execution

    threads = set_threads(params["num_threads"])
    torch.manual_seed(params["seed"])
    execution = (spec.resolve_execution or resolve_task_execution)(params)
    reset_peak_memory(execution.device)
    out = body(params, execution)
    metrics = out.metrics if hasattr(out, "metrics") else out
    metrics["threads"] = float(threads)
    metrics.update(peak_memory(execution.device))  # *_mb: run descriptors, not scores
    return out


def task_entry(spec: TaskSpec) -> Callable[[Body], Callable[..., TaskResult]]:
    """Decorator: a task body becomes ``run(**params) -> TaskResult`` with the declared signature and docs."""

    def wrap(body: Body) -> Callable[..., TaskResult]:
        @functools.wraps(body)
        def run(**params: Any) -> TaskResult:
            return run_task(spec, params, body)

        run.__signature__ = spec.signature(TaskResult)  # type: ignore[attr-defined]
        run.__doc__ = f"{(body.__doc__ or '').strip()}\n\n{spec.parameters_doc()}\n"
        run.body = body  # type: ignore[attr-defined]
        return run

    return wrap


def namespace_parameters(spec: TaskSpec, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a task notebook hands to ``run()``: its declared variables, plus every name assigned in
    the notebook's parameters cell or papermill's injected cell that the task does not declare (so ``run()``
    rejects a misspelled ``-p max_trian 300`` instead of running on the default).

    Parameters
    ----------
    spec : TaskSpec
        The task's declaration (:func:`bobkit.tasks.notebook_parameters` looks it up by the task's name).
    namespace : mapping
        The notebook's ``globals()`` (IPython keeps the executed cells' sources in ``In``).
    """
    task = spec.name
    given = {name: namespace[name] for name in spec.names() if name in namespace}
    own_header = PARAMETERS_HEADER.format(task=task)
    history = [str(source) for source in namespace.get("In", ())]
    cells = (_latest_cell(history, lambda first: first == own_header or first.startswith(own_header + " ")),
             _latest_cell(history, lambda first: first == PAPERMILL_HEADER))
    for cell in cells:
        for name in _assigned_names(cell):
            if name not in given and not name.startswith("PAPERMILL_") and name in namespace:
                given[name] = namespace[name]  # undeclared: run() names it with its close match
    return given


def _latest_cell(history: Iterable[str], is_header: Callable[[str], bool]) -> str:
    """The most recently executed cell whose first line passes ``is_header`` ("" when none)."""
    found = ""
    for source in history:
        if is_header(source.lstrip().split("\n", 1)[0].rstrip()):
            found = source
    return found


def _assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of ``source`` (a parameters cell)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names
