"""Task declarations: what each task accepts (typed parameters) and what it reports (metrics), in one place.

A task module declares one :class:`TaskSpec`: its :class:`Param` list (type, default, one-line doc, choices or
bounds, and kind: ``backbone`` | ``setting`` | ``seed`` | ``execution``) and its :class:`Metric` list (name or
pattern, direction, ``score`` | ``descriptor``, primary flag). That declaration

* validates every value, in the grid (``bob validate`` / ``bob run``, through :func:`bobkit.batch.grid.make_cell`)
  and again in the kernel (:func:`bobkit.tasks.harness.run_task`): :meth:`TaskSpec.validate`;
* generates the notebook's parameters cell with the docs as comments (:meth:`TaskSpec.parameters_cell`) and the
  ``run()`` signature and docstring;
* tells the harness which outputs are scores (with their direction) and which are run descriptors;
* says which artifacts a cell makes and which it uses (:meth:`TaskSpec.produced`, :meth:`TaskSpec.needed`: a
  classification probe cell produces its probe head, an OOD cell with the same training needs it), so a batch
  runs producers first and a consumer's run key names what it used (:mod:`bobkit.features.artifacts`).

Parameter blocks several tasks share (execution, linear probe, fine-tuning) are declared here once, so no task
imports another for its parameters. Nothing here imports torch: the grid and the smoke task stay cheap.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import yaml

from bobkit.utils.text import short_repr

if TYPE_CHECKING:
    from bobkit.features.artifacts import ArtifactRef

KINDS = ("backbone", "setting", "seed", "execution")
METRIC_KINDS = ("score", "descriptor")
#: Why sizes have upper bounds: one line the error message ends with.
MEMORY_NOTE = "larger values can exhaust memory"
#: The first line of every generated parameters cell (the notebook harness finds the cell by it).
PARAMETERS_HEADER = "# Parameters of the {task} task"
#: numpy and torch seeds must fit in 32 bits.
MAX_SEED = 2**32 - 1


class ParameterError(ValueError):
    """A parameter value a task does not accept; the message names the task, the parameter and the value.

    In a notebook it renders as its one-line message instead of a traceback (IPython calls
    ``_render_traceback_``), so ``papermill`` and JupyterLab show the cause first.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class UnknownParameterError(ParameterError, TypeError):
    """A parameter name the task does not declare (a ``TypeError`` too, as for a bad keyword argument)."""


@dataclass(frozen=True)
class Param:
    """One declared task parameter.

    Parameters
    ----------
    name : str
        Python identifier, also the notebook variable.
    type : type
        ``bool``, ``int``, ``float``, ``str`` or ``list`` (then ``item`` gives the element type).
    default : Any
        The value when not given; it must validate.
    doc : str
        One line: shown as the comment in the notebook's parameters cell and in ``run()``'s docstring.
    kind : {"backbone", "setting", "seed", "execution"}
        ``setting``: changes what is measured (part of the results table's setting); ``execution``: how it runs
        (device, threads, precision, ...), not what.
    item : type, optional
        Element type of a ``list`` parameter.
    choices : tuple or callable, optional
        Allowed values (of each item, for a list); a callable returns them when asked (a registry).
    low, high : float, optional
        Inclusive bounds (of each item, for a list). ``high`` guards sizes that can exhaust memory.
    low_open, high_open : bool
        ``low`` (``high``) itself is excluded.
    high_note : str
        Why ``high`` is there, for the error message (:data:`MEMORY_NOTE` for sizes).
    nullable : bool
        ``None`` is accepted (always true when the default is ``None``).
    pattern : str, optional
        Regular expression a string (item) must match in full.
    lookup : callable, optional
        ``lookup(value)`` raises ``ValueError`` for a name a registry does not know (backbones, datasets).
    machine_dependent : bool
        The lookup asks this machine (e.g. whether CUDA is present); the grid may skip it for cells that run
        elsewhere.
    min_items : int
        A list must hold at least this many items.
    words : tuple of str
        Strings accepted in place of a value of ``type`` (``"auto"``: the task chooses the value itself).
    or_list : bool
        A scalar parameter that also takes a list of its values (a selection the task makes on held-out items,
        e.g. several learning rates); each item is checked as the scalar is.
    """

    name: str
    type: type
    default: Any
    doc: str
    kind: str = "setting"
    item: type | None = None
    choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    high_note: str = ""
    nullable: bool = False
    pattern: str | None = None
    lookup: Callable[[Any], Any] | None = None
    machine_dependent: bool = False
    min_items: int = 0
    words: tuple[str, ...] = ()
    or_list: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.type not in (bool, int, float, str, list) or (self.type is list) != (self.item is not None):
            raise ValueError(f"parameter {self.name!r}: type {self.type!r} (item {self.item!r}) is not supported")
        if self.or_list and self.type is list:
            raise ValueError(f"parameter {self.name!r}: or_list is for scalar parameters")

    @property
    def accepts_none(self) -> bool:
        """Whether ``None`` is a valid value."""
        return self.nullable or self.default is None

    def allowed(self) -> tuple[Any, ...] | None:
        """The allowed values (registry callables resolved), or ``None`` when any value of the type goes."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def comment(self) -> str:
        """The one-line doc with the fixed choices, as the notebook's parameters cell shows it."""
        allowed = None if callable(self.choices) else self.allowed()
        return f"{self.doc} ({' | '.join(map(str, allowed))})" if allowed else self.doc

    def type_name(self) -> str:
        """``int``, ``list[float]``, ``str | None``, ... as shown in docs."""
        name = f"list[{self.item.__name__}]" if self.type is list else self.type.__name__
        if self.or_list:
            name = f"{name} | list[{name}]"
        name = " | ".join([name, *(repr(word) for word in self.words)])
        return f"{name} | None" if self.accepts_none else name


