"""Producers before consumers on a real Slurm: a consumer's array waits (``afterok``) for its producer's array task,
loads the producer's artifact from the runs folder's ``.artifacts``, and fails naming a producer that failed."""

from __future__ import annotations

import re
from pathlib import Path

from slurm_helpers import bob

from bobkit.batch.grid import load_grid
from bobkit.batch.runner import run_dir_of
from bobkit.results.sidecars import read_sidecar

GRID = """\
name: artifacts
resources: {timeout_min: 5, cpus: 1, mem_gb: 1}
grid:
  - task: smoke      # a consumer listed before its producer
    need: shared
    value: 5.0
  - task: smoke
    publish: shared
    value: 7.0
    mode: sleep
    sleep_seconds: 4
  - task: smoke      # a consumer of a producer that fails
    need: broken
    value: 2.0
  - task: smoke
    publish: broken
    value: 3.0
    mode: raise
"""


def sbatch_options(script: Path) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a submission script as a mapping."""
    lines = [ln[len("#SBATCH --"):] for ln in script.read_text().splitlines() if ln.startswith("#SBATCH --")]
    return dict(ln.partition("=")[::2] for ln in lines)


def test_a_consumer_job_depends_on_its_producer_and_fails_naming_a_failed_one(write_grid, tmp_path: Path):
    grid = write_grid(GRID)
    runs = tmp_path / "runs"
    done = bob("run", str(grid), "--backend", "slurm", "--runs-dir", str(runs))
    assert done.returncode == 1, done.stdout + done.stderr  # two cells failed
    assert re.search(r"executed 4 cell\(s\): 2 complete, 2 failed", done.stdout), done.stdout
    consumer, producer, orphan, bad = load_grid(grid)
    side = {c.run_key: read_sidecar(run_dir_of(c, runs)) for c in (consumer, producer, orphan, bad)}
    s_con, s_pro = side[consumer.run_key], side[producer.run_key]
    jobs = {key: s["runner"]["job_id"] for key, s in side.items()}

    # The producers went first, as one array; each consumer is an array of its own that waits for its producer.
    array = jobs[producer.run_key].split("_")[0]
    assert {jobs[producer.run_key], jobs[bad.run_key]} == {f"{array}_0", f"{array}_1"}
    scripts = {p.name.split("_")[0]: sbatch_options(p) for p in (runs / ".submitit").glob("*_submission.sh")}
    assert len(scripts) == 3 and "dependency" not in scripts[array]
    for cell, maker in ((consumer, producer), (orphan, bad)):
        options = scripts[jobs[cell.run_key].split("_")[0]]
        assert options["dependency"] == f"afterok:{jobs[maker.run_key]}" and options["kill-on-invalid-dep"] == "yes"

    # It started after its producer ended and loaded the artifact the producer published, in the runs folder.
    assert s_con["status"] == "complete" and s_con["started"] >= s_pro["started"] + s_pro["wall_seconds"]
    assert s_con["timings"]["artifact_value"] == 7.0 and s_con["timings"]["artifact_loaded"] == 1.0
    (used,), (made,) = s_con["artifacts"], s_pro["artifacts"]
    assert (used["how"], made["how"]) == ("loaded", "published") and used["sha256"] == made["sha256"]
    assert Path(used["path"]).parent.parent == runs.resolve() / ".artifacts"

    # A producer whose cell failed (its job ended well: afterok holds) fails its consumer when it starts.
    error = side[orphan.run_key]["error"]
    assert side[bad.run_key]["status"] == "failed" and error["kind"] == "producer_failed"
    assert bad.label in error["message"] and "RuntimeError" in error["message"]
