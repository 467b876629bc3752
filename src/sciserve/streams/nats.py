"""NATS JetStream source and sink on nats-py.

The source is a durable *pull* consumer with explicit acks: :meth:`commit`
acks each message and waits for the server to confirm, and every message
not acked within ``ack_wait`` seconds is delivered again.  The sink
publishes through JetStream, which answers only once the stream has stored
the message.

NATS messages have no key, so a record's key travels base64-encoded in the
``Sciserve-Key`` header; header values must be UTF-8 text.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

from ..errors import DependencyMissing, InvalidInput, Unavailable
from .base import Message, OutRecord, Sink, Source

try:
    import nats
    import nats.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise DependencyMissing("NATS streams need nats-py: pip install 'sciserve[streams]'") from exc

__all__ = ["KEY_HEADER", "NatsSink", "NatsSource"]

logger = logging.getLogger(__name__)

#: Header carrying the base64 of a record's key.
KEY_HEADER = "Sciserve-Key"
_ASSERTION_HEADER_PREFIX = "Nats-Expected-"
#: nats-py rejects a fetch timeout of zero; this is the shortest poll (s).
_MIN_FETCH_TIMEOUT = 0.01


class NatsSource(Source):
    """Pull messages on ``subject`` through the durable consumer ``durable``.

    ``stream`` is created (file storage, capturing ``subject``) if it does not
    exist.  Sources sharing ``durable`` share its messages, each delivered to
    one of them.  ``batch`` caps one pull request; ``ack_wait`` is how long
    the server waits for a commit before redelivering.  ``connect_options``
    go to :func:`nats.connect` (credentials, TLS, …).
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        subject: str,
        *,
        stream: str,
        durable: str,
        batch: int = 256,
        ack_wait: float = 30.0,
        **connect_options: Any,
    ) -> None:
        if batch < 1:
            raise InvalidInput(f"batch must be at least 1, not {batch}")
        if ack_wait <= 0:
            raise InvalidInput(f"ack_wait must be positive, not {ack_wait}")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.subject = subject
        self.stream = stream
        self.durable = durable
        self.batch = batch
        self.ack_wait = ack_wait
        self._connect_options = connect_options
        self._client: Client | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None
        # Fetched but not yet committed, by stream sequence: NAKed on close so
        # the next consumer gets them at once instead of after ack_wait.
        self._unacked: dict[int, Msg] = {}

    async def start(self) -> None:
        """Connect, create the stream if missing and bind the durable consumer."""
        if self._client is not None:
            return
        client = await _connect(self.servers, self._connect_options)
        try:
            jetstream = client.jetstream()
            await _ensure_stream(jetstream, self.stream, self.subject)
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait)
            self._subscription = await jetstream.pull_subscribe(
                self.subject, durable=self.durable, stream=self.stream, config=config
            )
        except nats.errors.Error as exc:
            await client.close()
            raise Unavailable(f"cannot subscribe to {self.subject} on NATS: {exc}") from exc
        except BaseException:
            await client.close()
            raise
        self._client = client

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Pull up to ``min(max_messages, batch)`` messages; ``[]`` on timeout."""
        subscription = self._require()
        try:
            raw = await subscription.fetch(
                max(1, min(max_messages, self.batch)), timeout=max(timeout, _MIN_FETCH_TIMEOUT)
            )
        except (nats.errors.TimeoutError, TimeoutError):
            # nats-py raises its own TimeoutError, or asyncio's from some
            # paths of a batched pull: either way, nothing arrived in time.
            return []
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS fetch on {self.subject} failed: {exc}") from exc
        messages = [self._message(msg) for msg in raw]
        for message in messages:
            self._unacked[message.offset or 0] = message.token
        return messages

    async def commit(self, messages: Sequence[Message]) -> None:
        """Ack each message and wait until the server has recorded the acks."""
        self._require()
        tokens = [m.token for m in messages]
        if not all(isinstance(token, Msg) for token in tokens):
            raise InvalidInput("cannot commit a message that this NATS source did not fetch")
        results = await asyncio.gather(
            *(token.ack_sync() for token in tokens), return_exceptions=True
        )
        for message, result in zip(messages, results, strict=True):
            if isinstance(result, nats.errors.MsgAlreadyAckdError):
                continue  # committed twice: harmless
            if isinstance(result, BaseException):
                raise Unavailable(f"NATS ack of {message.offset} failed: {result}") from result
            self._unacked.pop(message.offset or 0, None)

    async def lag(self) -> int | None:
        """Messages the durable consumer has not delivered yet plus those
        delivered but not yet committed."""
        subscription = self._require()
        try:
            info = await subscription.consumer_info()
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot read NATS consumer {self.durable}: {exc}") from exc
        return (info.num_pending or 0) + (info.num_ack_pending or 0)

    async def close(self) -> None:
        """NAK uncommitted messages so they are redelivered now, and disconnect.

        The durable consumer stays on the server for the next source.
        """
        client, self._client, self._subscription = self._client, None, None
        if client is None:
            return
        unacked, self._unacked = list(self._unacked.values()), {}
        try:
            for msg in unacked:
                await msg.nak()
            await client.flush()
        except nats.errors.Error as exc:
            # They come back after ack_wait anyway.
            logger.warning("could not NAK %d NATS message(s): %s", len(unacked), exc)
        finally:
            await client.close()

    def _require(self) -> JetStreamContext.PullSubscription:
        if self._subscription is None:
            raise InvalidInput("the NATS source is not started")
        return self._subscription

    def _message(self, msg: Msg) -> Message:
        metadata = msg.metadata
        headers = dict(msg.headers or {})
        key = headers.pop(KEY_HEADER, None)
        return Message(
            value=msg.data,
            key=_decode_key(key) if key is not None else None,
            topic=msg.subject,
            offset=metadata.sequence.stream,
            timestamp_ms=int(metadata.timestamp.timestamp() * 1000),
            headers=tuple(
                (name, value.encode())
                for name, value in headers.items()
                # Publish-time assertions (e.g. the expected stream), not data.
                if not name.startswith(_ASSERTION_HEADER_PREFIX)
            ),
            token=msg,
        )


class NatsSink(Sink):
    """Publish to ``subject`` through JetStream.

    With ``stream`` given, that stream is created (file storage) if missing
    and every publish asserts it is the one storing the message; without it,
    some existing stream must capture ``subject``.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        subject: str,
        stream: str | None = None,
        *,
        publish_timeout: float = 30.0,
        **connect_options: Any,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.subject = subject
        self.stream = stream
        self._publish_timeout = publish_timeout
        self._connect_options = connect_options
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None

    async def start(self) -> None:
        """Connect, creating the stream if one is named and missing."""
        if self._client is not None:
            return
        client = await _connect(self.servers, self._connect_options)
        jetstream = client.jetstream()
        if self.stream is not None:
            try:
                await _ensure_stream(jetstream, self.stream, self.subject)
            except nats.errors.Error as exc:
                await client.close()
                raise Unavailable(f"cannot create NATS stream {self.stream}: {exc}") from exc
        self._client, self._jetstream = client, jetstream

    async def write(self, records: Sequence[OutRecord]) -> None:
        """Publish ``records`` in order; return once the stream stored them all."""
        if self._jetstream is None:
            raise InvalidInput("the NATS sink is not started")
        jetstream = self._jetstream
        try:
            # Publishing without waiting keeps the order and costs one round
            # trip per batch instead of one per record.
            pending = [
                await jetstream.publish_async(
                    self.subject, record.value, stream=self.stream, headers=_headers(record)
                )
                for record in records
            ]
            await asyncio.wait_for(asyncio.gather(*pending), self._publish_timeout)
        except TimeoutError as exc:
            raise Unavailable(
                f"NATS did not confirm records to {self.subject} within {self._publish_timeout} s"
            ) from exc
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS publish to {self.subject} failed: {exc}") from exc

    async def close(self) -> None:
        """Disconnect."""
        client, self._client, self._jetstream = self._client, None, None
        if client is not None:
            await client.close()


