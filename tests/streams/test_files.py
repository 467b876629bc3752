"""Stream files: write with FileSink, replay with FileSource."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sciserve.errors import InvalidInput, NotFound
from sciserve.streams.base import Message, OutRecord, open_sink, open_source
from sciserve.streams.files import FileSink, FileSource, offset_path_for

FORMATS = ["jsonl", "avro", "parquet"]


def _records(count: int, start: int = 0) -> list[OutRecord]:
    return [
        OutRecord(
            json.dumps({"alert": i}).encode(),
            key=b"\x00obj-%d" % i,
            headers=(("schema", b"%d" % i), ("raw", b"\xff\x00")),
        )
        for i in range(start, start + count)
    ]


async def _write(path: Path, *batches: list[OutRecord]) -> None:
    async with FileSink(path) as sink:
        for batch in batches:
            await sink.write(batch)


async def _replay(path: Path, batch: int = 7) -> list[Message]:
    got: list[Message] = []
    async with FileSource(path) as source:
        while not source.exhausted:
            got += await source.fetch(batch, 0.0)
    return got


@pytest.mark.parametrize("fmt", FORMATS)
async def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"alerts.{fmt}"
    records = _records(25)
    before = time.time() * 1000
    await _write(path, records[:10], records[10:])
    after = time.time() * 1000

    got = await _replay(path)

    assert [m.value for m in got] == [r.value for r in records]
    assert [m.offset for m in got] == list(range(25))
    assert {m.topic for m in got} == {str(path)}
    if fmt == "jsonl":  # values only
        assert all(m.key is None and m.headers == () and m.timestamp_ms is None for m in got)
    else:
        assert [(m.key, m.headers) for m in got] == [(r.key, r.headers) for r in records]
        for message in got:
            assert message.timestamp_ms is not None
            assert before - 1 <= message.timestamp_ms <= after + 1


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_reopened_sink_appends(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"alerts.{fmt}"
    await _write(path, _records(4))
    await _write(path, _records(3, start=4))
    assert [m.value for m in await _replay(path)] == [r.value for r in _records(7)]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_replay_resumes_after_the_committed_offset(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"alerts.{fmt}"
    # Several writes: several Avro blocks and Parquet row groups to skip.
    async with FileSink(path, row_group_rows=4) as sink:
        for start in range(0, 20, 4):
            await sink.write(_records(4, start))

    async with FileSource(path) as first:
        assert await first.lag() == 20
        got = await first.fetch(10, 1.0)
        assert [m.offset for m in got] == list(range(10))
        await first.commit(got[:6])  # the rest is "in flight" when we stop
        assert await first.lag() == 14
    assert offset_path_for(path).read_text() == "6\n"

    async with FileSource(path) as second:
        assert second.committed == 6
        rest = await second.fetch(100, 1.0)
        await second.commit(rest)
        assert second.exhausted
        assert await second.lag() == 0
    assert [m.offset for m in rest] == list(range(6, 20))
    assert [m.value for m in rest] == [r.value for r in _records(14, start=6)]

    async with FileSource(path) as done:
        started = time.monotonic()
        assert await done.fetch(10, 0.2) == []  # nothing left: waits out the timeout
        assert time.monotonic() - started >= 0.2
        assert done.exhausted


async def test_commits_never_move_the_offset_back(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    await _write(path, _records(5))
    async with FileSource(path, offset_path=tmp_path / "replay.offset") as source:
        got = await source.fetch(5, 1.0)
        await source.commit(got[3:])
        await source.commit(got[:2])
    assert (tmp_path / "replay.offset").read_text() == "5\n"
    assert not offset_path_for(path).exists()


@pytest.mark.parametrize("fmt", ["jsonl", "avro"])
async def test_records_are_on_disk_when_write_returns(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"alerts.{fmt}"
    sink = FileSink(path)
    assert sink.durable_on_write
    await sink.start()
    try:
        await sink.write(_records(3))
        # The sink is still open: a reader already sees every record.
        assert [m.value for m in await _replay(path)] == [r.value for r in _records(3)]
    finally:
        await sink.close()


async def test_parquet_appears_complete_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "alerts.parquet"
    await _write(path, _records(2))
    sink = FileSink(path, row_group_rows=2)
    assert not sink.durable_on_write
    await sink.start()
    await sink.write(_records(4, start=2))
    # Until close the old, complete file is what readers see.
    assert len(await _replay(path)) == 2
    await sink.close()
    assert [m.value for m in await _replay(path)] == [r.value for r in _records(6)]
    assert pq.ParquetFile(path).num_row_groups == 3
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


@pytest.mark.parametrize("fmt", FORMATS)
async def test_truncated_files_are_reported(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"alerts.{fmt}"
    await _write(path, _records(10), _records(10, start=10))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])

    with pytest.raises(InvalidInput, match="truncated"):
        await _replay(path)
    # Appending would bury the damage in the middle of the file.
    with pytest.raises(InvalidInput, match="truncated"):
        await FileSink(path).start()
    assert list(tmp_path.iterdir()) == [path]


async def test_avro_damage_is_reported_after_the_intact_blocks(tmp_path: Path) -> None:
    path = tmp_path / "alerts.avro"
    await _write(path, _records(5), _records(5, start=5))
    path.write_bytes(path.read_bytes()[:-30])
    async with FileSource(path) as source:
        first = await source.fetch(5, 1.0)
        with pytest.raises(InvalidInput, match="after record 5"):
            await source.fetch(5, 1.0)
    assert [m.offset for m in first] == list(range(5))


async def test_jsonl_without_final_newline_is_accepted_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "hand.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \n{"a": 2}')
    got = await _replay(path)
    assert [(m.offset, m.value) for m in got] == [(0, b'{"a": 1}'), (1, b'{"a": 2}')]
    assert await FileSource(path).lag() == 2


@pytest.mark.parametrize("value", [b"not json", b'{"a":\n1}', b"{}\r"])
async def test_jsonl_sink_refuses_values_that_are_not_one_json_line(
    tmp_path: Path, value: bytes
) -> None:
    path = tmp_path / "out.jsonl"
    async with FileSink(path) as sink:
        with pytest.raises(InvalidInput, match="single-line JSON"):
            await sink.write([OutRecord(b"{}"), OutRecord(value)])
    assert path.read_bytes() == b""  # all or nothing


async def test_foreign_avro_and_parquet_files_with_a_value_field_replay(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "A", "fields": [{"name": "value", "type": "bytes"}]}
    avro = tmp_path / "foreign.avro"
    with avro.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), [{"value": b"x"}, {"value": b"y"}])
    parquet = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"value": [b"x", b"y"], "other": [1, 2]}), parquet)

    for path in (avro, parquet):
        got = await _replay(path)
        assert [(m.value, m.key, m.timestamp_ms) for m in got] == [
            (b"x", None, None),
            (b"y", None, None),
        ]
    # Parquet can be appended to (it is rewritten); a foreign Avro file cannot.
    await _write(parquet, [OutRecord(b"z")])
    assert [m.value for m in await _replay(parquet)] == [b"x", b"y", b"z"]
    with pytest.raises(InvalidInput, match="cannot append"):
        await FileSink(avro).start()


async def test_files_without_a_value_field_are_refused(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "A", "fields": [{"name": "payload", "type": "bytes"}]}
    avro = tmp_path / "other.avro"
    with avro.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), [{"payload": b"x"}])
    parquet = tmp_path / "other.parquet"
    pq.write_table(pa.table({"payload": [b"x"]}), parquet)
    for path in (avro, parquet):
        with pytest.raises(InvalidInput, match="'value'"):
            await FileSource(path).start()


async def test_missing_file_and_bad_offset_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await FileSource(tmp_path / "absent.jsonl").start()
    path = tmp_path / "alerts.jsonl"
    await _write(path, _records(1))
    offset_path_for(path).write_text("minus one")
    with pytest.raises(InvalidInput, match="non-negative integer"):
        await FileSource(path).start()


async def test_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "dir with space" / "alerts.avro"
    sink = open_sink(path.as_uri())
    assert isinstance(sink, FileSink)
    assert sink.path == path
    async with sink:  # creates the directory
        await sink.write(_records(2))
    for url in (path.as_uri(), str(path), f"file://localhost{path}"):
        source = open_source(url)
        assert isinstance(source, FileSource)
        assert source.path == path
    assert len(await _replay(path)) == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///data/alerts.csv", "must end in"),
        ("alerts", "must end in"),
        ("file://archive.example/data/alerts.avro", "remote host"),
        ("file:///data/alerts.avro?group=g", "not a query"),
        (" file:///data/alerts.avro", "whitespace"),
        ("", "empty"),
    ],
)
def test_bad_file_urls_are_rejected_clearly(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        open_source(url)
    with pytest.raises(InvalidInput, match=message):
        open_sink(url)


async def test_each_consumer_group_replays_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    async with FileSink(path) as sink:
        await sink.write([OutRecord(value=f"{i}".encode()) for i in range(4)])
    for group in ("classify", "reprocess"):
        async with open_source(f"file://{path}", consumer=group) as source:
            messages = await source.fetch(10, 1.0)
            await source.commit(messages)
        assert [m.value for m in messages] == [b"0", b"1", b"2", b"3"], group
        assert offset_path_for(path, group).read_text() == "4\n"
    async with open_source(f"file://{path}", consumer="classify") as source:
        assert await source.fetch(10, 0.1) == []  # its offset was kept
    with pytest.raises(InvalidInput, match="consumer-group name"):
        FileSource(path, group="../escape")
