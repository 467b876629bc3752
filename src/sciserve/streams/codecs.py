"""Alert codecs: message bytes to alert dictionaries and back.

Three formats are understood:

``lsst`` (:class:`RubinCodec`)
    Rubin/LSST alerts in the Confluent wire format: a zero byte, the schema
    id as four big-endian bytes, then the alert as *schemaless* Avro.  Every
    schema version lsst-alert-packet ships is recognised by its id.
``ztf`` (:class:`ZtfCodec`)
    ZTF alerts: each message is a self-describing Avro container file
    holding one alert, with its schema in the header.
``json`` (:class:`JsonCodec`)
    One UTF-8 JSON object per message.

A message that cannot be decoded raises :class:`DecodeError`, whose
``reason`` (``truncated``, ``unknown-schema``, …) says why in a word a
dead-letter sink can record and count.  No other exception escapes
``decode``, as a stream is untrusted input, with one exception that is not
the message's fault: :class:`~sciserve.errors.Unavailable` when a configured
schema registry cannot be reached.  Such a message should be retried, not
dead-lettered.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

from ..errors import InvalidInput, NotFound
from .base import error_text
from .schemas import RubinSchema, RubinSchemas, reader_schema

try:
    import fastavro
    from fastavro.schema import SchemaParseException
except ImportError as exc:  # pragma: no cover - depends on the installation
    from ..errors import DependencyMissing

    raise DependencyMissing("alert codecs need fastavro: pip install 'sciserve[streams]'") from exc

__all__ = [
    "DEFAULT_MAX_BYTES",
    "AlertCodec",
    "DecodeError",
    "JsonCodec",
    "Reason",
    "RubinCodec",
    "ZtfCodec",
    "codec_for",
]

#: Largest message decoded by default.  A Rubin alert with its three image
#: cutouts and a year of history is well under 1 MiB.
DEFAULT_MAX_BYTES: Final = 16 * 2**20

Reason = Literal[
    "empty",
    "oversized",
    "bad-magic",
    "unknown-schema",
    "truncated",
    "trailing-bytes",
    "invalid-avro",
    "not-one-record",
    "not-utf8",
    "not-json",
    "not-an-object",
    "no-alert-id",
]

_CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER = struct.Struct(">bI")
_CONTAINER_MAGIC = b"Obj\x01"


class DecodeError(InvalidInput):
    """A message is not a valid alert; ``reason`` names the problem in one word."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class AlertCodec(Protocol):
    """What the stream pipeline needs from a codec."""

    @property
    def name(self) -> str:
        """The name :func:`codec_for` knows the codec by."""
        ...

    def decode(self, value: bytes) -> dict[str, Any]:
        """The alert in ``value``; :class:`DecodeError` if there is none."""
        ...

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """The message bytes for ``alert``."""
        ...

    def alert_id(self, alert: Mapping[str, Any]) -> int:
        """The identifier of a decoded alert; :class:`DecodeError` if it has none."""
        ...


def codec_for(name: str, **options: Any) -> AlertCodec:
    """The codec called ``name``: ``lsst``, ``lsst:11.1``, ``ztf`` or ``json``.

    ``options`` go to the codec's constructor (``fields``, ``max_bytes``,
    ``id_field``, …).  ``lsst:M.m`` decodes every version alike and encodes
    with ``M.m``; plain ``lsst`` encodes with the newest shipped schema.
    """
    family, _, version = name.partition(":")
    if family == "lsst":
        return RubinCodec(name, **options)
    if version:
        raise InvalidInput(f"codec {name!r}: only lsst takes a version")
    if family == "ztf":
        return ZtfCodec(**options)
    if family == "json":
        return JsonCodec(**options)
    raise InvalidInput(f"unknown alert codec {name!r}; choose lsst, lsst:M.m, ztf or json")


# -- shared checks ------------------------------------------------------------


def _check_size(value: bytes, max_bytes: int) -> None:
    if not value:
        raise DecodeError("empty", "the message is empty")
    if len(value) > max_bytes:
        raise DecodeError("oversized", f"{len(value)} bytes, more than the limit of {max_bytes}")


def _integer_id(alert: Mapping[str, Any], path: str) -> int:
    value: Any = alert
    for step in path.split("."):
        value = value.get(step) if isinstance(value, Mapping) else None
    # bool is an int to Python, never an identifier to a survey.
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError("no-alert-id", f"the alert has no integer {path}")
    return value


