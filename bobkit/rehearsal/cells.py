"""One pipeline group, rehearsed: its representative cell in miniature through the task's real ``run()``.

The cell keeps every parameter that picks code (task, protocol, datasets, image size, targets, attacks, solver,
low-shot rule, layer decay, ...) and shrinks only what sets the amount of work: a handful of images per split,
one epoch with one step (the batch holds every training image), one PGD step, two attacked images, the first
two epsilons and corruption severities; detection
trains at a small input side (its real geometry is checked on the meta device). The task writes its output
(format 2) as for the runner, and the output is read back and held to the runner's rule: every score finite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bobkit.rehearsal.groups import CellGroup
from bobkit.tasks.output import TASK_OUTPUT, parse_task_output

#: Upper bounds of the sizes a rehearsed cell keeps (stand-ins are smaller still). Frozen-feature cells read the
#: stand-in's whole train split (a dozen images, at least two per class): a selection on held-out training items
#: (``probe_l2="auto"``, ``lr`` lists) needs two per class, as the real splits have.
MINIATURE_SIZES = {"max_test": 2, "max_samples": 10, "max_target": 2, "max_attack": 2,
                   "max_corrupted": 2, "n_train": 2, "n_val": 2}
#: Loops cut to one round.
ONE_ROUND = ("epochs", "probe_epochs", "pgd_steps")
#: Sweeps inside a cell cut to their first two values (the first is often the special case, e.g. epsilon 0).
FIRST_TWO = ("epsilons", "severities")
#: Images in the one fine-tuning step (the batch holds all of them).
FINETUNE_IMAGES = 2
#: Detection's training input short side in the rehearsal (the real one is checked on the meta device).
DETECTION_SIZE = 128


@dataclass
class Outcome:
    """How one group of the rehearsal went."""

    label: str
    kind: str  # "arch" or "cell"
    cells: int
    passed: bool
    error: str = ""
    seconds: float = 0.0


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the reason, without the traceback)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def miniature(task: str, params: dict[str, Any], *, threads: int = 1) -> dict[str, Any]:
    """``params`` with the amount of work cut down and every branch-picking value kept; runs on the CPU."""
    p = dict(params)
    if "max_train" in p:
        p["max_train"] = None  # the whole stand-in split (fine-tuning cuts it to one batch below)
    if p.get("shots_per_class") is not None and p.get("dataset"):
        p.update(shots_per_class=None, label_fraction=standin_shots_fraction(str(p["dataset"]),
                                                                             int(p["shots_per_class"])))
    if p.get("label_fraction") is not None and p.get("dataset"):
        p["label_fraction"] = standin_label_fraction(str(p["dataset"]), float(p["label_fraction"]))
    for name, bound in MINIATURE_SIZES.items():
        if name in p:
            p[name] = bound if p[name] is None else min(int(p[name]), bound)
    if task == "retrieval" and p.get("protocol", "class_folder") == "class_folder" and "max_samples" in p:
        # the stand-in's whole split (a few items per class): a class yields a query only with at least
        # 1 / query_fraction items, which a 10-item subset of several classes does not leave
        p["max_samples"] = None
    if isinstance(p.get("lr_steps"), list) and p.get("epochs"):
        p["lr_steps"] = [float(step) / float(p["epochs"]) for step in p["lr_steps"]]  # same places in one epoch
    for name in ONE_ROUND:
        if name in p:
            p[name] = 1
    for name in FIRST_TWO:
        if isinstance(p.get(name), list):
            p[name] = p[name][:2]
    if p.get("protocol") == "finetune" and task != "detection":
        # one step: the batch holds every training image, FINETUNE_IMAGES per micro-batch (mixup pairs them)
        images = FINETUNE_IMAGES * int(p.get("accum_steps") or 1)
        p["max_train"] = min(p.get("max_train") or images, images)
        p["batch_size"] = images
    if task == "detection":
        p["image_size"] = min(int(p.get("image_size") or DETECTION_SIZE), DETECTION_SIZE)
        p["batch_size"] = MINIATURE_SIZES["n_train"]
    p.update(device="cpu", num_threads=threads, loader_workers=0, compile=False)
    return p


def standin_shots_fraction(dataset: str, shots: int) -> float:
    """The label fraction that ``shots`` items per class are of the real training split (at most 1).

    A ``shots_per_class`` cell is rehearsed as this fraction: the stand-ins hold a few of a dataset's classes (3 of
    CIFAR-100's 100), so N items of every class cannot exist there and the task rightly refuses N shots; the
    fraction keeps the low-shot path (a stratified subset of the training items, then the probe on it).
    """
    from bobkit.data import dataset_info

    info = dataset_info(dataset)
    return min(1.0, shots / (info.num_items["train"] / info.num_classes))


def standin_label_fraction(dataset: str, fraction: float) -> float:
    """The label fraction that leaves the stand-in as many items per class as ``fraction`` leaves the real
    dataset, as far as it matters: one (10% of Flowers-102's 10 per class: no item left to validate on) or
    several (10% of CIFAR-100's 500; the stand-in keeps all of its own, at least two).
    """
    from bobkit.data import dataset_info

    info = dataset_info(dataset)
    per_class = info.num_items["train"] / info.num_classes
    keeps = max(1, int(round(fraction * per_class)))  # as bobkit.data.datasets.low_shot_indices rounds
    return 1.0 if keeps >= 2 else 1e-6  # 1e-6: one item per class (low_shot_indices keeps at least one)


def run_group(group: CellGroup, twin: dict[str, str], out_dir: Path, *, threads: int = 1) -> dict[str, float]:
    """Run the group's representative cell in miniature with its backbone's random-weight twin.

    Returns the scores the task handed over; raises whatever the task raised, or ``FloatingPointError`` when a
    score is not finite (the runner fails such a cell).
    """
    from bobkit.tasks import get_task

    cell = group.cell
    params = miniature(cell.task, cell.params, threads=threads)
    if "backbone" in params:
        params["backbone"] = twin.get(params["backbone"], params["backbone"])
    out_dir.mkdir(parents=True, exist_ok=True)
    get_task(cell.task).run(**params, output_dir=str(out_dir))
    output = parse_task_output(json.loads((out_dir / TASK_OUTPUT).read_text(encoding="utf-8")))
    bad = output.non_finite()
    if bad:
        raise FloatingPointError(f"non-finite metric(s): {', '.join(bad)} (the runner fails such a cell)")
    return dict(output.metrics)
