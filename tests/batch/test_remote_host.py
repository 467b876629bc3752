"""A batch job whose Dask worker runs on "another host": a network namespace
made by the test, joined to this one by a veth pair with link-local
addresses.  The scheduler listens on the host side of the veth (not on
loopback) and the worker, inside the namespace, on the other side, so
nothing can take a loopback shortcut.

What a real remote worker shares with the submitting machine is a file
system (NFS, CVMFS, …) holding the registry export (``--home``), the
archive and the output directory (``--out``); here those are directories
the test creates and names explicitly on the command line.  Nothing else is
shared: the worker has its own local directory and ``TMPDIR``, so the job
cannot lean on the client's temporary files.

Creating namespaces needs root: outside CI the test is skipped when not
root; with ``CI`` set it must run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sciserve.config import Settings
from sciserve.registry.registry import Registry

from helpers.cli import Cli
from helpers.packages import expected_linear, make_onnx_package
from helpers.required import unavailable


@dataclass(frozen=True)
class Namespace:
    """A network namespace and the two ends of its veth pair."""

    name: str
    host_link: str
    host_address: str
    address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A fresh namespace ``sciserve-<pid>`` with 169.254.X.(4k+1)/30 on the host
    side and .(4k+2) inside, both derived from the pid so that parallel runs
    do not collide; deleted afterwards with everything left running in it."""
    reason = None
    if shutil.which("ip") is None:
        reason = "iproute2's ip is not installed"
    elif os.geteuid() != 0:
        reason = "network namespaces need root"
    if reason is not None:
        unavailable(reason)
    pid = os.getpid()
    # 169.254.169.254 is the cloud metadata address: stay below it.
    subnet = f"169.254.{1 + pid % 168}"
    base = 4 * ((pid // 168) % 63)
    ns = Namespace(
        name=f"sciserve-{pid}",
        host_link=f"ssv{pid}h",
        host_address=f"{subnet}.{base + 1}",
        address=f"{subnet}.{base + 2}",
    )
    inner_link = f"ssv{pid}n"
    try:
        _ip("netns", "add", ns.name)
        _ip("link", "add", ns.host_link, "type", "veth", "peer", "name", inner_link)
        _ip("link", "set", inner_link, "netns", ns.name)
        _ip("addr", "add", f"{ns.host_address}/30", "dev", ns.host_link)
        _ip("link", "set", ns.host_link, "up")
        inside = ("netns", "exec", ns.name, "ip")
        _ip(*inside, "addr", "add", f"{ns.address}/30", "dev", inner_link)
        _ip(*inside, "link", "set", inner_link, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield ns
    finally:
        _delete(ns)


def _delete(ns: Namespace) -> None:
    found = subprocess.run(
        ["ip", "netns", "pids", ns.name], capture_output=True, text=True, check=False
    )
    for line in found.stdout.split():  # our own processes left inside, by pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, check=False)
    # Deleting the namespace deletes its end of the pair, and with it ours;
    # if the pair was made but never moved, it is still here.
    subprocess.run(["ip", "link", "delete", ns.host_link], capture_output=True, check=False)


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _archive(root: Path) -> dict[str, np.ndarray]:
    """Two Parquet files of 40 rows in row groups of 20; each row's features by id."""
    rng = np.random.default_rng(11)
    rows: dict[str, np.ndarray] = {}
    root.mkdir(parents=True)
    for part, first in enumerate((100, 200)):
        ids = np.arange(first, first + 40)
        x = rng.normal(size=(40, 4))
        table = pa.table({"obj": ids, **{f"f{j}": x[:, j] for j in range(4)}})
        pq.write_table(table, root / f"part-{part}.parquet", row_group_size=20)
        rows.update({str(i): x[k] for k, i in enumerate(ids)})
    return rows


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_worker_on_another_host_runs_the_same_spec(
    tmp_path: Path, namespace: Namespace, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import Client

    shared = tmp_path / "shared"  # the shared file system of a real cluster
    home, out = shared / "home", shared / "out"
    settings = Settings.load(home, environ={})
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
    rows = _archive(shared / "archive")
    spec = shared / "job.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "rescore",
                "input": "archive",
                "columns": ["f0", "f1", "f2", "f3"],
                "id": "obj",
                "models": [{"ref": "default/linear"}],
                "filter": "y[2] > 30",
                "batch": 16,
            }
        )
    )
    worker_local = tmp_path / "worker-local"  # the worker host's own disk
    (worker_local / "tmp").mkdir(parents=True)
    port = _free_port(namespace.host_address)
    address = f"tcp://{namespace.host_address}:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    worker_env = {**env, "TMPDIR": str(worker_local / "tmp")}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("scheduler", "worker")}  # noqa: SIM115
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", "scheduler", "--host", namespace.host_address,
                 "--port", str(port), "--no-dashboard"],
                stdout=logs["scheduler"], stderr=subprocess.STDOUT, env=env,
            )
        )  # fmt: skip
        # ``ip netns exec`` execs the command: the pid is the worker's nanny.
        processes.append(
            subprocess.Popen(
                ["ip", "netns", "exec", namespace.name, sys.executable, "-m", "dask", "worker",
                 address, "--host", namespace.address, "--nworkers", "1", "--nthreads", "1",
                 "--no-dashboard", "--local-directory", str(worker_local / "dask")],
                stdout=logs["worker"], stderr=subprocess.STDOUT, env=worker_env,
                cwd=worker_local,
            )
        )  # fmt: skip

        def log() -> str:
            return "\n".join(
                f"--- {name}\n{(tmp_path / f'{name}.log').read_text()}" for name in logs
            )

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as probe:  # type: ignore[no-untyped-call]
                    probe.wait_for_workers(1, timeout=60)
                    workers: dict[str, int] = probe.run(os.getpid)
                break
            except OSError:
                assert time.monotonic() < deadline, log()
                for process in processes:
                    assert process.poll() is None, log()
                time.sleep(0.1)
        [(worker_address, worker_pid)] = workers.items()
        assert worker_address.startswith(f"tcp://{namespace.address}:")
        in_namespace = subprocess.run(
            ["ip", "netns", "pids", namespace.name], capture_output=True, text=True, check=True
        ).stdout.split()
        assert str(worker_pid) in in_namespace

        cli = Cli(tmp_path / "client-home", capsys)  # the client's own, empty home
        report = cli.json(
            "batch", "run", str(spec), "--scheduler", address,
            "--home", str(home), "--out", str(out),
        )  # fmt: skip
        assert report["verified"] is True
        assert report["shards"] == 4 and sorted(report["ran"]) == [f"{i:05d}" for i in range(4)]
        assert report["rows"] == report["outputs"] == len(rows) == 80
        assert report["dead_letters"] == 0
        out_dir = Path(report["out_dir"])
        assert out_dir.parent == out
        parts = sorted(out_dir.glob("shard-*.parquet"))
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        got: list[dict[str, Any]] = table.to_pylist()
        assert sorted(r["row_id"] for r in got) == sorted(rows)
        for row in got:
            np.testing.assert_allclose(
                row["y"], expected_linear(rows[row["row_id"]][None, :])[0], rtol=1e-5
            )
        # Every shard was computed by the worker in the namespace.
        manifests = [json.loads(p.read_text()) for p in sorted(out_dir.glob("shard-*.json"))]
        assert len(manifests) == 4
        assert {m["pid"] for m in manifests} == {worker_pid}
        # The worker used its own directories, never the client's /tmp.
        assert any((worker_local / "dask").iterdir())
    finally:
        for process in reversed(processes):
            _stop(process)
        for handle in logs.values():
            handle.close()
