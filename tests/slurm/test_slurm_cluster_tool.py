"""``tools/slurm/cluster.py``: a second cluster started and stopped here (every daemon and job step, by PID)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from slurm_helpers import cluster_tool, wait_for


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_cluster_stops_every_daemon_and_job_it_started_even_when_its_user_fails():
    tool = cluster_tool()
    seen: dict[str, list[int]] = {}
    with pytest.raises(RuntimeError, match="the tests failed"):
        with tool.one_node_cluster() as cluster:  # a fresh temporary folder (munged wants /tmp-like parents)
            folder = cluster.folder
            seen["daemons"] = [proc.pid for _, proc in cluster.daemons]
            conf = cluster.conf.read_text()
            node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout.split()
            assert f"NodeName={socket.gethostname()}" in conf and node[1] in conf  # this host, its CPUs
            assert "PartitionName=main" in conf and "PartitionName=alt" in conf
            assert f"AuthInfo=socket={folder}" in conf  # its own munge, not the system's
            job = subprocess.run(["sbatch", "--parsable", "--mem=10M", "--output=/dev/null", "--chdir=/tmp",
                                  "--wrap", "sleep 600"], env=cluster.env,
                                 capture_output=True, text=True, timeout=60, check=True).stdout.strip()
            wait_for(lambda: cluster._step_daemons(), what="the job's slurmstepd")
            seen["steps"] = cluster._step_daemons()
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=cluster.env, capture_output=True,
                                   text=True, timeout=60).stdout.strip()
            assert state == "RUNNING"
            raise RuntimeError("the tests failed")
    assert len(seen["daemons"]) == 3 and seen["steps"]
    assert not [pid for pid in seen["daemons"] + seen["steps"] if alive(pid)]
    assert not folder.exists()


def test_no_root_or_no_apt_fails_with_the_reason(monkeypatch, capsys):
    tool = cluster_tool()
    monkeypatch.setattr(tool, "missing_programs", lambda: ["slurmctld", "munged"])
    monkeypatch.setattr(tool.os, "geteuid", lambda: 1000)
    assert tool.main(["run", "--", "true"]) == 2
    assert "slurmctld, munged not installed and not root" in capsys.readouterr().err
    monkeypatch.setattr(tool, "missing_programs", lambda: [])  # installed, but still not root
    assert tool.main(["run", "--", "true"]) == 2
    assert "run as root" in capsys.readouterr().err
    monkeypatch.setattr(tool, "missing_programs", lambda: ["slurmctld", "munged"])
    monkeypatch.setattr(tool.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tool.shutil, "which", lambda name, path=None: None)
    assert tool.main(["install"]) == 2
    assert "no apt-get here" in capsys.readouterr().err
