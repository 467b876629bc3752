"""Ranking model versions by one metric of their evaluations on one dataset.

Which way is better is a property of the metric (:data:`DIRECTIONS`): higher
for accuracies and AUCs, lower for losses and errors, closer to zero for a
bias.  Equal values share a rank (1, 2, 2, 4) and are listed by model
reference, so the table is the same on every run.  The CSV export guards
against spreadsheet formulas: a text cell starting with ``=``, ``+``, ``-``,
``@``, tab or carriage return gets a leading ``'``, since model names come
from whoever published them.
"""

from __future__ import annotations

import csv
import enum
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import MetricInputError
from .runner import EvaluationRecord

__all__ = ["DIRECTIONS", "Direction", "LeaderboardRow", "leaderboard", "to_csv"]


class Direction(enum.StrEnum):
    """Which values of a metric are better."""

    HIGHER = "higher"
    LOWER = "lower"
    #: Closer to zero: a bias of -0.1 is as good as one of +0.1.
    ZERO = "zero"


#: Every headline metric (``scalars()`` of a result) and its direction.
DIRECTIONS: dict[str, Direction] = {
    "accuracy": Direction.HIGHER,
    "balanced_accuracy": Direction.HIGHER,
    "macro_precision": Direction.HIGHER,
    "macro_recall": Direction.HIGHER,
    "macro_f1": Direction.HIGHER,
    "roc_auc_macro": Direction.HIGHER,
    "log_loss": Direction.LOWER,
    "weighted_log_loss": Direction.LOWER,
    "expected_calibration_error": Direction.LOWER,
    "mae": Direction.LOWER,
    "rmse": Direction.LOWER,
    "bias": Direction.ZERO,
    "resolution_sigma": Direction.LOWER,
    "resolution_68": Direction.LOWER,
}


@dataclass(frozen=True)
class LeaderboardRow:
    """One model version's place; ``value`` ``None`` (undefined) ranks last."""

    rank: int
    model: str
    model_digest: str
    value: float | None
    rows: int
    created_at: str


def _key(direction: Direction, value: float | None) -> float:
    if value is None:
        return math.inf
    if direction is Direction.HIGHER:
        return -value
    if direction is Direction.ZERO:
        return abs(value)
    return value


def leaderboard(records: Sequence[EvaluationRecord], metric: str) -> list[LeaderboardRow]:
    """Rank ``records`` (one dataset digest and split, one task) by ``metric``.

    A model evaluated more than once keeps its latest record.
    """
    direction = DIRECTIONS.get(metric)
    if direction is None:
        raise MetricInputError(f"unknown metric {metric!r}; known: {sorted(DIRECTIONS)}")
    if not records:
        return []
    datasets = {(r.dataset_digest, r.split) for r in records}
    if len(datasets) > 1:
        raise MetricInputError(
            f"records of {len(datasets)} different dataset digests or splits: rank the "
            "evaluations of one dataset split at a time"
        )
    latest: dict[str, EvaluationRecord] = {}
    for record in records:
        seen = latest.get(record.model_digest)
        if seen is None or record.created_at > seen.created_at:
            latest[record.model_digest] = record
    entries = []
    for record in latest.values():
        scalars = record.metrics.scalars()
        if metric not in scalars:
            raise MetricInputError(
                f"{metric!r} is not a {record.task.value} metric (of {record.model})"
            )
        entries.append((record, scalars[metric]))
    entries.sort(key=lambda e: (_key(direction, e[1]), e[0].model, e[0].model_digest))
    rows: list[LeaderboardRow] = []
    for position, (record, value) in enumerate(entries, start=1):
        tied = bool(rows) and _key(direction, rows[-1].value) == _key(direction, value)
        rows.append(
            LeaderboardRow(
                rank=rows[-1].rank if tied else position,
                model=record.model,
                model_digest=record.model_digest,
                value=value,
                rows=record.rows,
                created_at=record.created_at,
            )
        )
    return rows


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def to_csv(rows: Sequence[LeaderboardRow], metric: str) -> str:
    """The leaderboard as CSV text, with a header naming the metric."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "model", "model_digest", metric, "rows", "created_at"])
    for row in rows:
        writer.writerow(
            [
                _cell(v)
                for v in (
                    row.rank,
                    row.model,
                    row.model_digest,
                    row.value,
                    row.rows,
                    row.created_at,
                )
            ]
        )
    return out.getvalue()
