"""NATS JetStream source and sink against a real server."""

from __future__ import annotations

import time

import nats
import pytest
from nats.js.api import StorageType

from sciserve.errors import InvalidInput, Unavailable
from sciserve.streams.base import Message, OutRecord, Source, open_sink, open_source
from sciserve.streams.nats import NatsSink, NatsSource


async def _fetch_n(source: Source, count: int, deadline: float = 10.0) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + deadline
    while len(got) < count and time.monotonic() < end:
        got += await source.fetch(count - len(got), 0.5)
    assert len(got) == count, f"fetched {len(got)} of {count} messages"
    return got


async def _publish(url: str, subject: str, stream: str, count: int, prefix: str = "m") -> None:
    async with NatsSink(url, subject, stream) as sink:
        await sink.write([OutRecord(f"{prefix}{i}".encode()) for i in range(count)])


async def test_round_trip_keeps_value_key_headers_and_server_timestamp(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    records = [
        OutRecord(b"alert-%d" % i, key=b"\x00obj-%d" % i, headers=(("n", b"%d" % i),))
        for i in range(10)
    ]
    before = time.time() * 1000
    async with NatsSink(nats_url, subject, stream) as sink:
        await sink.write(records)
    after = time.time() * 1000

    async with NatsSource(nats_url, subject, stream=stream, durable="d") as source:
        got = await _fetch_n(source, 10)
        await source.commit(got)
        assert await source.lag() == 0

    assert [(m.value, m.key, m.headers) for m in got] == [
        (r.value, r.key, r.headers) for r in records
    ]
    assert [m.offset for m in got] == list(range(1, 11))  # stream sequence numbers
    assert {m.topic for m in got} == {subject}
    for message in got:
        assert message.timestamp_ms is not None
        assert before - 1000 <= message.timestamp_ms <= after + 1000


async def test_the_source_creates_a_missing_stream(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    async with NatsSource(nats_url, subject, stream=stream, durable="d") as source:
        assert await source.fetch(10, 0.2) == []
        client = await nats.connect(nats_url)
        try:
            info = await client.jetstream().stream_info(stream)
        finally:
            await client.close()
    assert info.config.subjects == [subject]
    assert info.config.storage == StorageType.FILE


async def test_closing_redelivers_uncommitted_messages_at_once(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    await _publish(nats_url, subject, stream, 10)

    async with NatsSource(nats_url, subject, stream=stream, durable="d") as first:
        got = await _fetch_n(first, 10)
        await first.commit(got[:5])

    start = time.monotonic()
    async with NatsSource(nats_url, subject, stream=stream, durable="d") as second:
        again = await _fetch_n(second, 5)
        await second.commit(again)
        assert await second.fetch(10, 0.3) == []
    # Well before ack_wait (30 s): the first source NAKed them on close.
    assert time.monotonic() - start < 5
    assert [m.value for m in again] == [b"m%d" % i for i in range(5, 10)]


async def test_unacked_messages_return_after_ack_wait_without_close(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    await _publish(nats_url, subject, stream, 4)
    crashed = NatsSource(nats_url, subject, stream=stream, durable="d", ack_wait=1.0)
    await crashed.start()
    try:
        got = await _fetch_n(crashed, 4)
        await crashed.commit(got[:1])
        # The first source stays silent, as a crashed process would.
        async with NatsSource(
            nats_url, subject, stream=stream, durable="d", ack_wait=1.0
        ) as survivor:
            assert await survivor.fetch(10, 0.2) == []  # still within ack_wait
            again = await _fetch_n(survivor, 3, deadline=5)
            await survivor.commit(again)
    finally:
        await crashed.close()
    assert sorted(m.value for m in again) == [b"m1", b"m2", b"m3"]


async def test_two_sources_sharing_a_durable_split_the_messages(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    await _publish(nats_url, subject, stream, 20)
    first = NatsSource(nats_url, subject, stream=stream, durable="shared", batch=3)
    second = NatsSource(nats_url, subject, stream=stream, durable="shared", batch=3)
    seen: dict[str, list[Message]] = {"first": [], "second": []}
    async with first, second:
        deadline = time.monotonic() + 10
        while sum(map(len, seen.values())) < 20 and time.monotonic() < deadline:
            for name, source in (("first", first), ("second", second)):
                batch = await source.fetch(100, 0.2)
                assert len(batch) <= 3  # capped by batch
                await source.commit(batch)
                seen[name] += batch
        assert await first.lag() == 0
    values = [m.value for batch in seen.values() for m in batch]
    assert sorted(values) == sorted(b"m%d" % i for i in range(20))  # no duplicates
    assert seen["first"] and seen["second"]


async def test_lag_counts_undelivered_and_uncommitted_messages(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    async with NatsSource(nats_url, subject, stream=stream, durable="d") as source:
        assert await source.lag() == 0
        await _publish(nats_url, subject, stream, 8)
        assert await source.lag() == 8
        got = await _fetch_n(source, 8)
        assert await source.lag() == 8  # delivered, not committed
        await source.commit(got[:3])
        assert await source.lag() == 5
        await source.commit(got[3:])
        assert await source.lag() == 0


async def test_records_are_readable_as_soon_as_write_returns(
    nats_url: str, nats_stream: tuple[str, str]
) -> None:
    stream, subject = nats_stream
    sink = open_sink(f"{nats_url}/{subject}?stream={stream}")
    await sink.start()
    try:
        await sink.write([OutRecord(b"durable-%d" % i) for i in range(3)])
        async with open_source(
            f"{nats_url}/{subject}?stream={stream}&durable=fresh&batch=2"
        ) as source:
            got = await _fetch_n(source, 3)
    finally:
        await sink.close()
    assert [m.value for m in got] == [b"durable-0", b"durable-1", b"durable-2"]


async def test_publishing_where_no_stream_listens_is_unavailable(nats_url: str) -> None:
    async with NatsSink(nats_url, "sciserve.test.nobody.listens") as sink:
        with pytest.raises(Unavailable):
            await sink.write([OutRecord(b"lost")])


async def test_unreachable_server_is_unavailable() -> None:
    source = NatsSource(
        "nats://127.0.0.1:1",
        "x",
        stream="S",
        durable="d",
        max_reconnect_attempts=1,
        reconnect_time_wait=0.05,
    )
    with pytest.raises(Unavailable, match="cannot connect"):
        await source.start()


def test_urls_build_configured_nats_endpoints() -> None:
    source = open_source("nats://n1.example,n2.example:4333/alerts.ztf?stream=A&durable=d&batch=7")
    assert isinstance(source, NatsSource)
    assert source.servers == ["nats://n1.example:4222", "nats://n2.example:4333"]
    assert (source.subject, source.stream, source.durable, source.batch) == (
        "alerts.ztf",
        "A",
        "d",
        7,
    )
    sink = open_sink("nats://localhost/scores")
    assert isinstance(sink, NatsSink)
    assert (sink.servers, sink.subject, sink.stream) == (["nats://localhost:4222"], "scores", None)
    with pytest.raises(InvalidInput, match="unknown parameter"):
        open_sink("nats://localhost/scores?durable=d")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://localhost/alerts?durable=d", "stream=… is required"),
        ("nats://localhost/alerts?stream=S", "durable=… is required"),
        ("nats://localhost/alerts?stream=S&durable=d&batch=many", "batch='many'"),
        ("nats://localhost/alerts?stream=S&durable=d&batch=0", "batch must be at least 1"),
        ("nats://localhost:99999/alerts?stream=S&durable=d", "bad host:port"),
        ("nats://localhost/two words?stream=S&durable=d", "must be one subject"),
        ("nats://localhost/alerts?stream=S&durable=d&tls=1", "unknown parameter"),
    ],
)
def test_bad_nats_urls_are_rejected_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_source(url)
