"""Replayable stream files: JSON Lines, Avro containers and Parquet.

A :class:`FileSink` writes what a :class:`FileSource` replays exactly, so a
simulated or recorded stream can be fed to a pipeline again.  The format
follows the suffix:

``.jsonl``
    One JSON document per line; a message's value is the line without its
    line break (blank lines are skipped).  Keys, headers and timestamps are
    not stored.
``.avro``
    An Avro object container of :data:`AVRO_SCHEMA` records: ``value``
    (bytes), ``key`` (bytes or null), ``timestamp_ms`` (long or null) and
    ``headers`` (array of ``{name, value}``).  Any container whose records
    have a bytes ``value`` field can be replayed.
``.parquet``
    Columns ``value`` (binary), ``key`` (binary), ``timestamp_ms`` (int64)
    and ``headers`` (list of ``struct<name: string, value: binary>``); only
    ``value`` is required when reading.

A message's offset is its record index.  :meth:`FileSource.commit` stores
the next index to replay in a sidecar file, ``<path>.<group>.offset``, replaced
atomically, so a restarted replay resumes after the last commit.  The sink
stamps records with the time they were written, as a broker would.

JSON Lines and Avro records are flushed and fsynced before
:meth:`FileSink.write` returns.  A Parquet file cannot be appended to once
its footer is written, so the Parquet sink collects row groups in a hidden
``.<name>.partial`` file that :meth:`FileSink.close` finishes and renames
over ``path``: until then ``path`` keeps its previous content, and
:attr:`FileSink.durable_on_write` is ``False``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from ..errors import DependencyMissing, InvalidInput, NotFound
from .base import Message, OutRecord, Sink, Source

__all__ = [
    "AVRO_SCHEMA",
    "FileSink",
    "FileSource",
    "count_records",
    "offset_path_for",
    "read_messages",
]

#: The record every Avro stream file holds.
AVRO_SCHEMA: Final[dict[str, Any]] = {
    "type": "record",
    "name": "StreamRecord",
    "namespace": "sciserve.streams",
    "fields": [
        {"name": "value", "type": "bytes"},
        {"name": "key", "type": ["null", "bytes"], "default": None},
        {"name": "timestamp_ms", "type": ["null", "long"], "default": None},
        {
            "name": "headers",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Header",
                    "fields": [
                        {"name": "name", "type": "string"},
                        {"name": "value", "type": "bytes"},
                    ],
                },
            },
            "default": [],
        },
    ],
}

_AVRO_FIELDS = frozenset(field["name"] for field in AVRO_SCHEMA["fields"])
_SYNC_SIZE = 16
#: A group name becomes part of a file name: no separators, no dot-dot.
_GROUP_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_FORMATS = {".jsonl": "jsonl", ".avro": "avro", ".parquet": "parquet"}
#: Errors fastavro raises for a cut-off or damaged container.
_AVRO_DAMAGE = (ValueError, EOFError, IndexError, OverflowError)
#: Rows per Arrow batch when reading Parquet.
_PARQUET_BATCH = 1024


def offset_path_for(path: str | os.PathLike[str], group: str | None = None) -> Path:
    """The sidecar file in which ``group``'s replay of ``path`` keeps its committed offset."""
    path = Path(path)
    if group is None:
        return path.with_name(f"{path.name}.offset")
    if not _GROUP_RE.fullmatch(group):
        raise InvalidInput(f"{group!r} is not a consumer-group name (letters, digits, ._-)")
    return path.with_name(f"{path.name}.{group}.offset")


def read_messages(path: str | os.PathLike[str], fmt: str) -> Iterator[Message]:
    """Every record of the stream file ``path`` in format ``fmt`` (``jsonl``,
    ``avro`` or ``parquet``); a record's offset is its index in the file."""
    path = Path(path)
    if fmt == "jsonl":
        return _read_jsonl(path, 0, path.name)
    if fmt == "avro":
        return _read_avro(path, 0, path.name)
    return _read_parquet(path, 0, path.name)


