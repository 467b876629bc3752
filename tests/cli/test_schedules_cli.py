"""``sciserve schedules add|list|remove|history``: the commands and the user's mistakes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.jobs import JobStore, Scheduler, ScheduleStore
from sciserve.jobs.records import MAX_SPEC_BYTES
from sciserve.registry.registry import Registry

from helpers.cli import Cli

SPEC = "name: nightly\ninput: /data/archive/\ncolumns: [f0, f1, f2, f3]\nmodels:\n  - ref: linear\n"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(SPEC)
    return path


def test_add_list_history_and_remove_a_cron_schedule(cli: Cli, spec: Path) -> None:
    out = cli("schedules", "add", "nightly", str(spec), "--cron", "0 2 * * *", "--tz", "UTC")
    assert "schedule default/nightly added: 0 2 * * * (UTC); first run" in out
    assert "missed runs: run_once" in out
    [listed] = cli.json("schedules", "list")
    assert (listed["name"], listed["cron"], listed["timezone"]) == ("nightly", "0 2 * * *", "UTC")
    assert listed["missed"] == "run_once" and listed["owner"].startswith("local:")
    shown = cli("schedules", "list")
    assert "default/nightly" in shown and "run_once" in shown and "02:00" in shown
    assert "has not run yet" in cli("schedules", "history", "nightly")
    # A scheduler whose clock is past the first due instant submits a job.
    settings = Settings.load(cli.home, environ={})
    with ScheduleStore.open(settings) as store:
        due = store.get("nightly", namespace="default").next_due_at
        assert due is not None
        [run] = Scheduler(store.engine, clock=lambda: due + timedelta(seconds=5)).tick()
        job = JobStore(store.engine).get(run.job_id or "")
        assert job.spec == SPEC
    [entry] = cli.json("schedules", "history", "nightly")
    assert entry["outcome"] == "submitted" and entry["job_id"] == job.id
    assert entry["job_state"] == "QUEUED" and entry["due_at"] == due.isoformat()
    shown = cli("schedules", "history", "nightly")
    assert "submitted" in shown and job.id in shown and "QUEUED" in shown
    assert "removed" in cli("schedules", "remove", "nightly")
    assert cli.json("schedules", "list") == []
    cli("schedules", "history", "nightly", code=3)


def test_add_a_trigger_schedule(cli: Cli, spec: Path, onnx_package: Callable[..., Path]) -> None:
    with Registry(Settings.load(cli.home, environ={})) as registry:
        registry.publish(onnx_package(namespace="examples"))
    out = cli("schedules", "add", "rescore", str(spec), "--on-alias", "examples/linear@production")
    assert "schedule examples/rescore added: on examples/linear@production" in out
    assert "it runs at the alias's next move" in out
    # Without --namespace the only schedule of that name is found.
    assert cli.json("schedules", "history", "rescore") == []
    assert "removed" in cli("schedules", "remove", "rescore")


def test_the_missed_run_policy_is_stated_in_the_help(cli: Cli) -> None:
    out = cli("schedules", "add", "--help")
    assert "run_once" in out and "skip" in out and "missed" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "0 2 * *", "--tz", "UTC"], "has 4 fields"),
        (["--cron", "every night", "--tz", "UTC"], "has 2 fields"),
        (["--cron", "0 25 * * *", "--tz", "UTC"], "invalid cron expression"),
        (["--cron", "0," * 100 + "0 * * * *", "--tz", "UTC"], "over 128 characters"),
        (["--cron", "0 2 * * *", "--tz", "x" * 10_000], "IANA time zone"),
        (["--cron", "0 2 * * *", "--tz", "Mars/Olympus"], "unknown time zone"),
        (["--cron", "0 2 * * *"], "--cron needs --tz"),
        (["--tz", "UTC"], "give either --cron"),
        ([], "give either --cron"),
        (
            ["--cron", "0 2 * * *", "--tz", "UTC", "--on-alias", "default/linear@production"],
            "give either --cron",
        ),
        (["--on-alias", "default/nosuch@production"], "no model default/nosuch"),
        (["--on-alias", "default/linear"], "give MODEL@ALIAS"),
        (["--cron", "0 2 * * *", "--tz", "UTC", "--missed", "later"], "unknown missed-run"),
        (["--cron", "0 2 * * *", "--tz", "UTC", "--cluster", "nosuch"], "no cluster profile"),
        (["--cron", "0 2 * * *", "--tz", "UTC", "--priority", "urgent"], "unknown priority"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    cli: Cli, spec: Path, args: list[str], message: str
) -> None:
    out = cli("schedules", "add", "nightly", str(spec), *args, code=2)
    assert message in out
    with ScheduleStore.open(Settings.load(cli.home, environ={})) as store:
        assert store.list() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: x\ninput: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"name: x\ninput: /data\nmodels: []\nbogus: 1\n", "bogus"),
        (b"name: x\ninput: archive/\nmodels:\n  - ref: linear\n", "'archive/' is relative"),
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b"a: &x 1\nb: *x\n", "anchors"),
        (b"x" * (MAX_SPEC_BYTES + 10), "is over"),
    ],
)
def test_a_bad_spec_is_refused_with_a_clear_message(
    cli: Cli, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    out = cli("schedules", "add", "s", str(path), "--cron", "0 2 * * *", "--tz", "UTC", code=2)
    assert message in out


def test_a_missing_spec_file_and_a_duplicate_name(cli: Cli, spec: Path, tmp_path: Path) -> None:
    every = ["--cron", "* * * * *", "--tz", "UTC"]
    out = cli("schedules", "add", "s", str(tmp_path / "nope.yaml"), *every, code=2)
    assert "cannot read batch spec" in out
    out = cli("schedules", "add", "s", str(tmp_path), *every, code=2)
    assert "cannot read batch spec" in out
    cli("schedules", "add", "s", str(spec), *every)
    assert "already has a schedule 's'" in cli("schedules", "add", "s", str(spec), *every, code=4)
    assert "schedule name" in cli("schedules", "add", "Bad/Name", str(spec), *every, code=2)


def test_unknown_schedules_are_not_found(cli: Cli, spec: Path) -> None:
    cli("schedules", "add", "s", str(spec), "--cron", "* * * * *", "--tz", "UTC")
    assert "no schedule 'other'" in cli("schedules", "remove", "other", code=3)
    assert "no schedule" in cli("schedules", "history", "s", "--namespace", "elsewhere", code=3)


def test_schedules_need_the_local_database(cli: Cli, spec: Path) -> None:
    out = cli("--server", "http://127.0.0.1:9", "schedules", "list", code=2)
    assert "registry database directly" in out
    out = cli("--server", "http://127.0.0.1:9", "scheduler", code=2)
    assert "registry database directly" in out


def test_a_read_only_registry_is_listed_and_not_changed(cli: Cli, spec: Path) -> None:
    every = ["--cron", "* * * * *", "--tz", "UTC"]
    cli("schedules", "add", "s", str(spec), *every)
    assert [s["name"] for s in cli.json("--read-only", "schedules", "list")] == ["s"]
    assert "read-only" in cli("--read-only", "schedules", "remove", "s", code=6)
    assert "read-only" in cli("--read-only", "schedules", "add", "t", str(spec), *every, code=6)
    assert "read-only" in cli("--read-only", "scheduler", code=6)
    assert [s["name"] for s in cli.json("schedules", "list")] == ["s"]
