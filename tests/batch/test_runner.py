"""The job runner executing job records: real Dask LocalClusters on 127.0.0.1,
real runner processes (killed, stopped, racing on PostgreSQL), a real
``sciserve serve`` with its runner child, and a real server answering a
job's ``server:`` steps.

Models: the tiny ONNX ``default/linear`` and a Python model ``lab/slow``
that sleeps per batch and reports the CPU priority (nice) it ran at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sciserve.access.priority import Priority
from sciserve.batch.job import BatchJob
from sciserve.batch.runner import JobRunner
from sciserve.config import Settings
from sciserve.jobs import JobOrigin, JobRecord, JobState, JobStore
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService, requested_priority
from sciserve.streams.spec import parse_batch_spec

from helpers.batch import archive as _archive
from helpers.batch import outputs as _outputs
from helpers.cli import Cli
from helpers.packages import expected_linear, make_onnx_package, python_package
from helpers.server import ServerThread, start_server, stop_server
from helpers.slurm import SlurmCluster

SLOW_MODEL = """
import os
import time

import numpy as np


class Model:
    def __init__(self, root, options):
        self.delay = float(options["delay"])

    def predict(self, inputs):
        time.sleep(self.delay)  # a slow model: the test stops the job meanwhile
        x = inputs["x"]
        return {
            "y": x.sum(axis=1, keepdims=True).astype(np.float32),
            "nice": np.full((len(x), 1), os.nice(0), dtype=np.float32),
        }
"""

#: The archive of helpers.batch: shards, rows, output rows (good rows) and dead letters.
SHARDS, ROWS, OUTPUTS, DEAD = 5, 105, 101, 4
DEADLINE = 120.0


def _slow_package(root: Path, name: str, delay: float) -> Path:
    outputs = [
        {"name": "y", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "nice", "datatype": "FP32", "shape": [-1, 1]},
    ]
    inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    return python_package(root, name, SLOW_MODEL, inputs=inputs, outputs=outputs, delay=delay)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry home with ``default/linear``, ``lab/slow`` (0.3 s a batch)
    and ``lab/slower`` (1 s a batch); each test runs on a copy."""
    base = tmp_path_factory.mktemp("runner")
    settings = Settings.load(base / "home", environ={})
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(base / "linear"))
        registry.create_namespace("lab", trusted=True)
        registry.publish(_slow_package(base / "slow", "slow", 0.3))
        registry.publish(_slow_package(base / "slower", "slower", 1.0))
    return base / "home"


def _configure(home: Path, **jobs: Any) -> Settings:
    lines = ["[jobs]"]
    for key, value in {"poll_interval": 0.2, "workers": 2, **jobs}.items():
        lines.append(f"{key} = {json.dumps(value)}")
    (home / "sciserve.toml").write_text("\n".join(lines) + "\n")
    return Settings.load(home, environ={})


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "home"))


@pytest.fixture
def data(tmp_path: Path) -> dict[str, np.ndarray]:
    """The archive under ``tmp_path/data/archive``: each good row's features by id."""
    return _archive(tmp_path / "data" / "archive")


def _spec(tmp_path: Path, **fields: Any) -> str:
    doc = {
        "name": "rescore",
        "input": str(tmp_path / "data" / "archive"),
        "columns": ["f0", "f1", "f2", "f3"],
        "id": "obj",
        "models": [{"ref": "default/linear"}],
        "filter": "y[2] > 30",
        "batch": 16,
        **fields,
    }
    return yaml.safe_dump(doc)


def _slow_spec(tmp_path: Path, model: str = "lab/slow") -> str:
    return _spec(tmp_path, name="slow", models=[{"ref": model}], filter=None)


def _submit(settings: Settings, spec: str, **kwargs: Any) -> JobRecord:
    with JobStore.open(settings) as store:
        return store.submit(spec, namespace="default", submitter="tester", **kwargs)