class FileSource(Source):
    """Replay a ``.jsonl``, ``.avro`` or ``.parquet`` stream file.

    Replay starts at the offset stored in ``offset_path`` (default
    ``<path>.<group>.offset``, or ``<path>.offset`` without a group), or at
    the first record: each group replays the whole file once.  A damaged file raises
    :class:`~sciserve.errors.InvalidInput` once the replay reaches the damage.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        group: str | None = None,
        offset_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.format = _format_of(self.path)
        self.offset_path = Path(offset_path) if offset_path else offset_path_for(self.path, group)
        self._records: Iterator[Message] | None = None
        self._reader: Generator[Message, None, None] | None = None
        self._committed = 0
        self._total: int | None = None
        self._exhausted = False
        # A generator must not run on two threads at once.
        self._lock = asyncio.Lock()

    @property
    def committed(self) -> int:
        """The offset a restarted replay would start from."""
        return self._committed

    @property
    def exhausted(self) -> bool:
        """``True`` once every record of the file has been fetched."""
        return self._exhausted

    async def start(self) -> None:
        """Read the committed offset and open the file."""
        if self._records is not None:
            return
        if not self.path.is_file():
            raise NotFound(f"no stream file {self.path}")
        self._committed = await asyncio.to_thread(_read_offset, self.offset_path)
        reader = {"jsonl": _read_jsonl, "avro": _read_avro, "parquet": _read_parquet}
        records = reader[self.format](self.path, self._committed, str(self.path))
        # Run the reader up to its first record so that an unreadable file is
        # reported here rather than by the first fetch.
        first = await asyncio.to_thread(next, records, None)
        self._reader = records
        self._records = itertools.chain(() if first is None else (first,), records)
        self._exhausted = first is None

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Return the next ``max_messages`` records; at the end of the file,
        wait ``timeout`` seconds and return ``[]``."""
        if self._records is None:
            raise InvalidInput("the file source is not started")
        records = self._records
        batch: list[Message] = []
        if not self._exhausted:
            count = max(1, max_messages)
            async with self._lock:
                batch = await asyncio.to_thread(lambda: list(itertools.islice(records, count)))
            self._exhausted = len(batch) < count
        if not batch:
            await asyncio.sleep(max(timeout, 0.0))
        return batch

    async def commit(self, messages: Sequence[Message]) -> None:
        """Store the offset after the last of ``messages`` in the sidecar file.

        As with Kafka, this also commits every earlier record.
        """
        if not messages:
            return
        if any(m.offset is None for m in messages):
            raise InvalidInput("cannot commit a message without an offset")
        end = max(m.offset for m in messages if m.offset is not None) + 1
        if end > self._committed:
            await asyncio.to_thread(_write_offset, self.offset_path, end)
            self._committed = end

    async def lag(self) -> int | None:
        """Records after the committed offset (the file is counted once)."""
        if self._total is None:
            self._total = await asyncio.to_thread(count_records, self.path, self.format)
        return max(0, self._total - self._committed)

    async def close(self) -> None:
        """Close the file; the sidecar keeps the committed offset."""
        reader, self._reader, self._records = self._reader, None, None
        if reader is not None:
            async with self._lock:
                reader.close()


