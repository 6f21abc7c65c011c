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

from bobkit.utils.files import write_json
from bobkit.utils.paths import cache_dir

VERSION = "1"
MODES = ("ok", "raise", "nan", "oom", "die", "sleep")

PARAMETERS: dict[str, Any] = {
    "value": 1.0,
    "mode": "ok",
    "sleep_seconds": 0.0,
    "resumable": False,
    "batch_size": 8,
    "oom_above_batch": None,
    "seed": 0,
}


def validate_params(params: dict[str, Any]) -> None:
    """Reject an unknown mode before anything runs."""
    if params["mode"] not in MODES:
        raise ValueError(f"smoke mode={params['mode']!r} is not one of {MODES}")


def run(**params: Any) -> dict[str, float]:
    """Return ``{"score": value + seed}`` after the requested behaviour (sleep, raise, NaN, OOM, kernel death).

    With ``resumable``, the sleep keeps its progress in the cache and a re-run of the same cell resumes it
    (``resumed_seconds``, ``slept_seconds``): how the Slurm tests see that requeued work is not done twice.
    """
    p = {**PARAMETERS, **params}
    validate_params(p)
    start = time.perf_counter()
    slept = resumed = 0.0
    if p["sleep_seconds"] and p["resumable"]:
        slept, resumed = _resumable_sleep(p)
    elif p["sleep_seconds"]:
        time.sleep(float(p["sleep_seconds"]))
    if p["mode"] == "raise":
        raise RuntimeError(f"smoke task asked to fail (value={p['value']})")
    if p["mode"] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if p["mode"] == "oom" and (p["oom_above_batch"] is None or p["batch_size"] > p["oom_above_batch"]):
        raise MemoryError(f"simulated out of memory at batch_size={p['batch_size']}")
    score = float("nan") if p["mode"] == "nan" else float(p["value"]) + float(p["seed"])
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
    key = hashlib.sha256(json.dumps({**PARAMETERS, **params}, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / "smoke" / f"{key[:16]}.json"
