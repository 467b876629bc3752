"""Cluster profiles (``[clusters.NAME]`` in ``sciserve.toml``): a batch job on
a real one-node Slurm through a ``slurm`` profile, the job scripts of
HTCondor and PBS profiles field by field, and the mistakes a user makes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sciserve.batch.executor import cluster_client
from sciserve.batch.job import BatchJob
from sciserve.config import Settings
from sciserve.registry.registry import Registry
from sciserve.streams.spec import parse_batch_spec

from helpers.batch import NULL_IDS, TEXT_ID, archive, outputs, spec
from helpers.cli import Cli
from helpers.packages import expected_linear, make_onnx_package
from helpers.slurm import SlurmCluster

pytest.importorskip("dask_jobqueue")

PYTHON = "/cvmfs/sciserve.org/venv/bin/python"


def _home(root: Path, toml: str) -> Path:
    """A registry holding ``default/linear`` (4 → 3), with ``toml`` as its settings file."""
    home = root / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(make_onnx_package(root / "linear"))
    (home / "sciserve.toml").write_text(toml)
    return home


def _slurm_profile(slurm: SlurmCluster, logs: Path) -> str:
    return f"""
[clusters.lab]
kind = "slurm"
queue = "{slurm.partition}"
cores = 1
processes = 1
memory = "480MiB"  # a worker with ONNX Runtime loaded uses about 200 MiB; the node has 1 GiB
walltime = "00:05:00"
python = "{sys.executable}"
min_jobs = 2
max_jobs = 2
start_timeout = 60
log_directory = "{logs}"
worker_env = {{ SCISERVE_TEST_MARK = "from the profile" }}
"""


def _check_exact(out_dir: Path, good: dict[str, np.ndarray]) -> None:
    table, dead = outputs(out_dir)
    rows = table.to_pylist()
    ids = [r["row_id"] for r in rows]
    assert sorted(ids) == sorted(good) and len(set(ids)) == len(ids)
    for row in rows:
        np.testing.assert_allclose(
            row["y"], expected_linear(good[row["row_id"]][None, :])[0], rtol=1e-5
        )
    assert {d["row_id"] for d in dead} == {*map(str, NULL_IDS), str(TEXT_ID), "extra.jsonl:2"}


def _wait_until_gone(slurm: SlurmCluster, name: str) -> None:
    """Poll until no job called ``name`` is left in ``squeue`` (cancelling takes a moment)."""
    deadline = time.monotonic() + 30
    while left := {i for i, (n, _) in slurm.jobs().items() if n == name}:
        if time.monotonic() > deadline:
            pytest.fail(f"jobs {left} still queued\n{slurm.log_tails()}")
        time.sleep(0.2)


def test_a_job_with_a_slurm_profile_runs_on_slurm_jobs(
    slurm: SlurmCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The site's token, in the environment Slurm gives the jobs (sbatch's
    # --export=ALL), never in the job script.
    monkeypatch.setenv("SCISERVE_TOKEN", "site-token")
    home = _home(tmp_path, _slurm_profile(slurm, tmp_path / "logs"))
    good = archive(tmp_path / "archive")
    settings = Settings.load(home, environ={})
    job = BatchJob(
        parse_batch_spec(yaml.safe_load(spec(tmp_path).read_text()), base_dir=tmp_path),
        settings,
        tmp_path / "out",
    )
    job.plan()
    with cluster_client("lab", settings.cluster("lab"), settings) as client:
        assert "site-token" not in client.cluster.job_script()

        def where() -> tuple[str | None, str | None, str | None, dict[str, str]]:
            return (
                os.environ.get("SLURM_JOB_ID"),
                os.environ.get("SCISERVE_HOME"),
                os.environ.get("SCISERVE_TEST_MARK"),
                settings.worker_auth_headers(),  # a job sent without a token
            )

        placed = client.run(where)
        job_ids = {job_id for job_id, *_ in placed.values()}
        assert len(placed) == 2 and len(job_ids) == 2 and None not in job_ids
        assert {(h, m) for _, h, m, _ in placed.values()} == {(str(home), "from the profile")}
        assert [a for *_, a in placed.values()] == [{"Authorization": "Bearer site-token"}] * 2
        queue = slurm.jobs()
        assert {i: queue[i] for i in job_ids} == {i: ("sciserve-lab", "RUNNING") for i in job_ids}
        report = job.run(client)
    assert report.verified and report.shards == 5
    assert (report.rows, report.outputs, report.dead_letters) == (105, 101, 4)
    _check_exact(job.out_dir, good)
    _wait_until_gone(slurm, "sciserve-lab")

    # The same through the command line, into another output directory.
    cli = Cli(home, capsys)
    result = cli.json(
        "batch", "run", str(spec(tmp_path)), "--cluster", "lab", "--out", str(tmp_path / "cli")
    )
    assert result["verified"] is True and result["outputs"] == 101
    _check_exact(Path(result["out_dir"]), good)
    _wait_until_gone(slurm, "sciserve-lab")


def test_a_cluster_whose_workers_never_come_is_reported_and_cancelled(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A job that may only start in an hour: it stays pending past the deadline.
    home = _home(
        tmp_path,
        f"""
