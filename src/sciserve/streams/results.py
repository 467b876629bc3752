"""The annotation result store: what stream pipelines concluded, per alert and model.

Annotations live in the registry database (table ``annotations``, created by
migration 0003), so a PostgreSQL registry shared by several machines is also
the shared result store of a pipeline scaled out over them.

Writes are idempotent: the key is ``(alert_id, model, model_version)`` and
rows are inserted with ``INSERT … ON CONFLICT DO NOTHING``.  A pipeline that
crashes after writing but before committing its source sees the same alerts
again after a restart, and writing their annotations a second time changes
nothing.

The first annotation stored under a key stays.  :meth:`ResultStore.write_checked`
says which annotations were new, which were already stored (a re-delivery:
the same outputs) and which *conflict*: a different alert that carries an
alert id already annotated, whose outputs differ from the stored ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ..config import Settings
from ..errors import ConfigError, Unavailable
from ..registry import db

__all__ = ["Annotation", "ResultStore", "WriteOutcome", "annotation_table"]

_ts = sa.DateTime(timezone=True)

annotation_table = sa.Table(
    "annotations",
    db.metadata,
    sa.Column("alert_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("model_digest", sa.String(80), nullable=False),
    sa.Column("pipeline", sa.String(64), nullable=False, index=True),
    sa.Column("label", sa.String(128), index=True),
    sa.Column("score", sa.Float),
    sa.Column("outputs", sa.Text, nullable=False),
    sa.Column("runtime", sa.String(64), nullable=False),
    sa.Column("library_versions", sa.Text, nullable=False),
    sa.Column("broker_timestamp_ms", sa.BigInteger),
    sa.Column("processed_at", _ts, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False),
    sa.Column("filter_error", sa.Text),
)

_KEY = ("alert_id", "model", "model_version")
#: Outputs that differ by less than this (relative, or absolute near zero)
#: are the same: a re-delivered alert computed in a batch of another size
#: may differ in the last bits, a different alert differs by far more.
_SAME_OUTPUTS = 1e-5
#: Keys of conflicting annotations kept in a :class:`WriteOutcome`, at most.
_CONFLICTS_KEPT = 20


@dataclass(frozen=True)
class WriteOutcome:
    """What :meth:`ResultStore.write_checked` did with each annotation."""

    #: Stored now.
    new: int = 0
    #: Already stored with the same outputs: a re-delivered alert.
    duplicate: int = 0
    #: Already stored with other outputs: a different alert with an alert id
    #: that was annotated before (the stored annotation is kept).
    conflicting: int = 0
    #: ``alert_id:model:version`` of the first conflicting annotations.
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Annotation:
    """What one model said about one alert, with the provenance to reproduce it."""

    alert_id: int
    #: ``namespace/name`` of the model.
    model: str
    model_version: str
    #: The package digest: exactly which bytes produced this.
    model_digest: str
    #: Every output of the model for this alert, as nested lists.
    outputs: Mapping[str, Any]
    #: The top class and its value, when the model has a class output.
    label: str | None
    score: float | None
    pipeline: str
    runtime: str
    #: Versions of sciserve and the libraries that ran the model.
    library_versions: Mapping[str, str]
    #: When the broker received the alert (ms since the epoch), if known.
    broker_timestamp_ms: int | None
    processed_at: datetime
    #: Whether the pipeline's filter passed it to the topic sinks.
    published: bool = False
    #: Why the filter could not be evaluated on this alert, if it could not.
    filter_error: str | None = None
    #: Extra context that goes into the published record but not the store.
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """``alert_id:model:version``, the message key consumers de-duplicate by."""
        return f"{self.alert_id}:{self.model}:{self.model_version}"

    def to_dict(self) -> dict[str, Any]:
        """The annotation as JSON-compatible data (the published record)."""
        return {
            "alert_id": self.alert_id,
            "model": self.model,
            "model_version": self.model_version,
            "model_digest": self.model_digest,
            "outputs": dict(self.outputs),
            "label": self.label,
            "score": self.score,
            "pipeline": self.pipeline,
            "runtime": self.runtime,
            "library_versions": dict(self.library_versions),
            "broker_timestamp_ms": self.broker_timestamp_ms,
            "processed_at": self.processed_at.isoformat(),
            **dict(self.extra),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    def _row(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "model": self.model,
            "model_version": self.model_version,
            "model_digest": self.model_digest,
            "pipeline": self.pipeline,
            "label": self.label,
            "score": self.score,
            "outputs": json.dumps(dict(self.outputs), separators=(",", ":")),
            "runtime": self.runtime,
            "library_versions": json.dumps(dict(self.library_versions), sort_keys=True),
            "broker_timestamp_ms": self.broker_timestamp_ms,
            "processed_at": self.processed_at,
            "published": self.published,
            "filter_error": self.filter_error,
        }

    @classmethod
    def _from_row(cls, row: Any) -> Annotation:
        return cls(
            alert_id=int(row.alert_id),
            model=row.model,
            model_version=row.model_version,
            model_digest=row.model_digest,
            outputs=json.loads(row.outputs),
            label=row.label,
            score=row.score,
            pipeline=row.pipeline,
            runtime=row.runtime,
            library_versions=json.loads(row.library_versions),
            broker_timestamp_ms=row.broker_timestamp_ms,
            # SQLite hands back naive datetimes; every one stored is UTC.
            processed_at=(
                row.processed_at
                if row.processed_at.tzinfo
                else row.processed_at.replace(tzinfo=UTC)
            ),
            published=bool(row.published),
            filter_error=row.filter_error,
        )


class ResultStore:
    """Annotations in a registry database.  Use as a context manager or :meth:`close`.

    The store is synchronous (database I/O); asynchronous callers run its
    methods in a thread.
    """

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"the result store needs SQLite or PostgreSQL, not {engine.dialect.name}"
            )
        self._engine = engine

    @classmethod
    def open(cls, settings: Settings, *, create: bool = True) -> ResultStore:
        """The store in the registry database ``settings`` name, migrated to the newest schema.

        ``create=False`` is for readers: a registry that does not exist is
        :class:`~sciserve.errors.NotFound` rather than created.
        """
        engine = db.connect(settings.database_url, create=create)
        try:
            if create:
                settings.home.mkdir(parents=True, exist_ok=True)
            db.migrate(engine, lock_path=settings.home / ".migrate.lock", create=create)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, items: Sequence[Annotation]) -> int:
        """Insert ``items`` in one transaction, skipping any whose key is stored.

        Returns how many were new.  Safe to repeat, and safe against other
        processes writing the same keys at the same time.
        """
        return self.write_checked(items).new

    def write_checked(self, items: Sequence[Annotation]) -> WriteOutcome:
        """Like :meth:`write`, and say which annotations were new, already
        stored, or in conflict with the stored annotation of their key."""
        if not items:
            return WriteOutcome()
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(annotation_table)
            .on_conflict_do_nothing(index_elements=_KEY)
            # Only inserted rows come back, which is how new ones are counted
            # (drivers disagree on the row count of a batched insert).
            .returning(*_key_columns())
        )
        rows = [item._row() for item in items]
        engine = self._engine.execution_options(sciserve_write=True)
        try:
            with engine.connect() as conn, conn.begin():
                inserted = [tuple(row) for row in conn.execute(statement, rows).all()]
                by_key: dict[tuple[Any, ...], list[Annotation]] = {}
                for item in items:
                    by_key.setdefault(_key(item), []).append(item)
                for key in inserted:  # the first item with that key was stored
                    by_key[key].pop(0)
                left = [item for same_key in by_key.values() for item in same_key]
                stored = self._outputs(conn, {_key(a) for a in left})
        except sa.exc.OperationalError as exc:  # locked, disconnected, server gone
            raise Unavailable(f"cannot write annotations: {exc.orig}") from exc
        conflicts = [a.key for a in left if not _same(a.outputs, stored.get(_key(a)))]
        return WriteOutcome(
            new=len(inserted),
            duplicate=len(left) - len(conflicts),
            conflicting=len(conflicts),
            conflicts=tuple(conflicts[:_CONFLICTS_KEPT]),
        )

    @staticmethod
    def _outputs(conn: sa.Connection, keys: set[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """The stored outputs of ``keys``."""
        if not keys:
            return {}
        found: dict[tuple[Any, ...], Any] = {}
        ordered = sorted(keys)
        for start in range(0, len(ordered), 500):  # bounded statement size
            query = sa.select(*_key_columns(), annotation_table.c.outputs).where(
                sa.tuple_(*_key_columns()).in_(ordered[start : start + 500])
            )
            for row in conn.execute(query):
                found[(int(row.alert_id), row.model, row.model_version)] = json.loads(row.outputs)
        return found

    def count(self, *, pipeline: str | None = None, model: str | None = None) -> int:
        """How many annotations are stored (of one pipeline and/or model)."""
        query = sa.select(sa.func.count()).select_from(annotation_table)
        query = _where(query, pipeline, model)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def alert_ids(self, *, pipeline: str | None = None, model: str | None = None) -> list[int]:
        """The alert ids that have annotations, in ascending order, repeats included."""
        query = _where(sa.select(annotation_table.c.alert_id), pipeline, model)
        query = query.order_by(annotation_table.c.alert_id)
        with self._engine.connect() as conn:
            return [int(value) for value in conn.execute(query).scalars()]

    def get(self, alert_id: int, model: str, model_version: str) -> Annotation | None:
        """The annotation stored under one key, if any."""
        query = sa.select(annotation_table).where(
            annotation_table.c.alert_id == alert_id,
            annotation_table.c.model == model,
            annotation_table.c.model_version == model_version,
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Annotation._from_row(row)

    def read(
        self,
        *,
        pipeline: str | None = None,
        model: str | None = None,
        alert_id: int | None = None,
        limit: int | None = None,
    ) -> Iterator[Annotation]:
        """Every stored annotation (of one pipeline, model and/or alert), by
        alert id; the first ``limit`` of them if given."""
        query = _where(sa.select(annotation_table), pipeline, model).order_by(*_key_columns())
        if alert_id is not None:
            query = query.where(annotation_table.c.alert_id == alert_id)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                yield Annotation._from_row(row)


def _key_columns() -> list[sa.ColumnElement[Any]]:
    return [annotation_table.c[name] for name in _KEY]


def _key(item: Annotation) -> tuple[Any, ...]:
    return (item.alert_id, item.model, item.model_version)


def _same(ours: Any, stored: Any) -> bool:
    """Whether two annotations' outputs (nested lists of numbers) agree."""
    if isinstance(ours, Mapping) and isinstance(stored, Mapping):
        return ours.keys() == stored.keys() and all(_same(ours[k], stored[k]) for k in ours)
    if isinstance(ours, list | tuple) and isinstance(stored, list | tuple):
        return len(ours) == len(stored) and all(
            _same(a, b) for a, b in zip(ours, stored, strict=True)
        )
    if isinstance(ours, int | float) and isinstance(stored, int | float):
        return math.isclose(ours, stored, rel_tol=_SAME_OUTPUTS, abs_tol=_SAME_OUTPUTS)
    return bool(ours == stored)


def _where(query: Any, pipeline: str | None, model: str | None) -> Any:
    if pipeline is not None:
        query = query.where(annotation_table.c.pipeline == pipeline)
    if model is not None:
        query = query.where(annotation_table.c.model == model)
    return query
