"""Leaderboards: model versions ranked by one metric of their evaluation records on a dataset.

A leaderboard is computed, never stored: from the records of one dataset and
split it takes, for each model version (name, version and digest), its
newest record — the same record a promotion gate would read — and ranks the
versions by the metric in its own direction (:data:`DIRECTIONS`: scores
high first, losses and errors low first, a bias nearest zero first).
Versions whose newest record lacks the metric, or holds NaN, are left out
and counted.  Equal values share a rank ("1, 2, 2,
4"); the order among them is the reference's, so the table is the same on
every call.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .promotion import DEFAULT_SPLIT, EvaluationInfo

__all__ = ["DIRECTIONS", "Board", "Direction", "Entry", "direction_of", "rank"]


class Direction(enum.StrEnum):
    """Which values of a metric are better."""

    HIGHER = "higher"
    LOWER = "lower"
    #: Closer to zero: a bias of -0.1 is as good as one of +0.1.
    ZERO = "zero"


#: The headline metrics of :mod:`sciserve.evaluation` (``scalars()`` of a
#: result) and their directions; per-class metrics take their last part's.
DIRECTIONS: dict[str, Direction] = {
    "accuracy": Direction.HIGHER,
    "balanced_accuracy": Direction.HIGHER,
    "macro_precision": Direction.HIGHER,
    "macro_recall": Direction.HIGHER,
    "macro_f1": Direction.HIGHER,
    "precision": Direction.HIGHER,
    "recall": Direction.HIGHER,
    "f1": Direction.HIGHER,
    "roc_auc": Direction.HIGHER,
    "roc_auc_macro": Direction.HIGHER,
    "log_loss": Direction.LOWER,
    "weighted_log_loss": Direction.LOWER,
    "expected_calibration_error": Direction.LOWER,
    "mae": Direction.LOWER,
    "rmse": Direction.LOWER,
    "bias": Direction.ZERO,
    "resolution_sigma": Direction.LOWER,
    "resolution_68": Direction.LOWER,
    "latency_p50_ms": Direction.LOWER,
    "latency_p99_ms": Direction.LOWER,
    "rows_per_second": Direction.HIGHER,
}


def direction_of(metric: str) -> Direction | None:
    """The direction of ``metric`` (by its last dotted part), or ``None`` if unknown."""
    return DIRECTIONS.get(metric) or DIRECTIONS.get(metric.rsplit(".", 1)[-1])


def _key(direction: Direction, value: float) -> float:
    if direction is Direction.HIGHER:
        return -value
    if direction is Direction.ZERO:
        return abs(value)
    return value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    # A spreadsheet runs a cell that starts like a formula; model names and
    # ids come from whoever published them.
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class Entry:
    """One row: a model version, its value and the record it comes from."""

    rank: int
    model: str  #: ``namespace/name:version``
    model_digest: str
    value: float
    record_id: str
    dataset_version: str
    created_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "model": self.model,
            "model_digest": self.model_digest,
            "value": self.value,
            "record_id": self.record_id,
            "dataset_version": self.dataset_version,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Board:
    """A ranked table, and the versions that could not be ranked."""

    dataset: str
    split: str
    metric: str
    direction: Direction
    entries: tuple[Entry, ...]
    unranked: tuple[str, ...]  #: versions whose newest record lacks the metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "metric": self.metric,
            "direction": self.direction.value,
            "entries": [e.to_dict() for e in self.entries],
            "unranked": list(self.unranked),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Board:
        """The inverse of :meth:`to_dict` (a board a server sent)."""
        try:
            return cls(
                dataset=str(doc["dataset"]),
                split=str(doc["split"]),
                metric=str(doc["metric"]),
                direction=Direction(doc["direction"]),
                entries=tuple(
                    Entry(
                        rank=int(e["rank"]),
                        model=str(e["model"]),
                        model_digest=str(e["model_digest"]),
                        value=float(e["value"]),
                        record_id=str(e["record_id"]),
                        dataset_version=str(e["dataset_version"]),
                        created_at=e.get("created_at"),
                    )
                    for e in doc["entries"]
                ),
                unranked=tuple(str(u) for u in doc["unranked"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed leaderboard: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rank", "model", self.metric, "record_id", "dataset_version", "digest"])
        for e in self.entries:
            row = [e.rank, e.model, repr(e.value), e.record_id, e.dataset_version, e.model_digest]
            writer.writerow([_cell(v) for v in row])
        return out.getvalue()


def rank(
    records: Iterable[EvaluationInfo],
    dataset: str,
    metric: str,
    *,
    split: str = DEFAULT_SPLIT,
    direction: Direction | None = None,
) -> Board:
    """The leaderboard of ``metric`` on ``dataset``/``split`` from ``records``, newest first
    (as :meth:`Registry.evaluations <sciserve.registry.registry.Registry.evaluations>` lists them).
    """
    if not metric or len(metric) > 128:
        raise InvalidInput("name the metric to rank by")
    direction = direction or direction_of(metric)
    if direction is None:
        raise InvalidInput(
            f"which way is better for {metric[:80]!r} is not known: say it "
            f"(higher, lower or zero); known metrics: {', '.join(sorted(DIRECTIONS))}"
        )
    newest: dict[tuple[str, str, str, str], EvaluationInfo] = {}
    for rec in records:
        if rec.dataset != dataset or rec.split != split:
            continue
        # Newest first: the first record of a version is the one that counts.
        newest.setdefault((rec.namespace, rec.name, rec.version, rec.model_digest), rec)
    ranked, unranked = [], []
    for rec in newest.values():
        value = rec.metrics.get(metric)
        if value is None or math.isnan(value):
            unranked.append(rec.model_ref)
        else:
            ranked.append((_key(direction, value), rec.model_ref, rec, value))
    ranked.sort(key=lambda item: (item[0], item[1]))
    entries: list[Entry] = []
    for position, (key_value, ref, rec, value) in enumerate(ranked, start=1):
        tied = entries and ranked[position - 2][0] == key_value
        entries.append(
            Entry(
                rank=entries[-1].rank if tied else position,
                model=ref,
                model_digest=rec.model_digest,
                value=value,
                record_id=rec.record_id,
                dataset_version=rec.dataset_version,
                created_at=rec.created_at.isoformat() if rec.created_at else None,
            )
        )
    return Board(dataset, split, metric, direction, tuple(entries), tuple(sorted(unranked)))