[clusters.big]
kind = "slurm"
queue = "{slurm.partition}"
memory = "256MiB"
python = "{sys.executable}"
job_extra_directives = ["--begin=now+1hour"]
start_timeout = 3
""",
    )
    archive(tmp_path / "archive")
    out = Cli(home, capsys)("batch", "run", str(spec(tmp_path)), "--cluster", "big", code=7)
    assert "cluster 'big': 1 worker(s) did not join in 3 s" in out
    _wait_until_gone(slurm, "sciserve-big")  # closing the cluster cancelled the pending job


def test_a_job_the_site_refuses_is_reported_at_once(
    slurm: SlurmCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(
        tmp_path,
        f"""
[clusters.typo]
kind = "slurm"
queue = "no-such-partition"
memory = "256MiB"
python = "{sys.executable}"
""",
    )
    archive(tmp_path / "archive")
    started = time.monotonic()
    out = Cli(home, capsys)("batch", "run", str(spec(tmp_path)), "--cluster", "typo", code=7)
    assert time.monotonic() - started < 30  # not the 300 s start_timeout
    assert "cluster 'typo': the slurm scheduler refused the job: " in out
    assert "Invalid partition name specified" in out
    assert not (home / "batch").exists()


def _fields(description: str) -> dict[str, str]:
    """The ``key = value`` lines of an HTCondor submit description."""
    fields = {}
    for line in description.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def test_an_htcondor_profile_gives_its_submit_description(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(
        tmp_path,
        """
[clusters.condor]
kind = "htcondor"
image = "/cvmfs/images/sciserve.sif"
cores = 2
processes = 2
memory = "4GiB"
disk = "10GiB"
job_extra_directives = [
    'requirements = OpSysAndVer == "AlmaLinux9"',
    '+AccountingGroup = "group_astro"',
]
worker_env = { SCISERVE_URL = "https://models.example.org" }
scheduler_host = "10.0.0.5"
log_directory = "/scratch/logs"
""",
    )
    text = Cli(home, capsys)("batch", "script", "--cluster", "condor")
    fields = _fields(text)
    assert text.startswith("#!/usr/bin/env condor_submit\n")
    assert text.rstrip().endswith("Queue")
    assert fields["MY.DaskWorkerCores"] == "2"
    assert fields["MY.DaskWorkerMemory"] == str(4 * 2**30)
    assert fields["MY.DaskWorkerDisk"] == str(10 * 2**30)
    assert fields["universe"] == "container"
    assert fields["container_image"] == "/cvmfs/images/sciserve.sif"
    assert fields["requirements"] == 'OpSysAndVer == "AlmaLinux9"'
    assert fields["+AccountingGroup"] == '"group_astro"'
    assert fields["LogDirectory"] == "/scratch/logs"
    assert fields["batch_name"] == "sciserve-condor-0"
    arguments = fields["Arguments"]
    assert arguments.startswith(
        f"\"-c 'export SCISERVE_HOME={home}; export SCISERVE_URL=https://models.example.org; "
    )
    # The image's Python, a scheduler on the profile's address, two processes of one thread.
    assert "python3 -m distributed.cli.dask_worker tcp://10.0.0.5:8786 " in arguments
    assert "--nthreads 1 --memory-limit 2.00GiB --nworkers 2" in arguments
    assert "--host" not in arguments  # workers on other nodes: their own address
    assert "TOKEN" not in text


def test_a_pbs_profile_gives_its_job_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(
        tmp_path,
        f"""