async def _connect(servers: list[str], options: dict[str, Any]) -> Client:
    """Connect; nats-py keeps retrying (by default 60 times, 2 s apart)
    before giving up, and ``max_reconnect_attempts``/``reconnect_time_wait``
    in ``options`` tune that."""
    try:
        return await nats.connect(servers, **{"error_cb": _log_error, **options})
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(f"cannot connect to NATS at {', '.join(servers)}: {exc}") from exc


async def _ensure_stream(jetstream: JetStreamContext, stream: str, subject: str) -> None:
    """Create ``stream`` capturing ``subject`` unless it exists already."""
    try:
        await jetstream.stream_info(stream)
        return
    except NotFoundError:
        pass
    config = StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE)
    try:
        await jetstream.add_stream(config)
    except BadRequestError:
        # Another process created it in the meantime; anything else is real.
        await jetstream.stream_info(stream)


async def _log_error(error: Exception) -> None:
    """nats-py reports connection trouble here while it reconnects by itself."""
    logger.warning("NATS client error: %s", error)


def _headers(record: OutRecord) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for name, value in record.headers:
        try:
            text = value.decode()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"NATS header {name!r} must be UTF-8 text") from exc
        if any(c in name + text for c in "\r\n") or ":" in name:
            raise InvalidInput(f"NATS header {name!r} contains a line break or colon")
        headers[name] = text
    if record.key is not None:
        headers[KEY_HEADER] = base64.b64encode(record.key).decode("ascii")
    return headers or None


def _decode_key(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"NATS header {KEY_HEADER} is not base64: {text!r}") from exc
