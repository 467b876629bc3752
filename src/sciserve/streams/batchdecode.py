"""Decoding a batch of Rubin alerts at once, into light-curve columns.

Decoding Rubin alerts one by one with fastavro builds a Python dictionary
for every field of every detection, most of which the light-curve features
never read.  :class:`RubinBatchDecoder` instead reads a whole batch with
polars' native Avro reader, which decodes straight into columns, and hands
on only what the built-in features need: each alert's id and the time,
band, flux and flux error of its detections (and, for a filter, the plain
values at the paths it reads).

How a batch is framed
---------------------
Rubin messages are *schemaless* Avro after a 5-byte Confluent header, so
the messages of one schema version are wrapped into one Avro object
container: the writer schema in the header (named types written out in
full, as polars does not follow references), then all the messages in one
block.  The schema gets one extra top-level field at its end, a 16-byte
``fixed`` marker, and every message is followed by a marker of its own,
drawn at random for each read.  A row reads back its own marker only if
its message decoded from exactly its first to its last byte: a message with
trailing bytes, or one that ends early and makes the decoder read on into
the next, is caught, and no message can forge a marker it never sees.

What is not decoded here is decoded by the per-record codec
-----------------------------------------------------------
The batch reader never decides that a message is bad.  Whatever it cannot
vouch for (a header it does not like, a read that fails, a marker that does
not match, a missing id or light curve) it returns as ``None``, and the
caller decodes that message with :meth:`RubinCodec.decode
<sciserve.streams.codecs.RubinCodec.decode>`, as before: so a bad message
is dead-lettered with exactly the reason it always was.  A read that fails
is split in halves and retried, so one bad message costs its batch a few
extra reads, not the fast path.

Malformed messages that still decode
------------------------------------
Two kinds of bytes that keep every length right are read differently by
the two decoders: a union branch index outside the schema (fastavro refuses
indices past the last branch; polars reads any non-zero index of a nullable
union as its value) and a boolean byte other than 0 or 1 (fastavro: true;
polars: false).  Such a message decodes here where the codec would
dead-letter the first kind as ``invalid-avro`` (and a filter reading such a
boolean would see the other value).  Neither changes any value read from a
well-formed message.  ``decode: message``
in the spec keeps every message on the codec's path.

Some malformed messages make polars' reader panic (a length far beyond the
block, for instance); the panic is caught like any other failed read, but
Rust prints its message to standard error first.  The budget of reads per
batch bounds how many such messages one batch can print.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import DependencyMissing, InvalidInput, NotFound
from .schemas import LightCurveFields, RubinSchema, RubinSchemas, named_types

__all__ = ["LightCurveColumns", "RubinBatchDecoder", "batch_decoding_available"]

_CONFLUENT_HEADER: Final = struct.Struct(">bI")
_MARKER_FIELD: Final = "_sciserve_record_end"
_MARKER_SIZE: Final = 16
_SOURCE: Final = "diaSource"
_HISTORY: Final = "prvDiaSources"


def batch_decoding_available() -> bool:
    """Whether polars (the native Avro reader) is installed."""
    try:
        import polars  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class LightCurveColumns:
    """One decoded alert: its id and its light-curve points.

    Points are in the order the alert holds them (``diaSource`` first, then
    ``prvDiaSources``), without those lacking a time, band, flux or error:
    what :func:`~sciserve.streams.simulate.lightcurve_from_alert` makes of
    the same alert.
    """

    alert_id: int
    mjd: npt.NDArray[np.float64]
    band: npt.NDArray[np.str_]
    flux: npt.NDArray[np.float64]
    flux_err: npt.NDArray[np.float64]
    #: The values at the decoder's ``alert_paths``, nested as in the alert
    #: (``{"diaSource": {"band": "g"}}``; a null record on the way is
    #: ``None``); ``None`` when no paths were asked for.
    alert: dict[str, Any] | None = None


def _zigzag(value: int) -> bytes:
    """An Avro ``long``: zig-zag, then base-128 varint."""
    number = (value << 1) ^ (value >> 63)
    out = bytearray()
    while number & ~0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _inline(type_: Any, named: Mapping[str, Any], seen: frozenset[str]) -> Any:
    """``type_`` with every named reference replaced by its definition, as JSON."""
    if isinstance(type_, str):
        if type_ in named:
            if type_ in seen:
                raise InvalidInput(f"recursive type {type_} cannot be read into columns")
            return _inline(named[type_], named, seen | {type_})
        return type_
    if isinstance(type_, list):
        return [_inline(branch, named, seen) for branch in type_]
    if not isinstance(type_, Mapping):
        return type_
    # fastavro's parsed schemas carry private keys; polars need not see them.
    node = {k: v for k, v in type_.items() if not str(k).startswith("__")}
    name = node.get("name")
    inner = seen | {name} if isinstance(name, str) and node.get("type") == "record" else seen
    if "fields" in node:
        node["fields"] = [
            {**field, "type": _inline(field["type"], named, inner)} for field in node["fields"]
        ]
    for key in ("items", "values"):
        if key in node:
            node[key] = _inline(node[key], named, inner)
    if isinstance(node.get("type"), (Mapping, list)):
        node["type"] = _inline(node["type"], named, inner)
    return node


#: Avro types whose values polars and fastavro turn into equal Python values.
_PLAIN_TYPES: Final = frozenset({"boolean", "int", "long", "float", "double", "string"})


def _nullable(type_: Any) -> tuple[Any, bool]:
    """The type inside a ``["null", T]`` union (and whether it was one), or ``type_``."""
    if isinstance(type_, list):
        branches = [branch for branch in type_ if branch != "null"]
        if len(branches) == 1 and len(type_) == 2:
            return branches[0], True
    return type_, False


def _check_leaf(schema: Mapping[str, Any], path: Sequence[str]) -> None:
    """Raise :class:`InvalidInput` unless ``path`` leads through records to a plain value."""
    node: Any = schema
    for depth, name in enumerate(path):
        if not (isinstance(node, Mapping) and node.get("type") == "record"):
            raise InvalidInput(f"{'.'.join(path[:depth])} is not a record")
        fields = {field["name"]: field["type"] for field in node["fields"]}
        if name not in fields:
            raise InvalidInput(f"no field {'.'.join(path[: depth + 1])}")
        node, _ = _nullable(fields[name])
    if not isinstance(node, str) or node not in _PLAIN_TYPES:
        raise InvalidInput(f"{'.'.join(path)} is not a plain value ({node!r:.60})")


class _Layout:
    """One writer schema, ready for batch reads: the container header and the columns."""

    def __init__(self, writer: RubinSchema, alert_paths: Sequence[tuple[str, ...]]) -> None:
        if writer.lightcurve is None or not writer.id_field:
            raise InvalidInput(f"schema {writer.name} has no alert id or light curve")
        top = {field["name"] for field in writer.parsed["fields"]}
        if _MARKER_FIELD in top:
            raise InvalidInput(f"schema {writer.name} already has a field {_MARKER_FIELD}")
        named = named_types(writer.parsed)
        schema = _inline(writer.parsed, named, frozenset())
        for path in alert_paths:
            _check_leaf(schema, path)
        self.alert_paths = tuple(alert_paths)
        schema["fields"] = [
            *schema["fields"],
            {
                "name": _MARKER_FIELD,
                "type": {"type": "fixed", "name": "SciserveRecordEnd", "size": _MARKER_SIZE},
            },
        ]
        self.fields: LightCurveFields = writer.lightcurve
        # Like RubinCodec.alert_id: diaSourceId where the alert has one.
        self.id_field = "diaSourceId" if "diaSourceId" in top else "alertId"
        self.columns = [self.id_field, _SOURCE, *([_HISTORY] if _HISTORY in top else [])]
        self.columns += sorted({path[0] for path in alert_paths} - set(self.columns))
        self.columns.append(_MARKER_FIELD)
        self.sync = os.urandom(16)
        meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"null"}
        header = bytearray(b"Obj\x01")
        header += _zigzag(len(meta))
        for key, value in meta.items():
            header += _zigzag(len(key)) + key + _zigzag(len(value)) + value
        header += _zigzag(0) + self.sync
        self.header = bytes(header)


class RubinBatchDecoder:
    """Decodes batches of Confluent-framed Rubin alerts into light-curve columns.

    ``schemas`` is shared with the per-record codec, so each schema is
    loaded once; ``max_bytes`` is the codec's limit (larger messages are
    left to the codec, which refuses them).  ``alert_paths`` (a filter's
    ``alert.diaSource.band``, as ``("diaSource", "band")``) are read too and
    handed on as each alert's :attr:`LightCurveColumns.alert`; a schema in
    which one of them is not a plain value (a record, a list, a timestamp)
    is left to the codec.  Raises :class:`~sciserve.errors.DependencyMissing`
    without polars.
    """

    def __init__(
        self,
        schemas: RubinSchemas,
        *,
        max_bytes: int,
        alert_paths: Sequence[tuple[str, ...]] = (),
    ) -> None:
        try:
            import polars
            import pyarrow.compute  # noqa: F401  (imported now, not on the first batch)
        except ImportError as exc:
            raise DependencyMissing(
                "batch decoding of alerts needs polars and pyarrow: pip install 'sciserve[streams]'"
            ) from exc
        self._pl = polars
        self._schemas = schemas
        self._max_bytes = max_bytes
        self._alert_paths = tuple(sorted(alert_paths))
        # None: a schema id this reader leaves to the codec.
        self._layouts: dict[int, _Layout | None] = {}

    def warm(self, schema_id: int) -> None:
        """Load ``schema_id`` and build its container header now rather than
        on the first message of that schema (worker start-up, not a batch)."""
        self._schema_id(_CONFLUENT_HEADER.pack(0, schema_id) + b"\x00")

    def decode(self, values: Sequence[bytes]) -> list[LightCurveColumns | None]:
        """One entry per value: its light curve, or ``None`` to leave it to the codec."""
        out: list[LightCurveColumns | None] = [None] * len(values)
        groups: dict[int, list[int]] = {}
        for index, value in enumerate(values):
            schema_id = self._schema_id(value)
            if schema_id is not None:
                groups.setdefault(schema_id, []).append(index)
        for schema_id, indices in groups.items():
            layout = self._layouts[schema_id]
            assert layout is not None
            self._read(layout, values, indices, out)
        return out

    def _schema_id(self, value: bytes) -> int | None:
        """The schema id of a well-framed message of a batchable schema, else ``None``."""
        if not _CONFLUENT_HEADER.size < len(value) <= self._max_bytes or value[0] != 0:
            return None
        schema_id: int = _CONFLUENT_HEADER.unpack_from(value)[1]
        if schema_id not in self._layouts:
            try:
                writer = self._schemas.by_id(schema_id)
            except (NotFound, InvalidInput):
                return None  # not remembered: the codec says why, every time
            try:
                self._layouts[schema_id] = _Layout(writer, self._alert_paths)
            except (InvalidInput, KeyError, TypeError, ValueError):
                # A schema this reader cannot frame (a registry's odd one):
                # its messages take the codec's path, which is always right.
                self._layouts[schema_id] = None
        return schema_id if self._layouts[schema_id] is not None else None

    def _read(
        self,
        layout: _Layout,
        values: Sequence[bytes],
        indices: Sequence[int],
        out: list[LightCurveColumns | None],
    ) -> None:
        """Read ``values[indices]``, in as few containers as the messages allow.

        A read that fails is split in halves; a row whose marker does not
        match is left to the codec and the rows after it (read from an
        unknown position) are read again.  Past a budget of reads (a batch
        full of bad messages) the rest is left to the codec, so hostile
        input costs no more than decoding it one message at a time.
        """
        budget = 8 + 4 * max(1, len(indices)).bit_length()
        pending = [list(indices)]
        while pending and budget > 0:
            budget -= 1
            chunk = pending.pop()
            try:
                curves, verified = self._read_chunk(layout, values, chunk)
            except (Exception, self._pl.exceptions.PanicException):
                # Some message in here is malformed: find it by halves;
                # alone, it goes to the codec.
                if len(chunk) > 1:
                    middle = len(chunk) // 2
                    pending += (chunk[middle:], chunk[:middle])
                continue
            for index, curve in zip(chunk[:verified], curves, strict=False):
                out[index] = curve
            if verified + 1 < len(chunk):
                pending.append(chunk[verified + 1 :])

    def _read_chunk(
        self, layout: _Layout, values: Sequence[bytes], chunk: Sequence[int]
    ) -> tuple[list[LightCurveColumns | None], int]:
        """The light curves of ``values[chunk]`` read as one Avro block, and how
        many leading rows ended exactly at their marker (the rest are unsure)."""
        markers = os.urandom(_MARKER_SIZE * len(chunk))
        size = sum(len(values[index]) for index in chunk)
        size += (_MARKER_SIZE - _CONFLUENT_HEADER.size) * len(chunk)
        # One copy of the batch: header, block count and size, the messages
        # each with its marker, the sync marker.
        parts: list[bytes | memoryview] = [layout.header, _zigzag(len(chunk)), _zigzag(size)]
        for position, index in enumerate(chunk):
            parts.append(memoryview(values[index])[_CONFLUENT_HEADER.size :])
            parts.append(markers[position * _MARKER_SIZE : (position + 1) * _MARKER_SIZE])
        parts.append(layout.sync)
        container = b"".join(parts)
        frame = self._pl.read_avro(io.BytesIO(container), columns=layout.columns)
        if frame.height != len(chunk):
            raise ValueError(f"{frame.height} rows for {len(chunk)} records")
        read = frame.get_column(_MARKER_FIELD).to_list()
        verified = 0
        while (
            verified < len(chunk)
            and read[verified] == markers[verified * _MARKER_SIZE : (verified + 1) * _MARKER_SIZE]
        ):
            verified += 1
        return self._curves(layout, frame.head(verified)), verified

    def _curves(self, layout: _Layout, frame: Any) -> list[LightCurveColumns | None]:
        """The light curves of a decoded frame; ``None`` for rows to leave to the codec."""
        import pyarrow as pa
        import pyarrow.compute as pc

        pl = self._pl
        fields = layout.fields
        ids = frame.get_column(layout.id_field).to_list()
        source = frame.get_column(_SOURCE)
        # Points: each row's diaSource, then its history, in one flat table.
        flat = pl.DataFrame({_SOURCE: source}).unnest(_SOURCE).select(fields.point)
        counts = np.ones(frame.height, dtype=np.int64)
        present = ~source.is_null().to_numpy()
        if _HISTORY in frame.columns:
            history = frame.get_column(_HISTORY).rechunk().to_arrow()
            if isinstance(history, pa.ChunkedArray):
                history = history.combine_chunks()
            lengths = pc.fill_null(pc.list_value_length(history), 0).to_numpy(zero_copy_only=False)
            items = pl.from_arrow(pc.list_flatten(history))
            assert isinstance(items, pl.Series)
            previous = pl.DataFrame({_HISTORY: items}).unnest(_HISTORY).select(fields.point)
            counts = counts + lengths
            # Row i's points: its diaSource, then its lengths[i] earlier detections.
            order = np.empty(len(flat) + len(previous), dtype=np.int64)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            order[starts] = np.arange(len(flat))
            history_rows = np.ones(len(order), dtype=bool)
            history_rows[starts] = False
            order[history_rows] = len(flat) + np.arange(len(previous))
            flat = pl.concat([flat, previous], how="vertical_relaxed")[order]
        complete = (~flat.select(pl.any_horizontal(pl.all().is_null())).to_series()).to_numpy()
        time = flat.get_column(fields.time).cast(pl.Float64).to_numpy()
        band = np.asarray(flat.get_column(fields.band).fill_null("").to_list(), dtype=np.str_)
        flux = flat.get_column(fields.flux).cast(pl.Float64).to_numpy()
        flux_err = flat.get_column(fields.flux_err).cast(pl.Float64).to_numpy()
        alerts = self._alerts(layout, frame)
        curves: list[LightCurveColumns | None] = []
        start = 0
        for row in range(frame.height):
            end = start + int(counts[row])
            alert_id = ids[row]
            if not present[row] or not isinstance(alert_id, int):
                curves.append(None)  # the codec decides about this one
            else:
                keep = complete[start:end]
                curves.append(
                    LightCurveColumns(
                        alert_id=alert_id,
                        mjd=time[start:end][keep],
                        band=band[start:end][keep],
                        flux=flux[start:end][keep],
                        flux_err=flux_err[start:end][keep],
                        alert=alerts[row] if alerts is not None else None,
                    )
                )
            start = end
        return curves

    def _alerts(self, layout: _Layout, frame: Any) -> list[dict[str, Any]] | None:
        """Per row, the values at the alert paths, nested as the codec nests them."""
        if not layout.alert_paths:
            return None
        alerts: list[dict[str, Any]] = [{} for _ in range(frame.height)]
        for path in layout.alert_paths:
            series = frame.get_column(path[0])
            # Where a record on the way is null, the codec gives None there.
            nulls = []
            for name in path[1:]:
                nulls.append(series.is_null().to_list())
                series = series.struct.field(name)
            values = series.to_list()
            for row, alert in enumerate(alerts):
                node = alert
                for depth, name in enumerate(path[:-1]):
                    if nulls[depth][row]:
                        node[name] = None
                        break
                    child = node.setdefault(name, {})
                    if child is None:
                        break
                    node = child
                else:
                    node[path[-1]] = values[row]
        return alerts
