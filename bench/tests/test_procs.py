"""Children go away with their whole process group, whatever happens."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from servebench.procs import ChildFailed, Service, free_port, run_command


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def test_stopping_a_service_ends_its_grandchildren(tmp_path: Path) -> None:
    script = "sleep 300 & sleep 300 & echo started; wait"
    with Service("sleepers", ["sh", "-c", script], tmp_path / "log") as service:
        service.wait_for_output("started", timeout=10)
        members = _group_members(service.pid)
        assert len(members) == 3  # the shell and its two sleeps
    assert not any(_alive(pid) for pid in members)


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    script = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
    service = Service("stubborn", ["sh", "-c", script], tmp_path / "log").start()
    try:
        service.wait_for_output("ready", timeout=10)
        pid = service.pid
    finally:
        started = time.monotonic()
        service.stop(grace=0.5)
    assert not _alive(pid)
    assert time.monotonic() - started < 10


def test_a_child_that_exits_early_is_reported_with_its_output(tmp_path: Path) -> None:
    service = Service("crash", ["sh", "-c", "echo boom; exit 3"], tmp_path / "log")
    with service, pytest.raises(ChildFailed, match=r"(?s)exited \(code 3\).*boom"):
        service.wait_for_output("never printed", timeout=10)


def test_waiting_for_output_times_out(tmp_path: Path) -> None:
    service = Service("quiet", ["sleep", "30"], tmp_path / "log")
    with service, pytest.raises(ChildFailed, match="did not print"):
        service.wait_for_output("anything", timeout=0.3)


def test_run_command_returns_stdout_and_reports_failures() -> None:
    assert run_command(["sh", "-c", "echo hello"], timeout=10) == "hello\n"
    with pytest.raises(ChildFailed, match=r"(?s)exited with 4.*bad thing"):
        run_command(["sh", "-c", "echo bad thing >&2; exit 4"], timeout=10)


def test_run_command_stops_the_group_on_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with pytest.raises(ChildFailed, match="did not finish"):
        run_command(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], timeout=1)
    assert not _alive(int(marker.read_text()))


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536
