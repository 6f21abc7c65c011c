"""The ``bob plan`` table: per task and in total, passes, images, device hours, peak memory; the saving ratio; the
cells that cannot finish or fit on their resources, each with its remedies."""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

from bobkit.rehearsal import feasibility as F
from bobkit.rehearsal.plan import GIB, CellCost, Plan


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f}M" if value >= 1e5 else f"{value:,.0f}"


def _peak(cost: CellCost) -> float:
    return cost.feasibility.peak_bytes if cost.feasibility is not None else cost.peak_bytes


def _held(cost: CellCost) -> float:
    return cost.feasibility.gpu_seconds if cost.feasibility is not None else cost.seconds


def _requeues(cost: CellCost) -> int:
    return (cost.feasibility.requeues or 0) if cost.feasibility is not None else 0


def plan_rows(plan: Plan) -> list[dict[str, object]]:
    """One row per task and a total: cells, forward/backward passes (images), images read, device hours as
    written and the paper's way, GPU-hours held on the cells' resources, requeues, the largest peak memory per
    GPU."""
    by_task: dict[str, list] = defaultdict(list)
    for cost in plan.cells:
        by_task[cost.cell.task].append(cost)
    rows = []
    for task, costs in [*by_task.items(), ("total", plan.cells)]:
        rows.append({
            "task": task, "cells": len(costs),
            "forward": sum(c.forward_run for c in costs), "forward_paper": sum(c.forward for c in costs),
            "backward": sum(c.backward for c in costs), "images": sum(c.images for c in costs),
            "hours": sum(c.seconds for c in costs) / 3600, "paper_hours": sum(c.paper_seconds for c in costs) / 3600,
            "lbfgs_hours": sum(c.lbfgs_seconds for c in costs) / 3600,
            "held_hours": sum(_held(c) for c in costs) / 3600, "requeues": sum(_requeues(c) for c in costs),
            "peak_gib": max((_peak(c) for c in costs), default=0.0) / GIB,
        })
    return rows


