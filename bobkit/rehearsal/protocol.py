"""The paper's protocol table (``bobkit/reference/paper_protocol.yaml``) and how much of it a suite covers.

The table has one row per task x dataset x protocol of the paper, each with the bobkit cell parameters that realise
it (``match``). :func:`coverage` expands nothing itself: it takes a suite's cells (:func:`bobkit.batch.grid.load_grid`)
and says which rows have a cell, which are left out on purpose (``left_out``, each with its reason) and which are
missing; :meth:`Coverage.check` raises naming the missing rows, so a suite that drops a row of the paper fails.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import yaml

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell

PROTOCOL_FILE = Path(__file__).resolve().parents[1] / "reference" / "paper_protocol.yaml"
#: Every row states these.
ROW_KEYS = ("id", "task", "datasets", "splits", "protocol", "recipe", "metric", "source", "match")


@dataclass(frozen=True)
class ProtocolRow:
    """One task x dataset x protocol of the paper; ``match`` is the cell parameters that realise it."""

    id: str
    task: str
    datasets: str
    splits: str
    protocol: str
    recipe: str
    metric: str
    source: str
    match: Mapping[str, Any]


@dataclass(frozen=True)
class PaperProtocol:
    """The parsed table: its rows, the rows a suite leaves out (id -> reason) and the backbones it leaves out of a
    task (``backbone``, ``task``, ``reason``)."""

    rows: tuple[ProtocolRow, ...]
    left_out: Mapping[str, str]
    backbone_left_out: tuple[Mapping[str, str], ...] = ()


@dataclass
class Coverage:
    """Which rows of the paper's protocol a suite's cells cover."""

    covered: dict[str, list[str]] = field(default_factory=dict)  # row id -> labels of the cells that realise it
    missing: list[str] = field(default_factory=list)  # rows with no cell and no reason
    left_out: dict[str, str] = field(default_factory=dict)  # rows with no cell on purpose -> reason

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.missing) + len(self.left_out)

    def summary(self) -> str:
        """``covered/total rows covered`` and what is left out or missing."""
        text = f"{len(self.covered)}/{self.total} rows of the paper's protocol covered"
        if self.left_out:
            text += f"; left out: {', '.join(sorted(self.left_out))}"
        if self.missing:
            text += f"; MISSING: {', '.join(self.missing)}"
        return text

    def check(self) -> None:
        """A ``ValueError`` naming every row that has neither a cell nor a reason to be left out."""
        if self.missing:
            raise ValueError(f"no cell covers the paper's protocol row(s) {', '.join(self.missing)} "
                             f"(add cells or list them in left_out with the reason)")


def check_protocol(data: Any, path: Path | str = PROTOCOL_FILE) -> PaperProtocol:
    """The table of ``data`` when every row is complete, ids are unique and every left-out names a row with a
    reason; a ``ValueError`` naming the first gap otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise ValueError(f"{path} has no 'rows'")
    rows = []
    for item in data["rows"]:
        missing = [key for key in ROW_KEYS if not (isinstance(item, dict) and item.get(key))]
        if missing:
            name = item.get("id") if isinstance(item, dict) else item
            raise ValueError(f"{path}: row {name!r} lacks {missing}")
        if not isinstance(item["match"], dict) or "task" not in item["match"]:
            raise ValueError(f"{path}: row {item['id']!r}: match must be a mapping with a 'task'")
        rows.append(ProtocolRow(**{key: item[key] for key in ROW_KEYS}))
    ids = [row.id for row in rows]
    doubles = sorted({i for i in ids if ids.count(i) > 1})
    if doubles:
        raise ValueError(f"{path}: row ids {doubles} appear more than once")
    left_out = data.get("left_out") or {}
    for row_id, reason in left_out.items():
        if row_id not in ids:
            raise ValueError(f"{path}: left_out names {row_id!r}, which is no row (rows: {', '.join(ids)})")
        if not (isinstance(reason, str) and reason.strip()):
            raise ValueError(f"{path}: left_out {row_id!r} has no reason")
    backbones = tuple(data.get("backbone_left_out") or ())
    for entry in backbones:
        if not all(isinstance(entry, dict) and str(entry.get(key) or "").strip()
                   for key in ("backbone", "task", "reason")):
            raise ValueError(f"{path}: backbone_left_out entry {entry!r} needs a backbone, a task and a reason")
    return PaperProtocol(rows=tuple(rows), left_out=dict(left_out), backbone_left_out=backbones)


@functools.lru_cache(maxsize=1)
def load_protocol() -> PaperProtocol:
    """The project's paper protocol table (:data:`PROTOCOL_FILE`), checked."""
    with PROTOCOL_FILE.open() as fh:
        return check_protocol(yaml.safe_load(fh), PROTOCOL_FILE)


def matches(match: Mapping[str, Any], task: str, params: Mapping[str, Any]) -> bool:
    """Whether a cell of ``task`` with ``params`` realises a row's ``match``: every key equal (``task`` against the
    cell's task), or for a list-valued parameter (ood ``targets``), the value one of its items."""
    for key, wanted in match.items():
        have = task if key == "task" else params.get(key)
        if isinstance(have, (list, tuple)) and not isinstance(wanted, (list, tuple)):
            if wanted not in have:
                return False
        elif have != wanted:
            return False
    return True


def coverage(cells: Iterable[Cell], protocol: PaperProtocol | None = None) -> Coverage:
    """Which rows of ``protocol`` (default: the project's table) ``cells`` cover."""
    protocol = load_protocol() if protocol is None else protocol
    cells = list(cells)
    result = Coverage()
    for row in protocol.rows:
        labels = [cell.label for cell in cells if matches(row.match, cell.task, cell.params)]
        if labels:
            result.covered[row.id] = labels
        elif row.id in protocol.left_out:
            result.left_out[row.id] = protocol.left_out[row.id]
        else:
            result.missing.append(row.id)
    return result
