"""Kafka source and sink on confluent-kafka (librdkafka).

The source turns off every automatic commit and commits, synchronously, only
what the pipeline hands to :meth:`KafkaSource.commit`; the sink is an
idempotent ``acks=all`` producer that flushes before :meth:`KafkaSink.write`
returns.  librdkafka calls block, so they run on worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

from ..errors import DependencyMissing, InvalidInput, PayloadTooLarge, Unavailable
from .base import Message, OutRecord, Sink, Source

try:
    from confluent_kafka import (
        TIMESTAMP_NOT_AVAILABLE,
        Consumer,
        KafkaError,
        KafkaException,
        Producer,
        TopicPartition,
    )
    from confluent_kafka import Message as KafkaMessage
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise DependencyMissing(
        "Kafka streams need confluent-kafka: pip install 'sciserve[streams]'"
    ) from exc

__all__ = ["KafkaSink", "KafkaSource"]

logger = logging.getLogger(__name__)

#: Settings the source must own: changing them would break at-least-once.
_RESERVED = frozenset(
    {"bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store"}
)
#: Commit errors meaning "the partition moved to another member": its new
#: owner resumes from the last commit, so the messages are redelivered.
_REBALANCED = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)
#: How long metadata calls (committed offsets, watermarks) may take (s).
_QUERY_TIMEOUT = 10.0
#: Longest single wait in librdkafka's consume() (s).  A synchronous commit
#: waits until a concurrent consume() returns, so one long poll of
#: ``fetch_timeout`` made every commit cost up to that much end-to-end
#: latency; in slices this short a commit waits at most one slice, for a
#: thread hand-over per slice while the stream is idle.
_FETCH_SLICE = 0.05


class KafkaSource(Source):
    """Consume ``topic`` as a member of consumer ``group``.

    Offsets are committed only by :meth:`commit`, so after a crash or a
    rebalance every uncommitted message is delivered again.  The short
    default timeouts make group joins quick; ``fetch`` must then be called at
    least every ``max_poll_interval_ms``, or the member is dropped from the
    group.  Further librdkafka settings go in ``config`` with their dotted
    names, e.g. ``**{"security.protocol": "SSL"}``.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        session_timeout_ms: int = 6000,
        max_poll_interval_ms: int = 7000,
        auto_offset_reset: str = "earliest",
        **config: Any,
    ) -> None:
        reserved = _RESERVED.intersection(config)
        if reserved:
            raise InvalidInput(f"Kafka source settings {sorted(reserved)} cannot be overridden")
        for name, value in (
            ("session_timeout_ms", session_timeout_ms),
            ("max_poll_interval_ms", max_poll_interval_ms),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{name} must be an integer, not {value!r}")
        # librdkafka refuses a poll interval shorter than the session timeout.
        if not 0 < session_timeout_ms <= max_poll_interval_ms:
            raise InvalidInput(
                f"session_timeout_ms ({session_timeout_ms}) must be positive and at most "
                f"max_poll_interval_ms ({max_poll_interval_ms})"
            )
        if auto_offset_reset not in ("earliest", "latest"):
            raise InvalidInput(
                f"auto_offset_reset must be 'earliest' or 'latest', not {auto_offset_reset!r}"
            )
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self._from_earliest = auto_offset_reset == "earliest"
        self._config: dict[str, Any] = {
            # Heartbeats well inside the session timeout keep rebalances fast.
            "heartbeat.interval.ms": max(100, session_timeout_ms // 3),
            **config,
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "session.timeout.ms": session_timeout_ms,
            "max.poll.interval.ms": max_poll_interval_ms,
            "auto.offset.reset": auto_offset_reset,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "error_cb": _log_error,
            "logger": logger,
        }
        self._consumer: Consumer | None = None
        # A consume() running on a worker thread; kept when fetch() is
        # cancelled so the batch is not lost but returned by the next fetch.
        self._inflight: asyncio.Future[list[KafkaMessage]] | None = None
        # Messages consumed and not yet returned by fetch().
        self._fetched: list[Message] = []
        # Whose turn it is to call the consumer: one fetch slice or one
        # commit at a time, in the order they asked (asyncio.Lock is fair).
        self._turn = asyncio.Lock()
        self._committed: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        """Create the consumer and subscribe; the group is joined on first fetch."""
        if self._consumer is not None:
            return
        try:
            consumer = Consumer(self._config)
            consumer.subscribe([self.topic])
        except KafkaException as exc:
            raise InvalidInput(f"cannot create Kafka consumer: {exc}") from exc
        self._consumer = consumer

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Return up to ``max_messages`` messages, ``[]`` after ``timeout`` s.

        Returns once ``max_messages`` arrived or ``timeout`` passed, with
        what arrived.  librdkafka is polled in slices of
        :data:`_FETCH_SLICE` s, and a :meth:`commit` waiting for the
        consumer runs between two slices.  Partition-EOF events are ignored
        and transient errors logged; a fatal client error raises
        :class:`~sciserve.errors.Unavailable`.
        """
        consumer = self._require()
        count = max(1, min(max_messages, 1_000_000))  # librdkafka's own bound
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while len(self._fetched) < count:
            if self._inflight is None:
                wait = min(_FETCH_SLICE, max(deadline - loop.time(), 0.0))
                self._inflight = asyncio.ensure_future(
                    self._consume(consumer, count - len(self._fetched), wait)
                )
            inflight = self._inflight
            try:
                raw = await asyncio.shield(inflight)
            except KafkaException as exc:
                raise Unavailable(f"Kafka consume failed: {exc}") from exc
            finally:
                # A cancelled fetch leaves the consume running for the next
                # one, and what the finished ones got in self._fetched.
                if inflight.done():
                    self._inflight = None
            self._fetched += self._accept(raw)
            if loop.time() >= deadline:
                break
        messages, self._fetched = self._fetched[:count], self._fetched[count:]
        return messages

    async def _consume(self, consumer: Consumer, count: int, timeout: float) -> list[KafkaMessage]:
        async with self._turn:
            return await asyncio.to_thread(consumer.consume, count, timeout)

    def _accept(self, raw: Sequence[KafkaMessage]) -> list[Message]:
        messages = []
        for item in raw:
            error = item.error()
            if error is None:
                messages.append(self._message(item))
            elif error.fatal():
                raise Unavailable(f"Kafka consumer failed: {error.str()}")
            elif error.code() != KafkaError._PARTITION_EOF:
                logger.warning("Kafka consumer error on %s: %s", self.topic, error.str())
        return messages

    async def commit(self, messages: Sequence[Message]) -> None:
        """Commit, synchronously, the highest offset + 1 of each partition.

        Like every Kafka commit this covers all earlier offsets of the
        partition too.  Partitions this member no longer owns are skipped:
        their new owner will deliver those messages again.
        """
        consumer = self._require()
        ends: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.partition is None or message.offset is None:
                raise InvalidInput("cannot commit a message without partition and offset")
            where = (message.topic or self.topic, message.partition)
            ends[where] = max(ends.get(where, -1), message.offset + 1)
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        offsets = [
            TopicPartition(topic, partition, end)
            for (topic, partition), end in sorted(ends.items())
            if end > self._committed.get((topic, partition), -1) and (topic, partition) in owned
        ]
        if not offsets:
            return
        try:
            # Between two fetch slices: librdkafka would hold a synchronous
            # commit until a concurrent consume() returned.
            async with self._turn:
                result = await asyncio.to_thread(
                    consumer.commit, offsets=offsets, asynchronous=False
                )
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() in _REBALANCED:
                logger.warning("Kafka commit skipped, partitions were reassigned: %s", exc)
                return
            raise Unavailable(f"Kafka commit failed: {exc}") from exc
        for tp in result or offsets:
            if tp.error is not None:
                raise Unavailable(f"Kafka commit of partition {tp.partition} failed: {tp.error}")
            self._committed[(tp.topic, tp.partition)] = tp.offset

    async def lag(self) -> int | None:
        """Messages between the committed offset and the end of the
        partitions assigned to this member; ``None`` before assignment."""
        consumer = self._require()

        def compute() -> int | None:
            assigned = consumer.assignment()
            if not assigned:
                return None
            total = 0
            for tp in consumer.committed(assigned, timeout=_QUERY_TIMEOUT):
                # librdkafka answers None, not a tuple, when the query times out.
                watermarks = cast(
                    "tuple[int, int] | None",
                    consumer.get_watermark_offsets(
                        TopicPartition(tp.topic, tp.partition), timeout=_QUERY_TIMEOUT
                    ),
                )
                if watermarks is None:
                    return None
                low, high = watermarks
                start = tp.offset if tp.offset >= 0 else (low if self._from_earliest else high)
                total += max(0, high - start)
            return total

        try:
            return await asyncio.to_thread(compute)
        except KafkaException as exc:
            raise Unavailable(f"cannot read Kafka offsets: {exc}") from exc

    def assignment(self) -> list[int]:
        """The partitions of ``topic`` currently assigned to this member."""
        consumer = self._require()
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic)

    async def close(self) -> None:
        """Leave the group (uncommitted messages go to the remaining members)."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        if self._inflight is not None:
            # Closing a consumer that another thread is polling is unsafe.
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        await asyncio.to_thread(consumer.close)

    def _require(self) -> Consumer:
        if self._consumer is None:
            raise InvalidInput("the Kafka source is not started")
        return self._consumer

    def _message(self, item: KafkaMessage) -> Message:
        kind, stamp = item.timestamp()
        headers = item.headers() or ()
        pairs = headers.items() if isinstance(headers, dict) else headers
        return Message(
            value=item.value() or b"",
            key=item.key(),
            topic=item.topic() or self.topic,
            partition=item.partition(),
            offset=item.offset(),
            timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else stamp,
            headers=tuple(
                (name, value if isinstance(value, bytes) else (value or "").encode())
                for name, value in pairs
            ),
        )


class KafkaSink(Sink):
    """Produce to ``topic`` with an idempotent, ``acks=all`` producer.

    :meth:`write` returns only once every record is acknowledged by all
    in-sync replicas, and raises :class:`~sciserve.errors.Unavailable` if any
    was not (within ``flush_timeout`` seconds).
    """

    def __init__(
        self, bootstrap: str, topic: str, *, flush_timeout: float = 30.0, **config: Any
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._flush_timeout = flush_timeout
        self._config: dict[str, Any] = {
            **config,
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "error_cb": _log_error,
            "logger": logger,
        }
        self._producer: Producer | None = None

    async def start(self) -> None:
        """Create the producer."""
        if self._producer is None:
            try:
                self._producer = Producer(self._config)
            except KafkaException as exc:
                raise InvalidInput(f"cannot create Kafka producer: {exc}") from exc

    async def write(self, records: Sequence[OutRecord]) -> None:
        """Produce ``records`` in order and wait until all are acknowledged."""
        if self._producer is None:
            raise InvalidInput("the Kafka sink is not started")
        if records:
            await asyncio.to_thread(self._produce, self._producer, records)

    def _produce(self, producer: Producer, records: Sequence[OutRecord]) -> None:
        failures: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: KafkaMessage) -> None:
            if error is not None:
                failures.append(error)

        for record in records:
            headers: list[tuple[str, str | bytes | None]] | None = list(record.headers) or None
            while True:
                try:
                    producer.produce(
                        self.topic, record.value, record.key, headers=headers, on_delivery=delivered
                    )
                    break
                except BufferError:
                    # The local queue is full: serving delivery reports drains it.
                    producer.poll(0.1)
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    if isinstance(error, KafkaError) and error.code() == (
                        KafkaError.MSG_SIZE_TOO_LARGE
                    ):
                        raise PayloadTooLarge(f"record too large for Kafka: {exc}") from exc
                    raise Unavailable(f"Kafka produce failed: {exc}") from exc
        remaining = producer.flush(self._flush_timeout)
        if remaining:
            raise Unavailable(
                f"{remaining} record(s) to {self.topic} not acknowledged "
                f"within {self._flush_timeout} s"
            )
        if failures:
            raise Unavailable(
                f"Kafka did not accept {len(failures)} record(s) to {self.topic}: "
                f"{failures[0].str()}"
            )

    async def close(self) -> None:
        """Flush anything still queued and drop the producer."""
        producer, self._producer = self._producer, None
        if producer is not None:
            remaining = await asyncio.to_thread(producer.flush, self._flush_timeout)
            if remaining:
                logger.warning("%d record(s) to %s were never acknowledged", remaining, self.topic)


def _log_error(error: KafkaError) -> None:
    """librdkafka reports connection trouble here; it retries by itself."""
    log = logger.error if error.fatal() else logger.warning
    log("Kafka client error: %s", error.str())
