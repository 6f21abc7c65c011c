"""Pieces the Slurm tests rely on: Slurm durations, job descriptions, a job's verdict after SIGTERM, the script."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from slurm_helpers import squeue_state, wait_for

from bobkit.batch.scheduler import JobState, failure_from_state, query, slurm_seconds, termination_cause


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


def test_termination_cause_reads_slurms_verdict_on_a_real_job():
    # A job still RUNNING (a bare signal), then requeued, then cancelled: what a cell's job asks after SIGTERM.
    job = subprocess.run(["sbatch", "--parsable", "--mem=10M", "--output=/dev/null", "--chdir=/tmp",
                          "--wrap", "sleep 300"], capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    wait_for(lambda: squeue_state(job)[0] == "RUNNING", what="the job running")
    assert termination_cause(job, 0, wait_s=1)[0] == "terminated"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    cause, state = termination_cause(job, 0, wait_s=1)
    assert cause == "requeued" and state.restarts == 1
    subprocess.run(["scancel", job], check=True, timeout=60)
    assert termination_cause(job, 1, wait_s=1)[0] == "cancelled"
    assert failure_from_state(query([job])[job])[0] == "cancelled"
    assert query(["987654"])["987654"].state == "ENDED"  # an id squeue never knew (or forgot): not waited for


def test_sbatch_script_made_without_slurm_equals_submitits_own(tmp_path: Path):
    """Where ``srun`` exists, submitit's executor writes exactly the script ``sbatch_script`` writes anywhere."""
    import submitit

    from bobkit.batch.backends import executor_parameters, sbatch_script

    resources = {"partition": "debug", "cpus": 2, "mem_gb": 1.5, "gpus": 1, "timeout_min": 3,
                 "slurm_array_parallelism": 2}
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**executor_parameters(resources, "slurm"))
    assert sbatch_script(resources, tmp_path, "python -m job") == \
        executor._executor._make_submission_file_text("python -m job", "uid")
