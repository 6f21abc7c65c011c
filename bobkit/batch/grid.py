"""Grid files: YAML that expands into cells, each with a stable run key.

A grid file::

    name: demo
    defaults: {image_size: 64}          # applied to every cell whose task has the parameter
    resources: {timeout_min: 30}        # runner / Slurm resources (overridable per block)
    grid:
      - task: classification
        backbone: [a, b]                # a list is an axis: cartesian product
        dataset: fashion_mnist          # a scalar is fixed (for list-valued parameters, a list of lists sweeps)
        setting:                        # a list of dicts, each merged into the cell
          - {protocol: linear_probe}
          - {protocol: finetune, epochs: 1}
        seed: [0, 1]

A grid may also declare its own datasets and backbones, without code (see :mod:`bobkit.data.user` and
:mod:`bobkit.backbones.user`)::

    registry: team/registry.yaml        # further registry files (a path or a list)
    datasets:
      my_photos: {folder: photos}       # relative paths resolve against this file's folder (or base_dir:)
    backbones:
      my_convnext: {timm: convnext_tiny.fb_in22k}

Loading such a grid puts its declarations in ``$BOB_REGISTRY`` (:func:`bobkit.data.declarations.activate`), so the
kernels and jobs it starts see them too, and checks every declaration first (folders listed, unreadable files
found, checkpoints key-checked). A cell naming a declared dataset or backbone has the declaration's content key
in its run key: an edited folder or a new checkpoint makes new keys.

Cells declare the artifacts they make and use (``TaskSpec.produces`` / ``needs``: a classification probe cell
produces its probe head, an OOD cell of the same training needs it; :mod:`bobkit.features.artifacts`). A
consumer's run key holds the keys of what it needs, so retraining the producer under new code or another recipe
makes the consumer a new cell; :func:`artifact_links` says which cell of a batch provides what another needs.

Everything is validated before anything runs: unknown tasks, parameters, backbones and datasets raise
:class:`GridError` naming the value and the file.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from bobkit.batch import codehash
from bobkit.batch.resources import DEFAULT_RESOURCES, ResourceError, check_resources
from bobkit.features.artifacts import ArtifactRef
from bobkit.tasks import ParameterError, get_spec, get_task, task_names
from bobkit.tasks.contract import Param
from bobkit.utils.text import short_repr

# Parameters that change where/how fast a cell runs, not its result: left out of the run key so a batch resumes
# on another machine.
EXECUTION_PARAMS = frozenset(
    {"device", "num_threads", "channels_last", "compile", "grad_checkpointing", "loader_workers", "state_every_min"}
)
#: Parameters the runner sets per run (never part of a cell): the task's output folder and its training state.
RUNNER_PARAMS = ("output_dir", "state_dir")


#: The keys a grid file may hold (``x-*`` keys, for YAML anchors, are ignored).
TOP_LEVEL_KEYS = ("name", "description", "defaults", "resources", "grid", "registry", "datasets", "backbones",
                  "base_dir")


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the bad value and the file."""


@dataclass(frozen=True)
class Cell:
    """One run: a task with its full canonical parameters, and the artifacts it makes and uses."""

    task: str
    params: dict[str, Any]
    run_key: str
    resources: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    produces: tuple[ArtifactRef, ...] = ()
    needs: tuple[ArtifactRef, ...] = ()

    @property
    def label(self) -> str:
        """Short description for progress bars and status tables."""
        p = self.params
        keys = ("backbone", "dataset", "protocol")
        if not any(k in p for k in keys):  # no backbone/dataset: show the parameters themselves
            return f"{self.task} " + " ".join(f"{k}={v}" for k, v in p.items())
        bits = [self.task, *(p.get(k) for k in keys), f"seed{p.get('seed', 0)}"]
        return " ".join(str(b) for b in bits if b is not None)


def code_version(task: str) -> str:
    """The code part of a run key: a hash of the code behind the task's cells (:mod:`bobkit.batch.codehash`)."""
    return codehash.code_version(task)


def result_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that can change a cell's result: all but the execution-only ones."""
    return {k: v for k, v in params.items() if k not in EXECUTION_PARAMS}


