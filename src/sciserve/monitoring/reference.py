"""Reference statistics of a served model, and where they are kept.

A reference is what a model's traffic is compared with: the
:class:`~sciserve.monitoring.sketches.WindowStats` of an evaluation dataset
(:meth:`Reference.from_arrays`) or of a recorded window of traffic
(:meth:`Reference.from_window`, e.g. a monitor's ``freeze()``).  It is a few
KiB (sketches, not data), stored per model version in the registry database
(table ``monitor_references``), newest first.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..access._db import aware
from ..errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from ..registry.db import metadata, utcnow
from .sketches import Layout, WindowStats

__all__ = ["Reference", "ReferenceSource", "ReferenceStore", "references_table"]

#: Largest stored reference (compressed): a few hundred sketches.
MAX_REFERENCE_BYTES = 4 * 2**20

references_table = sa.Table(
    "monitor_references",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(80), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
)


class ReferenceSource(enum.Enum):
    """Where a reference's statistics came from."""

    DATASET = "dataset"
    TRAFFIC = "traffic"
    PACKAGE = "package"


@dataclass(frozen=True)
class Reference:
    """Statistics of reference data for one model version."""

    stats: WindowStats
    source: ReferenceSource
    created_at: datetime | None = None

    @classmethod
    def from_arrays(
        cls,
        layout: Layout,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        source: ReferenceSource = ReferenceSource.DATASET,
    ) -> Reference:
        """The statistics of a dataset: every input and output as one batch."""
        stats = layout.empty()
        layout.update(stats, inputs, outputs)
        if stats.rows == 0:
            raise InvalidInput("a reference needs at least one row of numeric inputs")
        return cls(stats, source)

    @classmethod
    def from_window(cls, stats: WindowStats) -> Reference:
        """A recorded window of traffic, frozen as the reference."""
        if stats.rows == 0:
            raise InvalidInput("the window holds no traffic yet")
        return cls(stats, ReferenceSource.TRAFFIC)

    def to_bytes(self) -> bytes:
        return zlib.compress(orjson.dumps(self.stats.to_dict()))

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        source: ReferenceSource = ReferenceSource.DATASET,
        created_at: datetime | None = None,
    ) -> Reference:
        try:
            # Bounded inflation: a stored blob is ours, but a corrupted one must not balloon.
            inflater = zlib.decompressobj()
            raw = inflater.decompress(blob, 16 * MAX_REFERENCE_BYTES)
            if inflater.unconsumed_tail:
                raise PayloadTooLarge("reference statistics are too large")
            data = orjson.loads(raw)
        except (zlib.error, orjson.JSONDecodeError) as exc:
            raise InvalidInput(f"malformed reference statistics: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput("malformed reference statistics: not an object")
        return cls(WindowStats.from_dict(data), source, created_at)


class ReferenceStore:
    """References in the registry database.  Synchronous: async callers use a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(self, model: str, version: str, digest: str, reference: Reference) -> None:
        blob = reference.to_bytes()
        if len(blob) > MAX_REFERENCE_BYTES:
            raise PayloadTooLarge(
                f"reference statistics take {len(blob)} bytes; at most {MAX_REFERENCE_BYTES}"
            )
        with (
            self._engine.execution_options(sciserve_write=True).connect() as conn,
            conn.begin(),
        ):
            conn.execute(
                references_table.insert().values(
                    model=model,
                    version=version,
                    digest=digest,
                    created_at=utcnow(),
                    source=reference.source.value,
                    blob=blob,
                )
            )

    def latest(self, digest: str) -> Reference:
        """The newest reference of the model version with content ``digest``."""
        query = (
            sa.select(
                references_table.c.blob,
                references_table.c.source,
                references_table.c.created_at,
            )
            .where(references_table.c.digest == digest)
            .order_by(references_table.c.id.desc())
            .limit(1)
        )
        try:
            with self._engine.connect() as conn, conn.begin():
                row = conn.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            # E.g. a read-only registry exported before references existed.
            raise Unavailable(f"cannot read reference statistics: {exc}") from exc
        if row is None:
            raise NotFound(f"no reference statistics for {digest}")
        return Reference.from_bytes(row.blob, ReferenceSource(row.source), aware(row.created_at))
