"""``sciserve jobs``: on the registry database, and through a real server."""

from __future__ import annotations

import json
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.jobs import JobRecord, JobState, JobStore
from sciserve.registry.registry import Registry

from helpers.batch import archive, spec
from helpers.cli import Cli
from helpers.packages import make_onnx_package
from helpers.server import Running, serving


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def local(cli: Cli, tmp_path: Path) -> Path:
    """A registry with default/linear, an archive beside it and a spec reading it
    by a relative path; returns the spec."""
    cli.home.mkdir()
    (cli.home / "sciserve.toml").write_text("[jobs]\npoll_interval = 0.05\n")
    with Registry(Settings.load(cli.home, environ={})) as reg:
        reg.publish(make_onnx_package(tmp_path / "linear"))
    archive(tmp_path / "archive")
    return spec(tmp_path)


class Runner:
    """A stand-in for a job runner: claims the next job and finishes it as told,
    from a thread, on the same database (the runner itself is another module)."""

    def __init__(self, home: Path, state: JobState, *, log: str | None = None) -> None:
        self.home, self.state, self.log = home, state, log
        self.done: JobRecord | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        with JobStore.open(Settings.load(self.home, environ={}), create=False) as store:
            claimed = None
            while claimed is None and time.monotonic() < deadline:
                claimed = store.claim("test-runner")
                if claimed is None:
                    time.sleep(0.02)  # polling the queue, as a runner does
            assert claimed is not None
            if self.log is not None:
                store.log(claimed.id, self.log)
            error = None if self.state is JobState.SUCCEEDED else "shard 3 failed"
            self.done = store.finish(claimed.id, self.state, error=error)

    def __enter__(self) -> Runner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


# -- local mode --------------------------------------------------------------------


def test_submit_list_status_logs_cancel_resume_on_the_database(
    cli: Cli, local: Path, tmp_path: Path
) -> None:
    job = cli.json("jobs", "submit", str(local))
    assert job["state"] == "QUEUED" and job["namespace"] == "default"
    assert job["priority"] == "batch" and job["submitter"] == f"local:{_user()}"
    # Stored with its path absolute: a runner in any directory reads the same files.
    assert yaml.safe_load(job["spec"])["input"] == str((tmp_path / "archive").resolve())
    assert job["id"] in cli("jobs", "list")
    assert [j["id"] for j in cli.json("jobs", "list", "--state", "queued")["jobs"]] == [job["id"]]
    assert cli.json("jobs", "list", "--state", "RUNNING") == {"jobs": []}
    assert cli.json("jobs", "list", "--namespace", "lab") == {"jobs": []}
    status = cli("jobs", "status", job["id"])
    assert "state: QUEUED" in status and f"submitter: local:{_user()}" in status
    assert f"submitted by local:{_user()} (batch)" in cli("jobs", "logs", job["id"])
    assert cli.json("jobs", "cancel", job["id"])["state"] == "CANCELLED"
    assert "CANCELLED" in cli("jobs", "cancel", job["id"])
    assert cli.json("jobs", "resume", job["id"])["state"] == "QUEUED"
    lines = cli.json("jobs", "logs", job["id"])["lines"]
    assert [line["message"].split(" by ")[0] for line in lines] == [
        "submitted",
        "cancelled",
        "CANCELLED → QUEUED",
    ]
    again = cli.json(
        "jobs", "submit", str(local), "--priority", "realtime", "--namespace", "default"
    )
    assert again["priority"] == "realtime"
    with Registry(Settings.load(cli.home, environ={})) as reg:
        actions = [(e["action"], e["subject"]) for e in reg.events(20)]
    assert ("job.submit", job["id"]) in actions and ("job.resume", job["id"]) in actions


