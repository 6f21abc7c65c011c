"""Wall time of the offline demo battle: ``bob run params/demo.yaml`` on a fresh runs folder (and feature cache).

Then a second ``bob run`` on the same folder (every cell already complete: the resume path). Per-cell timings,
peak memory and execution settings are collected from the sidecars.

    python benchmarks/demo_walltime.py [--params params/demo.yaml] [--workers N] [--keep-cache]

Writes ``benchmarks/results/demo_walltime.json``. Slow on a shared 2-core machine (tens of minutes): run it when
the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO, machine_info, write_result


def bob_command() -> list[str]:
    """The ``bob`` entry point of this interpreter's environment."""
    exe = Path(sys.executable).with_name("bob")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bobkit.cli"]


def collect_sidecars(runs: Path) -> list[dict]:
    rows = []
    for path in sorted(runs.glob("*/*/metrics.json")):
        side = json.loads(path.read_text())
        params = side.get("params", {})
        rows.append({
            "task": side.get("task"), "status": side.get("status"), "backbone": params.get("backbone"),
            "dataset": params.get("dataset"), "protocol": params.get("protocol"),
            "timings": side.get("timings", {}), "top1": side.get("metrics", {}).get("top1"),
        })
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params" / "demo.yaml"))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep-cache", action="store_true", help="reuse $BOB_CACHE_DIR instead of a fresh one")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bob-demo-"))
    env = dict(os.environ)
    if not args.keep_cache:
        env["BOB_CACHE_DIR"] = str(work / "cache")
    runs = work / "runs"
    cmd = [*bob_command(), "run", args.params, "--runs-dir", str(runs), "--no-progress"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    try:
        t = time.perf_counter()
        first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        second_s = time.perf_counter() - t
        cells = collect_sidecars(runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def total(key: str) -> float:
        return float(sum(c["timings"].get(key, 0.0) or 0.0 for c in cells))

    result = {
        "params": os.path.relpath(args.params, REPO), "workers": args.workers,
        "fresh_run_s": first_s, "resume_run_s": second_s,
        "exit_codes": [first.returncode, second.returncode],
        "cells": len(cells), "complete": sum(c["status"] == "complete" for c in cells),
        "failed": sum(c["status"] == "failed" for c in cells),
        "sum_extract_seconds": total("extract_seconds"), "sum_train_seconds": total("train_seconds"),
        "max_peak_rss_mb": max((c["timings"].get("peak_rss_mb", 0.0) or 0.0 for c in cells), default=None),
        "cell_details": cells, "stderr_tail": first.stderr[-2000:],
        "machine": machine_info(),
    }
    write_result("demo_walltime", result, args.out_dir)
    return result


if __name__ == "__main__":
    main()
