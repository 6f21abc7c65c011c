"""The runner's self-test task: no model, no data; it returns a number or fails on purpose.

It exists to test and benchmark the batch layer (per-cell papermill overhead, failure recording, OOM retry,
kill-and-resume) without paying for a forward pass. Its metric is a function of its parameters, not a result
about any backbone, and the analysis notebooks ignore the ``smoke`` task.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from bobkit.tasks.blocks import OUTPUT_DIR, seed_param
from bobkit.tasks.contract import Metric, Param, TaskSpec, descriptor
from bobkit.tasks.harness import task_entry
from bobkit.utils.files import write_json
from bobkit.utils.paths import cache_dir

MODES = ("ok", "raise", "nan", "oom", "die", "sleep")

SPEC = TaskSpec(
    name="smoke",
    summary="The runner's self-test: no model, no data; its score is value + seed.",
    parameters=(
        Param("value", float, 1.0, "the score is value + seed"),
        Param("mode", str, "ok", "what the cell does", choices=MODES),
        Param("sleep_seconds", float, 0.0, "seconds to sleep first", low=0.0, high=86_400.0),
        Param("resumable", bool, False, "keep the sleep's progress in the cache: a re-run (requeue) resumes it"),
        Param("batch_size", int, 8, "what the runner halves after an out-of-memory error", kind="execution", low=1,
              high=4096),
        Param("oom_above_batch", int, None, "mode 'oom': fail only above this batch size (None: always)", low=0),
        seed_param(),
        OUTPUT_DIR,
    ),
    metrics=(
        Metric("score", "value + seed", primary=True),
        descriptor("batch_size_used", "the batch size the cell ran with"),
        descriptor("*_seconds", "wall-clock seconds (slept_seconds, resumed_seconds: a resumable sleep's parts)"),
    ),
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


@task_entry(SPEC)
def run(p: dict[str, Any], execution: None = None) -> dict[str, float]:
    """Return ``{"score": value + seed}`` after the requested behaviour (sleep, raise, NaN, OOM, kernel death).

    With ``resumable``, the sleep keeps its progress in the cache and a re-run of the same cell resumes it
    (``resumed_seconds``, ``slept_seconds``): how the Slurm tests see that requeued work is not done twice.
    """
    start = time.perf_counter()
    slept = resumed = 0.0
    if p["sleep_seconds"] and p["resumable"]:
        slept, resumed = _resumable_sleep(p)
    elif p["sleep_seconds"]:
        time.sleep(p["sleep_seconds"])
    if p["mode"] == "raise":
        raise RuntimeError(f"smoke task asked to fail (value={p['value']})")
    if p["mode"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if p["mode"] == "oom" and (p["oom_above_batch"] is None or p["batch_size"] > p["oom_above_batch"]):
        raise MemoryError(f"simulated out of memory at batch_size={p['batch_size']}")
    score = float("nan") if p["mode"] == "nan" else p["value"] + p["seed"]
    metrics = {"score": score, "batch_size_used": float(p["batch_size"]), "task_seconds": time.perf_counter() - start}
    if p["resumable"]:
        metrics.update(slept_seconds=slept, resumed_seconds=resumed)
    return metrics


def _resumable_sleep(p: dict[str, Any], step: float = 0.5) -> tuple[float, float]:
    """Sleep ``sleep_seconds`` in steps, keeping progress in the cache so a re-run (a requeued job) resumes it.

    The stand-in for a real task's resumable work (its feature cache). Returns (slept now, resumed from before).
    """
    progress = progress_path(p)
    try:
        resumed = float(json.loads(progress.read_text())["slept"])
    except (OSError, ValueError, KeyError):
        resumed = 0.0
    done = resumed
    while done < float(p["sleep_seconds"]):
        nap = min(step, float(p["sleep_seconds"]) - done)
        time.sleep(nap)
        done += nap
        write_json(progress, {"slept": done})
    progress.unlink(missing_ok=True)  # finished: a later run of the same cell starts afresh
    return done - resumed, resumed


def progress_path(params: dict[str, Any]) -> Path:
    """Where a resumable sleep keeps its progress: the cache, keyed by the cell's parameters."""
    cell = {k: v for k, v in {**PARAMETERS, **params}.items() if k != "output_dir"}  # output_dir: per attempt
    key = hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / "smoke" / f"{key[:16]}.json"
