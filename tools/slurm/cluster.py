"""A one-node Slurm cluster in a temporary folder: what ``make test-slurm`` runs the Slurm tests against.

    python tools/slurm/cluster.py run -- CMD [ARGS...]   # install if missing, start, run CMD against it, stop
    python tools/slurm/cluster.py install                # only install slurm-wlm and munge from Debian

``run`` installs ``slurm-wlm`` and ``munge`` with apt when their programs are missing (root only), writes a
``slurm.conf`` for this host (its name, CPUs and memory from ``slurmd -C``) into a fresh temporary folder with its
own munge key, state and spool folders and free ports, starts ``munged`` (its own socket), ``slurmctld`` and
``slurmd`` in the foreground as children of this process, waits until the node is idle, and runs CMD with
``SLURM_CONF`` pointing at that cluster (so ``sbatch``, ``squeue``... talk to it and to nothing else).
Whatever happens (CMD fails, Ctrl-C, SIGTERM), every job is cancelled and every daemon it started is stopped
by its PID, leftover job step daemons of this cluster included; the folder is removed unless ``--keep``.

The cluster: one node, two partitions (``main``, the default, and ``alt``), memory as a consumable resource,
one ``gpu`` generic resource backed by ``/dev/null`` (no real device: it lets a test schedule a ``gpus: 1`` cell on a CPU
machine and check the request reached Slurm), accounting disabled (no database), ``KillWait`` of 5 s and a
credential lifetime of 10 s (a requeued job may start again 10 s after it stopped instead of 2 minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PACKAGES = ("slurm-wlm", "munge")
PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PARTITIONS = ("main", "alt")
CRED_EXPIRE_S = 10
KILL_WAIT_S = 5
READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20
# Environment variable naming the running test cluster's folder (tests/slurm/conftest.py requires it).
CLUSTER_ENV = "BOB_SLURM_TEST_CLUSTER"


class ClusterError(RuntimeError):
    """The cluster cannot be installed, started or used here; the message says why."""


def missing_programs() -> list[str]:
    """Programs of :data:`PROGRAMS` that are not on the PATH (``/usr/sbin`` included)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def install() -> None:
    """Install ``slurm-wlm`` and ``munge`` from Debian when their programs are missing (needs root and apt-get)."""
    missing = missing_programs()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"{', '.join(missing)} not installed and not root: cannot apt-get install "
                           f"{' '.join(PACKAGES)} (install them, or run make test-slurm as root)")
    if shutil.which("apt-get") is None:
        raise ClusterError(f"{', '.join(missing)} not installed and no apt-get here: install {' '.join(PACKAGES)} "
                           "(Slurm 22.05 or newer) with this system's package manager")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"slurm cluster: installing {' '.join(PACKAGES)} (missing: {', '.join(missing)})", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    still = missing_programs()
    if still:
        raise ClusterError(f"installed {' '.join(PACKAGES)} but {', '.join(still)} still missing")


def node_definition() -> str:
    """This host's ``NodeName=... CPUs=... RealMemory=...`` line, as ``slurmd -C`` prints it."""
    done = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if done.returncode != 0 or line is None:
        raise ClusterError(f"slurmd -C did not describe this node: {done.stdout.strip()} {done.stderr.strip()}")
    return line.strip()


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on this host now (another cluster on the default ports does not collide)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slurm_conf(folder: Path, node: str, ports: tuple[int, int]) -> str:
    """The text of ``slurm.conf`` for a one-node cluster living in ``folder``."""
    fields = dict(part.split("=", 1) for part in node.split() if "=" in part)
    host = fields.pop("NodeName")
    fields.pop("UpTime", None)
    node_line = " ".join([f"NodeName={host}", "NodeAddr=127.0.0.1", *(f"{k}={v}" for k, v in fields.items()),
                          "Gres=gpu:1", "State=UNKNOWN"])
    partitions = [f"PartitionName={name} Nodes={host} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
                  for i, name in enumerate(PARTITIONS)]
    return "\n".join([
        "# One-node test cluster written by tools/slurm/cluster.py",
        "ClusterName=bobtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge' / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",  # works without a writable cgroup tree (containers)
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=2,bf_interval=5",  # a requeued job starts seconds after it may
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        f"KillWait={KILL_WAIT_S}",
        "MinJobAge=600",  # finished jobs stay visible to squeue/scontrol for 10 minutes
        "GresTypes=gpu",
        node_line,
        *partitions,
        "",
    ])


def gres_conf(node: str) -> str:
    """``gres.conf``: one gpu backed by ``/dev/null`` (Slurm counts gpus by their files), no autodetection."""
    host = node.split()[0].split("=", 1)[1]
    return f"AutoDetect=off\nNodeName={host} Name=gpu File=/dev/null\n"


