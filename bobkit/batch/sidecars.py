"""Metrics sidecars: one JSON record per run, the unit of truth the results table is built from.

A sidecar ``runs/<task>/<run_key>/metrics.json`` holds ``status`` ("complete" | "failed"), ``run_key``, ``task``,
``params``, ``identity`` (the cell without the code: :func:`bobkit.batch.grid.cell_identity`), ``code_version``,
``metrics`` (scores only) with their ``stderr``, ``n_items``, ``higher_is_better`` and ``primary``,
``setting_params``, ``timings`` (descriptors), ``device``, ``batch_size_used``, ``error`` and ``provenance``. It is
written atomically and last (the runner writes it, :mod:`bobkit.results` reads it).

One place says how a record counts (:func:`record_verdict`), for ``bob run``, ``bob status`` and ``bob build``
alike: *complete* when it says ``status == "complete"``, its ``executed.ipynb`` is there and it was made by this
checkout's code (its ``code_version``); a complete record of other code is *stale* (:mod:`bobkit.batch.stale`).

Every read checks the record against one schema (:class:`SidecarRecord`, pydantic): a file that cannot be read
(invalid UTF-8, not a JSON object) or that does not fit (``run_key`` missing or not its folder's name, ``params`` or
``metrics`` null or a list, a seed that is not an integer...) is *unusable*: skipped, never fatal, and named with
the reason (:func:`sidecar_problem`, :func:`scan_sidecars`); the runner keeps it aside and runs its cell again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from bobkit.batch import codehash
from bobkit.utils.files import write_json
from bobkit.utils.text import short_repr

SIDECAR = "metrics.json"
NOTEBOOK = "executed.ipynb"
SCHEMA_VERSION = 2
#: How a readable record counts (:func:`record_verdict`).
VERDICTS = ("complete", "failed", "no_notebook", "stale")
#: A number in a record: an integer or a float (strict: never a bool or a string); ``null`` stands for NaN.
Number = StrictFloat | None


class SidecarParams(BaseModel):
    """A record's ``params``: any parameters, but a ``seed`` is an integer (the results table groups by it)."""

    model_config = ConfigDict(extra="allow", strict=True)

    seed: StrictInt = 0


class SidecarRecord(BaseModel):
    """The schema every sidecar is checked against when read; fields beyond these are kept as they are.

    ``run_key`` and ``status`` are required; a ``complete`` record also names its ``task``. Optional fields, when
    present, have their type (``params`` and ``metrics`` mappings, never ``null``; scores are numbers).
    """

    model_config = ConfigDict(extra="allow", strict=True)

    run_key: StrictStr = Field(min_length=1)
    status: StrictStr
    task: StrictStr | None = None
    params: SidecarParams = Field(default_factory=SidecarParams)
    metrics: dict[str, Number] = Field(default_factory=dict)
    stderr: dict[str, Number] | None = None
    n_items: dict[str, Number] | None = None
    higher_is_better: dict[str, StrictBool] | None = None
    primary: list[StrictStr] | None = None
    setting_params: dict[str, Any] | None = None
    identity: StrictStr | None = None
    code_version: StrictStr | None = None
    code_files: dict[str, StrictStr] | None = None
    started: Number = None
    error: dict[str, Any] | None = None
    history: list[Any] | None = None

    def missing_for_complete(self) -> list[str]:
        """Fields a complete record must have that this one lacks."""
        return [] if self.status != "complete" or self.task else ["task"]


def validation_problem(payload: dict[str, Any], run_key: str | None = None) -> str | None:
    """Why ``payload`` does not fit :class:`SidecarRecord` (one line naming the first bad fields), else ``None``.

    ``run_key`` is the name of the folder the record was found in: a record's ``run_key`` must be it.
    """
    try:
        record = SidecarRecord.model_validate(payload)
    except ValidationError as exc:
        return "; ".join(_field_error(error) for error in exc.errors()[:3])
    if record.missing_for_complete():
        return f"a complete record without {', '.join(record.missing_for_complete())}"
    if run_key is not None and record.run_key != run_key:
        return f"run_key {short_repr(record.run_key)} is not its folder's name {run_key!r}"
    return None