def _wait(what: str, check: Callable[[], Any], deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _log_line(store: JobStore, job_id: str, text: str) -> str | None:
    return next((line.message for line in store.logs(job_id) if text in line.message), None)


def _worker_pids(line: str) -> list[int]:
    inside = line.split("(pids ", 1)[1].split(";", 1)[0]
    return [int(pid) for pid in inside.split(", ")]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


class _Background:
    """``run_once`` in a thread; its result or exception on :meth:`join`."""

    def __init__(self, runner: JobRunner, stop: threading.Event | None = None) -> None:
        self.result: JobRecord | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(runner, stop))
        self.thread.start()

    def _run(self, runner: JobRunner, stop: threading.Event | None) -> None:
        try:
            self.result = runner.run_once(stop)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def join(self) -> JobRecord:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "run_once did not return"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _expected_nice() -> int:
    return min(os.nice(0) + 10, 19)


# -- running ------------------------------------------------------------------


def test_a_job_runs_to_succeeded_with_exact_counts_and_its_log(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    # A relative input resolves against the first [jobs] archives root.
    settings = _configure(home, archives=[str(tmp_path / "data")])
    escaping = _submit(settings, _spec(tmp_path, input="archive/../../home"))
    job = _submit(settings, _spec(tmp_path, input="archive"))
    nice = os.nice(0)
    with JobRunner(settings, name="r1") as runner:
        refused = runner.run_once()
        assert refused is not None and refused.id == escaping.id
        assert refused.state is JobState.FAILED and refused.error is not None
        assert "'archive/../../home' leads out of" in refused.error
        done = runner.run_once()
        assert os.nice(0) == nice  # only the workers run at a lower priority
        assert done is not None and done.id == job.id
        assert done.state is JobState.SUCCEEDED, done.error
        assert (done.shards_total, done.shards_done) == (SHARDS, SHARDS)
        assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)
        assert done.error is None and done.attempts == 1 and done.runner == "r1"
        assert done.report is not None and done.report["verified"] is True
        assert done.report["ran"] == [f"{i:05d}" for i in range(SHARDS)]
        assert done.batch_id is not None and done.batch_id.startswith("rescore-")
        assert done.out_dir == str(home / "batch" / done.batch_id)
        messages = [line.message for line in runner.store.logs(job.id)]
        assert sum(m.startswith("shard ") for m in messages) == SHARDS
        assert any("local cluster of 2 worker(s)" in m for m in messages)
        assert messages[-1] == "RUNNING → SUCCEEDED"
        assert runner.run_once() is None  # nothing else queued
    table, dead = _outputs(Path(done.out_dir))
    rows = table.to_pylist()
    assert sorted(r["row_id"] for r in rows) == sorted(data) and len(dead) == DEAD
    for row in rows:
        np.testing.assert_allclose(
            row["y"], expected_linear(data[row["row_id"]][None, :])[0], rtol=1e-5
        )


def test_claims_follow_the_priority_class_then_the_age(home: Path) -> None:
    settings = _configure(home)
    # Specs that fail at once: the order is what is tested, not the work.
    order = [Priority.BATCH, Priority.INTERACTIVE, Priority.REALTIME, Priority.BATCH]
    jobs = [_submit(settings, f"name: Job{i}\n", priority=p) for i, p in enumerate(order)]
    with JobRunner(settings) as runner:
        ran = [runner.run_once() for _ in jobs]
        assert runner.run_once() is None
    assert [r.id if r else None for r in ran] == [jobs[i].id for i in (2, 1, 0, 3)]
    assert {r.state for r in ran if r} == {JobState.FAILED}


