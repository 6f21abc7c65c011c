"""Helpers of the Slurm integration tests: drivers (``bob run``), waiting, and Slurm's own answers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = "BOB_SLURM_TEST_CLUSTER"  # set by tools/slurm/cluster.py (its CLUSTER_ENV)


def bob(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``bob ARGS`` to the end (``--no-progress`` added to ``run``)."""
    extra = ["--no-progress"] if args[:1] == ("run",) else []
    return subprocess.run([sys.executable, "-m", "bobkit.cli", *args, *extra], capture_output=True, text=True,
                          timeout=timeout)


def start_bob(*args: str) -> subprocess.Popen[str]:
    """Start ``bob run ARGS --no-progress`` (a driver) without waiting for it."""
    return subprocess.Popen([sys.executable, "-m", "bobkit.cli", "run", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 180, every: float = 0.3, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(every)


def recorded_job(run_dir: Path) -> str | None:
    """The Slurm job the driver recorded for a cell (``.slurm-job.json``)."""
    try:
        return json.loads((run_dir / ".slurm-job.json").read_text())["job_id"]
    except (OSError, ValueError, KeyError):
        return None


def running_cell(run_dirs: list[Path]) -> Path | None:
    """A cell whose notebook is executing now (claimed, with a papermill log)."""
    for run_dir in run_dirs:
        if (run_dir / ".claim").exists() and any(run_dir.glob(".work-*/output.log")):
            return run_dir
    return None


def squeue_state(job_id: str) -> tuple[str, int]:
    """(state, restart count) of a job as ``squeue`` prints them."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={job_id}",
                          "--Format=State:|,RestartCnt:|"], capture_output=True, text=True, timeout=60).stdout
    state, _, rest = out.strip().partition("|")
    return state, int(rest.strip("|") or 0)


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job -o JOB`` as a mapping (one record)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         timeout=60).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def cluster_tool() -> ModuleType:
    """``tools/slurm/cluster.py`` as a module (``tools`` is not a package)."""
    spec = importlib.util.spec_from_file_location("bob_slurm_cluster", REPO / "tools" / "slurm" / "cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