@dataclass(frozen=True)
class Metric:
    """One declared output of a task: a score (goes into the results table) or a run descriptor.

    ``name`` is an exact name or an ``fnmatch`` pattern (``acc/*``); the first declaration that matches a name
    wins. ``n_items`` names the descriptor counting the test items behind a score (``n_test``, ``n_queries``).
    """

    name: str
    doc: str
    kind: str = "score"
    higher_is_better: bool | None = True
    primary: bool = False
    n_items: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise ValueError(f"metric {self.name!r}: kind {self.kind!r} is not one of {METRIC_KINDS}")
        if self.kind == "descriptor" and (self.primary or self.n_items):
            raise ValueError(f"metric {self.name!r}: a descriptor is neither primary nor counted")

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this metric (exactly, or by pattern)."""
        return name == self.name or fnmatch.fnmatchcase(name, self.name)


def descriptor(name: str, doc: str) -> Metric:
    """A run descriptor (timing, size, setting that ran): recorded, never scored."""
    return Metric(name, doc, kind="descriptor", higher_is_better=None)


@dataclass(frozen=True)
class TaskSpec:
    """The declaration of one task: its parameters, its metrics and the rules between parameters.

    ``check(params)`` receives the validated parameters and raises :class:`ParameterError` for combinations the
    single declarations cannot express (``protocol='revisited'`` needs a revisited dataset, ...).
    ``resolve_execution(params)`` builds the run's execution settings (default: the tasks' shared rule).
    ``produces(params)`` lists the artifacts (:class:`~bobkit.features.artifacts.ArtifactRef`) a cell always
    publishes; ``needs(params)`` those it uses, which it makes and publishes itself when no cell of the batch
    provides them (so a lone notebook works). Both receive validated parameters and must be cheap (the grid
    calls them for every cell).
    """

    name: str
    summary: str
    parameters: tuple[Param, ...]
    metrics: tuple[Metric, ...]
    check: Callable[[dict[str, Any]], None] | None = None
    resolve_execution: Callable[[dict[str, Any]], Any] | None = None
    produces: Callable[[dict[str, Any]], Sequence[ArtifactRef]] | None = None
    needs: Callable[[dict[str, Any]], Sequence[ArtifactRef]] | None = None

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"task {self.name!r} declares {duplicated} twice")

    # -- parameters ------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Parameter names in declaration order."""
        return [p.name for p in self.parameters]

    def param(self, name: str) -> Param:
        """The declaration of parameter ``name``; :class:`UnknownParameterError` with a close match otherwise."""
        for p in self.parameters:
            if p.name == name:
                return p
        raise UnknownParameterError(f"task {self.name!r} has no parameter {name!r}{_hint(name, self.names())}")

    def defaults(self) -> dict[str, Any]:
        """Parameter name -> default, in declaration order (a fresh dict: callers may change it)."""
        return {p.name: _copy(p.default) for p in self.parameters}

    def of_kind(self, *kinds: str) -> list[str]:
        """Names of the parameters of the given kinds."""
        return [p.name for p in self.parameters if p.kind in kinds]

    def validate(self, overrides: Mapping[str, Any], *, check_machine: bool = True) -> dict[str, Any]:
        """Defaults merged with ``overrides``, every value checked and normalised, in declaration order.

        Lists given as a JSON/YAML string or a comma-separated string become lists; numbers given as strings
        (``papermill -r``) become numbers. Nothing is coerced across kinds: ``True`` is not an integer.

        Parameters
        ----------
        overrides : mapping
            Parameter name -> value; names must be declared.
        check_machine : bool
            Also run the machine-dependent lookups (``device='cuda'`` needs CUDA here). The grid turns it off for
            cells that ask their scheduler for GPUs.

        Raises
        ------
        UnknownParameterError
            A name the task does not declare (all unknown names, each with its close match).
        ParameterError
            The first bad value, naming the parameter, the value and what is allowed.
        """
        unknown = [name for name in overrides if name not in self.names()]
        if unknown:
            described = ", ".join(f"{name!r}{_hint(name, self.names())}" for name in unknown)
            raise UnknownParameterError(f"task {self.name!r} has no parameter {described}")
        merged = {**self.defaults(), **overrides}
        params = {p.name: check_value(self.name, p, merged[p.name], check_machine) for p in self.parameters}
        if self.check is not None:
            self.check(params)
        return params

    def setting_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters that change what is measured (kind ``setting``), from validated ``params``."""
        return {name: params[name] for name in self.of_kind("setting") if name in params}

    def produced(self, params: Mapping[str, Any]) -> list[ArtifactRef]:
        """The artifacts a cell with validated ``params`` publishes (none unless the task declares them)."""
        return list(self.produces(dict(params))) if self.produces is not None else []

    def needed(self, params: Mapping[str, Any]) -> list[ArtifactRef]:
        """The artifacts a cell with validated ``params`` uses (none unless the task declares them)."""
        return list(self.needs(dict(params))) if self.needs is not None else []

    def error(self, name: str, value: Any, problem: str) -> ParameterError:
        """A :class:`ParameterError` in the house format, for the spec's ``check`` rules."""
        return ParameterError(f"{self.name} parameter {name}={short_repr(value)} {problem}")

    # -- metrics ---------------------------------------------------------------------------------------------

    def metric(self, name: str) -> Metric | None:
        """The first metric declaration matching ``name`` (``None`` when the task does not declare it)."""
        return next((m for m in self.metrics if m.matches(name)), None)

    # -- generated text --------------------------------------------------------------------------------------

    def parameters_cell(self) -> str:
        """The source of the notebook's ``parameters`` cell: one assignment per parameter, its doc as comment."""
        lines = [PARAMETERS_HEADER.format(task=self.name) + " (generated from its declaration: "
                 "tools/make_task_notebooks.py)"]
        lines += [f"{p.name} = {p.default!r}  # {p.comment()}" for p in self.parameters]
        return "\n".join(lines)

    def parameters_doc(self) -> str:
        """A NumPy-style ``Parameters`` section from the declarations (for ``run()``'s docstring)."""
        lines = ["Parameters", "----------"]
        for p in self.parameters:
            lines.append(f"{p.name} : {p.type_name()}, default {p.default!r}")
            lines.append(f"    {p.comment()}{_constraint_text(p)} [{p.kind}]")
        return "\n".join(lines)

    def signature(self, return_annotation: Any = inspect.Signature.empty) -> inspect.Signature:
        """Keyword-only signature with the declared defaults (what JupyterLab's tooltip shows for ``run``)."""
        return inspect.Signature(
            [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in self.parameters],
            return_annotation=return_annotation,
        )