def format_plan(plan: Plan, label: str = "") -> str:
    """The plan as a text table with the saving ratio, where the figures came from, and memory warnings."""
    header = ("task", "cells", "forward", "forward (paper)", "backward", "images read", "GPU-h", "GPU-h (paper)",
              "GPU-h (L-BFGS)", "GPU-h held", "requeues", "peak GiB/GPU")
    rows = [header]
    for r in plan_rows(plan):
        rows.append((str(r["task"]), str(r["cells"]), _m(r["forward"]), _m(r["forward_paper"]), _m(r["backward"]),
                     _m(r["images"]), f"{r['hours']:,.1f}", f"{r['paper_hours']:,.1f}", f"{r['lbfgs_hours']:,.1f}",
                     f"{r['held_hours']:,.1f}", f"{r['requeues']:,}", f"{r['peak_gib']:,.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"plan{' of ' + label if label else ''} on {plan.table.device} ({plan.table.name}, "
             f"{plan.table.precision}; {plan.table.measured})"]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    total = plan_rows(plan)[-1]
    if total["hours"]:
        lines.append("")
        lines.append(f"saving against the paper's way (every cell extracts its own features, SGD probe for 90 epochs):"
                     f" {total['paper_hours']:,.1f} / {total['hours']:,.1f} GPU-h = "
                     f"{total['paper_hours'] / total['hours']:.2f}x as written (shared features and trainings); "
                     f"{total['paper_hours'] / total['lbfgs_hours']:.2f}x with the L-BFGS probe "
                     f"({total['lbfgs_hours']:,.1f} GPU-h)")
    frozen = [c for c in plan.cells if not any(w.training for w in c.work)  # a frozen-trunk detector still trains
              and (not c.backward or c.cell.task == "robustness" and c.probe_seconds)]
    frozen_hours = sum(c.seconds for c in frozen) / 3600
    if frozen_hours:
        paper = sum(c.paper_seconds for c in frozen) / 3600
        lbfgs = sum(c.lbfgs_seconds for c in frozen) / 3600
        lines.append(f"frozen-feature cells alone ({len(frozen)}: probes, retrieval, OOD and robustness probes): "
                     f"{paper:,.1f} / {frozen_hours:,.1f} GPU-h = {paper / frozen_hours:.2f}x as written; "
                     f"{paper / lbfgs:.2f}x with the L-BFGS probe")
    lines += selection_notes(plan)
    sources = defaultdict(int)
    for cost in plan.cells:
        for source in cost.sources:
            sources[source] += 1
    if sources:
        lines.append("per-image times: " + ", ".join(f"{n} cells {s}" for s, n in sorted(sources.items()))
                     + " (family rate: an unmeasured architecture at its family's measured FLOP rate)")
    lines += resource_notes(plan)
    if plan.shared_training:
        hours = sum(seconds for _, seconds in plan.shared_training) / 3600
        tasks = ", ".join(sorted({cell.task for cell, _ in plan.shared_training}))
        lines.append(f"trained once: {len(plan.shared_training)} {tasks} cell(s) use the probe head or fine-tuned "
                     f"weights another cell trains (shared artifacts): {hours:,.1f} GPU-h not spent")
    if plan.repeated_training:
        hours = sum(seconds for _, seconds in plan.repeated_training) / 3600
        tasks = ", ".join(sorted({cell.task for cell, _ in plan.repeated_training}))
        lines.append(f"repeated fine-tuning: {len(plan.repeated_training)} {tasks} cell(s) train what an earlier cell "
                     f"already trained (same backbone, data and recipe): {hours:,.1f} GPU-h that keeping the "
                     "fine-tuned weights would save")
    lines += subset_notes(plan)
    for cell, reason in plan.skipped:
        lines.append(f"not costed: {cell.label}: {reason}")
    lines += verdict(plan)
    return "\n".join(lines)


def selection_notes(plan: Plan) -> list[str]:
    """The SGD probes an L2 selection fits where the paper's way fits one (why a probe cell can cost more than the
    paper's way: the selection repeats the 90-epoch fit)."""
    selecting = [c for c in plan.cells if c.probe_fits > 1 and any(w.what == "sgd probe" for w in c.work)]
    if not selecting:
        return []
    fits = sum(c.probe_fits for c in selecting)
    written = sum(c.probe_seconds for c in selecting) / 3600
    paper = sum(c.paper_probe_seconds for c in selecting) / 3600
    return [f"probe selection: {len(selecting)} SGD probe cell(s) fit {fits:,} probes (probe_l2=auto: each L2 value "
            f"on each validation fold, then the refit) where the paper's way fits one each: {written:,.1f} GPU-h of "
            f"probes against {paper:,.1f} (a fixed probe_l2 fits one)"]


def resource_notes(plan: Plan) -> list[str]:
    """The cells on their resources: GPU-hours held, the longest cell, requeues, input-bound cells, assumptions."""
    placed = [c for c in plan.cells if c.feasibility is not None]
    if not placed:
        return []
    held = sum(_held(c) for c in placed) / 3600
    busy = sum(c.feasibility.busy_seconds for c in placed) / 3600
    longest = max(placed, key=lambda c: c.feasibility.wall_seconds)
    found = longest.feasibility
    requeued = [c for c in placed if _requeues(c)]
    lines = [f"on their resources: {held:,.1f} GPU-h held (wall time x GPUs), {held - busy:,.1f} of them not "
             "computing (GPUs idle during single-process work, input waits, start-ups, state saves, scaling loss); "
             f"longest cell {found.wall_seconds / 3600:,.1f} h "
             f"on {found.placement.devices} GPU(s) ({longest.cell.label}); "
             f"{sum(_requeues(c) for c in requeued):,} requeue(s) in {len(requeued)} cell(s)"]
    bound = [c for c in placed if c.feasibility.input_bound]
    if bound:
        worst = max(bound, key=lambda c: c.feasibility.cores_needed - c.feasibility.placement.cpus)
        need = worst.feasibility
        lines.append(f"input: {len(bound)} cell(s) feed their GPUs slower than they compute (priced at the input's "
                     f"pace); the furthest: {worst.cell.label} needs {math.ceil(need.cores_needed)} cores "
                     f"({need.cores_needed / max(need.placement.devices, 1):,.1f} per GPU), has cpus: "
                     f"{need.placement.cpus}")
    lines.append(f"assumed: data-parallel speed-up {F.DATA_PARALLEL_EFFICIENCY:g} x processes; "
                 f"{F.ATTEMPT_STARTUP_S:.0f} s start-up per attempt; state saved every "
                 f"{F.STATE_SAVE_INTERVAL_S:.0f} s at {F.STATE_WRITE_BYTES_PER_S / 1e9:g} GB/s; input "
                 f"{F.INPUT_IMAGES_PER_CORE['augmented']:.0f} (augmented) / {F.INPUT_IMAGES_PER_CORE['plain']:.0f} "
                 "(plain) images/s per core")
    return lines


def verdict(plan: Plan) -> list[str]:
    """Every cell that cannot finish or fit, one line each with its remedies; a closing count either way."""
    lines = []
    cannot = plan.cannot_finish
    if cannot:
        lines.append(f"cannot finish: {len(cannot)} cell(s) on their resources, under their time limit and "
                     "max_requeues:")
        for cost in cannot:
            found = cost.feasibility
            place = found.placement
            if found.indivisible:
                why = found.indivisible
            elif found.attempts is None:
                why = f"its {found.too_long} cannot resume and is longer than one attempt"
            else:
                why = (f"{found.wall_seconds / 3600:,.1f} h on {place.processes} process(es), {found.requeues} "
                       f"requeue(s) under {F.time_limit_text(place.timeout_min)}, max_requeues {place.max_requeues}")
            lines.append(f"  {cost.cell.label}: {why}; remedy: {'; or '.join(found.time_remedies)}")
    over = plan.over_memory
    if over:
        usable = F.usable_bytes(plan.table.memory_gib) / GIB
        lines.append(f"over memory: {len(over)} cell(s) need more than the {usable:,.1f} GiB per GPU that tensors get "
                     f"of the device's {plan.table.memory_gib:g} GiB ({F.ALLOCATOR_SHARE:.0%}: torch's allocator "
                     "reserves the rest):")
        for cost in over:
            found = cost.feasibility
            place = found.placement
            batch = (f" at micro-batch {found.micro_batch} ({cost.training_memory.global_batch} / "
                     f"{place.processes} process(es) x {place.accum_steps} accum_steps"
                     f"{', checkpointed' if place.grad_checkpointing else ''})" if found.micro_batch else "")
            lines.append(f"  {cost.cell.label}: {found.peak_bytes / GIB:,.1f} GiB{batch}; remedy: "
                         f"{'; or '.join(found.memory_remedies)}")
    lines.append(f"feasibility: {len(cannot)} cell(s) cannot finish, {len(over)} over memory" +
                 ("" if cannot or over else f": every cell finishes and fits on {plan.table.device}"))
    return lines


def plan_cells_frame(plan: Plan) -> pd.DataFrame:
    """One row per cell: run key, label, forward/backward images, images read, device hours, and the cell on its
    resources (:func:`placement_columns`)."""
    return pd.DataFrame([{
        "run_key": c.cell.run_key, "task": c.cell.task, "cell": c.cell.label, "forward": c.forward_run,
        "forward_paper": c.forward, "backward": c.backward, "images": c.images, "gpu_hours": c.seconds / 3600,
        "gpu_hours_paper": c.paper_seconds / 3600, "trained_by": c.trained_by,
        "per_image_time": ",".join(sorted(c.sources)),
        **placement_columns(c, plan.table.memory_gib),
    } for c in plan.cells])


def placement_columns(cost: CellCost, memory_gib: float) -> dict[str, object]:
    """A cell on its resources: processes, GPUs, accumulation and checkpointing, micro-batch, wall hours, GPU-hours
    held, time limit, requeues needed and allowed, whether it finishes; peak GiB per GPU as declared and with
    checkpointing, whether it fits; CPU cores its input needs against its cpus; the remedies."""
    found = cost.feasibility
    if found is None:
        return {}
    place = found.placement
    return {
        "processes": place.processes, "gpus": place.gpus, "accum_steps": place.accum_steps,
        "grad_checkpointing": place.grad_checkpointing, "micro_batch": found.micro_batch,
        "wall_hours": found.wall_seconds / 3600, "gpu_hours_held": found.gpu_seconds / 3600,
        "time_limit_hours": place.timeout_min / 60, "requeues": found.requeues, "max_requeues": place.max_requeues,
        "finishes": found.finishes, "peak_gib": found.peak_bytes / GIB,
        "peak_gib_checkpointed": found.peak_checkpointed_bytes / GIB, "fits": found.fits(memory_gib),
        "input_cores_needed": round(found.cores_needed, 1), "cpus": place.cpus, "input_bound": found.input_bound,
        "remedy": "; ".join(filter(None, ("; or ".join(found.time_remedies), "; or ".join(found.memory_remedies)))),
    }


def subset_notes(plan: Plan) -> list[str]:
    """One line per (task, dataset, split, parameter) whose cells read fewer images than the split has."""
    counts: dict[tuple, int] = defaultdict(int)
    for cost in plan.cells:
        for dataset, split, param, n, full in dict.fromkeys(cost.subsets):
            counts[(cost.cell.task, dataset, split, param, n, full)] += 1
    return [f"subset: {cells} {task} cell(s) read {n:,} of {dataset}'s {full:,} {split} images ({param}={n})"
            for (task, dataset, split, param, n, full), cells in counts.items()]
