"""CPU accounting: a server's whole process tree, the load generator, in-process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from servebench.cpu import CpuMeter, CpuUse, tree_cpu_seconds, tree_pids
from servebench.procs import Service, run_command
from servebench.results import Run, median_of
from servebench.runner import metered

#: A child that says it is ready, then burns 0.6 s of CPU, says so, and stays.
_BURNER = """
import time
print("ready", flush=True)
time.sleep(0.3)
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
print("burnt", flush=True)
time.sleep(300)
"""

#: A parent that sleeps while its child burns; the child is what uses CPU.
_PARENT_OF_BURNER = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {_BURNER!r}])
time.sleep(300)
"""

#: A parent whose child burns for a while and exits, and is reaped, before the end.
_PARENT_OF_SHORT_BURNER = """
import subprocess, sys, time
print("started", flush=True)
time.sleep(0.3)
code = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"
subprocess.run([sys.executable, "-c", code], check=True)
print("reaped", flush=True)
time.sleep(300)
"""


def test_a_child_that_burns_cpu_is_counted_for_its_idle_parent(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", _PARENT_OF_BURNER]
    with Service("parent", argv, tmp_path / "log") as service:
        service.wait_for_output("ready", timeout=30)
        members = tree_pids(service.pid)
        meter = CpuMeter(service.pid)
        service.wait_for_output("burnt", timeout=60)
        use = meter.stop()
    assert service.pid in members
    assert len(members) == 2
    assert use.server_processes == 2  # the child is still running: counted live
    assert use.server_cpu_s >= 0.55
    assert use.server_cores == pytest.approx(use.server_cpu_s / use.wall_s)
    # The main process sleeps: the CPU is its child's, not its own.
    assert use.main_cpu_s is not None
    assert use.main_cpu_s < 0.2
    assert use.client_cpu_s == 0.0  # no child of this process was waited for


def test_a_child_reaped_during_the_run_still_counts_through_its_parent(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", _PARENT_OF_SHORT_BURNER]
    with Service("parent", argv, tmp_path / "log") as service:
        service.wait_for_output("started", timeout=30)
        meter = CpuMeter(service.pid)
        service.wait_for_output("reaped", timeout=30)
        use = meter.stop()
    assert use.server_processes == 1  # the burner is gone …
    assert use.server_cpu_s >= 0.5  # … and its 0.6 s of CPU is still there …
    assert use.main_cpu_s is not None
    assert use.main_cpu_s < 0.2  # … as its parent's children's, not its own


def test_the_tree_of_a_process_that_is_gone_is_empty() -> None:
    proc_pid = int(run_command([sys.executable, "-c", "import os; print(os.getpid())"], 30))
    assert tree_pids(proc_pid) == set()
    assert tree_cpu_seconds(proc_pid) == (0.0, 0)


def test_the_tree_does_not_include_the_caller_or_its_other_children(tmp_path: Path) -> None:
    with (
        Service("a", ["sleep", "30"], tmp_path / "a") as a,
        Service("b", ["sleep", "30"], tmp_path / "b") as b,
    ):
        assert tree_pids(a.pid) == {a.pid}
        assert os.getpid() not in tree_pids(b.pid)


def test_the_load_generator_is_metered_as_the_client() -> None:
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"

    def load() -> Run:
        run_command([sys.executable, "-c", burn], timeout=30)
        return Run(requests=10, errors=0, duration_s=1.0, p50_ms=1.0, p99_ms=2.0, batch=1)

    # The "server" here is this test's own process tree: any running process will do.
    run = metered(os.getpid(), load)
    assert run.cpu is not None
    assert run.cpu.client_cpu_s >= 0.45
    assert run.requests == 10


def test_an_unmetered_run_stays_unmetered() -> None:
    run = Run(requests=1, errors=0, duration_s=1.0, p50_ms=1.0, p99_ms=1.0, batch=1)
    assert metered(None, lambda: run).cpu is None


def test_in_process_use_is_our_own_cpu() -> None:
    meter = CpuMeter(None)
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    use = meter.stop()
    assert use.server_cpu_s >= 0.25
    assert use.main_cpu_s == use.server_cpu_s
    assert use.client_cpu_s == 0.0
    assert use.server_processes == 1


def test_the_median_carries_cpu_and_the_json_keeps_it() -> None:
    def run(server: float, client: float) -> Run:
        cpu = CpuUse(wall_s=2.0, server_cpu_s=server, client_cpu_s=client, server_processes=3)
        return Run(100, 0, 2.0, 1.0, 2.0, 1, cpu)

    median = median_of([run(2.0, 0.4), run(2.4, 0.6), run(3.0, 0.5)])
    assert median.server_cores == pytest.approx(1.2)
    assert median.server_cpu_percent == pytest.approx(120.0)
    assert median.client_cpu_percent == pytest.approx(25.0)
    assert median.cores_used == pytest.approx(1.5)  # the median of each run's sum
    as_json = run(2.0, 0.4).to_dict()
    assert as_json["cpu"]["server_cores"] == pytest.approx(1.0)
    assert as_json["cpu"]["server_processes"] == 3
    assert median.to_dict()["server_cpu_percent"] == pytest.approx(120.0)


def test_a_cell_with_an_unmetered_run_has_no_cpu_median() -> None:
    cpu = CpuUse(wall_s=1.0, server_cpu_s=1.0, client_cpu_s=0.1, server_processes=1)
    median = median_of([Run(1, 0, 1.0, 1.0, 1.0, 1, cpu), Run(1, 0, 1.0, 1.0, 1.0, 1)])
    assert median.server_cores is None
    assert median.server_cpu_percent is None
    assert median.to_dict()["cores_used"] is None
