"""Dask workers as real Slurm jobs, through dask-jobqueue's ``SLURMCluster``.

The ``slurm`` fixture starts a one-node Slurm cluster on this machine; these
tests prove that what batch jobs run on works end to end: the jobs are in
``squeue``, the workers run inside them, a computation comes back exact, and
closing the cluster empties the queue.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from helpers.slurm import SlurmCluster

dask_jobqueue = pytest.importorskip("dask_jobqueue")
distributed = pytest.importorskip("distributed")

JOB_NAME = "sciserve-slurm-test"


def _poll(what: str, predicate: Callable[[], bool], slurm: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached in {timeout:.0f} s\n{slurm.log_tails()}")
        time.sleep(0.2)


def test_dask_workers_run_as_slurm_jobs(slurm: SlurmCluster, tmp_path: Path) -> None:
    cluster = dask_jobqueue.SLURMCluster(
        queue=slurm.partition,
        job_name=JOB_NAME,
        cores=1,
        processes=1,
        memory="256MiB",
        walltime="00:05:00",
        python=sys.executable,
        # Loopback only, and a free dashboard port (8787 may be taken).
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--host", "127.0.0.1"],
        local_directory=str(tmp_path / "workers"),
        log_directory=str(tmp_path / "logs"),
    )
    job_ids: set[str] = set()
    try:
        script = cluster.job_script()
        assert f"#SBATCH -p {slurm.partition}" in script
        assert f"{sys.executable} -m distributed.cli.dask_worker" in script
        cluster.scale(jobs=2)
        with distributed.Client(cluster) as client:
            try:
                client.wait_for_workers(2, timeout=60)
            except TimeoutError:
                pytest.fail(f"2 Slurm workers did not join in 60 s\n{slurm.log_tails()}")

            job_ids = {job.job_id for job in cluster.workers.values()}
            assert len(job_ids) == 2 and None not in job_ids
            queue = slurm.jobs()
            assert {i: queue[i] for i in job_ids} == {i: (JOB_NAME, "RUNNING") for i in job_ids}

            # Each worker process lives inside its own Slurm job, under slurmstepd.
            def where() -> tuple[str | None, int]:
                return os.environ.get("SLURM_JOB_ID"), os.getpid()

            placed = client.run(where)
            assert {job for job, _ in placed.values()} == job_ids
            for _, pid in placed.values():
                ancestors = [p.name() for p in psutil.Process(pid).parents()]
                assert "slurmstepd" in ancestors, ancestors

            def square(i: int) -> tuple[int, str | None, int]:
                return i * i, os.environ.get("SLURM_JOB_ID"), os.getpid()

            results = client.gather(client.map(square, range(40)))
            assert [value for value, _, _ in results] == [i * i for i in range(40)]
            assert {(job, pid) for _, job, pid in results} <= set(placed.values())
    finally:
        cluster.close()
    _poll("the cluster's jobs leaving squeue", lambda: not (job_ids & set(slurm.jobs())), slurm, 30)


def test_slurm_fixture_exports_its_configuration(slurm: SlurmCluster) -> None:
    assert os.environ["SLURM_CONF"] == str(slurm.conf)
    assert slurm.node_state().startswith("idle") or slurm.node_state().startswith("mixed")