@dataclass
class Cluster:
    """The running daemons of a test cluster in ``folder`` (stop them with :meth:`stop`)."""

    folder: Path
    daemons: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.folder / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's commands at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), CLUSTER_ENV: str(self.folder)}

    def start(self) -> None:
        """Write the configuration and the munge key, start munged, slurmctld and slurmd, wait for an idle node."""
        # munged wants its socket's folders (and their parents) searchable by all, writable by no one else.
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)
        for sub in ("etc", "munge", "state", "spool", "run", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder / sub, 0o755)
        node = node_definition()
        self.conf.write_text(slurm_conf(self.folder, node, tuple(free_ports(2))))  # type: ignore[arg-type]
        (self.folder / "etc" / "gres.conf").write_text(gres_conf(node))
        key = self.folder / "munge" / "munge.key"
        self._check([_program("mungekey"), "--create", f"--keyfile={key}"])
        os.chmod(key, 0o600)
        munge = self.folder / "munge"
        self._spawn("munged", [_program("munged"), "--foreground", f"--socket={munge / 'munge.socket'}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={self.folder / 'log' / 'munged.log'}",
                               f"--seed-file={munge / 'munged.seed'}"])
        self._wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket")
        self._spawn("slurmctld", [_program("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._wait_for(lambda: "UP" in self._output(["scontrol", "ping"]), "slurmctld to answer")
        self._spawn("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf)])
        self._wait_for(lambda: self._output(["sinfo", "-h", "-N", "-o", "%T"]).split()[:1] == ["idle"],
                       "the node to be idle")

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons by PID (newest first) and any job step left; returns what was done."""
        done = []
        if self.daemons and self._alive("slurmctld"):
            jobs = self._output(["squeue", "--noheader", "--format=%i"]).split()
            if jobs:
                self._quiet(["scancel", *jobs])
            deadline = time.time() + KILL_WAIT_S + 15
            while time.time() < deadline and self._output(["squeue", "--noheader", "--format=%i"]).strip():
                time.sleep(0.5)
        for name, proc in reversed(self.daemons):
            done.append(f"{name} (pid {proc.pid}): {_terminate(proc)}")
        steps = self._step_daemons()
        for pid in [*_descendants(steps), *steps]:  # a job step left behind, and what it runs
            try:
                os.kill(pid, signal.SIGKILL)
                done.append(f"job step process (pid {pid}): killed")
            except ProcessLookupError:
                pass
        self.daemons.clear()
        return done

    def logs(self) -> str:
        """The tail of each daemon's log (for a failure message)."""
        out = []
        for path in sorted((self.folder / "log").glob("*")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(out)

    def _spawn(self, name: str, command: list[str]) -> None:
        with open(self.folder / "log" / f"{name}.stdout", "wb") as log:  # the daemon keeps its own copy
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True,  # a Ctrl-C meant for the tests does not reach it first
                                    preexec_fn=_die_with_parent)
        self.daemons.append((name, proc))

    def _alive(self, name: str) -> bool:
        return any(n == name and p.poll() is None for n, p in self.daemons)

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.time() + READY_TIMEOUT_S
        while not ready():
            dead = [f"{n} exited with {p.returncode}" for n, p in self.daemons if p.poll() is not None]
            if dead or time.time() > deadline:
                reason = "; ".join(dead) or f"no answer in {READY_TIMEOUT_S} s"
                raise ClusterError(f"waiting for {what}: {reason}\n{self.logs()}")
            time.sleep(0.3)

    def _check(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(command)} failed: {done.stderr.strip()}")

    def _quiet(self, command: list[str]) -> bool:
        try:
            return subprocess.run(command, capture_output=True, env=self.env, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _output(self, command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    def _step_daemons(self) -> list[int]:
        """PIDs of ``slurmstepd`` processes of this cluster (their open files lie in its folder)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if not Path(os.readlink(proc / "exe")).name.startswith("slurmstepd"):  # Debian: slurmstepd-wlm
                    continue
                targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            except OSError:
                continue
            if any(t.startswith(str(self.folder)) for t in targets):
                pids.append(int(proc.name))
        return pids


@contextmanager
def one_node_cluster(folder: Path | None = None, keep: bool = False) -> Iterator[Cluster]:
    """Start a cluster (in ``folder`` or a new temporary one); stop it whatever happens."""
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="bob-slurm-"))
    cluster = Cluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        for line in cluster.stop():
            print(f"slurm cluster: stopped {line}", flush=True)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def run(command: list[str], keep: bool = False) -> int:
    """Install if needed, start a cluster, run ``command`` against it, stop the cluster; ``command``'s exit code."""
    install()
    if os.geteuid() != 0:
        raise ClusterError("the test cluster runs slurmctld, slurmd and its jobs as root (SlurmUser=root): run as root")
    with one_node_cluster(keep=keep) as cluster:
        print(f"slurm cluster: up in {cluster.folder} (SLURM_CONF={cluster.conf})", flush=True)
        return subprocess.run(command, env=cluster.env).returncode


def _program(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if path is None:
        raise ClusterError(f"{name} not found (install {' '.join(PACKAGES)})")
    return path


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when this script dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _descendants(pids: list[int]) -> list[int]:
    """All living descendants of ``pids`` (children before grandchildren), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(parent, []).append(int(proc.name))
    found, frontier = [], list(pids)
    while frontier:
        kids = [kid for pid in frontier for kid in children.get(pid, [])]
        found.extend(kids)
        frontier = kids
    return found


def _terminate(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is not None:
        return f"had exited ({proc.returncode})"
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
        return "stopped"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed"


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the daemons


def main(argv: list[str] | None = None) -> int:
    """Command line: ``install`` or ``run [--keep] -- CMD...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("install", help="install slurm-wlm and munge from Debian when missing")
    p = sub.add_parser("run", help="run a command against a fresh one-node cluster")
    p.add_argument("--keep", action="store_true", help="keep the cluster folder (logs) afterwards")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_exit)
    try:
        if args.action == "install":
            install()
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run: give the command after --")
        return run(command, keep=args.keep)
    except ClusterError as exc:
        print(f"slurm cluster: cannot run here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
