"""Schedules: cron times, time zones, missed runs, alias triggers and exactly-once
decisions between schedulers, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from sciserve.config import Settings
from sciserve.errors import Conflict, InvalidInput, NotFound
from sciserve.jobs import (
    JobState,
    JobStore,
    MissedPolicy,
    Run,
    RunOutcome,
    Schedule,
    Scheduler,
    ScheduleStore,
)
from sciserve.jobs.records import MAX_SPEC_BYTES
from sciserve.jobs.schedules import CronRule, schedule_runs_table, schedules_table
from sciserve.registry.db import events
from sciserve.registry.registry import Registry

from helpers.server import start_server, stop_server

SPEC = "name: nightly\ninput: /data/archive/\ncolumns: [f0, f1, f2, f3]\nmodels:\n  - ref: linear\n"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, text: str) -> Clock:
        self.now = datetime.fromisoformat(text)
        return self


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def store(settings: Settings) -> Iterator[ScheduleStore]:
    with ScheduleStore.open(settings) as opened:
        yield opened


@pytest.fixture
def jobs(store: ScheduleStore) -> JobStore:
    return JobStore(store.engine)


@pytest.fixture
def clock() -> Clock:
    return Clock(at("2026-07-01T00:00:00+00:00"))


@pytest.fixture
def scheduler(store: ScheduleStore, clock: Clock) -> Scheduler:
    return Scheduler(store.engine, name="sched-a", clock=clock)


def add_cron(store: ScheduleStore, name: str = "nightly", **kwargs: Any) -> Schedule:
    options: dict[str, Any] = {
        "namespace": "default",
        "owner": "local:alice",
        "cron": "0 2 * * *",
        "timezone": "UTC",
        "now": at("2026-07-01T00:00:00+00:00"),
    }
    options.update(kwargs)
    return store.add(name, SPEC, **options)


def test_the_migration_creates_the_tables_the_code_queries(store: ScheduleStore) -> None:
    inspector = sa.inspect(store.engine)
    for table in (schedules_table, schedule_runs_table):
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == set(table.columns.keys())
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, column.name
    [unique] = inspector.get_unique_constraints("schedule_runs")
    assert unique["column_names"] == ["schedule_id", "due_key"]
    [unique] = inspector.get_unique_constraints("schedules")
    assert unique["column_names"] == ["namespace", "name"]
    config = Config()
    config.set_main_option("script_location", "sciserve.registry:migrations")
    assert ScriptDirectory.from_config(config).get_revision("0005").down_revision == "0004"


def test_a_cron_schedule_fires_at_its_time_and_not_before(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock, jobs: JobStore
) -> None:
    schedule = store.add(
        "nightly",
        SPEC,
        namespace="default",
        owner="local:alice",
        cron="0 2 * * *",
        timezone="UTC",
        cluster="hpc",
        now=clock.now,
    )
    assert schedule.next_due_at == at("2026-07-01T02:00:00+00:00")
    assert scheduler.tick() == []
    assert clock.at("2026-07-01T01:59:59+00:00") and scheduler.tick() == []
    assert jobs.find(schedule_id=schedule.id) == []
    clock.at("2026-07-01T02:00:00+00:00")
    [run] = scheduler.tick()
    assert run.outcome is RunOutcome.SUBMITTED and run.due_at == clock.now
    assert run.scheduler == "sched-a" and run.due_key == "2026-07-01T02:00:00+00:00"
    assert run.job_id is not None
    job = jobs.get(run.job_id)
    assert job.state is JobState.QUEUED and job.spec == SPEC
    assert (job.schedule_id, job.namespace, job.submitter, job.cluster) == (
        schedule.id,
        "default",
        "local:alice",
        "hpc",
    )
    assert "schedule default/nightly" in jobs.logs(job.id)[0].message
    # Ticking again within the same minute decides nothing more.
    clock.at("2026-07-01T02:00:40+00:00")
    assert scheduler.tick() == []
    clock.at("2026-07-02T02:00:03+00:00")
    [second] = scheduler.tick()
    assert second.due_at == at("2026-07-02T02:00:00+00:00")
    history = store.history("nightly", namespace="default")
    assert [r.due_at for r in history] == [second.due_at, run.due_at]
    assert all(r.job_state is JobState.QUEUED for r in history)
    assert len(jobs.find(schedule_id=schedule.id)) == 2
    assert store.get("nightly", namespace="default").next_due_at == at("2026-07-03T02:00:00+00:00")


def test_cron_times_are_read_in_the_time_zone_across_dst_changes(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock
) -> None:
    # 02:30 in Zurich: 01:30 UTC in winter, 00:30 UTC in summer; on the night
    # clocks spring forward 02:30 does not exist and the run is at 03:00 CEST.
    store.add(
        "zurich",
        SPEC,
        namespace="default",
        owner="local:alice",
        cron="30 2 * * *",
        timezone="Europe/Zurich",
        now=at("2026-03-27T12:00:00+00:00"),
    )
    seen = []
    for instant in (
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
    ):
        clock.at(instant)
        seen += [r.due_at for r in scheduler.tick()]
    assert seen == [
        at("2026-03-28T01:30:00+00:00"),
        at("2026-03-29T01:00:00+00:00"),
        at("2026-03-30T00:30:00+00:00"),
    ]
    # Falling back, 02:30 comes twice; it runs once.
    rule = CronRule("30 2 * * *", "Europe/Zurich")
    first = rule.next_after(at("2026-10-24T12:00:00+00:00"))
    assert first == at("2026-10-25T00:30:00+00:00")
    assert rule.next_after(first) == at("2026-10-26T01:30:00+00:00")


def test_missed_runs_with_run_once_submit_the_latest_and_record_the_others(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock, jobs: JobStore
) -> None:
    schedule = add_cron(store, "hourly", cron="0 * * * *", now=at("2026-07-01T00:10:00+00:00"))
    # Every scheduler was down over 01:00, 02:00 and 03:00.
    clock.at("2026-07-01T03:30:00+00:00")
    runs = scheduler.tick()
    assert [(r.due_at.hour, r.outcome) for r in runs] == [
        (1, RunOutcome.MISSED),
        (2, RunOutcome.MISSED),
        (3, RunOutcome.SUBMITTED),
    ]
    assert "late by 30min; run once on start" in (runs[2].detail or "")
    assert [j.id for j in jobs.find(schedule_id=schedule.id)] == [runs[2].job_id]
    history = store.history("hourly", namespace="default")
    assert [(r.due_at.hour, r.outcome, r.job_id is not None) for r in history] == [
        (3, RunOutcome.SUBMITTED, True),
        (2, RunOutcome.MISSED, False),
        (1, RunOutcome.MISSED, False),
    ]
    # Back on time, runs are submitted as usual.
    clock.at("2026-07-01T04:00:20+00:00")
    [run] = scheduler.tick()
    assert run.outcome is RunOutcome.SUBMITTED and run.detail is None


def test_missed_runs_with_skip_are_recorded_and_not_run(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock, jobs: JobStore
) -> None:
    schedule = add_cron(
        store, "hourly", cron="0 * * * *", missed="skip", now=at("2026-07-01T00:10:00+00:00")
    )
    assert schedule.missed is MissedPolicy.SKIP
    clock.at("2026-07-01T03:30:00+00:00")
    runs = scheduler.tick()
    assert [r.outcome for r in runs] == [RunOutcome.SKIPPED] * 3
    assert all("not run (missed: skip)" in (r.detail or "") for r in runs)
    assert jobs.find(schedule_id=schedule.id) == []
    assert len(store.history("hourly", namespace="default")) == 3
    # A run within the grace is on time and runs.
    clock.at("2026-07-01T04:01:30+00:00")
    [run] = scheduler.tick()
    assert run.outcome is RunOutcome.SUBMITTED


def test_a_long_outage_is_summed_up_in_one_row(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock, jobs: JobStore
) -> None:
    add_cron(store, "minutely", cron="* * * * *", now=at("2026-07-01T00:00:00+00:00"))
    clock.at("2026-07-02T00:00:30+00:00")  # 1440 due instants
    runs = scheduler.tick()
    submitted = [r for r in runs if r.outcome is RunOutcome.SUBMITTED]
    assert [r.due_at for r in submitted] == [at("2026-07-02T00:00:00+00:00")]
    [summary] = [r for r in runs if "/" in r.due_key]
    assert summary.outcome is RunOutcome.MISSED and "was missed" in (summary.detail or "")
    assert len(runs) == 1000 + 2
    assert scheduler.tick() == []


def test_a_trigger_fires_once_per_alias_move(
    settings: Settings, onnx_package: Callable[..., Path], store: ScheduleStore, jobs: JobStore
) -> None:
    with Registry(settings) as registry:
        for version in ("1.0.0", "1.1.0"):
            registry.publish(onnx_package(version=version))
        registry.tag("linear:1.0.0", "production")
        schedule = store.add(
            "rescore",
            SPEC,
            namespace="default",
            owner="local:alice",
            on_alias="default/linear@production",
        )
        a = Scheduler(store.engine, name="a")
        b = Scheduler(store.engine, name="b")
        # The state at creation is taken as seen: nothing to run.
        assert a.tick() == [] and b.tick() == []
        registry.tag("linear:1.1.0", "production")
        registry.tag("linear:1.1.0", "production")  # the same version again: no move
        runs = _tick_together([a, b], rounds=5)
        assert len(runs) == 1
        assert runs[0].detail == "default/linear@production moved to default/linear:1.1.0"
        registry.tag("linear:1.0.0", "production")
        runs += _tick_together([a, b], rounds=5)
        assert [r.outcome for r in runs] == [RunOutcome.SUBMITTED] * 2
        assert "linear:1.0.0" in (runs[1].detail or "")
        # An alias removed fires nothing; put back, it has moved again.
        registry.untag("linear", "production")
        assert _tick_together([a, b], rounds=2) == []
        registry.tag("linear:1.0.0", "production")
        assert len(_tick_together([a, b], rounds=2)) == 1
    assert len(jobs.find(schedule_id=schedule.id)) == 3
    assert len(store.history("rescore", namespace="default")) == 3


def test_two_schedulers_decide_each_due_instant_once(
    store: ScheduleStore, clock: Clock, jobs: JobStore
) -> None:
    schedule = add_cron(store, "minutely", cron="* * * * *", now=clock.now)
    racers = [Scheduler(store.engine, name=n, clock=clock) for n in ("a", "b", "c")]
    runs: list[Run] = []
    for minute in range(1, 21):
        clock.now = at("2026-07-01T00:00:00+00:00") + timedelta(minutes=minute, seconds=1)
        runs += _tick_together(racers, rounds=3)
    assert sorted(r.due_at.minute for r in runs) == list(range(1, 21))
    assert {r.outcome for r in runs} == {RunOutcome.SUBMITTED}
    records = jobs.find(schedule_id=schedule.id)
    assert sorted(j.id for j in records) == sorted(r.job_id or "" for r in runs)
    assert len(store.history("minutely", namespace="default")) == 20


def _tick_together(schedulers: list[Scheduler], *, rounds: int) -> list[Run]:
    """Every scheduler ticks ``rounds`` times, all at once in threads."""
    found: list[Run] = []
    lock = threading.Lock()
    start = threading.Barrier(len(schedulers))

    def work(scheduler: Scheduler) -> None:
        start.wait()
        for _ in range(rounds):
            runs = scheduler.tick()
            with lock:
                found.extend(runs)

    threads = [threading.Thread(target=work, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return found


def test_removing_a_schedule_stops_it(
    store: ScheduleStore, scheduler: Scheduler, clock: Clock, jobs: JobStore
) -> None:
    add_cron(store)
    clock.at("2026-07-01T02:00:10+00:00")
    assert len(scheduler.tick()) == 1
    store.remove("nightly", namespace="default")
    clock.at("2026-07-02T02:00:10+00:00")
    assert scheduler.tick() == []
    with pytest.raises(NotFound):
        store.history("nightly", namespace="default")
    with pytest.raises(NotFound):
        store.remove("nightly", namespace="default")
    # Its job stays; the name is free again.
    assert len(jobs.find()) == 1
    add_cron(store, now=clock.now)
    # Both changes are in the registry's audit trail.
    with store.engine.connect() as conn:
        trail = conn.execute(
            sa.select(events.c.action, events.c.subject, events.c.actor).order_by(events.c.id)
        ).all()
    assert [tuple(row) for row in trail] == [
        ("schedule-add", "default/nightly", "local:alice"),
        ("schedule-remove", "default/nightly", None),
        ("schedule-add", "default/nightly", "local:alice"),
    ]


def test_schedules_are_listed_and_names_are_unique_per_namespace(store: ScheduleStore) -> None:
    add_cron(store, "b")
    add_cron(store, "a", namespace="other")
    add_cron(store, "b", namespace="other")
    with pytest.raises(Conflict, match="already has a schedule 'b'"):
        add_cron(store, "b")
    assert [(s.namespace, s.name) for s in store.list()] == [
        ("default", "b"),
        ("other", "a"),
        ("other", "b"),
    ]
    assert [s.name for s in store.list(namespace="other")] == ["a", "b"]
    listed = store.list()[0].to_dict(spec=False)
    assert listed["cron"] == "0 2 * * *" and listed["timezone"] == "UTC"
    assert "spec" not in listed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 2 * *"}, "has 4 fields; give five"),
        ({"cron": "0 0 2 * * *"}, "has 6 fields"),
        ({"cron": "61 2 * * *"}, "invalid cron expression"),
        ({"cron": "0 0 30 2 *"}, "invalid cron expression"),
        ({"cron": ",".join(str(m) for m in range(60)) + " * * * *"}, "over 128 characters"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"timezone": None}, "needs its time zone"),
        ({"on_alias": "default/linear@production"}, "either a cron expression"),
        ({"cron": None, "timezone": None}, "either a cron expression"),
        ({"missed": "sometimes"}, "unknown missed-run policy 'sometimes'"),
        ({"priority": "urgent"}, "unknown priority"),
        ({"namespace": "Bad NS"}, "not a valid namespace"),
    ],
)
def test_a_bad_schedule_is_refused_with_a_clear_message(
    store: ScheduleStore, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        add_cron(store, **options)
    assert store.list() == []


@pytest.mark.parametrize(
    ("on_alias", "message"),
    [
        ("default/nosuch@production", "no model default/nosuch in the registry"),
        ("default/linear:1.0.0", "give MODEL@ALIAS"),
        ("default/linear@latest", "'latest' moves with every publication"),
        ("default/linear@bad alias!", "not a valid alias"),
        ("a" * 5000 + "@production", "too long"),
    ],
)
def test_a_bad_trigger_is_refused(store: ScheduleStore, on_alias: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.add("t", SPEC, namespace="default", owner="o", on_alias=on_alias)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("Bad Name", SPEC, "schedule name"),
        ("x" * 65, SPEC, "schedule name"),
        ("ok", "  \n", "the spec is empty"),
        ("ok", "x" * (MAX_SPEC_BYTES + 1), "over"),
    ],
)
def test_bad_names_and_specs_are_refused(
    store: ScheduleStore, name: str, spec: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.add(name, spec, namespace="default", owner="o", cron="* * * * *", timezone="UTC")


# -- real processes and real time -------------------------------------------

#: A scheduler process whose clock runs SPEED times faster than real time
#: from a start both processes share, until the fake time reaches END.
_RACER = """
import sys, threading
from datetime import datetime, timedelta, UTC
from time import time as real
from sciserve.config import Settings
from sciserve.jobs import Scheduler

