"""Job records: the state machine, claims, cancels and logs, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from sciserve.access.priority import Priority
from sciserve.config import Settings
from sciserve.errors import Conflict, InvalidInput, NotFound
from sciserve.jobs import JobState, JobStore
from sciserve.jobs.records import MAX_LOG_MESSAGE, MAX_SPEC_BYTES, TRANSITIONS


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    with JobStore.open(settings) as opened:
        yield opened


def test_a_job_goes_from_queued_to_succeeded_with_its_progress(store: JobStore) -> None:
    job = store.submit("source: x", namespace="alpha", submitter="alice")
    assert job.state is JobState.QUEUED and job.priority is Priority.BATCH
    claimed = store.claim("runner-1")
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is JobState.RUNNING and claimed.runner == "runner-1"
    assert claimed.attempts == 1 and claimed.started_at is not None
    assert store.claim("runner-2") is None
    state = store.progress(job.id, shards_total=4, shards_done=2, rows_in=10, rows_out=9)
    assert state is JobState.RUNNING
    done = store.finish(job.id, JobState.SUCCEEDED, report={"verified": True})
    assert done.state is JobState.SUCCEEDED and done.finished_at is not None
    assert (done.shards_total, done.shards_done, done.rows_in, done.rows_out) == (4, 2, 10, 9)
    assert done.report == {"verified": True}
    assert [line.message for line in store.logs(job.id)] == [
        "submitted by alice (batch)",
        "started by runner-1",
        "RUNNING → SUCCEEDED",
    ]
    as_dict = done.to_dict()
    assert as_dict["state"] == "SUCCEEDED" and as_dict["spec"] == "source: x"
    assert "spec" not in done.to_dict(spec=False)


def test_claims_take_the_highest_class_first_then_the_oldest(store: JobStore) -> None:
    first_batch = store.submit("a", namespace="n", submitter="s")
    realtime = store.submit("b", namespace="n", submitter="s", priority=Priority.REALTIME)
    second_batch = store.submit("c", namespace="n", submitter="s")
    order = [store.claim("r") for _ in range(3)]
    assert [job.id for job in order if job is not None] == [
        realtime.id,
        first_batch.id,
        second_batch.id,
    ]


def test_claims_can_be_limited_to_namespaces(store: JobStore) -> None:
    store.submit("a", namespace="alpha", submitter="s")
    beta = store.submit("b", namespace="beta", submitter="s")
    claimed = store.claim("r", namespaces=["beta"])
    assert claimed is not None and claimed.id == beta.id
    assert store.claim("r", namespaces=["beta"]) is None


def test_cancel_a_queued_job_at_once_and_a_running_one_through_its_runner(
    store: JobStore,
) -> None:
    queued = store.submit("a", namespace="n", submitter="s")
    assert store.cancel(queued.id, by="bob").state is JobState.CANCELLED
    running = store.submit("b", namespace="n", submitter="s")
    assert store.claim("r") is not None
    assert store.cancel(running.id, by="bob").state is JobState.CANCELLING
    # Asking twice is harmless; the runner sees the request in its progress answer.
    assert store.cancel(running.id, by="bob").state is JobState.CANCELLING
    assert store.progress(running.id, shards_done=1) is JobState.CANCELLING
    assert store.finish(running.id, JobState.CANCELLED).state is JobState.CANCELLED
    assert store.cancel(running.id, by="bob").state is JobState.CANCELLED
    finished = store.submit("c", namespace="n", submitter="s")
    store.claim("r")
    store.finish(finished.id, JobState.SUCCEEDED)
    with pytest.raises(Conflict, match="already finished"):
        store.cancel(finished.id, by="bob")


def test_a_cancelled_or_failed_job_can_be_resumed_and_a_succeeded_one_cannot(
    store: JobStore,
) -> None:
    job = store.submit("a", namespace="n", submitter="s")
    store.claim("r")
    store.finish(job.id, JobState.FAILED, error="disk full")
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED and failed.error == "disk full"
    resumed = store.resume(job.id, by="alice")
    assert resumed.state is JobState.QUEUED and resumed.finished_at is None
    again = store.claim("r")
    assert again is not None and again.attempts == 2 and again.error is None
    store.finish(job.id, JobState.SUCCEEDED)
    with pytest.raises(Conflict, match="SUCCEEDED"):
        store.resume(job.id, by="alice")


def test_only_a_running_job_can_finish(store: JobStore) -> None:
    job = store.submit("a", namespace="n", submitter="s")
    with pytest.raises(Conflict, match="QUEUED; it cannot become SUCCEEDED"):
        store.finish(job.id, JobState.SUCCEEDED)
    with pytest.raises(ValueError, match="RUNNING"):
        store.finish(job.id, JobState.RUNNING)


def test_every_transition_the_store_makes_is_in_the_table(store: JobStore) -> None:
    # Replays what the store does, checking each move against TRANSITIONS.
    seen: list[tuple[JobState, JobState]] = []
    job = store.submit("a", namespace="n", submitter="s")
    states = [store.get(job.id).state]

    def note() -> None:
        states.append(store.get(job.id).state)
        seen.append((states[-2], states[-1]))

    store.claim("r")
    note()
    store.cancel(job.id, by="x")
    note()
    store.finish(job.id, JobState.CANCELLED)
    note()
    store.resume(job.id, by="x")
    note()
    store.claim("r")
    note()
    store.finish(job.id, JobState.QUEUED)
    note()
    for before, after in seen:
        assert after in TRANSITIONS[before], (before, after)


def test_a_silent_runner_loses_its_jobs(store: JobStore) -> None:
    running = store.submit("a", namespace="n", submitter="s")
    stopping = store.submit("b", namespace="n", submitter="s")
    store.claim("dead-runner")
    store.claim("dead-runner")
    store.cancel(stopping.id, by="x")
    assert store.requeue_stale(timedelta(hours=1)) == []
    moved = store.requeue_stale(timedelta(seconds=-1))
    assert sorted(moved) == sorted([running.id, stopping.id])
    assert store.get(running.id).state is JobState.QUEUED
    assert store.get(running.id).runner is None
    assert store.get(stopping.id).state is JobState.CANCELLED
    assert "dead-runner stopped answering" in store.logs(running.id)[-1].message


def test_unknown_and_malformed_ids_are_not_found_alike(store: JobStore) -> None:
    for job_id in ("j-0000000000000000", "../../etc/passwd", "j-" + "a" * 10_000, "", "J-ABC"):
        with pytest.raises(NotFound, match="no job"):
            store.get(job_id)
        with pytest.raises(NotFound):
            store.cancel(job_id, by="x")
        with pytest.raises(NotFound):
            store.logs(job_id)


def test_oversized_specs_are_refused_and_long_log_lines_cut(store: JobStore) -> None:
    with pytest.raises(InvalidInput, match="over"):
        store.submit("x" * (MAX_SPEC_BYTES + 1), namespace="n", submitter="s")
    job = store.submit("a", namespace="n", submitter="s")
    store.log(job.id, "y" * (MAX_LOG_MESSAGE * 3), level="warning")
    last = store.logs(job.id)[-1]
    assert last.level == "warning" and len(last.message) < MAX_LOG_MESSAGE + 20
    assert last.message.endswith("[cut]")
    assert [line.id for line in store.logs(job.id, after=last.id - 1)] == [last.id]
    with pytest.raises(ValueError, match="level"):
        store.log(job.id, "x", level="loud")


def test_listings_filter_by_namespace_state_and_schedule(store: JobStore) -> None:
    a = store.submit("a", namespace="alpha", submitter="s", schedule_id=7)
    b = store.submit("b", namespace="beta", submitter="s")
    store.cancel(b.id, by="x")
    assert {j.id for j in store.find()} == {a.id, b.id}
    assert [j.id for j in store.find(namespaces=["alpha"])] == [a.id]
    assert [j.id for j in store.find(namespaces=[])] == []
    assert [j.id for j in store.find(states=[JobState.CANCELLED])] == [b.id]
    assert [j.id for j in store.find(schedule_id=7)] == [a.id]
    assert len(store.find(limit=1)) == 1


@pytest.mark.postgres
def test_concurrent_runners_never_claim_one_job_twice(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "home", environ={}, database_url=postgres_url)
    with JobStore.open(settings) as store:
        submitted = {store.submit("a", namespace="n", submitter="s").id for _ in range(40)}
        claims: dict[str, list[str]] = {f"r{i}": [] for i in range(4)}
        start = threading.Barrier(len(claims))

        def claim_all(name: str) -> None:
            start.wait()
            while (job := store.claim(name)) is not None:
                claims[name].append(job.id)

        threads = [threading.Thread(target=claim_all, args=(name,)) for name in claims]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        everything = [job_id for ids in claims.values() for job_id in ids]
        assert sorted(everything) == sorted(submitted)
        assert all(store.get(job_id).attempts == 1 for job_id in submitted)
