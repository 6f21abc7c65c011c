"""Small pieces the Slurm tests rely on: Slurm durations, job descriptions, the resumable smoke sleep."""

from __future__ import annotations

import json

import pytest

from bobkit.batch.scheduler import JobState, slurm_seconds
from bobkit.tasks import smoke
from bobkit.utils.paths import cache_dir


@pytest.mark.parametrize("text, seconds", [
    ("0:07", 7.0), ("12:34", 754.0), ("1:00:00", 3600.0), ("2-03:04:05", 183845.0), ("UNLIMITED", None),
    ("INVALID", None),
])
def test_slurm_durations(text, seconds):
    assert slurm_seconds(text) == seconds


def test_job_descriptions_say_requeued_and_reason():
    assert JobState("5_1", "PENDING", "BeginTime", 1).describe() == "REQUEUED: PENDING (BeginTime), restart 1"
    assert JobState("5_1", "RUNNING", "None").describe() == "RUNNING"
    assert JobState("5_0", "CANCELLED", "None").describe() == "CANCELLED"
    assert JobState("5_0", "PENDING").live and not JobState("5_0", "CANCELLED").live


def test_resumable_smoke_sleep_continues_from_saved_progress_and_starts_afresh_when_done():
    params = {**smoke.PARAMETERS, "mode": "sleep", "sleep_seconds": 1.0, "resumable": True, "value": 11.0}
    first = smoke.run(**params)
    assert (first["slept_seconds"], first["resumed_seconds"], first["score"]) == (1.0, 0.0, 11.0)
    assert not list((cache_dir() / "smoke").glob("*.json"))  # finished: no progress left behind
    # An interrupted run leaves its progress: the next run does only the rest.
    interrupted = {**params, "sleep_seconds": 1.5}
    key_file = smoke.progress_path(interrupted)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"slept": 1.0}))
    resumed = smoke.run(**interrupted)
    assert (resumed["resumed_seconds"], resumed["slept_seconds"]) == (1.0, 0.5)
    assert not key_file.exists()

