"""Promotion gates: what an evaluation must show before a version takes an alias.

A **policy** belongs to one model and one alias (``production`` by default)
and lists **requirements** such as ``lightcurves:weighted_log_loss <= 0.9``:
on the dataset ``lightcurves`` (split ``test`` unless stated), the metric
must compare so with the threshold.  :meth:`Registry.tag
<sciserve.registry.registry.Registry.tag>` checks the policy inside the same
transaction that moves the alias, so a version without a passing
**evaluation record** cannot take the alias by any route (CLI, REST, remote
CLI); only ``force`` (an admin's, recorded in the audit trail with what
failed) overrides it.

Evaluation records are append-only rows in the registry database.  For each
requirement the *newest* record of that exact version (name, version and
digest) on that dataset and split decides: re-evaluating after a fix counts,
an old passing record cannot outvote a newer failing one.

Who may write what is the adapters' concern; the rule they follow is that a
record is evidence only if whoever wrote it could also have moved the alias
without it, so over the REST API records and policies need ``admin`` in the
model's namespace (a ``publish`` token could otherwise post itself a passing
record).
"""

from __future__ import annotations

import json
import math
import operator
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import InvalidInput, PolicyViolation
from ..package.reference import parse_reference
from . import db

__all__ = [
    "DEFAULT_SPLIT",
    "EvaluationInfo",
    "Failure",
    "Policy",
    "Requirement",
    "add_evaluation",
    "check",
    "clear_policy",
    "evaluations",
    "evaluations_table",
    "get_evaluation",
    "parse_requirement",
    "policies",
    "policies_table",
    "set_policy",
    "violation",
]

#: The split a requirement reads unless it names another.
DEFAULT_SPLIT = "test"
#: Bounds on what a caller may store (a policy is read on every tag).
_MAX_REQUIREMENTS = 32
_MAX_METRICS = 4096
_MAX_RECORD_BYTES = 1 << 20

evaluations_table = sa.Table(
    "evaluations",
    db.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("record_id", sa.String(32), nullable=False, unique=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("model_digest", sa.String(80), nullable=False),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("dataset_version", sa.String(64), nullable=False),
    sa.Column("dataset_digest", sa.String(80), nullable=False),
    sa.Column("split", sa.String(64), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(128)),
    sa.Index("ix_evaluations_model", "namespace", "name", "version"),
)

policies_table = sa.Table(
    "promotion_policies",
    db.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("requirements", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(128)),
    sa.UniqueConstraint("namespace", "name", "alias", name="uq_promotion_policies_model_alias"),
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}
_METRIC = r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}"
# The dataset is everything before the last ':' that precedes the metric, so
# ``ns/data:1.0:accuracy >= 0.9`` pins version 1.0 of ns/data.
_REQUIREMENT_RE = re.compile(
    rf"\s*(?P<dataset>[^\s:][^\s]*?):(?P<metric>{_METRIC})\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<value>[^\s]+)\s*"
)


@dataclass(frozen=True)
class Requirement:
    """One line of a policy: ``DATASET[:VERSION]:METRIC OP THRESHOLD`` on a split."""

    dataset: str  #: ``namespace/name``
    dataset_version: str | None
    metric: str
    op: str
    threshold: float
    split: str = DEFAULT_SPLIT

    def __str__(self) -> str:
        version = f":{self.dataset_version}" if self.dataset_version else ""
        split = "" if self.split == DEFAULT_SPLIT else f" (split {self.split})"
        return f"{self.dataset}{version}:{self.metric} {self.op} {self.threshold:g}{split}"

    def passes(self, value: float) -> bool:
        # NaN compares false with everything: a metric that could not be
        # computed never passes a gate.
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "split": self.split,
            "text": str(self),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Requirement:
        return cls(
            dataset=str(doc["dataset"]),
            dataset_version=doc.get("dataset_version"),
            metric=str(doc["metric"]),
            op=str(doc["op"]),
            threshold=float(doc["threshold"]),
            split=str(doc.get("split", DEFAULT_SPLIT)),
        )