def _read_avro(reader: Any, what: str) -> Any:
    """Run a fastavro read, turning every way it can fail into a :class:`DecodeError`."""
    try:
        return reader()
    except EOFError as exc:
        detail = f" ({_detail(exc)})" if str(exc).strip() else ""
        raise DecodeError("truncated", f"{what} ends early{detail}") from exc
    except Exception as exc:
        # Arbitrary bytes reach fastavro's C reader here, and a wrong union
        # index, a negative length, invalid UTF-8 or a mangled container
        # header each surface as a different (partly private) exception
        # type.  All mean the same thing: this message is malformed.
        raise DecodeError("invalid-avro", f"{what} is not valid Avro ({_detail(exc)})") from exc


def _detail(exc: BaseException) -> str:
    """What fastavro said, without its stream reprs; its exception type if nothing."""
    text = error_text(exc)
    # "cannot read float from the BytesIO": the BytesIO is this message.
    return text.replace(" from the BytesIO", "").replace("the BytesIO", "the message")


def _parse_record(schema: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parsed = fastavro.parse_schema(dict(schema))
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise InvalidInput("an alert schema must be an Avro record")
    return parsed


# -- Rubin -------------------------------------------------------------------


class RubinCodec:
    """Rubin alerts in the Confluent wire format, any shipped schema version.

    ``schema`` (``lsst`` or ``lsst:M.m``) is the version :meth:`encode`
    writes.  ``fields`` selects a projection: only those fields are decoded
    (paths as for :func:`~sciserve.streams.schemas.reader_schema`), or
    ``"lightcurve"`` for the ids and every light-curve point, named as each
    schema version names them.  The alert-id field is always kept.  Paths
    are checked against ``schema``; a version without one of them simply
    decodes without it.

    Pass a shared :class:`~sciserve.streams.schemas.RubinSchemas` (e.g. one
    with a schema registry) as ``schemas``.
    """

    def __init__(
        self,
        schema: str = "lsst",
        *,
        fields: Sequence[str] | Literal["lightcurve"] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        schemas: RubinSchemas | None = None,
    ) -> None:
        if isinstance(fields, str) and fields != "lightcurve":
            raise InvalidInput(f"fields must be a list of paths or 'lightcurve', not {fields!r}")
        self._schemas = schemas if schemas is not None else RubinSchemas()
        self._schema = self._schemas.get(schema)
        self._fields = fields
        self.max_bytes = max_bytes
        # Reader schemas per writer schema id; None means "decode everything".
        self._readers: dict[int, dict[str, Any] | None] = {}
        self._header = _CONFLUENT_HEADER.pack(_CONFLUENT_MAGIC, self._schema.schema_id)
        self._readers[self._schema.schema_id] = self._reader(self._schema, strict=True)

    @property
    def name(self) -> str:
        """``lsst:M.m``: the schema this codec encodes with."""
        return self._schema.name

    @property
    def schema(self) -> RubinSchema:
        """The schema :meth:`encode` writes."""
        return self._schema

    @property
    def schemas(self) -> RubinSchemas:
        """The schemas this codec decodes with (shared with a batch decoder)."""
        return self._schemas

    @property
    def fields(self) -> Sequence[str] | Literal["lightcurve"] | None:
        """The projection chosen (``None``: whole alerts)."""
        return self._fields

    def decode(self, value: bytes) -> dict[str, Any]:
        """The alert in a Confluent-framed message (projected, if fields were chosen)."""
        _check_size(value, self.max_bytes)
        if value[0] != _CONFLUENT_MAGIC:
            raise DecodeError("bad-magic", f"first byte is {value[0]}, not the Confluent 0")
        if len(value) < _CONFLUENT_HEADER.size:
            raise DecodeError("truncated", f"{len(value)} bytes cannot hold the 5-byte header")
        _, schema_id = _CONFLUENT_HEADER.unpack_from(value)
        writer = self._writer(schema_id)
        reader = self._readers.get(schema_id)
        if schema_id not in self._readers:
            reader = self._readers[schema_id] = self._reader(writer, strict=False)
        stream = io.BytesIO(value)
        stream.seek(_CONFLUENT_HEADER.size)
        alert = _read_avro(
            lambda: fastavro.schemaless_reader(stream, writer.parsed, reader),
            f"alert of schema {schema_id}",
        )
        if stream.tell() != len(value):
            raise DecodeError(
                "trailing-bytes",
                f"{len(value) - stream.tell()} bytes follow the alert of schema {schema_id}",
            )
        if not isinstance(alert, dict):
            raise DecodeError("invalid-avro", f"schema {schema_id} does not describe a record")
        return alert

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """``alert`` in the wire format of this codec's schema version."""
        stream = io.BytesIO()
        stream.write(self._header)
        try:
            fastavro.schemaless_writer(stream, self._schema.parsed, dict(alert))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidInput(f"alert does not fit {self.name}: {exc}") from exc
        return stream.getvalue()

    def alert_id(self, alert: Mapping[str, Any]) -> int:
        """``diaSourceId`` (schema 8.0 on) or ``alertId`` (before)."""
        key = "diaSourceId" if "diaSourceId" in alert else "alertId"
        return _integer_id(alert, key)

    def _writer(self, schema_id: int) -> RubinSchema:
        try:
            return self._schemas.by_id(schema_id)
        except NotFound as exc:
            raise DecodeError("unknown-schema", str(exc)) from exc
        except InvalidInput as exc:
            raise DecodeError("unknown-schema", f"schema id {schema_id}: {exc}") from exc

    def _reader(self, writer: RubinSchema, *, strict: bool) -> dict[str, Any] | None:
        if self._fields is None:
            return None
        paths = writer.lightcurve_paths() if self._fields == "lightcurve" else list(self._fields)
        if writer.id_field:
            paths.append(writer.id_field)
        return _parse_record(reader_schema(writer.parsed, paths, strict=strict))


# -- ZTF ---------------------------------------------------------------------


class ZtfCodec:
    """ZTF alerts: one Avro container file (schema in its header) per message.

    ``schema`` is needed only to :meth:`encode`; decoding reads each
    message's own schema.
    """

    name = "ztf"

    def __init__(
        self,
        schema: Mapping[str, Any] | None = None,
        *,
        id_field: str = "candid",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._parsed = _parse_record(schema) if schema is not None else None
        self.id_field = id_field
        self.max_bytes = max_bytes

    def decode(self, value: bytes) -> dict[str, Any]:
        """The one alert in an Avro container."""
        _check_size(value, self.max_bytes)
        if not value.startswith(_CONTAINER_MAGIC):
            raise DecodeError("bad-magic", "the message is not an Avro container (no 'Obj\\x01')")

        def first_records() -> list[Any]:
            records = fastavro.reader(io.BytesIO(value))
            # Two are enough to tell "exactly one" from "several".
            return [record for record, _ in zip(records, range(2), strict=False)]

        records = _read_avro(first_records, "the Avro container")
        if len(records) != 1 or not isinstance(records[0], dict):
            raise DecodeError(
                "not-one-record", f"a ZTF alert holds one record, this container {len(records)}"
            )
        alert: dict[str, Any] = records[0]
        return alert

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """``alert`` as a one-record Avro container with the codec's schema."""
        if self._parsed is None:
            raise InvalidInput("encoding ZTF alerts needs the schema: ZtfCodec(schema=...)")
        stream = io.BytesIO()
        try:
            fastavro.writer(stream, self._parsed, [dict(alert)])
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidInput(f"alert does not fit the ZTF schema: {exc}") from exc
        return stream.getvalue()

    def alert_id(self, alert: Mapping[str, Any]) -> int:
        """``candid``, or the configured ``id_field``."""
        return _integer_id(alert, self.id_field)


# -- JSON --------------------------------------------------------------------


class JsonCodec:
    """One UTF-8 JSON object per message.

    ``id_field`` is a dotted path to the alert id (``candidate.candid``).
    :meth:`encode` writes bytes as base64 text and datetimes in ISO 8601, as
    JSON has neither; decoding leaves those as strings.
    """

    name = "json"

    def __init__(
        self, *, id_field: str = "diaSourceId", max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.id_field = id_field
        self.max_bytes = max_bytes

    def decode(self, value: bytes) -> dict[str, Any]:
        """The JSON object in ``value``."""
        _check_size(value, self.max_bytes)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("not-utf8", f"not UTF-8 at byte {exc.start}") from exc
        try:
            alert = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DecodeError("not-json", f"not JSON: {exc}") from exc
        except RecursionError as exc:
            raise DecodeError("not-json", "JSON nested too deeply") from exc
        if not isinstance(alert, dict):
            raise DecodeError("not-an-object", f"JSON {type(alert).__name__}, not an object")
        return alert

    def encode(self, alert: Mapping[str, Any]) -> bytes:
        """``alert`` as compact UTF-8 JSON."""
        try:
            text = json.dumps(alert, separators=(",", ":"), default=_json_default)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"alert cannot be written as JSON: {exc}") from exc
        return text.encode("utf-8")

    def alert_id(self, alert: Mapping[str, Any]) -> int:
        """The integer at ``id_field``."""
        return _integer_id(alert, self.id_field)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