@pytest.mark.parametrize(("state", "code"), [(JobState.SUCCEEDED, 0), (JobState.FAILED, 1)])
def test_submit_wait_ends_with_the_job(cli: Cli, local: Path, state: JobState, code: int) -> None:
    with Runner(cli.home, state) as runner:
        shown = cli("jobs", "submit", str(local), "--wait", code=code)
    assert runner.done is not None and f"state: {state.value}" in shown
    if state is JobState.FAILED:
        assert "error: shard 3 failed" in shown


def test_logs_follow_until_the_job_ends(cli: Cli, local: Path) -> None:
    job = cli.json("jobs", "submit", str(local))
    with Runner(cli.home, JobState.SUCCEEDED, log="shard 0: 50 rows") as runner:
        followed = cli("jobs", "logs", job["id"], "--follow")
    assert runner.done is not None and runner.done.id == job["id"]
    assert followed.index("submitted by") < followed.index("shard 0: 50 rows")
    assert "RUNNING → SUCCEEDED" in followed


def test_local_mistakes_get_their_exit_code(cli: Cli, local: Path, tmp_path: Path) -> None:
    assert cli.json("jobs", "submit", str(tmp_path / "missing.yaml"), code=2)["type"] == (
        "InvalidInput"
    )
    bad = tmp_path / "bad.yaml"
    for text, code, words in (
        ("a: &x 1\nb: *x\n", 2, "anchors and aliases"),
        ("- just\n- a list\n", 2, "mapping"),
        ("name: x\n", 2, "input"),
        (yaml.safe_dump({**yaml.safe_load(local.read_text()), "out": "/tmp"}), 2, "out"),
        (yaml.safe_dump({**yaml.safe_load(local.read_text()), "input": "nowhere"}), 2, "exist"),
        (
            yaml.safe_dump({**yaml.safe_load(local.read_text()), "models": [{"ref": "lab/x"}]}),
            3,
            "no model lab/x",
        ),
    ):
        bad.write_text(text)
        assert words in cli.json("jobs", "submit", str(bad), code=code)["error"]
    bad.write_bytes(b"\xff\xfe not text")
    cli("jobs", "submit", str(bad), code=2)
    bad.write_text("name: " + "x" * 300_000 + "\n")
    assert cli.json("jobs", "submit", str(bad), code=2)["type"] == "PayloadTooLarge"
    cli("jobs", "submit", str(tmp_path), code=2)  # a directory
    cli("jobs", "submit", str(local), "--cluster", "huge", code=2)
    cli("jobs", "submit", str(local), "--namespace", "lab", code=3)
    cli("jobs", "submit", str(local), "--priority", "urgent", code=2)
    cli("jobs", "list", "--state", "BOGUS", code=2)
    for job_id in ("j-0000000000000000", "../x", "j-" + "a" * 10_000):
        cli("jobs", "status", job_id, code=3)
        cli("jobs", "cancel", job_id, code=3)
    assert cli.json("jobs", "list") == {"jobs": []}  # nothing was stored


def test_a_finished_job_cannot_be_cancelled_nor_a_queued_one_resumed(cli: Cli, local: Path) -> None:
    job = cli.json("jobs", "submit", str(local))
    assert cli.json("jobs", "resume", job["id"], code=4)["type"] == "Conflict"
    with Runner(cli.home, JobState.SUCCEEDED) as runner:
        pass
    assert runner.done is not None
    assert "already finished" in cli.json("jobs", "cancel", job["id"], code=4)["error"]


# -- remote mode ------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Running, dict[str, str]]]:
    """A server with --auth, default/linear, an archive root; and tokens."""
    home, root = tmp_path / "server", tmp_path / "archives"
    archive(root / "lsst")
    home.mkdir()
    (home / "sciserve.toml").write_text(
        f"[jobs]\narchives = [{json.dumps(str(root))}]\n"
        "run_in_server = false\npoll_interval = 0.05\n"
    )
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(tmp_path / "linear"))
        store = TokenStore(reg)
        tokens = {
            "user": store.create("user", {"default": {"infer"}}, priority="batch")[1],
            "reader": store.create("reader", {"default": {"read"}})[1],
        }
    with serving(home, "--auth") as running:
        yield running, tokens