def parse_requirement(text: str, split: str = DEFAULT_SPLIT) -> Requirement:
    """``"lightcurves:weighted_log_loss <= 0.9"`` as a :class:`Requirement`."""
    if not isinstance(text, str) or len(text) > 512:
        raise InvalidInput("a requirement is a string of at most 512 characters")
    match = _REQUIREMENT_RE.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"cannot read the requirement {text[:80]!r}: write DATASET[:VERSION]:METRIC OP VALUE "
            "with OP one of <=, >=, <, >, ==, e.g. 'lightcurves:weighted_log_loss <= 0.9'"
        )
    try:
        threshold = float(match["value"])
    except ValueError:
        raise InvalidInput(f"{match['value']!r} in {text!r} is not a number") from None
    if not math.isfinite(threshold):
        raise InvalidInput(f"the threshold in {text!r} must be a finite number")
    ref = parse_reference(match["dataset"])
    if ref.alias is not None:
        raise InvalidInput(
            f"a requirement names a dataset or one exact version of it, not an alias: {text!r}"
        )
    if not split or len(split) > 64 or not split.isprintable():
        raise InvalidInput(f"not a split name: {split!r}")
    return Requirement(
        dataset=f"{ref.namespace}/{ref.name}",
        dataset_version=ref.version,
        metric=match["metric"],
        op=match["op"],
        threshold=threshold,
        split=split,
    )


