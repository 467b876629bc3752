"""Usage accounting: counted in memory, flushed in one transaction, reported, exported."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sciserve.access import tables
from sciserve.access.identity import Identity
from sciserve.access.usage import USAGE_COLUMNS, UsageStore, to_csv
from sciserve.config import AccessConfig
from sciserve.errors import Unavailable
from sciserve.registry.db import utcnow
from sciserve.registry.registry import Registry

ALICE = Identity("alice", "token", "ALICEALICE12")
BOB = Identity("bob", "jwt", issuer="https://iam.example")


def _rows_in_db(registry: Registry) -> int:
    with registry._engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tables.usage)).scalar_one())


def test_flush_and_report(registry: Registry) -> None:
    usage = UsageStore(registry)
    usage.record(ALICE, "ztf", "classifier", rows=10, compute_seconds=0.25)
    usage.record(ALICE, "ztf", "classifier", rows=5, compute_seconds=0.5)
    usage.record(ALICE, "ztf", "other", rows=1, compute_seconds=0.125)
    usage.record(BOB, "cms", "tagger", rows=100, compute_seconds=2.0, requests=4)
    assert usage.report() == []  # nothing flushed yet
    assert usage.flush() == 3
    assert usage.flush() == 0  # nothing new
    report = usage.report()
    assert [(r["namespace"], r["principal"], r["model"]) for r in report] == [
        ("cms", "bob@https://iam.example", "tagger"),
        ("ztf", "ALICEALICE12", "classifier"),
        ("ztf", "ALICEALICE12", "other"),
    ]
    by_model = {r["model"]: r for r in report}
    assert by_model["classifier"]["requests"] == 2
    assert by_model["classifier"]["rows"] == 15
    assert by_model["classifier"]["compute_seconds"] == pytest.approx(0.75)
    assert by_model["classifier"]["subject"] == "alice"
    assert by_model["tagger"]["requests"] == 4 and by_model["tagger"]["rows"] == 100
    assert set(report[0]) == set(USAGE_COLUMNS)
    assert usage.report(namespace="cms") == [by_model["tagger"]]


def test_later_flushes_add_to_the_same_bucket(registry: Registry) -> None:
    usage = UsageStore(registry)
    usage.record(ALICE, "ztf", "m", rows=1, compute_seconds=1.0)
    usage.flush()
    usage.record(ALICE, "ztf", "m", rows=2, compute_seconds=1.0)
    usage.flush()
    # A second replica counting the same caller and model adds to it too.
    replica = UsageStore(registry)
    replica.record(ALICE, "ztf", "m", rows=3, compute_seconds=1.0)
    replica.flush()
    [row] = usage.report()
    assert (row["requests"], row["rows"], row["compute_seconds"]) == (3, 6, 3.0)
    assert _rows_in_db(registry) == 1  # hourly buckets, not a row per flush


def test_report_since(registry: Registry) -> None:
    usage = UsageStore(registry)
    usage.record(ALICE, "ztf", "m", rows=1)
    usage.flush()
    assert len(usage.report(since=utcnow() - timedelta(minutes=5))) == 1
    assert usage.report(since=utcnow() + timedelta(hours=2)) == []


def test_csv_columns_and_values(registry: Registry) -> None:
    usage = UsageStore(registry)
    usage.record(ALICE, "ztf", "classifier", rows=7, compute_seconds=1.5)
    usage.record(BOB, "cms", "tagger", rows=2, compute_seconds=0.5)
    usage.flush()
    text = to_csv(usage.report())
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(USAGE_COLUMNS)
    assert [
        (r["namespace"], r["principal"], r["subject"], r["model"], r["requests"], r["rows"])
        for r in parsed
    ] == [
        ("cms", "bob@https://iam.example", "bob", "tagger", "1", "2"),
        ("ztf", "ALICEALICE12", "alice", "classifier", "1", "7"),
    ]
    assert float(parsed[1]["compute_seconds"]) == 1.5
    assert parsed[1]["first_period"].endswith(":00:00+00:00")


def test_failed_flush_keeps_the_counts(registry: Registry) -> None:
    usage = UsageStore(registry)
    usage.record(ALICE, "ztf", "m", rows=4)
    with registry._engine.begin() as conn:
        conn.execute(sa.text('ALTER TABLE "usage" RENAME TO usage_away'))
    with pytest.raises(Unavailable, match="usage"):
        usage.flush()
    with registry._engine.begin() as conn:
        conn.execute(sa.text('ALTER TABLE usage_away RENAME TO "usage"'))
    assert usage.flush() == 1
    assert usage.report()[0]["rows"] == 4


async def test_periodic_flush_and_final_flush_on_cancel(registry: Registry) -> None:
    usage = UsageStore(registry, AccessConfig(usage_flush_interval=0.05))
    task = asyncio.create_task(usage.run())
    usage.record(ALICE, "ztf", "m", rows=1)
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(usage.report):  # until the periodic flush wrote it
        assert time.monotonic() < deadline, "the periodic flush never ran"
        await asyncio.sleep(0.02)
    assert usage.report()[0]["requests"] == 1
    usage.record(ALICE, "ztf", "m", rows=1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert usage.report()[0]["requests"] == 2
