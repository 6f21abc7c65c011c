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

VERSION = "1"
MODES = ("ok", "raise", "nan", "oom", "die", "sleep")

PARAMETERS: dict[str, Any] = {
    "value": 1.0,
    "mode": "ok",
    "sleep_seconds": 0.0,
    "batch_size": 8,
    "oom_above_batch": None,
    "seed": 0,
}


def validate_params(params: dict[str, Any]) -> None:
    """Reject an unknown mode before anything runs."""
    if params["mode"] not in MODES:
        raise ValueError(f"smoke mode={params['mode']!r} is not one of {MODES}")


def run(**params: Any) -> dict[str, float]:
    """Return ``{"score": value + seed}`` after the requested behaviour (sleep, raise, NaN, OOM, kernel death)."""
    p = {**PARAMETERS, **params}
    validate_params(p)
    start = time.perf_counter()
    if p["sleep_seconds"]:
        time.sleep(float(p["sleep_seconds"]))
    if p["mode"] == "raise":
        raise RuntimeError(f"smoke task asked to fail (value={p['value']})")
    if p["mode"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if p["mode"] == "oom" and (p["oom_above_batch"] is None or p["batch_size"] > p["oom_above_batch"]):
        raise MemoryError(f"simulated out of memory at batch_size={p['batch_size']}")
    score = float("nan") if p["mode"] == "nan" else float(p["value"]) + float(p["seed"])
    return {"score": score, "batch_size_used": float(p["batch_size"]), "task_seconds": time.perf_counter() - start}
