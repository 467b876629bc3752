"""A real one-node Slurm cluster for tests, started from Debian's ``slurm-wlm`` and ``munge``.

Everything lives under one temporary directory: the munge key, ``munged`` with
its socket, ``slurm.conf`` and the state, spool and log directories of
``slurmctld`` and ``slurmd``.  The daemons run in the foreground (``-D``) as
child processes and are stopped by their PIDs.  Clients (``sinfo``, ``sbatch``,
``squeue``, ``scancel``, and dask-jobqueue, which calls them) find the cluster
through ``SLURM_CONF``; the munge socket path travels in ``slurm.conf``
(``AuthInfo=socket=...``), so the machine's own munge and Slurm set-up, if
any, are left alone.

The daemons run as root (``SlurmUser=root``) with process tracking by
``/proc`` and no task plugin, so no cgroups are needed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: Binaries the cluster needs: the daemons and the clients dask-jobqueue calls.
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch", "scancel")
PARTITION = "debug"


def missing_binaries() -> list[str]:
    """The Slurm and munge programs not found on ``PATH`` (``/usr/sbin`` included)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in BINARIES if shutil.which(name, path=path) is None]


def _which(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(name)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path.name}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class SlurmCluster:
    """A running one-node cluster: its configuration and the client environment."""

    root: Path
    conf: Path
    node: str
    partition: str
    env: dict[str, str]
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def client(self, *argv: str, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster and return its stdout."""
        result = subprocess.run(
            [_which(argv[0]), *argv[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def jobs(self) -> dict[str, tuple[str, str]]:
        """Jobs in the queue: job id -> (job name, state such as RUNNING or PENDING)."""
        out = self.client("squeue", "--noheader", "--format=%i|%j|%T")
        jobs: dict[str, tuple[str, str]] = {}
        for line in out.splitlines():
            if line.strip():
                job_id, name, state = line.strip().split("|")
                jobs[job_id] = (name, state)
        return jobs

    def node_state(self) -> str:
        out = self.client("sinfo", "--noheader", "--Node", "--format=%N %T")
        for line in out.splitlines():
            name, _, state = line.strip().partition(" ")
            if name == self.node:
                return state
        return ""

    def log_tails(self) -> str:
        """The last lines of the daemons' logs, for failure messages."""
        parts = []
        for daemon in ("munged", "slurmctld", "slurmd"):
            # munged in the foreground logs to stderr; slurmctld and slurmd copy
            # their log there too, and only there before the log file is open.
            log = self.logs / f"{daemon}.log"
            name = log.name if log.exists() else f"{daemon}.out"
            parts.append(f"--- {name} ---\n{_tail(self.logs / name)}")
        for name, proc in self.daemons.items():
            parts.append(f"{name} (pid {proc.pid}) exit code: {proc.poll()}")
        return "\n".join(parts)

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
        """Poll ``predicate()`` until true; fail with the daemon logs after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited while waiting for {what}\n{self.log_tails()}"
                    )
            try:
                if predicate():
                    return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise TimeoutError(
            f"Slurm: {what} not reached in {timeout:.0f} s (last error: {last_error or 'none'})\n"
            f"{self.log_tails()}"
        )


def _write_config(root: Path, node: str, munge_socket: Path) -> Path:
    memory_mb = 1024
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=sciserve-test",
                f"SlurmctldHost={node}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                # Process tracking through /proc and no task plugin: no cgroups needed.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "MailProg=/bin/true",
                # CPUs (not whole cores or nodes) are allocated, so one-core jobs share the node.
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                # Schedule on every submission rather than on a backfill timer.
                "SchedulerType=sched/builtin",
                "ReturnToService=2",
                "KillWait=5",
                "InactiveLimit=0",
                "MinJobAge=10",
                f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} "
                f"RealMemory={memory_mb} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _spawn(argv: list[str], env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    """Start a daemon in the foreground, its stdout and stderr going to ``output``."""
    with output.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def _stray_job_processes(conf: Path) -> list[psutil.Process]:
    """Job steps and job processes of this cluster still alive after its daemons stopped.

    ``slurmstepd`` detaches from ``slurmd`` (inheriting its environment), and
    jobs inherit the submitter's; so both are found by this cluster's (unique,
    temporary) ``SLURM_CONF`` path.
    """
    me = os.getpid()
    strays = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            environ = proc.environ()
            if (
                environ.get("SLURM_CONF") == str(conf)
                and (proc.name() == "slurmstepd" or "SLURM_JOB_ID" in environ)
                and me not in {p.pid for p in proc.parents()}
            ):
                strays.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return strays


@contextmanager
def slurm_cluster(root: Path, timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root``; yield when the node is idle.

    On exit every job is cancelled and waited for, then the daemons are
    stopped by their PIDs (any job process left is killed by PID too).
    """
    node = socket.gethostname()
    for sub in ("state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses a socket directory that others may write into; clients
    # (any user) must be able to reach the socket.
    munge_dir = root / "munge"
    munge_dir.chmod(0o755)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge_dir / "munge.socket"
    conf = _write_config(root, node, munge_socket)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root=root, conf=conf, node=node, partition=PARTITION, env=env)
    logs = cluster.logs
    try:
        cluster.daemons["munged"] = _spawn(
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--log-file={logs / 'munged.log'}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            env,
            logs / "munged.out",
        )
        cluster.wait_until("munge socket", munge_socket.exists, timeout)
        cluster.daemons["slurmctld"] = _spawn(
            [_which("slurmctld"), "-D", "-f", str(conf)], env, logs / "slurmctld.out"
        )
        cluster.daemons["slurmd"] = _spawn(
            [_which("slurmd"), "-D", "-f", str(conf), "-N", node], env, logs / "slurmd.out"
        )
        cluster.wait_until(
            f"node {node} idle", lambda: cluster.node_state().startswith("idle"), timeout
        )
        yield cluster
    finally:
        _shutdown(cluster)


def _shutdown(cluster: SlurmCluster) -> None:
    ctld = cluster.daemons.get("slurmctld")
    if ctld is not None and ctld.poll() is None:
        try:
            if cluster.jobs():
                cluster.client("scancel", f"--partition={cluster.partition}")
                cluster.wait_until("an empty queue", lambda: not cluster.jobs(), 30)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            pass  # the daemons are stopped below regardless; strays are killed by PID
    for name in ("slurmd", "slurmctld", "munged"):
        proc = cluster.daemons.get(name)
        if proc is not None:
            _stop(proc)
    for stray in _stray_job_processes(cluster.conf):
        try:
            stray.kill()
        except psutil.NoSuchProcess:
            continue