# ------------------------------------------------------------------------------------------------------------
# Value checks
# ------------------------------------------------------------------------------------------------------------


def check_value(task: str, param: Param, value: Any, check_machine: bool = True) -> Any:
    """``value`` normalised for ``param``, or :class:`ParameterError` naming ``task``, the parameter and value."""

    def fail(problem: str) -> ParameterError:
        return ParameterError(f"{task} parameter {param.name}={short_repr(value)} {problem}")

    if value is None or (param.accepts_none and _is_null_string(value) and param.type is not str):
        if param.accepts_none:
            return None
        raise fail(f"must be {_article(param)}, not None")
    if param.type is list:
        return _check_items(param, param.item, value, fail, check_machine, param.min_items,
                            f"needs at least {param.min_items} item(s)")
    if isinstance(value, str) and value.strip() in param.words:
        return value.strip()
    if param.words:  # the error names the words too
        fail = _naming_words(fail, param.words)
    if param.or_list and (isinstance(value, (list, tuple)) or (isinstance(value, str) and value.lstrip()[:1] == "[")):
        return _check_items(param, param.type, value, fail, check_machine, 1, "needs at least one item")
    return _check_scalar(param, param.type, value, fail, check_machine)


def _check_items(param: Param, kind: type, value: Any, fail: Callable[[str], ParameterError], check_machine: bool,
                 min_items: int, too_few: str) -> list[Any]:
    """The items of a list value, each checked as ``kind``; at least ``min_items`` of them (else ``too_few``), no
    repeats."""
    out = [_check_scalar(param, kind, item, fail, check_machine, item_of_list=True) for item in _as_items(value, fail)]
    if len(out) < min_items:
        raise fail(too_few)
    repeated = sorted({repr(v) for v in out if out.count(v) > 1})
    if repeated:
        raise fail(f"repeats {', '.join(repeated)}")
    return out


