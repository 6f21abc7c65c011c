"""Registry files: datasets and backbones declared in YAML, never coded.

A registry file holds a ``datasets:`` and/or a ``backbones:`` mapping (name -> declaration), the same sections a
params grid may hold inline::

    datasets:
      my_photos: {folder: photos, split: {test: 0.2, seed: 0}}
    backbones:
      my_convnext: {timm: convnext_tiny.fb_in22k}

``$BOB_REGISTRY`` names the files in effect (``os.pathsep``-separated, absolute). Every process reads the same
variable, so the ``bob run`` process, its papermill kernels and Slurm jobs all see the same declarations: a grid
with inline sections or a ``registry:`` key puts its files at the front (:func:`activate`). Relative paths in a
declaration resolve against the folder of the file that declares it (or its ``base_dir:`` key, which the grid sets
when it exports its inline sections), so a declaration means the same from any working directory.

This module only reads and merges the files; :mod:`bobkit.data.user` and :mod:`bobkit.backbones.user` give the
declarations their meaning.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from bobkit.utils.files import atomic_path, sha256_bytes
from bobkit.utils.paths import cache_dir
from bobkit.utils.text import short_repr

__all__ = ["REGISTRY_ENV", "SECTIONS", "Declaration", "DeclarationError", "activate", "declarations",
           "export_registry", "read_registry", "registry_files"]

#: The environment variable naming the registry files in effect.
REGISTRY_ENV = "BOB_REGISTRY"
#: The sections a registry file (or a grid) may declare.
SECTIONS = ("datasets", "backbones")
#: A declared name becomes part of cache paths and file names: letters, digits, ``_``, ``-`` and ``.``, no ``..``.
NAME_PATTERN = r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]*"
#: Further keys a registry file may hold (anything else in a grid is the grid's business).
_REGISTRY_KEYS = ("name", "description", "base_dir", "declared_in", *SECTIONS)


class DeclarationError(ValueError):
    """A declaration that cannot be used; the message names the file, the entry and the bad field or value."""


@dataclass(frozen=True)
class Declaration:
    """One declared dataset or backbone, as written.

    Attributes
    ----------
    name : str
        The declared name (the key of the section's mapping).
    section : str
        ``datasets`` or ``backbones``.
    fields : dict
        The declaration's mapping (a bare string is given as ``{"value": ...}``).
    base_dir : Path
        Where the declaration's relative paths resolve.
    source : str
        The file declaring it (for messages and provenance).
    """

    name: str
    section: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    base_dir: Path = Path(".")
    source: str = ""

    def __hash__(self) -> int:  # the fields mapping is not hashable; its JSON form is
        return hash((self.name, self.section, json.dumps(self.fields, sort_keys=True, default=str),
                     str(self.base_dir), self.source))

    @property
    def where(self) -> str:
        """``dataset 'x' (declared in FILE)`` for messages."""
        return f"{self.section[:-1]} {self.name!r} (declared in {self.source})"

    def error(self, problem: str) -> DeclarationError:
        """A :class:`DeclarationError` naming this declaration."""
        return DeclarationError(f"{self.where}: {problem}")

    def path(self, key: str, value: Any | None = None) -> Path:
        """The field ``key`` (or ``value``) as a path, relative ones resolved against :attr:`base_dir`."""
        raw = self.fields.get(key) if value is None else value
        if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
            raise self.error(f"{key}={short_repr(raw)} must be a path")
        path = Path(os.path.expandvars(str(raw))).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


def registry_files() -> list[Path]:
    """The files ``$BOB_REGISTRY`` names, in order (a missing file is an error naming it and the variable)."""
    raw = os.environ.get(REGISTRY_ENV, "")
    files = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DeclarationError(f"${REGISTRY_ENV} names registry file(s) that do not exist: {', '.join(missing)}")
    return files


def read_registry(path: str | os.PathLike[str], *, strict: bool = True) -> dict[str, dict[str, Declaration]]:
    """The ``datasets`` and ``backbones`` declarations of one YAML file (a registry file or a grid).

    Parameters
    ----------
    path
        The file.
    strict
        Reject top-level keys a registry file does not have (False for grids, whose other keys are their own).

    Raises
    ------
    DeclarationError
        Not YAML, not a mapping, a section that is not a mapping, a bad name, an unknown key (``strict``).
    """
    path = Path(path).expanduser().resolve()
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DeclarationError(f"registry file {path}: cannot be read as YAML: {exc}") from exc
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise DeclarationError(f"registry file {path}: expected a mapping with 'datasets' and/or 'backbones'")
    unknown = sorted(str(k) for k in spec if k not in _REGISTRY_KEYS and not str(k).startswith("x-"))
    if strict and unknown:
        raise DeclarationError(f"registry file {path}: unknown top-level key(s) {unknown}; a registry file holds "
                               f"{', '.join(_REGISTRY_KEYS)}")
    base = Path(spec["base_dir"]) if spec.get("base_dir") else path.parent
    source = str(spec.get("declared_in") or path)  # a grid's exported sections name the grid, not the cache file
    return {section: parse_section(spec.get(section), section, base, source) for section in SECTIONS}


def parse_section(raw: Any, section: str, base_dir: Path, source: str) -> dict[str, Declaration]:
    """A ``datasets:`` / ``backbones:`` section as declarations (a list of bare names is allowed for backbones)."""
    if raw is None:
        return {}
    if section == "backbones" and isinstance(raw, list):  # [convnext_tiny.fb_in22k, ...]: timm names as is
        raw = {str(item): str(item) for item in raw}
    if not isinstance(raw, dict):
        raise DeclarationError(f"{source}: '{section}' must be a mapping of name -> declaration, got {short_repr(raw)}")
    out = {}
    for name, fields in raw.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            raise DeclarationError(f"{source}: {section[:-1]} name {short_repr(name)} must be letters, digits, '_', "
                                   f"'-' or '.' "
                                   f"(it becomes part of cache paths)")
        if isinstance(fields, str):
            fields = {"value": fields}
        if not isinstance(fields, dict):
            raise DeclarationError(f"{source}: {section[:-1]} {short_repr(name)} must be a mapping of fields, "
                                   f"got {short_repr(fields)}")
        out[name] = Declaration(name, section, dict(fields), base_dir, source)
    return out


def _stamp(files: list[Path]) -> tuple[Any, ...]:
    """What identifies the files' current content cheaply (the cache below re-reads on any change)."""
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


_CACHE: dict[tuple[Any, ...], dict[str, dict[str, Declaration]]] = {}


def declarations(section: str) -> dict[str, Declaration]:
    """Every declaration of ``section`` in the ``$BOB_REGISTRY`` files (re-read when a file or the variable changes).

    A name declared twice must be declared identically (the same fields resolving to the same folder); otherwise
    :class:`DeclarationError` names both files.
    """
    if section not in SECTIONS:
        raise ValueError(f"section {section!r} is not one of {SECTIONS}")
    files = registry_files()
    key = _stamp(files)
    if key not in _CACHE:
        merged: dict[str, dict[str, Declaration]] = {s: {} for s in SECTIONS}
        for f in files:
            for sec, decls in read_registry(f).items():
                for name, decl in decls.items():
                    seen = merged[sec].get(name)
                    if seen is not None and (seen.fields, seen.base_dir) != (decl.fields, decl.base_dir):
                        raise DeclarationError(f"{sec[:-1]} {short_repr(name)} is declared differently in "
                                               f"{seen.source} and "
                                               f"{decl.source}; rename one of them")
                    merged[sec].setdefault(name, decl)
        _CACHE.clear()  # one generation at a time: the variable rarely changes within a process
        _CACHE[key] = merged
    return _CACHE[key][section]


def export_registry(sections: Mapping[str, Any], base_dir: str | os.PathLike[str],
                    declared_in: str | None = None) -> Path:
    """Write inline declarations (a grid's sections) as a registry file other processes can read; return it.

    The file is content-addressed (``<cache>/registries/<sha16>.yaml``, written atomically) and records
    ``base_dir``, so relative paths keep resolving against the grid's folder, and ``declared_in`` (the grid file),
    which messages about its declarations name instead of the cache file.
    """
    payload = {"base_dir": str(Path(base_dir).expanduser().resolve()),
               **({"declared_in": str(declared_in)} if declared_in else {}),
               **{s: sections[s] for s in SECTIONS if sections.get(s) is not None}}
    text = yaml.safe_dump(payload, sort_keys=True)
    target = cache_dir() / "registries" / f"{sha256_bytes(text)[:16]}.yaml"
    if not (target.is_file() and target.read_text(encoding="utf-8") == text):
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return target


def activate(files: list[Path]) -> None:
    """Put ``files`` at the front of ``$BOB_REGISTRY`` (this process and every process it starts)."""
    current = [p for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if p.strip()]
    wanted = [str(Path(f).expanduser().resolve()) for f in files]
    os.environ[REGISTRY_ENV] = os.pathsep.join(dict.fromkeys([*wanted, *current]))
