"""Cells grouped into the distinct code paths they run, so a suite of 1,328 cells is rehearsed in a few dozen runs.

Two kinds of group cover every cell of a grid:

*pipeline groups* (:class:`CellGroup`)
    task x protocol variant x dataset loaders x backbone family: the task's real ``run()`` end to end on the
    stand-ins, with the family's smallest architecture among the group's cells (random weights). Cells differing
    only in values that take no other branch (learning rates, epochs, seeds, epsilons, another backbone of the
    same family) share a group. ``by="architecture"`` keys on the architecture instead of the family: every task
    x architecture x loader x protocol combination, end to end (for a machine with time to spare).
*architecture groups* (:class:`ArchGroup`)
    architecture x input geometry x what the tasks do with it (frozen features, fine-tuning, a detection trunk):
    checked on the meta device at the cells' real sizes (see :mod:`bobkit.rehearsal.architectures`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from bobkit.backbones import get_backbone

if TYPE_CHECKING:
    from bobkit.batch.grid import Cell

#: Parameters whose presence (not value) sends a cell down another branch of its task.
BRANCH_FLAGS = ("label_fraction", "shots_per_class", "crop_queries")
GROUPINGS = ("family", "architecture")
#: Detection input short side when a cell leaves it to the task (real datasets: 800).
DETECTION_DEFAULT_SIZE = 800


def protocol_variant(params: dict[str, Any]) -> str:
    """The protocol and the switches that pick a branch: ``linear_probe/sgd/label_fraction``, ``finetune``."""
    bits = [str(params.get("protocol", "-"))]
    if params.get("protocol") == "linear_probe" and params.get("probe_solver"):
        bits.append(str(params["probe_solver"]))
    bits += [flag for flag in BRANCH_FLAGS if params.get(flag) not in (None, False)]
    return "/".join(bits)


def loaders(params: dict[str, Any]) -> tuple[str, ...]:
    """The datasets a cell reads: ``dataset``, OOD ``targets`` (``corruptions`` included) and ``eval_dataset``."""
    names = [params["dataset"]] if params.get("dataset") else []
    names += [str(target).partition(":")[0] for target in params.get("targets") or []]
    if params.get("eval_dataset"):
        names.append(params["eval_dataset"])
    return tuple(dict.fromkeys(names))


def architecture(backbone: str) -> str:
    """The architecture a backbone builds: timm model plus the entry's extra constructor arguments."""
    entry = get_backbone(backbone)
    extra = ",".join(f"{k}={v}" for k, v in sorted(entry.model_kwargs.items()))
    return f"{entry.timm_model or entry.name}" + (f"[{extra}]" if extra else "")


def _size(backbone: str) -> float:
    params = get_backbone(backbone).params_millions
    return float("inf") if params is None else float(params)


@dataclass
class CellGroup:
    """Cells that run the same code path; ``cell`` (the one with the smallest backbone) stands for them all."""

    task: str
    variant: str
    datasets: tuple[str, ...]
    kind: str  # the backbone family (or architecture) of the group
    cells: list[Cell] = field(default_factory=list)

    @property
    def cell(self) -> Cell:
        """The representative: the cell with the smallest backbone (cheapest to rehearse)."""
        return min(self.cells, key=lambda c: (_size(c.params["backbone"]), c.params["backbone"]))

    @property
    def backbone(self) -> str:
        return self.cell.params["backbone"]

    @property
    def label(self) -> str:
        return f"{self.task} {self.variant} {'+'.join(self.datasets)} [{self.kind}: {self.backbone}]"


@dataclass
class ArchGroup:
    """One architecture at one input geometry, with what the grid's tasks do with it.

    ``uses`` holds ``frozen`` (pooled features, and the input gradient attacks take), ``finetune`` (a classifier
    head trained end to end, with the widest head the cells ask for in ``num_classes``), ``detect`` / ``detect-frozen``
    (a ``features_only`` trunk + FPN at the detection input of ``dataset``, trained or frozen).
    """

    architecture: str
    image_size: int
    dataset: str | None = None  # detection groups: the dataset whose image shape sets the input geometry
    uses: set[str] = field(default_factory=set)
    backbones: list[str] = field(default_factory=list)
    num_classes: int = 2
    layer_decay: float | None = None
    cells: int = 0

    @property
    def detection(self) -> bool:
        return self.dataset is not None

    @property
    def label(self) -> str:
        where = f"detection {self.dataset} @{self.image_size}" if self.detection else f"@{self.image_size}"
        return f"arch {self.architecture} {where} ({', '.join(sorted(self.uses))})"


def cell_groups(cells: Iterable[Cell], by: str = "family") -> list[CellGroup]:
    """Group cells by task x protocol variant x loaders x backbone family (or architecture), in grid order."""
    if by not in GROUPINGS:
        raise ValueError(f"by={by!r} is not one of {GROUPINGS}")
    groups: dict[tuple, CellGroup] = {}
    for cell in cells:
        p = cell.params
        if "backbone" in p:
            kind = get_backbone(p["backbone"]).family if by == "family" else architecture(p["backbone"])
        else:
            kind = "no backbone"
        key = (cell.task, protocol_variant(p), loaders(p), kind)
        groups.setdefault(key, CellGroup(*key)).cells.append(cell)
    return list(groups.values())


def _num_classes(params: dict[str, Any]) -> int:
    from bobkit.data import dataset_info, dataset_names

    name = params.get("dataset")
    return dataset_info(name).num_classes if name in dataset_names() else 12  # VisDA-2017's 12 classes


def arch_groups(cells: Iterable[Cell]) -> list[ArchGroup]:
    """One group per architecture x input geometry (x detection dataset), collecting the uses of its cells."""
    groups: dict[tuple, ArchGroup] = {}
    uses: dict[tuple, set[str]] = defaultdict(set)
    for cell in cells:
        p = cell.params
        if "backbone" not in p:
            continue
        if cell.task == "detection":
            size = int(p.get("image_size") or DETECTION_DEFAULT_SIZE)
            key = (architecture(p["backbone"]), size, p["dataset"])
            use = "detect-frozen" if p.get("protocol") == "frozen" else "detect"
        else:
            size = int(p["image_size"])
            key = (architecture(p["backbone"]), size, None)
            use = "finetune" if p.get("protocol") == "finetune" else "frozen"
        group = groups.setdefault(key, ArchGroup(*key))
        uses[key].add(use)
        if p["backbone"] not in group.backbones:
            group.backbones.append(p["backbone"])
        group.cells += 1
        if use == "finetune":
            group.num_classes = max(group.num_classes, _num_classes(p))
            group.layer_decay = p.get("layer_decay") if group.layer_decay is None else group.layer_decay
    for key, group in groups.items():
        group.uses = uses[key]
    return list(groups.values())