home, url, name, base, speed, end = sys.argv[1:]
base, end = datetime.fromisoformat(base), datetime.fromisoformat(end)
speed = float(speed)

def clock():
    return base + timedelta(seconds=(real() - real0) * speed)

settings = Settings.load(home, environ={}, database_url=url)
# A generous grace (15 s real): a process stalled by a busy machine is late,
# not missing a run.
with Scheduler(settings, name=name, clock=clock, grace=timedelta(minutes=30)) as scheduler:
    # Both processes start their clocks together, once both are ready.
    print("ready", flush=True)
    real0 = float(sys.stdin.readline())
    decided = 0
    while clock() < end:
        decided += len(scheduler.tick())
print(decided)
"""


@pytest.mark.postgres
@pytest.mark.slow
def test_two_scheduler_processes_run_each_due_run_exactly_once(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = Settings.load(tmp_path / "home", environ={}, database_url=postgres_url)
    base = at("2026-07-01T00:00:00+00:00")
    speed, minutes = 120.0, 24
    end = base + timedelta(minutes=minutes, seconds=30)
    with ScheduleStore.open(settings) as store:
        for name in ("every-minute", "also-every-minute"):
            store.add(
                name,
                SPEC,
                namespace="default",
                owner="local:alice",
                cron="* * * * *",
                timezone="UTC",
                now=base,
            )
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _RACER,
                    str(tmp_path / "home"),
                    postgres_url,
                    name,
                    base.isoformat(),
                    str(speed),
                    end.isoformat(),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("proc-a", "proc-b")
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline() == "ready\n", proc.stderr
            real0 = time.time() + 0.5
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{real0}\n")
                proc.stdin.close()
            # The output is one line each: the pipes cannot fill up.
            outputs = []
            for proc in procs:
                proc.wait(timeout=120)
                assert proc.stdout is not None and proc.stderr is not None
                outputs.append((proc.stdout.read(), proc.stderr.read()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        decided = [int(out.strip()) for out, _ in outputs]
        jobs = JobStore(store.engine)
        every_due = [base + timedelta(minutes=m) for m in range(1, minutes + 1)]
        deciders = set()
        for schedule in store.list():
            runs = store.history(schedule.name, namespace="default", limit=1000)
            # One run per due instant, no gaps, every one on time and submitted.
            assert sorted(r.due_at for r in runs) == every_due
            assert {r.outcome for r in runs} == {RunOutcome.SUBMITTED}
            records = jobs.find(schedule_id=schedule.id, limit=1000)
            assert sorted(j.id for j in records) == sorted(r.job_id for r in runs)  # type: ignore[type-var]
            deciders |= {r.scheduler for r in runs}
        assert sum(decided) == 2 * minutes
        # Both processes really raced for the same rows.
        assert deciders == {"proc-a", "proc-b"}, decided


@pytest.mark.slow
def test_the_scheduler_command_fires_a_schedule_in_real_time(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings.load(home, environ={})
    with ScheduleStore.open(settings) as store:
        schedule = store.add(
            "soon", SPEC, namespace="default", owner="local:alice", cron="* * * * *", timezone="UTC"
        )
        due = schedule.next_due_at
        assert due is not None
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sciserve",
                "--home",
                str(home),
                "scheduler",
                "--interval",
                "0.2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            jobs = JobStore(store.engine)
            deadline = due + timedelta(seconds=20)
            found = []
            while not found and datetime.now(UTC) < deadline and proc.poll() is None:
                found = jobs.find(schedule_id=schedule.id)
                if not found:
                    time.sleep(0.2)
            assert len(found) == 1, proc.stderr.read() if proc.poll() is not None else ""
            # It fired at its time, not before.
            assert due <= found[0].submitted_at < due + timedelta(seconds=10)
            os.kill(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert "scheduler stopped" in err and "Traceback" not in err
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("run_in_server", [True, False])
def test_serve_runs_a_scheduler_unless_told_not_to(
    tmp_path: Path, onnx_package: Callable[..., Path], run_in_server: bool
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if not run_in_server:
        (home / "sciserve.toml").write_text("[jobs]\nrun_in_server = false\n")
    settings = Settings.load(home, environ={})
    with Registry(settings) as registry, ScheduleStore.open(settings) as store:
        for version in ("1.0.0", "1.1.0"):
            registry.publish(onnx_package(version=version))
        registry.tag("linear:1.0.0", "production")
        schedule = store.add(
            "rescore", SPEC, namespace="default", owner="local:alice", on_alias="linear@production"
        )
        running = start_server(home)
        try:
            registry.tag("linear:1.1.0", "production")
            jobs = JobStore(store.engine)
            # The server's scheduler looks every 5 s; without one, nothing
            # comes in over two of its intervals.
            deadline = time.monotonic() + (20 if run_in_server else 12)
            found = jobs.find(schedule_id=schedule.id)
            while not found and time.monotonic() < deadline:
                time.sleep(0.2)
                found = jobs.find(schedule_id=schedule.id)
        finally:
            assert stop_server(running.proc) == 0
        history = store.history("rescore", namespace="default")
    if run_in_server:
        [run] = history
        assert [job.id for job in found] == [run.job_id]
    else:
        assert found == [] and history == []
