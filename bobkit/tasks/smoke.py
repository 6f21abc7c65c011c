"""The runner's self-test task: no model, no data; it returns a number or fails on purpose.

It exists to test and benchmark the batch layer (per-cell papermill overhead, failure recording, OOM retry,
kill-and-resume) without paying for a forward pass. Its metric is a function of its parameters, not a result
about any backbone, and the analysis notebooks ignore the ``smoke`` task.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bobkit.tasks.blocks import OUTPUT_DIR, seed_param
from bobkit.tasks.contract import Metric, Param, TaskSpec, descriptor
from bobkit.tasks.harness import task_entry

VERSION = "1"
MODES = ("ok", "raise", "nan", "oom", "die", "sleep")

SPEC = TaskSpec(
    name="smoke",
    summary="The runner's self-test: no model, no data; its score is value + seed.",
    parameters=(
        Param("value", float, 1.0, "the score is value + seed"),
        Param("mode", str, "ok", "what the cell does", choices=MODES),
        Param("sleep_seconds", float, 0.0, "seconds to sleep first", low=0.0, high=86_400.0),
        Param("batch_size", int, 8, "what the runner halves after an out-of-memory error", kind="execution", low=1,
              high=4096),
        Param("oom_above_batch", int, None, "mode 'oom': fail only above this batch size (None: always)", low=0),
        seed_param(),
        OUTPUT_DIR,
    ),
    metrics=(
        Metric("score", "value + seed", primary=True),
        descriptor("batch_size_used", "the batch size the cell ran with"),
        descriptor("*_seconds", "wall-clock seconds"),
    ),
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


@task_entry(SPEC)
def run(p: dict[str, Any], execution: None = None) -> dict[str, float]:
    """Return ``{"score": value + seed}`` after the requested behaviour (sleep, raise, NaN, OOM, kernel death)."""
    start = time.perf_counter()
    if p["sleep_seconds"]:
        time.sleep(p["sleep_seconds"])
    if p["mode"] == "raise":
        raise RuntimeError(f"smoke task asked to fail (value={p['value']})")
    if p["mode"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if p["mode"] == "oom" and (p["oom_above_batch"] is None or p["batch_size"] > p["oom_above_batch"]):
        raise MemoryError(f"simulated out of memory at batch_size={p['batch_size']}")
    score = float("nan") if p["mode"] == "nan" else p["value"] + p["seed"]
    return {"score": score, "batch_size_used": float(p["batch_size"]), "task_seconds": time.perf_counter() - start}