def cell_identity(task: str, params: dict[str, Any]) -> str:
    """16 hex digits over the task and its result-relevant parameters, without the code.

    Cells of one identity made by different code have different run keys; the identity (kept in the sidecar)
    finds the older ones, which ``bob status`` reports as stale.
    """
    blob = json.dumps({"task": task, "params": result_params(params)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _named(params: dict[str, Any]) -> list[str]:
    """Every string a cell's parameters hold (list items too; ``name:split`` targets give ``name``)."""
    out = []
    for value in result_params(params).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                out += [item, item.partition(":")[0]]
    return list(dict.fromkeys(out))


def declared_content(params: dict[str, Any]) -> dict[str, str]:
    """Content keys of the user-declared datasets and backbones a cell names (``{"dataset:x": key, ...}``).

    Empty for cells of built-in names only, so their run keys are what they were before declarations existed.
    """
    from bobkit.data.declarations import declarations

    datasets, backbones = declarations("datasets"), declarations("backbones")
    names = [n for n in _named(params) if n in datasets or n in backbones]
    if not names:
        return {}
    from bobkit.backbones import declared as user_backbones
    from bobkit.data import user as user_datasets

    out = {}
    for name in names:
        if name in datasets:
            out[f"dataset:{name}"] = user_datasets.fingerprint(name)
        if name in backbones:
            out[f"backbone:{name}"] = user_backbones.fingerprint(name)
    return out


def run_key(task: str, params: dict[str, Any], code: str | None = None,
            needs: tuple[ArtifactRef, ...] | list[ArtifactRef] | None = None) -> str:
    """Stable 16-hex-digit hash of the task, its result-relevant parameters and the code behind it, plus the
    content keys of the declared datasets and backbones it names (:func:`declared_content`) and the keys of the
    artifacts it needs (so a retrained producer makes a new consumer).

    ``code`` is a code version to use instead of this checkout's (:func:`code_version`); ``needs`` the artifacts
    (default: what the task declares for ``params``).
    """
    code = code if code is not None else code_version(task)
    payload: dict[str, Any] = {"task": task, "params": result_params(params), "code": code}
    declared = declared_content(params)
    if declared:
        payload["declared"] = declared
    if needs is None:
        spec = get_spec(task)
        needs = spec.needed({**spec.defaults(), **params})  # the declared defaults fill what a caller left out
    if needs:  # cells that need nothing keep the keys they had before artifacts existed
        payload["needs"] = sorted(ref.name for ref in needs)
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_cell(task: str, overrides: dict[str, Any], resources: dict[str, Any] | None = None, source: str = "") -> Cell:
    """Validate ``overrides`` against the task's declaration and build the cell with its run key.

    Every value is checked (type, range, registries) as the kernel will check it; ``device: cuda`` must exist on
    this machine unless the cell asks its scheduler for GPUs (``resources: {gpus: N}``).
    """
    resources = {**DEFAULT_RESOURCES, **(resources or {})}
    overrides = {k: v for k, v in overrides.items() if k not in RUNNER_PARAMS}  # the runner sets them per run
    try:
        params = get_spec(task).validate(overrides, check_machine=not resources.get("gpus"))
    except ParameterError as exc:
        raise GridError(f"{source}: {exc}" if source else str(exc)) from exc
    for name in RUNNER_PARAMS:
        params.pop(name, None)
    spec = get_spec(task)
    try:
        produces, needs = tuple(spec.produced(params)), tuple(spec.needed(params))
    except (ValueError, OSError) as exc:  # e.g. a checkpoint that cannot be hashed
        raise GridError(f"{source}: {task} artifacts of {params.get('backbone', '')}: {exc}") from exc
    return Cell(task, params, run_key(task, params, needs=needs), resources, source, produces, needs)


@dataclass(frozen=True)
class ArtifactLink:
    """An artifact a cell needs and the cell of the batch that provides it.

    ``explicit``: the provider declares it as produced (a classification cell); otherwise the provider is the first
    cell that needs it, which makes and publishes it (the others wait for it instead of making it again).
    """

    ref: ArtifactRef
    provider: Cell
    explicit: bool


def artifact_links(cells: Iterable[Cell]) -> dict[str, list[ArtifactLink]]:
    """For each cell (by run key), the artifacts it needs that another cell of ``cells`` provides.

    A producer (a cell whose task declares the artifact as produced) provides it; when no cell produces it, the
    first cell that needs it (in the given order) does, and the others depend on that one.
    """
    cells = list(cells)
    producers: dict[ArtifactRef, Cell] = {}
    first_user: dict[ArtifactRef, Cell] = {}
    for cell in cells:
        for ref in cell.produces:
            producers.setdefault(ref, cell)
        for ref in cell.needs:
            first_user.setdefault(ref, cell)
    links: dict[str, list[ArtifactLink]] = {}
    for cell in cells:
        for ref in cell.needs:
            provider, explicit = (producers[ref], True) if ref in producers else (first_user[ref], False)
            if provider.run_key != cell.run_key:
                links.setdefault(cell.run_key, []).append(ArtifactLink(ref, provider, explicit))
    return links


def providers_of(links: dict[str, list[ArtifactLink]], cell: Cell) -> list[Cell]:
    """The distinct cells ``cell`` waits for (its artifacts' providers), in order."""
    seen: dict[str, Cell] = {}
    for link in links.get(cell.run_key, []):
        seen.setdefault(link.provider.run_key, link.provider)
    return list(seen.values())


def producers_first(cells: Iterable[Cell], links: dict[str, list[ArtifactLink]] | None = None) -> list[Cell]:
    """``cells`` with every provider before the cells that need it (otherwise in the given order)."""
    cells = list(cells)
    links = artifact_links(cells) if links is None else links
    by_key = {cell.run_key: cell for cell in cells}
    ordered: dict[str, Cell] = {}

    def visit(cell: Cell, path: tuple[str, ...]) -> None:
        if cell.run_key in ordered or cell.run_key in path:
            return
        for provider in providers_of(links, cell):
            if provider.run_key in by_key:
                visit(provider, (*path, cell.run_key))
        ordered[cell.run_key] = cell

    for cell in cells:
        visit(cell, ())
    return list(ordered.values())


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (``{seed: 0, seed: 1}``): YAML would silently keep the last."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (a ``<<:`` merge may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(f"line {line}: key {key_node.value!r} is given twice in one mapping (first on "
                                        f"line {seen[key]}); YAML would keep only the last value: remove one, or make "
                                        "the values a list to sweep them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse a grid's YAML safely, refusing a key given twice in one mapping (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_grid(path: str | Path) -> list[Cell]:
    """Read a grid file and expand it into validated cells (duplicates removed, order kept).

    Relative paths in the grid (its ``registry:`` files, its declarations' folders and files) resolve against the
    grid file's folder, so a grid means the same from any working directory.
    """
    path = Path(path)
    if not path.exists():
        raise GridError(f"params file {str(path)!r} does not exist")
    try:
        spec = read_yaml(path.read_text())
    except DuplicateKeyError as exc:
        raise GridError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from exc
    return expand_grid(spec, source=str(path), base_dir=path.resolve().parent)


def expand_grid(spec: Any, source: str = "<grid>", base_dir: str | Path | None = None) -> list[Cell]:
    """Expand a parsed grid spec into cells; see the module docstring for the format.

    ``base_dir`` is where the grid's relative paths resolve (default: the working directory); the grid's own
    ``base_dir:`` key, when present, takes precedence (an absolute path, or relative to ``base_dir``).
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), list) or not spec["grid"]:
        raise GridError(f"{source}: expected a mapping with a non-empty 'grid' list")
    # ``x-*`` keys hold YAML anchors (shared backbone lists, ...) and are otherwise ignored.
    unknown_top = {k for k in spec if not str(k).startswith("x-")} - set(TOP_LEVEL_KEYS)
    if unknown_top:
        raise GridError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}")
    here = Path(base_dir) if base_dir is not None else Path.cwd()
    if spec.get("base_dir") is not None:  # a copy of a grid kept elsewhere still finds the original's files
        own = Path(str(spec["base_dir"])).expanduser()
        here = own if own.is_absolute() else here / own
    activate_declarations(spec, source, here)
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise GridError(f"{source}: 'defaults' must be a mapping, got {short_repr(defaults)}")
    resources = spec.get("resources") or {}
    _check_resources(resources, source)
    cells: dict[str, Cell] = {}
    for index, block in enumerate(spec["grid"]):
        where = f"{source}: grid[{index}]"
        for cell in _expand_block(block, defaults, resources, where):
            cells.setdefault(cell.run_key, cell)
    _check_defaults(defaults, {block["task"] for block in spec["grid"]}, source)
    return list(cells.values())


def activate_declarations(spec: dict[str, Any], source: str, base_dir: Path) -> list[Path]:
    """Put the grid's registry files and inline ``datasets:`` / ``backbones:`` sections into ``$BOB_REGISTRY`` and
    check every declaration they bring (folders listed and decoded, checkpoints key-checked); returns the files.

    Raises
    ------
    GridError
        A missing registry file, or a declaration that cannot be used (the message names it and its field).
    """
    from bobkit.data.declarations import DeclarationError, activate, export_registry, read_registry

    raw = spec.get("registry") or []
    listed = [raw] if isinstance(raw, str) else raw
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise GridError(f"{source}: 'registry' must be a path or a list of paths, got {short_repr(raw)}")
    files = [p if p.is_absolute() else (base_dir / p).resolve() for p in (Path(x).expanduser() for x in listed)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GridError(f"{source}: registry file(s) {missing} do not exist (relative paths resolve against "
                        f"{base_dir})")
    inline = {s: spec[s] for s in ("datasets", "backbones") if spec.get(s) is not None}
    if inline:
        files.insert(0, export_registry(inline, base_dir, declared_in=source))
    if not files:
        return []
    from bobkit.backbones.weights import WeightsUnavailableError

    try:
        declared = [read_registry(f) for f in files]
        activate(files)
        _check_declarations(declared)
    except (DeclarationError, WeightsUnavailableError, ValueError, OSError) as exc:
        raise GridError(f"{source}: {exc}") from exc
    return files


def _check_declarations(declared: list[dict[str, Any]]) -> None:
    """Build every declaration now, so a bad folder, file or checkpoint fails before any cell runs."""
    from bobkit.backbones import declared as user_backbones
    from bobkit.data import user as user_datasets

    for sections in declared:
        for name in sections["datasets"]:
            user_datasets.check(name)
        for name in sections["backbones"]:
            user_backbones.prepare_declared(name)


def _expand_block(block: Any, defaults: dict[str, Any], resources: dict[str, Any], where: str) -> list[Cell]:
    if not isinstance(block, dict) or "task" not in block:
        raise GridError(f"{where}: each grid block needs a 'task'")
    task = block["task"]
    if task not in task_names():
        close = difflib.get_close_matches(str(task), task_names(), n=3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise GridError(f"{where}: unknown task {short_repr(task)}{hint}")
    spec = get_spec(task)
    block_resources = {**resources, **(block.get("resources") or {})}
    _check_resources(block_resources, where)
    settings = block.get("setting", [{}])
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
        raise GridError(f"{where}: 'setting' must be a list of mappings")
    if not settings:
        raise GridError(f"{where}: 'setting' is an empty list (it would make no cells)")
    axes = {k: v for k, v in block.items() if k not in {"task", "setting", "resources"}}
    base = {k: v for k, v in defaults.items() if k in spec.names()}
    names = list(axes)
    values = [_axis_values(_declared(spec, k), k, v, where) for k, v in axes.items()]
    cells = []
    for combo in itertools.product(*values):
        for setting in settings:
            overrides = {**base, **dict(zip(names, combo)), **setting}
            cells.append(make_cell(task, overrides, block_resources, where))
    return cells


def _declared(spec: Any, name: str) -> Param | None:
    """The declaration of ``name`` (``None`` for an unknown name: :func:`make_cell` names it)."""
    return next((p for p in spec.parameters if p.name == name), None)


def _axis_values(param: Param | None, name: str, value: Any, where: str) -> list[Any]:
    """Values of one axis: a list sweeps, a scalar is fixed; for a list-valued parameter (e.g. ``targets``) a
    list is the value itself and a list of lists sweeps. An empty sweep is an error, not zero cells."""
    if not isinstance(value, list):
        return [value]
    if param is not None and param.type is list and not (value and all(isinstance(v, list) for v in value)):
        return [value]
    if not value:
        raise GridError(f"{where}: {name!r} is an empty list (an axis with no values would make no cells)")
    return value


def _check_resources(resources: Any, where: str) -> None:
    """Every resource key known and every value safe (see :mod:`bobkit.batch.resources`)."""
    try:
        check_resources(resources, where)
    except ResourceError as exc:
        raise GridError(str(exc)) from exc


def _check_defaults(defaults: dict[str, Any], tasks: set[str], where: str) -> None:
    """Reject ``defaults:`` keys that no task of the grid has (a typo would otherwise be dropped silently)."""
    known = sorted({name for task in tasks for name in get_task(task).PARAMETERS})
    for key in defaults:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise GridError(f"{where}: defaults key {short_repr(key)} is a parameter of no task in this grid "
                            f"({', '.join(sorted(tasks))}){hint}")