def test_the_jobs_commands_work_through_a_server(
    remote: tuple[Running, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, tokens = remote
    client = Cli(tmp_path / "client", capsys)

    def as_(who: str) -> Callable[..., object]:
        def run(*args: str, code: int = 0) -> object:
            monkeypatch.setenv("SCISERVE_TOKEN", tokens[who])
            return client.json("--server", f"http://{server.http}", *args, code=code)

        return run

    user, reader = as_("user"), as_("reader")
    # The spec's locations are the server's: relative to its first archive root.
    job_spec = spec(tmp_path, input="lsst")
    job = user("jobs", "submit", str(job_spec))
    assert isinstance(job, dict) and job["state"] == "QUEUED"
    assert job["priority"] == "batch"
    assert tokens["user"] not in json.dumps(job)
    assert yaml.safe_load(job["spec"])["input"] == str((tmp_path / "archives" / "lsst").resolve())
    listed = user("jobs", "list", "--state", "QUEUED")
    assert isinstance(listed, dict) and [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert reader("jobs", "status", job["id"]) == {**job}
    logs = reader("jobs", "logs", job["id"])
    assert isinstance(logs, dict) and "submitted by" in logs["lines"][0]["message"]
    denied = reader("jobs", "cancel", job["id"], code=6)
    assert isinstance(denied, dict) and denied["type"] == "PermissionDenied"
    assert user("jobs", "cancel", job["id"])["state"] == "CANCELLED"  # type: ignore[index]
    assert user("jobs", "resume", job["id"])["state"] == "QUEUED"  # type: ignore[index]
    (tmp_path / "evil").mkdir()
    refused = user("jobs", "submit", str(spec(tmp_path / "evil", input="/etc/passwd")), code=6)
    assert isinstance(refused, dict) and "outside the archives" in refused["error"]
    assert str(tmp_path) not in json.dumps(refused)
    assert reader("jobs", "submit", str(job_spec), code=6)["type"] == "PermissionDenied"  # type: ignore[index]
    assert user("jobs", "status", "j-0000000000000000", code=3)["type"] == "NotFound"  # type: ignore[index]
    assert user("jobs", "logs", "../x", code=3)["type"] == "NotFound"  # type: ignore[index]
    assert user("jobs", "list", "--state", "nope", code=2)["type"] == "InvalidInput"  # type: ignore[index]
    huge = tmp_path / "evil" / "huge.yaml"
    huge.write_text("name: " + "x" * 300_000 + "\n")
    assert "over 262144 bytes" in user("jobs", "submit", str(huge), code=2)["error"]  # type: ignore[index]
    user("jobs", "submit", str(tmp_path / "evil"), code=2)  # a directory
    # Human output: a table and key: value lines.
    monkeypatch.setenv("SCISERVE_TOKEN", tokens["user"])
    table = client("--server", f"http://{server.http}", "jobs", "list")
    assert job["id"] in table and "QUEUED" in table and "STATE" in table
    shown = client("--server", f"http://{server.http}", "jobs", "status", job["id"])
    assert f"id: {job['id']}" in shown and "state: QUEUED" in shown
    # Waiting for a job, through the server, while a runner works on the database
    # (the only job queued then, so the one it claims).
    user("jobs", "cancel", job["id"])
    with Runner(server.home, JobState.SUCCEEDED) as runner:
        waited = user("jobs", "submit", str(job_spec), "--wait")
    assert isinstance(waited, dict) and waited["state"] == "SUCCEEDED"
    assert runner.done is not None and runner.done.id == waited["id"]


def test_an_unreachable_server_is_unavailable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Cli(tmp_path / "client", capsys)
    gone = client.json("--server", "http://127.0.0.1:9", "jobs", "list", code=7)
    assert gone["type"] == "Unavailable"