def _naming_words(fail: Callable[[str], ParameterError], words: tuple[str, ...]) -> Callable[[str], ParameterError]:
    """``fail`` with the accepted words added to every problem it reports."""
    named = " or ".join(repr(word) for word in words)

    def fail_naming_words(problem: str) -> ParameterError:
        return fail(f"{problem} (or {named})")

    return fail_naming_words


def _check_scalar(param: Param, kind: type, value: Any, fail: Callable[[str], ParameterError], check_machine: bool,
                  item_of_list: bool = False) -> Any:
    where = f"item {short_repr(value)} " if item_of_list else ""
    value = _coerce(kind, value, lambda problem: fail(where + problem))
    allowed = param.allowed()
    if allowed is not None and value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        hint = _hint(value, [str(a) for a in allowed]) if isinstance(value, str) else ""
        raise fail(f"{where}is not one of {shown}{hint}")
    if kind in (int, float):
        _check_bounds(param, value, lambda problem: fail(where + problem))
    if kind is str and param.pattern is not None and not re.fullmatch(param.pattern, value):
        raise fail(f"{where}does not match {param.pattern!r}")
    if param.lookup is not None and (check_machine or not param.machine_dependent):
        try:
            param.lookup(value)
        except ValueError as exc:
            raise fail(f"{where}is not accepted: {exc}") from None
    return value


def _coerce(kind: type, value: Any, fail: Callable[[str], ParameterError]) -> Any:
    """``value`` as ``kind``: exact types pass, strings of the right form are parsed, anything else fails."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise fail("must be true or false")
    if kind is int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("must be an integer" + (", not a bool" if isinstance(value, bool) else ""))
        return int(value)
    if kind is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise fail("is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("must be a number" + (", not a bool" if isinstance(value, bool) else ""))
        if not math.isfinite(value):
            raise fail("must be a finite number")
        return float(value)
    if not isinstance(value, str):
        raise fail("must be a string")
    return value


def _check_bounds(param: Param, value: float, fail: Callable[[str], ParameterError]) -> None:
    if param.low is not None and (value < param.low or (param.low_open and value == param.low)):
        raise fail(f"must be {'above' if param.low_open else 'at least'} {_number(param.low)}")
    if param.high is not None and param.high_open and value >= param.high:
        raise fail(f"must be below {_number(param.high)}")
    if param.high is not None and value > param.high:
        raise fail(f"is above its maximum {_number(param.high)}" + (f" ({param.high_note})" if param.high_note else ""))


def _as_items(value: Any, fail: Callable[[str], ParameterError]) -> list[Any]:
    """A list parameter's items: a list/tuple, a JSON/YAML list string, a comma-separated string or one value."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = yaml.safe_load(text)
            except yaml.YAMLError:
                raise fail("is not a valid JSON/YAML list") from None
            if not isinstance(parsed, list):
                raise fail("is not a valid JSON/YAML list")
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, (dict, set)):
        raise fail("must be a list")
    return [value]


def _is_null_string(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("none", "null")


def _article(param: Param) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}[param.type]


def _constraint_text(param: Param) -> str:
    bits = []
    if param.low is not None:
        bits.append(f"{'>' if param.low_open else '>='} {_number(param.low)}")
    if param.high is not None:
        bits.append(f"{'<' if param.high_open else '<='} {_number(param.high)}")
    return f" ({', '.join(bits)})" if bits else ""


def _number(value: float) -> str:
    """``1024`` for integral bounds, ``0.5`` otherwise."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _hint(name: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
