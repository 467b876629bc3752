"""Kafka source and sink against a real Kafka-protocol broker (Tansu).

Every new consumer waits about 3 s for the broker to form its group, hence
the ``slow`` mark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sciserve.errors import InvalidInput
from sciserve.streams.base import Message, OutRecord, Source, open_sink, open_source
from sciserve.streams.kafka import KafkaSink, KafkaSource

pytestmark = pytest.mark.slow


async def _fetch_n(source: Source, count: int, deadline: float = 30.0) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < end:
        got += await source.fetch(count - len(got), 0.5)
    assert len(got) == count, f"fetched {len(got)} of {count} messages"
    return got


async def test_round_trip_keeps_value_key_headers_and_broker_timestamp(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=2)
    records = [
        OutRecord(f"alert-{i}".encode(), key=f"obj-{i}".encode(), headers=(("n", str(i).encode()),))
        for i in range(10)
    ]
    before = time.time() * 1000
    async with KafkaSink(kafka_bootstrap, topic) as sink:
        await sink.write(records)
    after = time.time() * 1000

    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as source:
        got = await _fetch_n(source, 10)
        await source.commit(got)
        assert await source.lag() == 0

    assert sorted(m.value for m in got) == sorted(r.value for r in records)
    for message in got:
        number = message.value.decode().split("-")[1]
        assert message.key == f"obj-{number}".encode()
        assert message.headers == (("n", number.encode()),)
        assert message.topic == topic
        assert message.partition in (0, 1)
        assert message.timestamp_ms is not None
        assert before - 1000 <= message.timestamp_ms <= after + 1000
    # Within a partition, offsets count up from 0 without gaps.
    for partition in (0, 1):
        offsets = sorted(m.offset for m in got if m.partition == partition and m.offset is not None)
        assert offsets == list(range(len(offsets)))


async def test_uncommitted_messages_are_redelivered_to_the_next_member(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=1)
    async with KafkaSink(kafka_bootstrap, topic) as sink:
        await sink.write([OutRecord(b"m%d" % i) for i in range(10)])

    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as first:
        got = await _fetch_n(first, 10)
        assert [m.offset for m in got] == list(range(10))
        await first.commit(got[:5])

    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as second:
        again = await _fetch_n(second, 5)
        assert [m.value for m in again] == [b"m%d" % i for i in range(5, 10)]
        assert [m.offset for m in again] == list(range(5, 10))
        # Nothing beyond the five uncommitted ones comes back.
        assert await second.fetch(10, 1.0) == []


async def test_two_members_of_a_group_share_the_partitions(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=2)
    first = KafkaSource(kafka_bootstrap, topic, kafka_group)
    second = KafkaSource(kafka_bootstrap, topic, kafka_group)
    await first.start()
    await second.start()
    try:
        deadline = time.monotonic() + 30
        while (first.assignment(), second.assignment()) not in (([0], [1]), ([1], [0])):
            assert time.monotonic() < deadline, "the group never balanced"
            await asyncio.gather(first.fetch(10, 0.2), second.fetch(10, 0.2))

        async with KafkaSink(kafka_bootstrap, topic) as sink:
            await sink.write([OutRecord(b"v%d" % i, key=b"k%d" % i) for i in range(20)])

        seen: dict[str, list[Message]] = {"first": [], "second": []}
        deadline = time.monotonic() + 30
        while sum(map(len, seen.values())) < 20 and time.monotonic() < deadline:
            for name, source in (("first", first), ("second", second)):
                batch = await source.fetch(20, 0.2)
                await source.commit(batch)
                seen[name] += batch
    finally:
        await first.close()
        await second.close()

    values = [m.value for batch in seen.values() for m in batch]
    assert sorted(values) == sorted(b"v%d" % i for i in range(20))  # no duplicates
    assert seen["first"] and seen["second"]
    assert {m.partition for m in seen["first"]}.isdisjoint({m.partition for m in seen["second"]})


async def test_a_cancelled_fetch_loses_no_messages(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=1)
    async with KafkaSink(kafka_bootstrap, topic) as sink:
        await sink.write([OutRecord(b"c%d" % i) for i in range(3)])
    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as source:
        # Cancelled while librdkafka is still joining the group: the consume
        # call goes on in its thread and its batch must reach the next fetch.
        pending = asyncio.create_task(source.fetch(10, 5.0))
        await asyncio.sleep(0.2)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        got = await _fetch_n(source, 3)
    assert [m.value for m in got] == [b"c0", b"c1", b"c2"]


async def test_a_commit_does_not_wait_for_a_fetch_in_progress(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=1)
    async with KafkaSink(kafka_bootstrap, topic) as sink:
        await sink.write([OutRecord(b"f%d" % i) for i in range(5)])
    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as source:
        got = await _fetch_n(source, 5)
        # The pipeline fetches the next batch while it commits this one; the
        # topic is drained, so this fetch waits its whole timeout.
        fetching = asyncio.create_task(source.fetch(10, 5.0))
        for _ in range(5):
            await asyncio.sleep(0)  # the fetch is under way
        started = time.monotonic()
        await source.commit(got)
        took = time.monotonic() - started
        assert took < 1.0, f"the commit waited {took:.2f} s for the fetch"
        assert not fetching.done()  # the commit really overlapped the fetch
        assert await source.lag() == 0
        assert await fetching == []


async def test_lag_counts_uncommitted_messages(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=1)
    async with KafkaSink(kafka_bootstrap, topic) as sink:
        # One write per record: Tansu reports the high watermark of the last
        # produced batch's first offset + 1, so only single-record batches
        # give it exact watermarks.
        for i in range(6):
            await sink.write([OutRecord(b"r%d" % i)])

    async with KafkaSource(kafka_bootstrap, topic, kafka_group) as source:
        assert await source.lag() is None  # no partitions assigned yet
        got = await _fetch_n(source, 6)
        assert await source.lag() == 6
        await source.commit(got[:2])
        assert await source.lag() == 4
        await source.commit(got)
        assert await source.lag() == 0


async def test_records_are_readable_as_soon_as_write_returns(
    kafka_bootstrap: str, kafka_topic: Callable[..., str], kafka_group: str
) -> None:
    topic = kafka_topic(partitions=1)
    sink = KafkaSink(kafka_bootstrap, topic)
    await sink.start()
    try:
        await sink.write([OutRecord(b"durable-%d" % i) for i in range(3)])
        # The sink stays open: nothing is left for close() to flush.
        async with open_source(f"kafka://{kafka_bootstrap}/{topic}?group={kafka_group}") as source:
            got = await _fetch_n(source, 3)
    finally:
        await sink.close()
    assert [m.value for m in got] == [b"durable-0", b"durable-1", b"durable-2"]


def test_urls_build_configured_kafka_endpoints() -> None:
    source = open_source("kafka://broker.example:9093/alerts?group=ml&fetch.min.bytes=1")
    assert isinstance(source, KafkaSource)
    assert (source.bootstrap, source.topic, source.group) == ("broker.example:9093", "alerts", "ml")
    tuned = open_source(
        "kafka://broker.example/alerts?group=ml&session_timeout_ms=3000&max_poll_interval_ms=4000"
    )
    assert isinstance(tuned, KafkaSource)
    assert tuned._config["session.timeout.ms"] == 3000
    assert tuned._config["max.poll.interval.ms"] == 4000
    assert tuned._config["heartbeat.interval.ms"] == 1000
    sink = open_sink("kafka://a.example,b.example:9999/scores")
    assert isinstance(sink, KafkaSink)
    assert (sink.bootstrap, sink.topic) == ("a.example:9092,b.example:9999", "scores")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://localhost:9092/alerts", "group=… is required"),
        ("kafka://localhost:9092/", "must be one topic"),
        ("kafka://localhost:9092/a/b?group=g", "must be one topic"),
        ("kafka://localhost:port/alerts?group=g", "bad host:port"),
        ("kafka://user:secret@localhost/alerts?group=g", "credentials"),
        ("kafka://localhost/alerts?group=g&group=h", "given twice"),
        ("kafka://localhost/alerts?group=g&enable.auto.commit=true", "cannot be overridden"),
        ("amqp://localhost/alerts", "unsupported scheme"),
        ("kafka://localhost/alerts?group=g&session_timeout_ms=soon", "session_timeout_ms='soon'"),
        ("kafka://localhost/alerts?group=g&max_poll_interval_ms=1.5", "max_poll_interval_ms="),
        ("kafka://localhost/alerts?group=g&session_timeout_ms=0", "must be positive"),
        ("kafka://localhost/alerts?group=g&session_timeout_ms=9000", "at most max_poll"),
    ],
)
def test_bad_kafka_urls_are_rejected_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_source(url)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"session_timeout_ms": True}, "session_timeout_ms must be an integer, not True"),
        ({"max_poll_interval_ms": 7.5}, "max_poll_interval_ms must be an integer, not 7.5"),
        ({"session_timeout_ms": -1}, "must be positive"),
    ],
)
def test_bad_kafka_source_options_are_rejected_clearly(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        KafkaSource("localhost:9092", "alerts", "g", **options)  # type: ignore[arg-type]