class FileSink(Sink):
    """Append records to a ``.jsonl``, ``.avro`` or ``.parquet`` stream file.

    Parquet output is buffered into row groups of about ``row_group_rows``
    rows or ``row_group_bytes`` bytes of values, and only finished by
    :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        row_group_rows: int = 10_000,
        row_group_bytes: int = 64 * 2**20,
    ) -> None:
        self.path = Path(path)
        self.format = _format_of(self.path)
        self.durable_on_write = self.format != "parquet"
        self._writer: _Writer | None = None
        self._row_group = (row_group_rows, row_group_bytes)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open (or create) the file, refusing one whose end is damaged."""
        if self._writer is not None:
            return
        writer: _Writer
        if self.format == "jsonl":
            writer = _JsonlWriter(self.path)
        elif self.format == "avro":
            writer = _AvroWriter(self.path)
        else:
            writer = _ParquetWriter(self.path, *self._row_group)
        await asyncio.to_thread(writer.open)
        self._writer = writer

    async def write(self, records: Sequence[OutRecord]) -> None:
        """Append ``records``, stamped with the current time."""
        if self._writer is None:
            raise InvalidInput("the file sink is not started")
        writer = self._writer
        if records:
            stamp = time.time_ns() // 1_000_000
            async with self._lock:
                await asyncio.to_thread(writer.write, records, stamp)

    async def close(self) -> None:
        """Flush and close the file (and finish a Parquet file)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            async with self._lock:
                await asyncio.to_thread(writer.close)


# ------------------------------------------------------------------ helpers


def _format_of(path: Path) -> str:
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise InvalidInput(
            f"{path}: stream files must end in {', '.join(_FORMATS)}, not {path.suffix!r}"
        ) from None


def _read_offset(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise InvalidInput(f"cannot read offset file {path}: {exc}") from exc
    if not text.isdigit():
        raise InvalidInput(f"offset file {path} must hold one non-negative integer, not {text!r}")
    return int(text)


def _write_offset(path: Path, offset: int) -> None:
    """Replace ``path`` atomically: a crash leaves the old or the new offset."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w") as fh:
        fh.write(f"{offset}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a new or renamed directory entry survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _headers_of(raw: Any) -> tuple[tuple[str, bytes], ...]:
    return tuple((item["name"], item["value"]) for item in raw or ())


def _message(row: dict[str, Any], index: int, topic: str) -> Message:
    return Message(
        value=row["value"],
        key=row.get("key"),
        topic=topic,
        offset=index,
        timestamp_ms=row.get("timestamp_ms"),
        headers=_headers_of(row.get("headers")),
    )


def _row(record: OutRecord, stamp: int) -> dict[str, Any]:
    return {
        "value": record.value,
        "key": record.key,
        "timestamp_ms": stamp,
        "headers": [{"name": name, "value": value} for name, value in record.headers],
    }


def count_records(path: Path, fmt: str) -> int:
    """How many records the stream file ``path`` holds, without decoding
    them (Avro: block by block; Parquet: from its footer)."""
    if fmt == "parquet":
        with _open_parquet(path) as parquet:
            return int(parquet.metadata.num_rows)
    if fmt == "avro":
        fastavro = _import_fastavro()
        with path.open("rb") as fh:
            try:
                return sum(block.num_records for block in fastavro.block_reader(fh))
            except _AVRO_DAMAGE as exc:
                raise InvalidInput(f"{path}: truncated or damaged Avro file ({exc})") from exc
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


# -------------------------------------------------------------- JSON Lines


def _read_jsonl(path: Path, start: int, topic: str) -> Generator[Message, None, None]:
    with path.open("rb") as fh:
        index = 0
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n") and not _is_json(line):
                raise InvalidInput(
                    f"{path}: line {number} is cut off (truncated file?): {line[:60]!r}"
                )
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            if index >= start:
                yield Message(value=value, topic=topic, offset=index)
            index += 1


def _is_json(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class _Writer(Protocol):
    def open(self) -> None: ...
    def write(self, records: Sequence[OutRecord], stamp: int) -> None: ...
    def close(self) -> None: ...


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fh = self.path.open("a+b")
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell():
            self._fh.seek(-1, os.SEEK_END)
            if self._fh.read(1) != b"\n":
                self._fh.close()
                raise InvalidInput(
                    f"{self.path} ends in an incomplete line (truncated?); "
                    "repair it before appending"
                )
        if created:
            _fsync_directory(self.path.parent)

    def write(self, records: Sequence[OutRecord], stamp: int) -> None:
        # Check the whole batch first so a bad record writes nothing.
        for record in records:
            if b"\n" in record.value or b"\r" in record.value or not _is_json(record.value):
                raise InvalidInput(
                    f"{self.path}: JSON Lines values must be single-line JSON, "
                    f"not {record.value[:60]!r}"
                )
        self._fh.write(b"".join(record.value + b"\n" for record in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# -------------------------------------------------------------------- Avro


def _import_fastavro() -> Any:
    try:
        import fastavro
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DependencyMissing(
            "Avro stream files need fastavro: pip install 'sciserve[streams]'"
        ) from exc
    return fastavro


def _avro_fields(path: Path, schema: Any) -> dict[str, Any]:
    """The writer schema's fields by name, checking there is a bytes ``value``."""
    fields = schema.get("fields", ()) if isinstance(schema, dict) else ()
    by_name = {field["name"]: field["type"] for field in fields}
    if by_name.get("value") != "bytes":
        raise InvalidInput(f"{path}: Avro stream records need a bytes field 'value'")
    return by_name


def _read_avro(path: Path, start: int, topic: str) -> Generator[Message, None, None]:
    fastavro = _import_fastavro()
    with path.open("rb") as fh:
        index = 0
        try:
            blocks = fastavro.block_reader(fh)
            _avro_fields(path, blocks.writer_schema)
            for block in blocks:
                if index + block.num_records <= start:
                    index += block.num_records  # skipped without decoding
                    continue
                for record in block:
                    if index >= start:
                        yield _message(record, index, topic)
                    index += 1
        except _AVRO_DAMAGE as exc:
            raise InvalidInput(
                f"{path}: truncated or damaged Avro file after record {index} ({exc})"
            ) from exc


class _AvroWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self._writer: Any = None

    def open(self) -> None:
        fastavro = _import_fastavro()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        if not created and self.path.stat().st_size:
            self._check_tail(fastavro)
        # "a+b": fastavro appends to an existing container after reading its
        # header, and writes a new header into an empty file.
        self._fh = self.path.open("a+b")
        try:
            self._writer = fastavro.write.Writer(self._fh, fastavro.parse_schema(AVRO_SCHEMA))
            self._writer.flush()
            os.fsync(self._fh.fileno())
        except BaseException:
            self._fh.close()
            raise
        if created:
            _fsync_directory(self.path.parent)

    def _check_tail(self, fastavro: Any) -> None:
        """A complete container ends in its sync marker; appending after a
        cut-off block would hide every later record from readers."""
        with self.path.open("rb") as fh:
            try:
                reader = fastavro.reader(fh)
            except _AVRO_DAMAGE as exc:
                raise InvalidInput(f"{self.path} is not an Avro container ({exc})") from exc
            if set(_avro_fields(self.path, reader.writer_schema)) != _AVRO_FIELDS:
                raise InvalidInput(
                    f"{self.path} holds other records than sciserve stream files; "
                    "cannot append to it"
                )
            # The header ends with the container's 16-byte sync marker.
            header_end = fh.tell()
            fh.seek(header_end - _SYNC_SIZE)
            sync = fh.read(_SYNC_SIZE)
            fh.seek(0, os.SEEK_END)
            if fh.tell() > header_end:
                fh.seek(-len(sync), os.SEEK_END)
                if fh.read() != sync:
                    raise InvalidInput(
                        f"{self.path} ends in an incomplete block (truncated?); "
                        "repair it before appending"
                    )

    def write(self, records: Sequence[OutRecord], stamp: int) -> None:
        for record in records:
            self._writer.write(_row(record, stamp))
        self._writer.flush()  # ends the block and flushes the file object
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._writer.flush()
        self._fh.close()


# ----------------------------------------------------------------- Parquet


def _import_parquet() -> Any:
    try:
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DependencyMissing(
            "Parquet stream files need pyarrow: pip install 'sciserve[streams]'"
        ) from exc
    return pyarrow.parquet


def _parquet_schema() -> Any:
    import pyarrow as pa

    header = pa.struct([("name", pa.string()), ("value", pa.binary())])
    return pa.schema(
        [
            pa.field("value", pa.binary(), nullable=False),
            pa.field("key", pa.binary()),
            pa.field("timestamp_ms", pa.int64()),
            pa.field("headers", pa.list_(header)),
        ]
    )


def _open_parquet(path: Path) -> Any:
    pq = _import_parquet()
    import pyarrow as pa

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(
            f"{path} is not a complete Parquet file (truncated, or its writer "
            f"was never closed): {exc}"
        ) from exc
    if "value" not in parquet.schema_arrow.names:
        parquet.close()
        raise InvalidInput(f"{path}: Parquet stream files need a binary column 'value'")
    return parquet


def _parquet_rows(parquet: Any, groups: list[int]) -> Iterator[dict[str, Any]]:
    present = parquet.schema_arrow.names
    columns = [c for c in ("value", "key", "timestamp_ms", "headers") if c in present]
    for batch in parquet.iter_batches(
        batch_size=_PARQUET_BATCH, row_groups=groups, columns=columns
    ):
        yield from batch.to_pylist()


def _read_parquet(path: Path, start: int, topic: str) -> Generator[Message, None, None]:
    with _open_parquet(path) as parquet:
        # Whole row groups before ``start`` are skipped without reading them.
        index = 0
        groups: list[int] = []
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if not groups and index + rows <= start:
                index += rows
            else:
                groups.append(group)
        for row in _parquet_rows(parquet, groups):
            if index >= start:
                yield _message(row, index, topic)
            index += 1


class _ParquetWriter:
    def __init__(self, path: Path, group_rows: int, group_bytes: int) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self._group_rows = max(1, group_rows)
        self._group_bytes = max(1, group_bytes)
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self._writer: Any = None

    def open(self) -> None:
        pq = _import_parquet()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.partial, _parquet_schema())
        if self.path.exists():
            # Parquet cannot grow in place: the new file starts as a copy.
            try:
                with _open_parquet(self.path) as existing:
                    for group in range(existing.num_row_groups):
                        # Files from elsewhere may lack the optional columns.
                        self._rows = [
                            {"key": None, "timestamp_ms": None, "headers": [], **row}
                            for row in _parquet_rows(existing, [group])
                        ]
                        self._flush_group()
            except BaseException:
                self._writer.close()
                self.partial.unlink(missing_ok=True)
                raise

    def write(self, records: Sequence[OutRecord], stamp: int) -> None:
        for record in records:
            self._rows.append(_row(record, stamp))
            self._bytes += len(record.value)
            if len(self._rows) >= self._group_rows or self._bytes >= self._group_bytes:
                self._flush_group()

    def _flush_group(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=_parquet_schema()))
        self._rows, self._bytes = [], 0

    def close(self) -> None:
        self._flush_group()
        self._writer.close()
        with self.partial.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.partial, self.path)
        _fsync_directory(self.path.parent)