[clusters.pbs]
kind = "pbs"
queue = "workq"
account = "astro"
cores = 4
processes = 4
memory = "8GiB"
walltime = "01:30:00"
python = "{PYTHON}"
job_extra_directives = ["-l place=scatter"]
prologue = ["module load cuda"]
""",
    )
    cli = Cli(home, capsys)
    lines = cli("batch", "script", "--cluster", "pbs").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    directives = [line.removeprefix("#PBS ") for line in lines if line.startswith("#PBS ")]
    assert directives == [
        "-N sciserve-pbs",
        "-q workq",
        "-A astro",
        "-l select=1:ncpus=4:mem=8192MB",
        "-l walltime=01:30:00",
        "-l place=scatter",
    ]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands[:2] == [f"export SCISERVE_HOME={home}", "module load cuda"]
    assert commands[2].startswith(f"{PYTHON} -m distributed.cli.dask_worker tcp://127.0.0.1:8786 ")
    assert "--nthreads 1 --memory-limit 2.00GiB --nworkers 4" in commands[2]
    # The scheduler is on the loopback interface by default, so are the workers.
    assert commands[2].endswith("--host 127.0.0.1")


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ('kind = "slurm"\ncoress = 4', "[clusters.lab] has an unknown key 'coress'"),
        ('kind = "lsf"', "[clusters.lab] kind: Input should be 'slurm', 'htcondor', 'pbs' or"),
        ('kind = "slurm"\nmin_jobs = 3\nmax_jobs = 2', "max_jobs (2) is below min_jobs (3)"),
        (
            'kind = "slurm"\nworker_env = { SCISERVE_TOKEN = "secret-value" }',
            "SCISERVE_TOKEN would be written in clear into job scripts",
        ),
    ],
)
def test_a_mistake_in_a_profile_is_named_before_any_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, message: str
) -> None:
    home = _home(tmp_path, f"[clusters.lab]\n{profile}\n")
    archive(tmp_path / "archive")
    cli = Cli(home, capsys)
    out = cli("batch", "run", str(spec(tmp_path)), "--cluster", "lab", code=2)
    assert message in out and "secret-value" not in out
    assert not (tmp_path / "home" / "batch").exists()


def test_cluster_choices_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)  # not installed
    home = _home(
        tmp_path,
        '[clusters.lab]\nkind = "slurm"\n[clusters.k8s]\nkind = "kubernetes"\nimage = "x:1"\n',
    )
    archive(tmp_path / "archive")
    cli = Cli(home, capsys)
    job = str(spec(tmp_path))
    out = cli("batch", "run", job, "--cluster", "nope", code=2)
    assert "no cluster profile 'nope' in sciserve.toml (known: k8s, lab)" in out
    out = cli("batch", "run", job, "--cluster", "lab", "--scheduler", "tcp://127.0.0.1:1", code=2)
    assert "--scheduler and --cluster exclude each other" in out
    out = cli("batch", "run", job, "--cluster", "lab", "--workers", "4", code=2)
    assert "--workers sizes the local cluster only" in out
    out = cli("batch", "run", job, "--cluster", "k8s", code=8)
    assert "pip install dask-kubernetes" in out
    assert "pip install dask-kubernetes" in cli("batch", "script", "--cluster", "k8s", code=8)
    assert not (home / "batch").exists()


def test_workers_use_the_jobs_token_or_their_sites(tmp_path: Path) -> None:
    site = {"SCISERVE_TOKEN": "site-token"}
    sent = Settings.load(tmp_path, environ={}, token="job-token")
    assert sent.worker_auth_headers(site) == {"Authorization": "Bearer job-token"}
    unsent = sent.model_copy(update={"token": None})
    assert unsent.worker_auth_headers(site) == {"Authorization": "Bearer site-token"}
    assert unsent.worker_auth_headers({}) == {}


def test_profiles_are_typed_settings(tmp_path: Path) -> None:
    (tmp_path / "sciserve.toml").write_text(
        '[clusters.lab]\nkind = "slurm"\nqueue = "cpu"\nmax_jobs = 8\n'
    )
    p: Any = Settings.load(tmp_path, environ={}).cluster("lab")
    assert (p.kind, p.queue, p.min_jobs, p.max_jobs) == ("slurm", "cpu", 1, 8)
    assert p.scheduler_host == "127.0.0.1" and p.python is None and p.send_token is True