def _field_error(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "record"
    if error.get("type") == "missing":
        return f"{where} missing"
    return f"{where}={short_repr(error.get('input'))}: {error.get('msg', 'invalid')}"


def sidecar_problem(run_dir: str | os.PathLike[str]) -> str | None:
    """Why the run folder's sidecar cannot be used (``None`` when it is fine or absent)."""
    try:
        _load(Path(run_dir) / SIDECAR)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def _load(path: Path) -> dict[str, Any]:
    """A sidecar as a dict; ``ValueError`` for invalid UTF-8, invalid JSON, JSON that is not an object, or an object
    that does not fit the schema (:func:`validation_problem`)."""
    payload = json.loads(path.read_bytes().decode("utf-8"))
    if not isinstance(payload, dict):
        raise ValueError(f"not a JSON object but a JSON {type(payload).__name__}")
    problem = validation_problem(payload, run_key=path.parent.name)
    if problem:
        raise ValueError(f"does not fit the sidecar schema: {problem}")
    return payload


def read_sidecar(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a run folder, or ``None`` when absent or unreadable (never a partial one: writes are atomic).

    Unreadable (invalid UTF-8, not JSON, a JSON list...) reads as ``None``: see :func:`sidecar_problem`.
    """
    try:
        return _load(Path(run_dir) / SIDECAR)
    except (OSError, ValueError):
        return None


def current_code_version(task: str) -> str | None:
    """The code version of ``task`` in this checkout (``None`` for a task that no longer exists)."""
    try:
        return codehash.code_version(task)
    except ValueError:
        return None


def is_current(sidecar: Mapping[str, Any]) -> bool:
    """True when the record was made by the code of this checkout (older records without a version are not)."""
    version = sidecar.get("code_version")
    return version is not None and version == current_code_version(str(sidecar.get("task")))


def record_verdict(run_dir: str | os.PathLike[str], sidecar: Mapping[str, Any]) -> str:
    """How a readable record counts, the one definition ``bob run``, ``bob status`` and ``bob build`` share.

    ``failed`` (any status but complete), ``no_notebook`` (its ``executed.ipynb`` is gone), ``stale`` (made by
    other code than this checkout's: under a cell's current run key that means its ``code_version`` does not match
    the key) or ``complete``.
    """
    if sidecar.get("status") != "complete":
        return "failed"
    if not (Path(run_dir) / NOTEBOOK).is_file():
        return "no_notebook"
    return "complete" if is_current(sidecar) else "stale"


def is_complete(run_dir: str | os.PathLike[str]) -> bool:
    """True when the run folder holds a usable record whose verdict is ``complete`` (:func:`record_verdict`)."""
    sidecar = read_sidecar(run_dir)
    return sidecar is not None and record_verdict(run_dir, sidecar) == "complete"


def set_aside_reason(run_dir: str | os.PathLike[str]) -> str | None:
    """Why the sidecar in a cell's run folder must be kept aside before the cell runs again, else ``None``.

    Unusable (:func:`sidecar_problem`), or complete but made by other code: in the folder of a cell's current run
    key such a record contradicts its key, and running the cell would otherwise overwrite it.
    """
    problem = sidecar_problem(run_dir)
    if problem is not None:
        return problem
    sidecar = read_sidecar(run_dir)
    if sidecar is not None and sidecar.get("status") == "complete" and not is_current(sidecar):
        return (f"made by code {sidecar.get('code_version')}, not this checkout's "
                f"{current_code_version(str(sidecar.get('task')))} that its run key names")
    return None


def write_sidecar(run_dir: str | os.PathLike[str], sidecar: dict[str, Any]) -> Path:
    """Write a sidecar atomically; returns its path."""
    path = Path(run_dir) / SIDECAR
    write_json(path, {"schema": SCHEMA_VERSION, **sidecar})
    return path


#: What a failed record keeps of a record that could not be written (the heavy parts, output tails and
#: provenance, are what a full disk could not take).
_FAILED_RECORD_FIELDS = ("run_key", "task", "label", "params", "identity", "code_version", "code_files", "resources",
                         "source", "params_used", "setting_params", "started", "wall_seconds", "runner")


def record_outcome(run_dir: str | os.PathLike[str], sidecar: dict[str, Any]) -> str | None:
    """Write a cell's sidecar; when that fails (a full disk, a lost mount), say so instead of raising.

    A failed record, much smaller, is tried next, naming the error and the path; when even that cannot be written,
    the cell's executed notebook is removed too, so nothing in the folder can pass for a record and the cell stays
    pending. Returns ``None`` when ``sidecar`` was written, else the error line (path included).
    """
    run_dir = Path(run_dir)
    try:
        write_sidecar(run_dir, sidecar)
        return None
    except OSError as exc:
        problem = f"could not write {run_dir / SIDECAR}: {exc.strerror or exc}"
    failed = {key: sidecar[key] for key in _FAILED_RECORD_FIELDS if key in sidecar}
    failed.update(status="failed", metrics={}, error={"kind": "record", "message": problem, "output_tail": ""})
    try:
        write_sidecar(run_dir, failed)
        return problem
    except OSError:
        (run_dir / NOTEBOOK).unlink(missing_ok=True)
        return f"{problem}; nothing recorded, the cell stays pending"


@dataclass
class SidecarScan:
    """The sidecars of a runs folder: readable ones by path, and the unreadable ones with the reason."""

    sidecars: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


def scan_sidecars(runs_dir: str | os.PathLike[str], task: str = "*") -> SidecarScan:
    """Every sidecar under ``runs_dir/<task>/<run_key>/``; unreadable ones are listed, not raised."""
    scan = SidecarScan()
    for path in sorted(Path(runs_dir).glob(f"{task}/*/{SIDECAR}")):
        try:
            scan.sidecars.append((path, _load(path)))
        except (OSError, ValueError) as exc:
            scan.corrupt.append((path, str(exc)))
    return scan


def iter_sidecars(runs_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """All readable sidecars under ``runs_dir`` (``runs/<task>/<run_key>/metrics.json``)."""
    for _, sidecar in scan_sidecars(runs_dir).sidecars:
        yield sidecar
