"""The ``bob plan`` table: per task and in total, passes, images, device hours, peak memory; the saving ratio."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from bobkit.rehearsal.plan import GIB, Plan


def _m(value: float) -> str:
    return f"{value / 1e6:,.2f}M" if value >= 1e5 else f"{value:,.0f}"


def plan_rows(plan: Plan) -> list[dict[str, object]]:
    """One row per task and a total: cells, forward/backward passes (images), images read, device hours as
    written and the paper's way, the largest per-cell peak memory."""
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
            "peak_gib": max((c.peak_bytes for c in costs), default=0.0) / GIB,
        })
    return rows


def format_plan(plan: Plan, label: str = "") -> str:
    """The plan as a text table with the saving ratio, where the figures came from, and memory warnings."""
    header = ("task", "cells", "forward", "forward (paper)", "backward", "images read", "GPU-h", "GPU-h (paper)",
              "GPU-h (L-BFGS)", "peak GiB/cell")
    rows = [header]
    for r in plan_rows(plan):
        rows.append((str(r["task"]), str(r["cells"]), _m(r["forward"]), _m(r["forward_paper"]), _m(r["backward"]),
                     _m(r["images"]), f"{r['hours']:,.1f}", f"{r['paper_hours']:,.1f}", f"{r['lbfgs_hours']:,.1f}",
                     f"{r['peak_gib']:,.1f}"))
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
    frozen = [c for c in plan.cells if not c.backward or c.cell.task == "robustness" and c.probe_seconds]
    frozen_hours = sum(c.seconds for c in frozen) / 3600
    if frozen_hours:
        paper = sum(c.paper_seconds for c in frozen) / 3600
        lbfgs = sum(c.lbfgs_seconds for c in frozen) / 3600
        lines.append(f"frozen-feature cells alone ({len(frozen)}: probes, retrieval, OOD and robustness probes): "
                     f"{paper:,.1f} / {frozen_hours:,.1f} GPU-h = {paper / frozen_hours:.2f}x as written; "
                     f"{paper / lbfgs:.2f}x with the L-BFGS probe")
    sources = defaultdict(int)
    for cost in plan.cells:
        for source in cost.sources:
            sources[source] += 1
    if sources:
        lines.append("per-image times: " + ", ".join(f"{n} cells {s}" for s, n in sorted(sources.items()))
                     + " (family rate: an unmeasured architecture at its family's measured FLOP rate)")
    over = [c for c in plan.cells if c.peak_bytes > plan.table.memory_gib * GIB]
    if over:
        worst = max(over, key=lambda c: c.peak_bytes)
        lines.append(f"memory: {len(over)} cell(s) need more than the device's {plan.table.memory_gib:.0f} GiB at "
                     f"their batch size (largest {worst.peak_bytes / GIB:,.0f} GiB: {worst.cell.label}); lower "
                     "batch_size or set grad_checkpointing")
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
    return "\n".join(lines)


def plan_cells_frame(plan: Plan) -> pd.DataFrame:
    """One row per cell: run key, label, forward/backward images, images read, device hours, peak GiB."""
    return pd.DataFrame([{
        "run_key": c.cell.run_key, "task": c.cell.task, "cell": c.cell.label, "forward": c.forward_run,
        "forward_paper": c.forward, "backward": c.backward, "images": c.images, "gpu_hours": c.seconds / 3600,
        "gpu_hours_paper": c.paper_seconds / 3600, "peak_gib": c.peak_bytes / GIB, "trained_by": c.trained_by,
        "per_image_time": ",".join(sorted(c.sources)),
    } for c in plan.cells])


def subset_notes(plan: Plan) -> list[str]:
    """One line per (task, dataset, split, parameter) whose cells read fewer images than the split has."""
    counts: dict[tuple, int] = defaultdict(int)
    for cost in plan.cells:
        for dataset, split, param, n, full in dict.fromkeys(cost.subsets):
            counts[(cost.cell.task, dataset, split, param, n, full)] += 1
    return [f"subset: {cells} {task} cell(s) read {n:,} of {dataset}'s {full:,} {split} images ({param}={n})"
            for (task, dataset, split, param, n, full), cells in counts.items()]
