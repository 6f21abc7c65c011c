"""The code behind a cell, hashed: the code part of every run key.

A task's code is its notebook's code cells, its task module and every bobkit module those import, followed
transitively through a static scan of ``import`` statements (including imports inside functions). Each file is
hashed by content, keyed by module name (never by path or mtime), so a checkout keeps its keys across processes
and machines and any edit to code that can move a number makes new keys.

Left out on purpose: the top-level ``bobkit/__init__.py`` (it holds the version string, which the provenance
records; a release bump moves no number), the notebooks' Markdown cells, outputs and metadata (JupyterLab rewrites
them on save).
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

PACKAGE = "bobkit"
# Holds only ``__version__``: hashing it would make every release bump a new key for every cell.
EXCLUDED_MODULES = frozenset({PACKAGE})
CODE_VERSION_DIGITS = 16


def package_root() -> Path:
    """The folder of the ``bobkit`` package being run."""
    return Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path | None = None) -> Path | None:
    """Source file of bobkit module ``name`` (``bobkit.a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), if any."""
    root = root or package_root()
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return root / "__init__.py"
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parents(name: str) -> list[str]:
    """``bobkit.a.b`` -> ``[bobkit, bobkit.a]``: packages whose ``__init__`` runs when ``name`` is imported."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(source: str, module: str, is_package: bool, root: Path | None = None) -> set[str]:
    """bobkit modules that ``source`` (the code of ``module``) imports, relative imports resolved.

    ``from pkg import name`` counts ``pkg.name`` when that is a module, else ``pkg`` itself (a name defined in its
    ``__init__``). Code that does not parse (e.g. a notebook cell with IPython magics) imports nothing here.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if module_file(child, root) is not None else base)
    return {name for name in found if name.split(".")[0] == PACKAGE}


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """The absolute name of a (possibly relative) ``from`` import."""
    if level == 0:
        return module
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        return None
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{module}" if module else base


def module_closure(roots: set[str], root: Path | None = None) -> set[str]:
    """Every bobkit module reachable from ``roots`` through imports (parent packages included)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen.add(name)
        todo.extend(_parents(name))
        todo.extend(_imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", root))
    return seen - EXCLUDED_MODULES


@lru_cache(maxsize=4096)
def _imports_of(source: str, module: str, is_package: bool, root: Path | None) -> frozenset[str]:
    """:func:`imported_modules`, parsed once per process for each text: the closures of the seven tasks share
    most modules (parsing them once instead of per task makes ``bob validate`` ~3 s faster). Keyed by the text
    itself, so an edited file is parsed again."""
    return frozenset(imported_modules(source, module, is_package, root))


def notebook_code(path: Path) -> str:
    """The code cells of a notebook joined in order (what runs; Markdown, outputs and metadata are not code)."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    sources = ["".join(c.get("source", "")) if isinstance(c.get("source"), list) else str(c.get("source", ""))
               for c in cells if c.get("cell_type") == "code"]
    return "\n# --- cell ---\n".join(sources)


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


# The files behind each task as last hashed in this process: {task: {name: sha256}}.
_KNOWN: dict[str, dict[str, str]] = {}


def task_code_files(task: str, *, fresh: bool = False) -> dict[str, str]:
    """``{name: sha256}`` of everything that computes a cell of ``task``: its notebook and the modules it runs.

    Names are module names (``bobkit.tasks.smoke``) and the notebook's project path
    (``notebooks/tasks/smoke.ipynb``), so the mapping is the same on every machine. Computed once per process;
    ``fresh=True`` re-reads the files (and follows the imports again only when one of them changed), for a long
    batch to notice code edited under it.
    """
    known = _KNOWN.get(task)
    if known is None or (fresh and not _unchanged(task, known)):
        known = _KNOWN[task] = _hash_task_code(task)
    return dict(known)


def _unchanged(task: str, known: dict[str, str]) -> bool:
    """The files named in ``known`` still hash the same (a new import needs an edit to one of them)."""
    return all(_hash_named(task, name) == digest for name, digest in known.items())


def _hash_named(task: str, name: str) -> str | None:
    from bobkit.tasks import notebook_path
    from bobkit.utils.paths import repo_root

    try:
        if name == notebook_path(task):
            return _sha256(notebook_code(repo_root() / name))
        path = module_file(name)
        return _sha256(path.read_bytes()) if path is not None else None
    except (OSError, ValueError):
        return None


def _hash_task_code(task: str) -> dict[str, str]:
    from bobkit.tasks import TASKS, notebook_path
    from bobkit.utils.paths import repo_root

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    files: dict[str, str] = {}
    roots = {TASKS[task]}
    notebook = repo_root() / notebook_path(task)
    if notebook.is_file():
        code = notebook_code(notebook)
        files[notebook_path(task)] = _sha256(code)
        roots |= imported_modules(code, "__notebook__", False)
    for name in sorted(module_closure(roots)):
        files[name] = _sha256((module_file(name) or Path()).read_bytes())
    return dict(sorted(files.items()))


def code_version(task: str, *, fresh: bool = False) -> str:
    """16 hex digits over :func:`task_code_files`: changes exactly when the code behind ``task``'s cells does."""
    blob = json.dumps(task_code_files(task, fresh=fresh), sort_keys=True)
    return _sha256(blob)[:CODE_VERSION_DIGITS]


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Names whose hash differs between two :func:`task_code_files` mappings (added and removed included)."""
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
