"""Usage accounting: requests, rows and compute seconds per namespace, caller and model.

Counters accumulate in memory (one dict update per request) and are added
to the ``usage`` table by :meth:`UsageStore.flush`, one transaction per
flush, into hourly buckets.  :meth:`UsageStore.run` flushes every
``access.usage_flush_interval`` seconds and once more when cancelled (at
shutdown).  Counts not yet flushed are lost if the process is killed: at
most one interval's worth.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..config import AccessConfig
from ..errors import ReadOnlyRegistry, SciserveError, Unavailable
from ..registry import db as registry_db
from ..registry.registry import Registry
from . import tables
from ._db import Database, aware, engine_of, reading, writing
from .identity import Identity

__all__ = ["USAGE_COLUMNS", "UsageStore", "to_csv"]

log = logging.getLogger(__name__)

#: Columns of :meth:`UsageStore.report` rows and of :func:`to_csv`, in order.
USAGE_COLUMNS = (
    "namespace",
    "principal",
    "subject",
    "model",
    "requests",
    "rows",
    "compute_seconds",
    "first_period",
    "last_period",
)

# Concurrent flushes from several replicas may race to insert the same new
# bucket; the loser retries (and then finds the row to add to).
_FLUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class _Key:
    period_start: datetime
    namespace: str
    principal: str
    subject: str
    model: str


@dataclass
class _Counts:
    requests: int = 0
    rows: int = 0
    compute_seconds: float = 0.0

    def add(self, other: _Counts) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.compute_seconds += other.compute_seconds


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


class UsageStore:
    """Accumulates usage in memory and persists it to the registry database."""

    def __init__(self, db: Database, config: AccessConfig | None = None) -> None:
        self._engine = engine_of(db)
        if config is None:
            config = db.settings.access if isinstance(db, Registry) else AccessConfig()
        self._interval = config.usage_flush_interval
        self._lock = threading.Lock()
        self._pending: dict[_Key, _Counts] = {}

    def record(
        self,
        identity: Identity,
        namespace: str,
        model: str,
        *,
        rows: int = 0,
        compute_seconds: float = 0.0,
        requests: int = 1,
    ) -> None:
        """Count ``requests`` request(s) of ``rows`` rows taking ``compute_seconds``."""
        key = _Key(
            _hour(registry_db.utcnow()),
            namespace,
            identity.principal,
            identity.subject,
            model,
        )
        with self._lock:
            counts = self._pending.setdefault(key, _Counts())
            counts.add(_Counts(requests, rows, compute_seconds))

    def flush(self) -> int:
        """Write everything counted so far in one transaction; returns the buckets written.

        On failure the counts stay pending for the next flush.
        """
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        try:
            for attempt in range(_FLUSH_ATTEMPTS):
                try:
                    self._write(batch)
                    break
                except sa.exc.IntegrityError:
                    if attempt == _FLUSH_ATTEMPTS - 1:
                        raise
        except (sa.exc.SQLAlchemyError, SciserveError) as exc:
            with self._lock:
                for key, counts in batch.items():
                    self._pending.setdefault(key, _Counts()).add(counts)
            if isinstance(exc, SciserveError):
                raise
            raise Unavailable(f"cannot write usage counters: {exc}") from exc
        return len(batch)

    def _write(self, batch: Mapping[_Key, _Counts]) -> None:
        u = tables.usage
        with writing(self._engine) as conn:
            for key, counts in batch.items():
                where = sa.and_(
                    u.c.period_start == key.period_start,
                    u.c.namespace == key.namespace,
                    u.c.principal == key.principal,
                    u.c.model == key.model,
                )
                updated = conn.execute(
                    sa.update(u)
                    .where(where)
                    .values(
                        requests=u.c.requests + counts.requests,
                        rows=u.c.rows + counts.rows,
                        compute_seconds=u.c.compute_seconds + counts.compute_seconds,
                    )
                ).rowcount
                if not updated:
                    conn.execute(
                        sa.insert(u).values(
                            period_start=key.period_start,
                            namespace=key.namespace,
                            principal=key.principal,
                            subject=key.subject,
                            model=key.model,
                            requests=counts.requests,
                            rows=counts.rows,
                            compute_seconds=counts.compute_seconds,
                        )
                    )

    async def run(self) -> None:
        """Flush periodically until cancelled, then flush once more."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                try:
                    await asyncio.to_thread(self.flush)
                except (Unavailable, ReadOnlyRegistry) as exc:
                    log.warning("usage not flushed, will retry: %s", exc)
        finally:
            self.flush()

    def report(
        self, since: datetime | None = None, *, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Flushed usage summed per namespace, caller and model.

        ``since`` is rounded down to the hour (the buckets' resolution).
        """
        u = tables.usage
        query = sa.select(
            u.c.namespace,
            u.c.principal,
            sa.func.max(u.c.subject).label("subject"),
            u.c.model,
            sa.func.sum(u.c.requests).label("requests"),
            sa.func.sum(u.c.rows).label("rows"),
            sa.func.sum(u.c.compute_seconds).label("compute_seconds"),
            sa.func.min(u.c.period_start).label("first_period"),
            sa.func.max(u.c.period_start).label("last_period"),
        ).group_by(u.c.namespace, u.c.principal, u.c.model)
        if since is not None:
            query = query.where(u.c.period_start >= _hour(since))
        if namespace is not None:
            query = query.where(u.c.namespace == namespace)
        query = query.order_by(u.c.namespace, u.c.principal, u.c.model)
        with reading(self._engine) as conn:
            rows = conn.execute(query).all()
        return [
            {
                "namespace": r.namespace,
                "principal": r.principal,
                "subject": r.subject,
                "model": r.model,
                "requests": int(r.requests),
                "rows": int(r.rows),
                "compute_seconds": float(r.compute_seconds),
                "first_period": _iso(r.first_period),
                "last_period": _iso(r.last_period),
            }
            for r in rows
        ]


def _iso(value: Any) -> str:
    # Aggregates come back as strings on SQLite, datetimes elsewhere.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    stamp: datetime = aware(value)
    return stamp.isoformat()


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """Usage report rows as CSV with a header line of :data:`USAGE_COLUMNS`."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=USAGE_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
