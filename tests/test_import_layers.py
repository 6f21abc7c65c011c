"""Each pipeline stage imports only the stages below it, and no bobkit modules import each other in a circle.

Read from the source (``ast``), every import of every bobkit module counted, those inside functions too: a lazy
import is still a dependency (and :mod:`bobkit.batch.codehash` follows it into the run keys). The one kind left out
is an import under ``if TYPE_CHECKING:``: it names types for annotations and never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bobkit"
#: The stages bottom-up (CONTRIBUTING.md, "The data flow"): a module may import its own stage and those before it.
#: tasks and eval share a stage (a task scores with eval's metrics), and so do batch and rehearsal (rehearsal runs
#: a grid's cells in miniature). The batch writes the sidecars the results stage reads, so results sits above it.
STAGES = (("utils", "reference"), ("data",), ("backbones",), ("features",), ("tasks", "eval"),
          ("batch", "rehearsal"), ("results",), ("analysis",), ("report",), ("cli",))
#: Imports allowed against the order, each with its reason (none today).
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # bobkit/__init__.py holds the version string only
    return next(i for i, names in enumerate(STAGES) if parts[1] in names)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The bobkit modules ``path`` imports (``from pkg import name`` counts ``pkg.name`` when that is a module)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "bobkit")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "bobkit":
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found - {module}


def _graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) & modules for f in files}


GRAPH = _graph()


def test_the_graph_is_read_from_the_source():
    assert len(GRAPH) > 100 and "bobkit.batch.sidecars" in GRAPH["bobkit.batch.runner"]
    assert "bobkit.features.extract" in GRAPH["bobkit.tasks.classification"]
    assert "bobkit.batch.codehash" in GRAPH["bobkit.batch.sidecars"]  # a function-level import is seen too


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_stage_and_those_below(module):
    upward = sorted(d for d in GRAPH[module] if _stage(d) > _stage(module) and (module, d) not in ALLOWED)
    assert not upward, f"{module} (stage {STAGES[_stage(module)]}) imports a later stage: {upward}"


def test_no_modules_import_each_other_in_a_circle():
    """Tarjan's strongly connected components: any with two or more modules is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"
