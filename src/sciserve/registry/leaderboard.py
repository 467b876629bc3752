"""Leaderboards: model versions ranked by one metric of their evaluation records on a dataset.

A leaderboard is computed, never stored: from the records of one dataset and
split it takes, for each model version (name, version and digest), its
newest record — the same record a promotion gate would read — and ranks the
versions by the metric.  Versions whose newest record lacks the metric, or
holds NaN, are left out and counted.  Equal values share a rank ("1, 2, 2,
4"); the order among them is the reference's, so the table is the same on
every call.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .promotion import DEFAULT_SPLIT, EvaluationInfo

__all__ = ["LOWER_IS_BETTER", "Board", "Entry", "lower_is_better", "rank"]

#: Metrics where a smaller value ranks higher; every other metric ranks the
#: larger value first unless the caller says otherwise.
LOWER_IS_BETTER = frozenset(
    {
        "log_loss",
        "weighted_log_loss",
        "expected_calibration_error",
        "ece",
        "mae",
        "rmse",
        "mse",
        "resolution",
        "resolution_68",
        "abs_bias",
        "latency_p50_ms",
        "latency_p99_ms",
    }
)


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (by its last dotted part)."""
    return metric in LOWER_IS_BETTER or metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


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
    lower_is_better: bool
    entries: tuple[Entry, ...]
    unranked: tuple[str, ...]  #: versions whose newest record lacks the metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "metric": self.metric,
            "order": "ascending" if self.lower_is_better else "descending",
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
                lower_is_better=doc["order"] == "ascending",
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
            writer.writerow(
                [e.rank, e.model, repr(e.value), e.record_id, e.dataset_version, e.model_digest]
            )
        return out.getvalue()


def rank(
    records: Iterable[EvaluationInfo],
    dataset: str,
    metric: str,
    *,
    split: str = DEFAULT_SPLIT,
    lower: bool | None = None,
) -> Board:
    """The leaderboard of ``metric`` on ``dataset``/``split`` from ``records``, newest first
    (as :meth:`Registry.evaluations <sciserve.registry.registry.Registry.evaluations>` lists them).
    """
    if not metric or len(metric) > 128:
        raise InvalidInput("name the metric to rank by")
    lower = lower_is_better(metric) if lower is None else lower
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
            ranked.append((value if lower else -value, rec.model_ref, rec, value))
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
    return Board(dataset, split, metric, lower, tuple(entries), tuple(sorted(unranked)))

