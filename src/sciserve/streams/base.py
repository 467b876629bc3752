"""What every stream source and sink looks like, and how a URL picks one.

A :class:`Source` hands out :class:`Message` batches and is told, through
:meth:`Source.commit`, which of them are done.  The pipeline commits only
after the outputs derived from those messages are durable in a :class:`Sink`,
which is what makes processing *at-least-once*: a crash between the two
replays the uncommitted messages instead of losing them.

Three transports implement the pair::

    kafka://host:port[,host:port…]/topic?group=G    Kafka (confluent-kafka)
    nats://host:port/subject?stream=S&durable=D     NATS JetStream (nats-py)
    file:///path.jsonl | .avro | .parquet           replayable files

:func:`open_source` and :func:`open_sink` parse such URLs; the transport
modules are imported only when their scheme is used, so the optional
dependencies are needed only by whoever uses them.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import InvalidInput

__all__ = [
    "Message",
    "OutRecord",
    "Sink",
    "Source",
    "error_text",
    "open_sink",
    "open_source",
]

#: An object's default repr, ``<_io.BytesIO object at 0x7f…>``: its address
#: changes from run to run and it says nothing to a reader.
_OBJECT_REPR = re.compile(r"<([\w.]+?)(?: object)? at 0x[0-9a-fA-F]+>")
#: Longest error detail kept in a dead letter.
_ERROR_TEXT_CHARS = 500


def error_text(exc: BaseException) -> str:
    """``exc`` as stable, readable text for a dead letter or a log line.

    Libraries put object reprs in their messages (fastavro: "cannot read
    float from <_io.BytesIO object at 0x…>"), and some exceptions have no
    message at all; neither belongs in a record someone reads or counts.
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"  # str() of a KeyError is the bare repr
    else:
        text = str(exc)
    text = _OBJECT_REPR.sub(lambda m: f"the {m.group(1).rpartition('.')[2]}", text).strip()
    if len(text) > _ERROR_TEXT_CHARS:
        text = text[: _ERROR_TEXT_CHARS - 1] + "…"
    return text or type(exc).__name__


#: Port assumed when a ``kafka://`` or ``nats://`` URL names none.
_DEFAULT_PORTS = {"kafka": 9092, "nats": 4222}
_FILE_SUFFIXES = (".jsonl", ".avro", ".parquet")


@dataclass(frozen=True, slots=True)
class Message:
    """One message read from a :class:`Source`.

    ``timestamp_ms`` is the time the broker (or file sink) recorded for the
    message, in milliseconds since the epoch; end-to-end latency is measured
    from it.  ``offset`` is the position within ``partition`` (Kafka), the
    stream sequence (NATS) or the record index (files).  ``token`` is an
    opaque handle the source needs to commit this message; it takes no part
    in equality or hashing.
    """

    value: bytes
    key: bytes | None = None
    topic: str = ""
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    token: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to write to a :class:`Sink`."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class Source(abc.ABC):
    """A stream of messages consumed with explicit, at-least-once commits.

    Use it as ``async with source:`` or call :meth:`start` and :meth:`close`.
    Messages fetched but never committed are delivered again to the next
    consumer of the same group, durable consumer or offset file.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and join the consumer group / durable consumer."""

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Return up to ``max_messages`` messages, or ``[]`` if none arrived
        within ``timeout`` seconds."""

    @abc.abstractmethod
    async def commit(self, messages: Sequence[Message]) -> None:
        """Mark ``messages`` as processed, so they are not delivered again.

        Call this only once the outputs derived from them are durable.
        """

    @abc.abstractmethod
    async def lag(self) -> int | None:
        """Messages not yet committed by this consumer, or ``None`` if unknown."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group and release the connection; safe to call twice."""

    @property
    def exhausted(self) -> bool:
        """``True`` once a finite source (a file) has delivered everything.

        Broker sources never run dry: more messages may always arrive.
        """
        return False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Sink(abc.ABC):
    """A destination for :class:`OutRecord` batches.

    Use it as ``async with sink:`` or call :meth:`start` and :meth:`close`.
    """

    #: Whether records are durable as soon as :meth:`write` returns.  Only a
    #: sink that must finalise its output on :meth:`close` (Parquet files)
    #: sets this to ``False``; a pipeline must then commit its source only
    #: after closing the sink.
    durable_on_write: bool = True

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, or open the output file."""

    @abc.abstractmethod
    async def write(self, records: Sequence[OutRecord]) -> None:
        """Write ``records``; when this returns they are flushed and
        acknowledged (see :attr:`durable_on_write`)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush what is pending and release the connection or file."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def open_source(url: str, *, consumer: str | None = None, **options: Any) -> Source:
    """Create the (not yet started) :class:`Source` that ``url`` names.

    ``kafka://host:port/topic?group=G`` consumes as group ``G``;
    ``session_timeout_ms``, ``max_poll_interval_ms`` and ``auto_offset_reset``
    are :class:`KafkaSource`'s own, and further query parameters are passed to
    librdkafka as configuration.
    ``nats://host:port/subject?stream=S&durable=D`` consumes as durable
    consumer ``D`` of stream ``S``; ``batch`` and ``ack_wait`` may be given
    too.  ``file:///path.ext`` (or a bare path) replays a ``.jsonl``,
    ``.avro`` or ``.parquet`` file, keeping the consumer's offset beside it.
    ``consumer`` names the group (or durable) when the URL does not: a
    pipeline passes its own name, so that two pipelines reading one stream
    each see all of it.  Keyword ``options`` override query parameters.
    """
    scheme, location, target, query = _split(url)
    params = {**query, **options}
    if consumer is not None:
        params.setdefault("durable" if scheme == "nats" else "group", consumer)
    if scheme == "kafka":
        from .kafka import KafkaSource

        group = _pop_required(params, "group", url)
        _convert(params, "session_timeout_ms", int, url)
        _convert(params, "max_poll_interval_ms", int, url)
        return KafkaSource(location, target, str(group), **params)
    if scheme == "nats":
        from .nats import NatsSource

        _only(query, {"stream", "durable", "batch", "ack_wait"}, url)
        stream = _pop_required(params, "stream", url)
        durable = _pop_required(params, "durable", url)
        _convert(params, "batch", int, url)
        _convert(params, "ack_wait", float, url)
        return NatsSource(
            _nats_servers(location), target, stream=str(stream), durable=str(durable), **params
        )
    from .files import FileSource

    return FileSource(target, **params)


def open_sink(url: str, **options: Any) -> Sink:
    """Create the (not yet started) :class:`Sink` that ``url`` names.

    ``kafka://host:port/topic`` (query parameters are librdkafka
    configuration), ``nats://host:port/subject[?stream=S]`` (the stream is
    created if missing) or ``file:///path.jsonl|.avro|.parquet``.  Keyword
    ``options`` override query parameters.
    """
    scheme, location, target, query = _split(url)
    params = {**query, **options}
    if scheme == "kafka":
        from .kafka import KafkaSink

        return KafkaSink(location, target, **params)
    if scheme == "nats":
        from .nats import NatsSink

        _only(query, {"stream"}, url)
        return NatsSink(_nats_servers(location), target, **params)
    from .files import FileSink

    return FileSink(target, **params)


def _split(url: str) -> tuple[str, str, str, dict[str, str]]:
    """Return ``(scheme, host:port list, topic/subject/path, query)``."""
    if not url or url != url.strip():
        raise InvalidInput(f"invalid stream URL {url!r}: empty or padded with whitespace")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "":
        return "file", "", _file_path(url, "", url, ""), {}
    if scheme == "file":
        return "file", "", _file_path(url, parts.netloc, unquote(parts.path), parts.query), {}
    if scheme not in _DEFAULT_PORTS:
        raise InvalidInput(
            f"invalid stream URL {url!r}: unsupported scheme {parts.scheme!r} "
            "(expected kafka://, nats:// or file://)"
        )
    location = _hosts(url, parts.netloc, _DEFAULT_PORTS[scheme])
    target = unquote(parts.path).lstrip("/")
    what = "topic" if scheme == "kafka" else "subject"
    if not target or "/" in target or any(c.isspace() for c in target):
        raise InvalidInput(
            f"invalid stream URL {url!r}: the path must be one {what} "
            f"(e.g. {scheme}://localhost:{_DEFAULT_PORTS[scheme]}/alerts)"
        )
    if parts.fragment:
        raise InvalidInput(f"invalid stream URL {url!r}: fragments are not allowed")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise InvalidInput(f"invalid stream URL {url!r}: malformed query: {exc}") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise InvalidInput(f"invalid stream URL {url!r}: {key!r} given twice")
        query[key] = value
    return scheme, location, target, query


def _hosts(url: str, netloc: str, default_port: int) -> str:
    """Validate ``host[:port][,host[:port]…]``, adding the default port."""
    if "@" in netloc:
        # Credentials in URLs end up in logs; they belong in options.
        raise InvalidInput(f"invalid stream URL {url!r}: pass credentials as options")
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise InvalidInput(f"invalid stream URL {url!r}: bad host:port {item!r}")
        hosts.append(f"{host}:{port or default_port}")
    return ",".join(hosts)


def _nats_servers(location: str) -> list[str]:
    return [f"nats://{host}" for host in location.split(",")]


def _file_path(url: str, netloc: str, path: str, query: str) -> str:
    if netloc not in ("", "localhost"):
        raise InvalidInput(f"invalid stream URL {url!r}: file URLs cannot name a remote host")
    if query:
        raise InvalidInput(f"invalid stream URL {url!r}: file URLs take options, not a query")
    if not path or Path(path).suffix.lower() not in _FILE_SUFFIXES:
        raise InvalidInput(
            f"invalid stream URL {url!r}: a file must end in {', '.join(_FILE_SUFFIXES)}"
        )
    return path


def _only(query: dict[str, str], allowed: set[str], url: str) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise InvalidInput(
            f"invalid stream URL {url!r}: unknown parameter(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _pop_required(params: dict[str, Any], name: str, url: str) -> Any:
    value = params.pop(name, None)
    if value is None or value == "":
        raise InvalidInput(f"invalid stream URL {url!r}: {name}=… is required for a source")
    return value


def _convert(params: dict[str, Any], name: str, kind: Callable[[str], Any], url: str) -> None:
    """Turn a query-string value into ``kind``; keyword options pass through."""
    value = params.get(name)
    if isinstance(value, str):
        try:
            params[name] = kind(value)
        except ValueError as exc:
            raise InvalidInput(f"invalid stream URL {url!r}: {name}={value!r}") from exc
