"""Runner overhead: what running a cell through papermill costs on top of the cell's own compute.

Measures, on the runner's self-test task (``smoke``: no model):

1. **launch**: one empty notebook run with plain ``python -m papermill`` (what the runner used to start) against
   ``python -m bobkit.batch.papermill_main`` (what it starts now), interleaved, median of ``--repeats``;
2. **breakdown**: where a cell's overhead goes (papermill import with and without the skipped optional imports,
   kernel start, kernel shutdown graceful vs immediate, the notebook's own imports);
3. **empty cells**: a batch of ``--empty`` empty cells, one worker: wall per cell (claim to sidecar) minus the
   in-kernel compute the task reports (``task_seconds``);
4. **grid**: a demo-like grid of ``--cells`` cells that each compute (sleep) ``--compute`` seconds, with 1 and
   2 workers: batch wall time against the sum of in-kernel compute.

Targets (issue 5): overhead <= 3 s per cell; grid wall <= 1.2 x compute with one worker.

Usage::

    python benchmarks/runner_overhead.py                 # writes benchmarks/results/runner_overhead.json
    python benchmarks/runner_overhead.py --quick         # fewer repeats, smaller grid
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bobkit.batch import provenance
from bobkit.batch.grid import expand_grid
from bobkit.batch.runner import run_cells
from bobkit.results.sidecars import iter_sidecars
from bobkit.utils.paths import repo_root

OUT = repo_root() / "benchmarks" / "results" / "runner_overhead.json"
NOTEBOOK = repo_root() / "notebooks" / "tasks" / "smoke.ipynb"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, load, Python and library versions: the figures mean nothing without them."""
    static = provenance.static_provenance()
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        pass
    return {
        "host": static["host"], "cpu_model": static["cpu_model"], "cpu_count": static["cpu_count"],
        "memory_gb": mem_gb, "gpus": static["gpus"], "platform": platform.platform(), "python": static["python"],
        "libraries": {k: v for k, v in static["libraries"].items() if v}, "git_commit": static["git_commit"],
        "load_average_at_start": list(os.getloadavg()),
        # Installed or not, these decide how slow a plain ``python -m papermill`` starts (see bobkit.batch.papermill_main).
        "slow_optional_imports_installed": [name for name in ("rfc3987_syntax", "lark", "pyarrow")
                                            if importlib.util.find_spec(name) is not None],
    }


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and the children they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of a subprocess that must succeed; its CPU seconds are appended to ``cpu``.

    CPU seconds hardly depend on how busy the machine is, unlike wall time on a shared machine.
    """
    cpu_start, start = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cpu is not None:
        cpu.append(children_cpu_seconds() - cpu_start)
    return time.perf_counter() - start


def bench_launch(repeats: int, work: Path) -> dict[str, Any]:
    """Plain ``python -m papermill`` against the runner's launcher on the same empty cell."""
    (work / "params.yaml").write_text("value: 1.0\n")
    spec = {"input": str(NOTEBOOK), "output": str(work / "new.ipynb"), "parameters": {"value": 1.0},
            "cwd": str(repo_root()), "execution_timeout": 600}
    (work / "spec.json").write_text(json.dumps(spec))
    old_cmd = [sys.executable, "-m", "papermill", str(NOTEBOOK), str(work / "old.ipynb"), "-f",
               str(work / "params.yaml"), "--cwd", str(repo_root()), "--log-output", "--no-progress-bar",
               "--execution-timeout", "600"]
    new_cmd = [sys.executable, "-m", "bobkit.batch.papermill_main", str(work / "spec.json")]
    old, new, old_cpu, new_cpu = [], [], [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
        old.append(timed(old_cmd, old_cpu))
        new.append(timed(new_cmd, new_cpu))
    return {"python_-m_papermill_seconds": _stats(old), "bobkit.papermill_main_seconds": _stats(new),
            "python_-m_papermill_cpu_seconds": _stats(old_cpu), "bobkit.papermill_main_cpu_seconds": _stats(new_cpu),
            "saved_per_cell_seconds": round(statistics.median(old) - statistics.median(new), 2)}


def bench_breakdown(repeats: int) -> dict[str, Any]:
    """Where the remaining per-cell overhead goes."""
    py = sys.executable
    skip = "from bobkit.batch.papermill_main import skip_optional_imports; skip_optional_imports(); "
    parts: dict[str, list[float]] = {k: [] for k in (
        "python_startup", "import_papermill_plain", "import_papermill_skipping_optional",
        "kernel_start", "kernel_shutdown_graceful", "kernel_shutdown_immediate", "notebook_imports_in_kernel",
        "import_bobkit_results_pandas", "import_bobkit_atomic_only")}
    kernel_probe = (
        "import sys, time, json\n" + skip.replace("; ", "\n") +
        "from jupyter_client.manager import start_new_kernel\n"
        "out = {}\n"
        "for mode in ('graceful', 'immediate'):\n"
        "    t = time.perf_counter(); km, kc = start_new_kernel(kernel_name='python3')\n"
        "    out['kernel_start'] = time.perf_counter() - t\n"
        "    t = time.perf_counter()\n"
        "    kc.execute_interactive('from bobkit.results.sidecars import save_cell_metrics\\nfrom bobkit.tasks import smoke')\n"
        "    out['notebook_imports_in_kernel'] = time.perf_counter() - t\n"
        "    kc.stop_channels(); t = time.perf_counter(); km.shutdown_kernel(now=(mode == 'immediate'))\n"
        "    out['kernel_shutdown_' + mode] = time.perf_counter() - t\n"
        "print(json.dumps(out))\n"
    )
    for _ in range(repeats):
        parts["python_startup"].append(timed([py, "-c", "pass"]))
        parts["import_papermill_plain"].append(timed([py, "-c", "import papermill.cli"]))
        parts["import_papermill_skipping_optional"].append(timed([py, "-c", skip + "import papermill.cli"]))
        parts["import_bobkit_results_pandas"].append(timed([py, "-c", "import bobkit.results.sidecars, bobkit.tasks.smoke"]))
        parts["import_bobkit_atomic_only"].append(timed([py, "-c", "import bobkit.utils.files, bobkit.tasks.smoke"]))
        probe = subprocess.run([py, "-c", kernel_probe], check=True, capture_output=True, text=True)
        for key, value in json.loads(probe.stdout.strip().splitlines()[-1]).items():
            parts[key].append(value)
    return {f"{k}_seconds": _stats(v) for k, v in parts.items()}


def bench_cells(n_cells: int, compute_s: float, workers: int, runs: Path, tag: str) -> dict[str, Any]:
    """One batch of smoke cells; wall and overhead figures from the batch and its sidecars."""
    cells = expand_grid({"grid": [{"task": "smoke", "mode": "sleep" if compute_s else "ok",
                                    "sleep_seconds": compute_s, "value": [float(i) for i in range(n_cells)],
                                    "seed": [hash(tag) % 10_000]}]})
    cpu_start = children_cpu_seconds()
    summary = run_cells(cells, runs, workers=workers, progress=False)
    cpu_per_cell = (children_cpu_seconds() - cpu_start) / n_cells
    assert summary.count("complete") == n_cells, [o.error for o in summary.outcomes]
    sidecars = [s for s in iter_sidecars(runs) if s["run_key"] in {c.run_key for c in cells}]
    compute = [s["timings"]["task_seconds"] for s in sidecars]
    cell_wall = [s["wall_seconds"] for s in sidecars]
    in_notebook = [s["timings"].get("notebook_cells_seconds", 0.0) for s in sidecars]
    process = [s["timings"]["papermill_process_seconds"] for s in sidecars]
    return {
        "cells": n_cells, "workers": workers, "compute_per_cell_seconds": compute_s,
        "batch_wall_seconds": round(summary.seconds, 2),
        "sum_in_kernel_compute_seconds": round(sum(compute), 2),
        "wall_over_compute": round(summary.seconds / sum(compute), 3) if sum(compute) > 0.01 * n_cells else None,
        "overhead_per_cell_seconds": _stats([w - c for w, c in zip(cell_wall, compute)]),
        "batch_wall_per_cell_seconds": round(summary.seconds / n_cells, 2),
        "cpu_seconds_per_cell": round(cpu_per_cell, 3),
        "papermill_process_per_cell_seconds": _stats(process),
        "notebook_cells_per_cell_seconds": _stats(in_notebook),
        "load_average_after": list(os.getloadavg()),
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the launch and breakdown timings")
    parser.add_argument("--empty", type=int, default=6, help="empty cells for the per-cell overhead")
    parser.add_argument("--cells", type=int, default=6, help="cells of the demo-like grid")
    parser.add_argument("--compute", type=float, default=15.0, help="in-kernel compute (sleep) per grid cell, s")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 3 empty cells, 4 x 5 s grid")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.empty, args.cells, args.compute = 2, 3, 4, 5.0
    report: dict[str, Any] = {"machine": machine_info(), "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="bob-overhead-") as tmp:
        tmp_path = Path(tmp)
        print("launch: python -m papermill vs bobkit.batch.papermill_main ...", flush=True)
        report["launch"] = bench_launch(args.repeats, tmp_path)
        print(json.dumps(report["launch"], indent=1), flush=True)
        print("breakdown ...", flush=True)
        report["breakdown"] = bench_breakdown(args.repeats)
        print(f"empty cells: {args.empty} ...", flush=True)
        report["empty_cells"] = bench_cells(args.empty, 0.0, 1, tmp_path / "runs-empty", "empty")
        print(json.dumps(report["empty_cells"], indent=1), flush=True)
        report["grid"] = {}
        for workers in (1, 2):
            print(f"grid: {args.cells} cells x {args.compute} s, {workers} worker(s) ...", flush=True)
            report["grid"][f"workers_{workers}"] = bench_cells(args.cells, args.compute, workers,
                                                               tmp_path / f"runs-grid-{workers}", f"grid{workers}")
            print(json.dumps(report["grid"][f"workers_{workers}"], indent=1), flush=True)
    overhead = report["empty_cells"]["overhead_per_cell_seconds"]["median"]
    ratio = report["grid"]["workers_1"]["wall_over_compute"]
    report["targets"] = {
        "overhead_per_cell_seconds": overhead, "overhead_target_seconds": 3.0, "overhead_ok": overhead <= 3.0,
        "grid_wall_over_compute_1_worker": ratio, "grid_target": 1.2, "grid_ok": ratio is not None and ratio <= 1.2,
    }
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["targets"], indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
