"""Slurm integration tests: they run against the one-node cluster that ``make test-slurm`` starts.

``make test-slurm`` is ``python tools/slurm/cluster.py run -- python -m pytest tests/slurm``: the cluster tool sets
``SLURM_CONF`` (so ``sbatch``, ``squeue``, ``scancel``... reach that cluster only) and ``$BOB_SLURM_TEST_CLUSTER``.
Without them every test here errors with how to run them (``make test`` does not collect this folder).
Helpers shared by the tests live in ``slurm_helpers.py``.
The cluster: one node, partitions ``main`` (default) and ``alt``, one ``gpu`` gres, accounting disabled, a 10 s
credential lifetime (a requeued job restarts about 10 s later).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import CLUSTER_ENV, start_bob

# The driver polls Slurm every 2 s instead of 30 s, so the tests notice an ended job quickly.
os.environ.setdefault("BOB_SLURM_POLL_SECONDS", "2")
TEST_TIMEOUT_S = 600  # a hung driver fails its test instead of the whole run (pytest-timeout, a dev extra)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> Path:
    """The running test cluster's folder; fails every test with the reason when there is none."""
    folder = os.environ.get(CLUSTER_ENV)
    if not folder or not os.environ.get("SLURM_CONF"):
        pytest.fail(f"no test cluster (${CLUSTER_ENV} / $SLURM_CONF unset): run these tests with `make test-slurm` "
                    "(python tools/slurm/cluster.py run -- python -m pytest tests/slurm)", pytrace=False)
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    if "UP" not in ping.stdout:
        pytest.fail(f"the test cluster does not answer: {ping.stdout} {ping.stderr}", pytrace=False)
    return Path(folder)


@pytest.fixture
def start_driver():
    """Start ``bob run ARGS`` drivers; any still running when the test ends (it failed) is killed."""
    drivers: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        drivers.append(start_bob(*args))
        return drivers[-1]

    yield start
    for driver in drivers:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
