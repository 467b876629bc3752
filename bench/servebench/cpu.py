"""CPU time of a server's whole process tree and of the load generator, per timed run.

A server is often more than one process: sciserve's gRPC and HTTP front
ends, Triton's ``tritonserver`` and Python backend stubs under PyTriton,
MLServer's workers.  Its CPU is read from ``/proc/<pid>/stat`` for the
server's process and every descendant (and every process of its session,
which catches a descendant re-parented after its parent exited), at the
start and the end of each timed run.  Each process counts its own time plus
the time of the children it has reaped (``cutime`` + ``cstime``), so a
front end that exits and is reaped during the run still counts, through
its parent, and nothing counts twice.  The server's main process (the one
started, which owns the batchers) is also given on its own: with front ends,
whether it is still the one that is saturated.

The load generator (wrk, h2load) is a child the harness waits for, so its
CPU is the harness's ``RUSAGE_CHILDREN`` before and after the run; the
in-process ONNX Runtime ceiling is the harness's own ``RUSAGE_SELF``.
Linux only, like the rest of the harness.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "CpuUse",
    "TreeCpu",
    "children_cpu_seconds",
    "self_cpu_seconds",
    "tree_cpu_seconds",
    "tree_pids",
]

_PROC = Path("/proc")


@dataclass(frozen=True)
class _Stat:
    ppid: int
    session: int
    #: utime + stime + cutime + cstime, in clock ticks.
    ticks: int
    #: utime + stime: the process's own threads only.
    own: int


def _read_stat(path: Path) -> _Stat | None:
    try:
        text = path.read_text()
    except OSError:  # the process ended between listing and reading
        return None
    # The command name is in parentheses and may itself contain ") ".
    fields = text[text.rfind(")") + 2 :].split()
    # Fields counted from "state" (field 3 of proc(5)): ppid 4, session 6,
    # utime 14, stime 15, cutime 16, cstime 17.
    try:
        return _Stat(
            ppid=int(fields[1]),
            session=int(fields[3]),
            ticks=sum(int(v) for v in fields[11:15]),
            own=int(fields[11]) + int(fields[12]),
        )
    except (IndexError, ValueError):
        return None


def _all_stats() -> dict[int, _Stat]:
    stats = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = _read_stat(entry / "stat")
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def _tree(root: int, stats: dict[int, _Stat]) -> set[int]:
    if root not in stats:
        return set()
    members = {root}
    # A session leader's session holds what it started, even re-parented.
    if stats[root].session == root:
        members |= {pid for pid, s in stats.items() if s.session == root}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return members


def tree_pids(root: int) -> set[int]:
    """``root`` and its descendants (and its session, if it leads one); empty if gone."""
    return _tree(root, _all_stats())


@dataclass(frozen=True)
class TreeCpu:
    """CPU seconds used so far by a process tree, and by its root alone."""

    total_s: float
    main_s: float
    processes: int


def tree_cpu(root: int) -> TreeCpu:
    """The CPU ``root``'s process tree has used so far (zeros once it is gone)."""
    stats = _all_stats()
    members = _tree(root, stats)
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(stats[pid].ticks for pid in members)
    main = stats[root].own if root in members else 0
    return TreeCpu(total / tick, main / tick, len(members))


def tree_cpu_seconds(root: int) -> tuple[float, int]:
    """CPU seconds used so far by ``root``'s process tree, and how many processes it has."""
    cpu = tree_cpu(root)
    return cpu.total_s, cpu.processes


def _seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU seconds of every child this process has waited for (wrk, h2load, …)."""
    return _seconds(resource.getrusage(resource.RUSAGE_CHILDREN))


def self_cpu_seconds() -> float:
    """CPU seconds of this process, all its threads."""
    return _seconds(resource.getrusage(resource.RUSAGE_SELF))


@dataclass(frozen=True)
class CpuUse:
    """CPU used during one timed run: the server's tree and the load generator."""

    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    #: Processes in the server's tree at the end of the run (1 for in-process).
    server_processes: int
    #: Of ``server_cpu_s``, what the server's main process used itself.
    main_cpu_s: float | None = None

    @property
    def server_cores(self) -> float:
        """Cores' worth of CPU the server used: CPU seconds / wall seconds."""
        return self.server_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def main_cores(self) -> float | None:
        """Cores' worth of CPU of the server's main process alone."""
        if self.main_cpu_s is None:
            return None
        return self.main_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cores_used(self) -> float:
        """Server and client together: how much of the machine the run used."""
        return self.server_cores + self.client_cores

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s,
            "server_cpu_s": self.server_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "server_processes": self.server_processes,
            "main_cpu_s": self.main_cpu_s,
            "server_cores": self.server_cores,
            "main_cores": self.main_cores,
            "client_cores": self.client_cores,
            "cores_used": self.cores_used,
        }


class CpuMeter:
    """Snapshot at construction, :meth:`stop` gives the :class:`CpuUse` since then.

    ``server_pid`` ``None`` means the server is this process (in-process
    ONNX Runtime): its CPU is ours and there is no client process.
    """

    def __init__(self, server_pid: int | None) -> None:
        self._pid = server_pid
        self._wall = time.monotonic()
        self._client = children_cpu_seconds()
        self._server = self._server_now()

    def _server_now(self) -> TreeCpu:
        if self._pid is None:
            own = self_cpu_seconds()
            return TreeCpu(own, own, 1)
        return tree_cpu(self._pid)

    def stop(self) -> CpuUse:
        server = self._server_now()
        client = children_cpu_seconds() - self._client if self._pid is not None else 0.0
        return CpuUse(
            wall_s=time.monotonic() - self._wall,
            server_cpu_s=max(0.0, server.total_s - self._server.total_s),
            client_cpu_s=max(0.0, client),
            server_processes=server.processes,
            main_cpu_s=max(0.0, server.main_s - self._server.main_s),
        )