BAD_SPECS: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing column": (lambda t: _spec(t, columns=["f0", "f1", "f2", "f9"]), "f9"),
    "missing input": (lambda t: _spec(t, input=str(t / "nowhere")), "nowhere"),
    "unreadable file": (lambda t: _spec(t, input=str(t / "data" / "junk.parquet")), "junk"),
    "unknown model": (lambda t: _spec(t, models=[{"ref": "default/nope"}]), "default/nope"),
    "relative input": (lambda t: _spec(t, input="archive"), "relative path"),
    "relative features": (
        lambda t: _spec(t, columns=None, features={"python": "f.py:f", "namespace": "lab"}),
        "features.python",
    ),
    "not yaml": (lambda t: "name: [unclosed\n", "not valid YAML"),
    "not a mapping": (lambda t: "- a\n- b\n", "must be a mapping"),
    "yaml aliases": (lambda t: "a: &x [1]\nb: *x\n", "alias"),
    "bad field": (lambda t: _spec(t, batch=-3), "batch"),
    "bad filter": (lambda t: _spec(t, filter="__import__('os')"), "filter"),
}


def test_bad_specs_fail_with_a_clear_error_and_write_nothing(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    (tmp_path / "data" / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    settings = _configure(home)
    jobs = {what: _submit(settings, make(tmp_path)) for what, (make, _) in BAD_SPECS.items()}
    jobs["unknown cluster"] = _submit(settings, _spec(tmp_path), cluster="nope")
    expected = {what: named for what, (_, named) in BAD_SPECS.items()} | {
        "unknown cluster": "no cluster profile 'nope'"
    }
    with JobRunner(settings) as runner:
        for _ in jobs:
            assert runner.run_once() is not None
        for what, job in jobs.items():
            done = runner.store.get(job.id)
            assert done.state is JobState.FAILED, what
            assert done.error is not None and expected[what] in done.error, (what, done.error)
            assert "Traceback" not in done.error, what
            last = runner.store.logs(job.id)[-1]
            assert last.level == "error" and expected[what] in last.message, what
    out = home / "batch"
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_a_job_from_the_api_is_confined_to_the_archives_again_when_it_runs(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    # Accepted when submitted: every file lay under the archives root.  Then
    # a link pointing out of it appears in the input directory; the runner
    # checks again and refuses, where a local user's job would just run.
    archive = tmp_path / "data" / "archive"
    settings = _configure(home, archives=[str(tmp_path / "data")])
    job = _submit(settings, _spec(tmp_path), origin=JobOrigin.API)
    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copy(archive / "night=1" / "part-0.parquet", outside / "stolen.parquet")
    (archive / "night=3").mkdir()
    (archive / "night=3" / "part-0.parquet").symlink_to(outside / "stolen.parquet")
    with JobRunner(settings) as runner:
        done = runner.run_once()
    assert done is not None and done.id == job.id and done.origin is JobOrigin.API
    assert done.state is JobState.FAILED
    assert done.error is not None and "outside" in done.error and "archives" in done.error
    assert not (home / "batch").exists() or not any((home / "batch").iterdir())
    shutil.rmtree(archive / "night=3")
    with JobStore.open(settings) as store:
        store.resume(job.id, by="tester")
    with JobRunner(settings) as runner:
        again = runner.run_once()
    assert again is not None and again.state is JobState.SUCCEEDED, again.error
    assert (again.rows_in, again.rows_out, again.dead_letters) == (ROWS, OUTPUTS, DEAD)


# -- stopping -----------------------------------------------------------------


def test_a_cancel_during_a_long_shard_stops_the_job_and_frees_its_workers(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    job = _submit(settings, _slow_spec(tmp_path, "lab/slower"))
    with JobRunner(settings) as runner:
        background = _Background(runner)
        line = _wait(
            "the cluster", lambda: _log_line(runner.store, job.id, "running on a local cluster")
        )
        pids = _worker_pids(line)
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        runner.store.cancel(job.id, by="tester")
        asked = time.monotonic()
        done = background.join()
        # A shard takes two batches of 1 s: no shard finished, the watcher
        # stopped the job in the middle of the first ones.
        assert done.state is JobState.CANCELLED and done.shards_done == 0
        assert time.monotonic() - asked < 30
        assert done.finished_at is not None and done.error is None
    _wait("the workers to exit", lambda: not any(_alive(pid) for pid in pids), 30)
    assert not list(Path(str(done.out_dir)).glob("shard-*.json"))


def test_a_cancelled_job_resumes_and_skips_its_finished_shards(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    job = _submit(settings, _slow_spec(tmp_path))
    with JobRunner(settings) as runner:
        background = _Background(runner)
        _wait("the first shard", lambda: runner.store.get(job.id).shards_done >= 1)
        runner.store.cancel(job.id, by="tester")
        cancelled = background.join()
        assert cancelled.state is JobState.CANCELLED
        assert 1 <= cancelled.shards_done < SHARDS
        out_dir = Path(str(cancelled.out_dir))
        finished = sorted(p.name[6:11] for p in out_dir.glob("shard-*.json"))
        assert len(finished) == cancelled.shards_done

        runner.store.resume(job.id, by="tester")
        done = runner.run_once()
        assert done is not None and done.state is JobState.SUCCEEDED, done.error
        assert done.report is not None
        assert done.report["skipped"] == finished
        assert sorted(done.report["ran"] + done.report["skipped"]) == [
            f"{i:05d}" for i in range(SHARDS)
        ]
        assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)
        assert done.shards_done == SHARDS and done.attempts == 2
    table, dead = _outputs(out_dir)
    ids = table.column("row_id").to_pylist()
    assert sorted(ids) == sorted(data) and len(dead) == DEAD
    # Every shard ran on workers at the lowered CPU priority.
    assert {tuple(n) for n in table.column("nice").to_pylist()} == {(float(_expected_nice()),)}


def test_a_stopped_runner_puts_its_job_back_for_another_to_resume(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    job = _submit(settings, _slow_spec(tmp_path, "lab/slower"))
    stop = threading.Event()
    with JobRunner(settings, name="first") as first:
        background = _Background(first, stop)
        line = _wait(
            "the cluster", lambda: _log_line(first.store, job.id, "running on a local cluster")
        )
        stop.set()
        queued = background.join()
        assert queued.state is JobState.QUEUED and queued.runner is None
        assert _log_line(first.store, job.id, "the runner stopped; job queued again")
    _wait("the workers to exit", lambda: not any(_alive(p) for p in _worker_pids(line)), 30)
    # Another runner takes it over and finishes it.
    with JobRunner(settings, name="second") as second:
        done = second.run_once()
    assert done is not None and done.state is JobState.SUCCEEDED, done.error
    assert done.runner == "second" and done.attempts == 2
    assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)


def test_two_records_of_one_batch_never_run_at_once(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    spec = _spec(tmp_path)
    planned = BatchJob(
        parse_batch_spec(yaml.safe_load(spec)), settings, home / "batch"
    )  # what both records compute
    planned.plan()
    first = _submit(settings, spec)
    second = _submit(settings, spec)
    with JobRunner(settings) as runner:
        # The first is in the hands of another runner, planned to that batch.
        store = runner.store
        assert store.claim("elsewhere") is not None
        store.progress(first.id, batch_id=planned.job_id)
        refused = runner.run_once()
        assert refused is not None and refused.id == second.id
        assert refused.state is JobState.FAILED and refused.error is not None
        assert f"batch {planned.job_id} is already being run by job {first.id}" in (refused.error)
        assert store.get(first.id).state is JobState.RUNNING
        assert not (home / "batch" / planned.job_id).exists()


def test_a_job_naming_a_cluster_profile_runs_on_its_slurm_jobs(
    slurm: SlurmCluster, home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    _configure(home)
    with (home / "sciserve.toml").open("a") as toml:
        toml.write(
            f"""
[clusters.lab]
kind = "slurm"
queue = "{slurm.partition}"
memory = "480MiB"
walltime = "00:05:00"
python = "{sys.executable}"
start_timeout = 60
log_directory = "{tmp_path / "logs"}"
"""
        )
    settings = Settings.load(home, environ={})
    job = _submit(settings, _spec(tmp_path), cluster="lab")
    with JobRunner(settings) as runner:
        done = runner.run_once()
        assert done is not None and done.state is JobState.SUCCEEDED, done.error
        assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)
        assert _log_line(runner.store, job.id, "running on cluster profile lab")
    deadline = time.monotonic() + 30
    while any(name == "sciserve-lab" for name, _ in slurm.jobs().values()):
        assert time.monotonic() < deadline, f"Slurm jobs left\n{slurm.log_tails()}"
        time.sleep(0.2)


# -- priority of server: steps ---------------------------------------------------


class _RecordingService(InferenceService):
    """The real service, noting the priority class each request asked for."""

    asked: list[Priority | None]

    async def infer(self, request: Any, **kwargs: Any) -> Any:
        self.asked.append(requested_priority(request.parameters))
        return await super().infer(request, **kwargs)


def test_server_steps_ask_to_be_served_in_the_jobs_class(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    with Registry(Settings.load(tmp_path / "server-home", environ={})) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
        service = _RecordingService(registry)
        service.asked = []
        with ServerThread(create_app(service, manage_service=True)) as address:
            steps = [{"ref": "default/linear", "server": f"http://{address}"}]
            job = _submit(settings, _spec(tmp_path, models=steps), priority=Priority.BATCH)
            with JobRunner(settings) as runner:
                done = runner.run_once()
    assert done is not None and done.id == job.id
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.rows_out == OUTPUTS
    assert service.asked and set(service.asked) == {Priority.BATCH}


# -- runner processes -----------------------------------------------------------


def _runner_process(home: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "sciserve", "--home", str(home), "jobs", "runner", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _end(proc: Any) -> None:
    """SIGKILL the runner's process group (it and its Dask workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    if proc.stderr is not None:
        proc.stderr.close()


def test_a_killed_runners_job_is_taken_over_when_it_goes_stale(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home, stale_after=1.0)
    job = _submit(settings, _slow_spec(tmp_path))
    proc = _runner_process(home, "--workers", "1", "--name", "doomed")
    try:
        with JobStore.open(settings) as store:
            _wait("the cluster", lambda: _log_line(store, job.id, "running on a local cluster"))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert store.get(job.id).state is JobState.RUNNING  # nobody said otherwise
    finally:
        _end(proc)
    with JobRunner(settings, name="heir") as heir:
        done = _wait("the job to be taken over", heir.run_once)
        assert done.id == job.id and done.state is JobState.SUCCEEDED, done.error
        assert done.runner == "heir" and done.attempts == 2
        assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)
        assert _log_line(heir.store, job.id, "runner doomed stopped answering")


def test_a_runner_process_told_to_stop_queues_its_job_again(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home)
    job = _submit(settings, _slow_spec(tmp_path, "lab/slower"))
    proc = _runner_process(home, "--workers", "1")
    try:
        with JobStore.open(settings) as store:
            line = _wait(
                "the cluster", lambda: _log_line(store, job.id, "running on a local cluster")
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            queued = store.get(job.id)
            assert queued.state is JobState.QUEUED and queued.runner is None
            assert _log_line(store, job.id, "the runner stopped; job queued again")
        assert "Traceback" not in proc.stderr.read()
    finally:
        _end(proc)
    _wait("the workers to exit", lambda: not any(_alive(p) for p in _worker_pids(line)), 30)


@pytest.mark.postgres
def test_two_runner_processes_on_postgresql_never_run_the_same_job(
    postgres_url: str, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    settings = _configure(home)
    settings = settings.model_copy(update={"database_url": postgres_url})
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(tmp_path / "linear"))
    jobs = [_submit(settings, _spec(tmp_path, name=f"rescore-{i}")) for i in range(4)]
    env = {"SCISERVE_DATABASE_URL": postgres_url}
    procs = [_runner_process(home, "--workers", "1", "--name", f"r{i}", env=env) for i in (1, 2)]
    try:
        with JobStore.open(settings) as store:

            def all_done() -> list[JobRecord] | None:
                found = [store.get(job.id) for job in jobs]
                return found if all(j.state.terminal for j in found) else None

            done = _wait("every job", all_done, 240)
            for record in done:
                assert record.state is JobState.SUCCEEDED, record.error
                assert record.attempts == 1 and record.runner in ("r1", "r2")
                assert (record.rows_in, record.rows_out) == (ROWS, OUTPUTS)
                started = [m for m in store.logs(record.id) if m.message.startswith("started by")]
                assert len(started) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                assert proc.wait(60) == 0
            finally:
                _end(proc)


def test_the_runner_command_once_and_its_mistakes(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _configure(home)
    cli = Cli(home, capsys)
    assert "no job queued" in cli("jobs", "runner", "--once")
    job = _submit(settings, "name: Bad Name\n")
    shown = cli.json("jobs", "runner", "--once")
    assert shown["id"] == job.id and shown["state"] == "FAILED" and "spec" not in shown
    assert "pipeline name" in shown["error"]
    assert "1 to 1024 workers, not 0" in cli("jobs", "runner", "--once", "--workers", "0", code=2)
    assert "not 99999" in cli("jobs", "runner", "--once", "--workers", "99999", code=2)
    assert "read-only registry" in cli("--read-only", "jobs", "runner", "--once", code=6)
    assert "Invalid value" in cli("jobs", "runner", "--workers", "lots", code=2)


# -- in the server --------------------------------------------------------------


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except FileNotFoundError:  # it has just exited
                continue
            found.append((int(child), cmdline.decode()))
    return found


def test_the_server_runs_jobs_in_a_child_it_stops(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    settings = _configure(home, workers=1)
    server = start_server(home)
    try:
        job = _submit(settings, _spec(tmp_path))
        with JobStore.open(settings) as store:

            def finished() -> JobRecord | None:
                record = store.get(job.id)
                return record if record.state.terminal else None

            done = _wait("the job", finished, 180)
        assert done.state is JobState.SUCCEEDED, done.error
        assert (done.rows_in, done.rows_out, done.dead_letters) == (ROWS, OUTPUTS, DEAD)
        first_pid = int(str(done.runner).split(":")[1])
        assert first_pid in [pid for pid, _ in _children(server.proc.pid)]
        # A runner that dies is replaced; the server serves on.
        os.kill(first_pid, signal.SIGKILL)

        def replaced() -> int | None:
            found = [p for p, cmd in _children(server.proc.pid) if "jobs runner" in cmd]
            return next((p for p in found if p != first_pid), None)

        runner_pid = _wait("another runner", replaced, 60)
        assert server.proc.poll() is None
    finally:
        assert stop_server(server.proc) == 0
    _wait("the runner to exit", lambda: not _alive(runner_pid), 30)

    quiet = start_server(home, "--no-jobs")
    try:
        assert not [c for c in _children(quiet.proc.pid) if "jobs runner" in c[1]]
    finally:
        assert stop_server(quiet.proc) == 0


def test_a_runner_child_does_not_outlive_a_server_killed_while_it_starts(home: Path) -> None:
    # Killed as soon as its runner child exists, before the child (still
    # importing) can look at its parent: the child must not take whoever
    # adopts it for the parent to outlive.
    _configure(home)
    server = start_server(home)
    try:
        runner_pid = _wait(
            "the runner child",
            lambda: next(
                (p for p, cmd in _children(server.proc.pid) if "jobs runner" in cmd), None
            ),
            60,
        )
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        _wait("the orphaned runner to exit", lambda: not _alive(runner_pid), 30)
    finally:
        stop_server(server.proc)


def test_a_job_over_the_api_runs_in_the_server_is_cancelled_and_resumed(
    home: Path, tmp_path: Path, data: dict[str, np.ndarray]
) -> None:
    """The jobs API end to end, on a real ``serve --auth`` and its runner child:
    submit, watch the progress, cancel (the workers freed, the finished shards
    kept whole), resume (only the rest is run) and an exact result; a token of
    another namespace neither sees nor cancels the job."""
    import httpx

    from sciserve.access.tokens import TokenStore

    settings = _configure(home, archives=[str(tmp_path / "data")], workers=1)
    with Registry(settings) as registry:
        tokens = TokenStore(registry)
        alice = tokens.create("alice", {"lab": {"infer"}}, priority="batch")[1]
        mallory = tokens.create("mallory", {"default": {"infer", "read"}})[1]
    server = start_server(home, "--auth")
    jobs = f"http://{server.http}/v2/sciserve/jobs"
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_mallory = {"Authorization": f"Bearer {mallory}"}
    try:
        with httpx.Client(timeout=30) as http:
            spec = _slow_spec(tmp_path, "lab/slower")  # 2 s a shard: there is time to cancel
            created = http.post(jobs, json={"spec": spec}, headers=as_alice)
            assert created.status_code == 201, created.text
            job = created.json()
            assert (job["namespace"], job["priority"], job["origin"]) == ("lab", "batch", "api")
            url = f"{jobs}/{job['id']}"

            def shown() -> dict[str, Any]:
                answer = http.get(url, headers=as_alice)
                assert answer.status_code == 200, answer.text
                record: dict[str, Any] = answer.json()
                return record

            # Progress: at least one shard finished, not all of them.
            running = _wait("a finished shard", lambda: (r := shown())["shards_done"] and r)
            assert running["state"] in ("RUNNING", "CANCELLING", "SUCCEEDED")
            assert running["shards_total"] == SHARDS
            # Another namespace's token: the job does not exist for it.
            assert http.get(url, headers=as_mallory).status_code == 404
            assert http.post(url + "/cancel", headers=as_mallory).status_code == 404
            cancel = http.post(url + "/cancel", headers=as_alice)
            assert cancel.status_code == 200, cancel.text
            done = _wait("the job to stop", lambda: (r := shown())["state"] in TERMINAL and r)
            assert done["state"] == "CANCELLED", done
            logs = http.get(url + "/logs", headers=as_alice).json()["lines"]
            line = next(x["message"] for x in logs if "running on a local cluster" in x["message"])
            pids = _worker_pids(line)
            _wait("the workers to exit", lambda: not any(_alive(pid) for pid in pids), 30)
            # What was kept is whole shards, each with its manifest, nothing aside.
            out = Path(done["out_dir"])
            kept = sorted(p.name[len("shard-") : -len(".json")] for p in out.glob("shard-*.json"))
            assert 1 <= len(kept) == done["shards_done"] < SHARDS
            assert all((out / f"shard-{k}.parquet").is_file() for k in kept)
            assert not list(out.glob(".*.partial"))
            resumed = http.post(url + "/resume", headers=as_alice)
            assert resumed.status_code == 200, resumed.text
            done = _wait("the resumed job", lambda: (r := shown())["state"] in TERMINAL and r, 180)
            assert done["state"] == "SUCCEEDED", done["error"]
            assert sorted(done["report"]["skipped"]) == kept
            assert (done["rows_in"], done["rows_out"], done["dead_letters"]) == (
                ROWS,
                OUTPUTS,
                DEAD,
            )
            assert done["report"]["verified"] is True
            listed = http.get(jobs, headers=as_mallory)
            assert listed.status_code == 200 and listed.json()["jobs"] == []
    finally:
        assert stop_server(server.proc) == 0


TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