@dataclass(frozen=True)
class Policy:
    """The requirements a version must meet before it takes ``alias``."""

    namespace: str
    name: str
    alias: str
    requirements: tuple[Requirement, ...]
    updated_at: datetime | None = None
    updated_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "alias": self.alias,
            "requirements": [r.to_dict() for r in self.requirements],
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Policy:
        """The inverse of :meth:`to_dict` (a policy a server sent)."""
        try:
            updated = doc.get("updated_at")
            return cls(
                namespace=str(doc["namespace"]),
                name=str(doc["name"]),
                alias=str(doc["alias"]),
                requirements=tuple(Requirement.from_dict(r) for r in doc["requirements"]),
                updated_at=datetime.fromisoformat(updated) if updated else None,
                updated_by=doc.get("updated_by"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"malformed promotion policy: {exc}") from exc


@dataclass(frozen=True)
class EvaluationInfo:
    """One stored evaluation record: which version, on which data, with what result."""

    record_id: str
    namespace: str
    name: str
    version: str
    model_digest: str
    dataset: str
    dataset_version: str
    dataset_digest: str
    split: str
    metrics: dict[str, float]
    record: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    created_by: str | None = None

    @property
    def model_ref(self) -> str:
        return f"{self.namespace}/{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "model": self.model_ref,
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "model_digest": self.model_digest,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "dataset_digest": self.dataset_digest,
            "split": self.split,
            # JSON has no NaN: a metric that could not be computed is null.
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            "record": self.record,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EvaluationInfo:
        """The inverse of :meth:`to_dict` (a record a server sent)."""
        try:
            created = doc.get("created_at")
            return cls(
                record_id=str(doc["record_id"]),
                namespace=str(doc["namespace"]),
                name=str(doc["name"]),
                version=str(doc["version"]),
                model_digest=str(doc["model_digest"]),
                dataset=str(doc["dataset"]),
                dataset_version=str(doc["dataset_version"]),
                dataset_digest=str(doc["dataset_digest"]),
                split=str(doc["split"]),
                metrics={
                    str(k): math.nan if v is None else float(v) for k, v in doc["metrics"].items()
                },
                record=dict(doc.get("record") or {}),
                created_at=datetime.fromisoformat(created) if created else None,
                created_by=doc.get("created_by"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"malformed evaluation record: {exc}") from exc


@dataclass(frozen=True)
class Failure:
    """A requirement the version does not meet, and what the newest record says."""

    requirement: Requirement
    value: float | None  #: ``None``: no record, or the record lacks the metric
    record_id: str | None

    def __str__(self) -> str:
        if self.record_id is None:
            return f"{self.requirement}: no evaluation of this version on that dataset"
        if self.value is None:
            return (
                f"{self.requirement}: evaluation {self.record_id} has no metric "
                f"{self.requirement.metric!r}"
            )
        return f"{self.requirement}: evaluation {self.record_id} has {self.value:.6g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirement": str(self.requirement),
            "metric": self.requirement.metric,
            "value": self.value,
            "threshold": self.requirement.threshold,
            "record_id": self.record_id,
        }


# -- storage -----------------------------------------------------------------


def _utc(at: datetime | None) -> datetime | None:
    # SQLite keeps no time zone; every time stored here is UTC.
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


def _metrics(doc: Any) -> dict[str, float]:
    if not isinstance(doc, Mapping) or len(doc) > _MAX_METRICS:
        raise InvalidInput(f"metrics must be an object of at most {_MAX_METRICS} numbers")
    out: dict[str, float] = {}
    for key, value in doc.items():
        if not isinstance(key, str) or not re.fullmatch(_METRIC, key):
            raise InvalidInput(f"not a metric name: {str(key)[:80]!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"metric {key!r} is not a number")
        out[key] = float(value)
    return out


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON: NaN and infinities (an undefined AUC) become null."""
    if depth > 32:
        raise InvalidInput("an evaluation record nests more than 32 levels")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    raise InvalidInput(f"an evaluation record holds a {type(value).__name__}, not JSON")


def add_evaluation(
    conn: Connection,
    *,
    namespace: str,
    name: str,
    version: str,
    model_digest: str,
    dataset: str,
    dataset_version: str,
    dataset_digest: str,
    split: str,
    metrics: Mapping[str, Any],
    record: Mapping[str, Any],
    actor: str | None,
) -> EvaluationInfo:
    """Store one record (the caller checked the model version exists)."""
    values = _metrics(metrics)
    body = json.dumps(_json_safe(dict(record)), sort_keys=True, allow_nan=False)
    if len(body) > _MAX_RECORD_BYTES:
        raise InvalidInput(f"an evaluation record is at most {_MAX_RECORD_BYTES} bytes of JSON")
    ref = parse_reference(dataset)
    if ref.version is not None or ref.alias is not None:
        raise InvalidInput("name the dataset as [NAMESPACE/]NAME and its version apart")
    info = EvaluationInfo(
        record_id=secrets.token_hex(8),
        namespace=namespace,
        name=name,
        version=version,
        model_digest=model_digest,
        dataset=f"{ref.namespace}/{ref.name}",
        dataset_version=dataset_version,
        dataset_digest=dataset_digest,
        split=split,
        metrics=values,
        record=json.loads(body),
        created_at=db.utcnow(),
        created_by=actor,
    )
    conn.execute(
        sa.insert(evaluations_table).values(
            record_id=info.record_id,
            namespace=namespace,
            name=name,
            version=version,
            model_digest=model_digest,
            dataset=info.dataset,
            dataset_version=dataset_version,
            dataset_digest=dataset_digest,
            split=split,
            # NaN is not JSON: a metric that could not be computed is stored as null.
            metrics=json.dumps(
                {k: (None if math.isnan(v) else v) for k, v in values.items()}, sort_keys=True
            ),
            record=body,
            created_at=info.created_at,
            created_by=actor,
        )
    )
    return info


def _info(row: Any) -> EvaluationInfo:
    metrics = {k: (math.nan if v is None else float(v)) for k, v in json.loads(row.metrics).items()}
    return EvaluationInfo(
        record_id=row.record_id,
        namespace=row.namespace,
        name=row.name,
        version=row.version,
        model_digest=row.model_digest,
        dataset=row.dataset,
        dataset_version=row.dataset_version,
        dataset_digest=row.dataset_digest,
        split=row.split,
        metrics=metrics,
        record=json.loads(row.record),
        created_at=_utc(row.created_at),
        created_by=row.created_by,
    )


def evaluations(
    conn: Connection,
    *,
    namespace: str | None = None,
    name: str | None = None,
    version: str | None = None,
    dataset: str | None = None,
    limit: int = 1000,
) -> list[EvaluationInfo]:
    """Records, newest first, narrowed by model and dataset (``namespace/name``)."""
    t = evaluations_table
    query = sa.select(t).order_by(t.c.id.desc()).limit(limit)
    for column, value in (
        (t.c.namespace, namespace),
        (t.c.name, name),
        (t.c.version, version),
        (t.c.dataset, dataset),
    ):
        if value is not None:
            query = query.where(column == value)
    return [_info(row) for row in conn.execute(query)]


def get_evaluation(conn: Connection, record_id: str) -> EvaluationInfo | None:
    row = conn.execute(
        sa.select(evaluations_table).where(evaluations_table.c.record_id == record_id)
    ).first()
    return None if row is None else _info(row)


def set_policy(
    conn: Connection,
    namespace: str,
    name: str,
    alias: str,
    requirements: list[Requirement],
    actor: str | None,
) -> Policy:
    if not requirements:
        raise InvalidInput("a policy needs at least one requirement (clear it to remove it)")
    if len(requirements) > _MAX_REQUIREMENTS:
        raise InvalidInput(f"a policy has at most {_MAX_REQUIREMENTS} requirements")
    t = policies_table
    body = json.dumps([r.to_dict() for r in requirements], sort_keys=True)
    now = db.utcnow()
    where = (t.c.namespace == namespace, t.c.name == name, t.c.alias == alias)
    done = conn.execute(
        sa.update(t).where(*where).values(requirements=body, updated_at=now, updated_by=actor)
    ).rowcount
    if not done:
        conn.execute(
            sa.insert(t).values(
                namespace=namespace,
                name=name,
                alias=alias,
                requirements=body,
                updated_at=now,
                updated_by=actor,
            )
        )
    return Policy(namespace, name, alias, tuple(requirements), now, actor)


def clear_policy(conn: Connection, namespace: str, name: str, alias: str) -> bool:
    t = policies_table
    return bool(
        conn.execute(
            sa.delete(t).where(t.c.namespace == namespace, t.c.name == name, t.c.alias == alias)
        ).rowcount
    )


def policies(conn: Connection, namespace: str, name: str) -> list[Policy]:
    t = policies_table
    rows = conn.execute(
        sa.select(t).where(t.c.namespace == namespace, t.c.name == name).order_by(t.c.alias)
    )
    return [
        Policy(
            row.namespace,
            row.name,
            row.alias,
            tuple(Requirement.from_dict(doc) for doc in json.loads(row.requirements)),
            _utc(row.updated_at),
            row.updated_by,
        )
        for row in rows
    ]


def check(
    conn: Connection, namespace: str, name: str, version: str, digest: str, alias: str
) -> list[Failure]:
    """The requirements of ``alias``'s policy that this version does not meet."""
    policy = next((p for p in policies(conn, namespace, name) if p.alias == alias), None)
    if policy is None:
        return []
    t = evaluations_table
    failures = []
    for req in policy.requirements:
        query = (
            sa.select(t)
            .where(
                t.c.namespace == namespace,
                t.c.name == name,
                t.c.version == version,
                t.c.model_digest == digest,
                t.c.dataset == req.dataset,
                t.c.split == req.split,
            )
            .order_by(t.c.id.desc())
            .limit(1)
        )
        if req.dataset_version is not None:
            query = query.where(t.c.dataset_version == req.dataset_version)
        row = conn.execute(query).first()
        if row is None:
            failures.append(Failure(req, None, None))
            continue
        value = _info(row).metrics.get(req.metric)
        if value is None or not req.passes(value):
            failures.append(Failure(req, value, row.record_id))
    return failures


def violation(ref: str, alias: str, failures: list[Failure]) -> PolicyViolation:
    """The error a refused tag raises: every failing requirement, named."""
    lines = "; ".join(str(f) for f in failures)
    return PolicyViolation(
        f"{ref} may not take the alias {alias!r}: its promotion policy is not met ({lines}); "
        "evaluate it ('sciserve evaluate') or, as an admin, force the tag",
        failures=[f.to_dict() for f in failures],
    )
