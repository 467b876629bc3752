"""Staleness: a served model that no longer fits what it sees, or has aged out.

A model is stale when a ``compatible_with`` constraint of its manifest
(``{"alert_schema": "lsst:<10"}``) does not admit what the server observes
(``lsst:11.1`` data), when it is older than a policy age, or when its latest
evaluation is worse than its gate.  Constraints are written
``family:specifier`` (a PEP 440 specifier set such as ``>=7.0,<10``); a bare
``family`` admits every version of it, and a value without a family
(``sciserve.examples.features v1``) must match exactly.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..errors import InvalidInput
from ..registry.db import utcnow

__all__ = ["Gate", "StaleReason", "Staleness", "check_staleness", "compatible"]

_OPERATORS = ("<", ">", "=", "!", "~")


class StaleReason(enum.Enum):
    """Why a model version is flagged stale."""

    INCOMPATIBLE = "incompatible"
    TOO_OLD = "too_old"
    BELOW_GATE = "below_gate"


@dataclass(frozen=True)
class Staleness:
    """One finding: its reason and a sentence that explains it."""

    reason: StaleReason
    detail: str


@dataclass(frozen=True)
class Gate:
    """The worst acceptable value of an evaluation metric."""

    metric: str
    threshold: float
    #: Whether larger values are better (accuracy) or worse (a loss).
    higher_is_better: bool = True

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


def compatible(constraint: str, observed: str) -> bool:
    """Whether ``observed`` (``lsst:11.1``) satisfies ``constraint`` (``lsst:<10``).

    A malformed constraint is :class:`~sciserve.errors.InvalidInput`; an
    observed value whose version cannot be read satisfies no version range.
    """
    family, sep, spec = constraint.partition(":")
    if not sep:
        # A bare family admits its every version; any other name must match exactly.
        return constraint.strip() in (observed.strip(), observed.partition(":")[0].strip())
    seen_family, seen_sep, seen_version = observed.partition(":")
    if seen_family.strip() != family.strip():
        return False
    spec = spec.strip()
    if not spec:
        return True
    try:
        specifiers = SpecifierSet(spec if spec.startswith(_OPERATORS) else f"=={spec}")
    except InvalidSpecifier as exc:
        raise InvalidInput(f"malformed compatibility constraint {constraint!r}") from exc
    if not seen_sep:
        return False
    try:
        version = Version(seen_version.strip())
    except InvalidVersion:
        return False
    return specifiers.contains(version, prereleases=True)


def check_staleness(
    compatible_with: Mapping[str, str],
    observed: Mapping[str, str],
    *,
    published_at: datetime | None = None,
    max_age: timedelta | None = None,
    evaluations: Mapping[str, float] | None = None,
    gates: tuple[Gate, ...] = (),
    now: datetime | None = None,
) -> list[Staleness]:
    """Every reason a model version is stale (empty: it is not).

    ``observed`` maps a ``compatible_with`` key (``alert_schema``) to what
    the server sees (``lsst:11.1``); keys not observed are not judged.
    ``evaluations`` are the latest metric values the ``gates`` judge.
    """
    found = []
    for key, constraint in compatible_with.items():
        seen = observed.get(key)
        if seen is not None and not compatible(constraint, seen):
            found.append(
                Staleness(
                    StaleReason.INCOMPATIBLE,
                    f"{key}: the model is declared for {constraint!r} but sees {seen!r}",
                )
            )
    if max_age is not None and published_at is not None:
        age = (now or utcnow()) - published_at
        if age > max_age:
            found.append(
                Staleness(
                    StaleReason.TOO_OLD,
                    f"published {age.days} days ago; the policy allows {max_age.days} days",
                )
            )
    for gate in gates:
        value = (evaluations or {}).get(gate.metric)
        if value is not None and not gate.passes(value):
            side = "at least" if gate.higher_is_better else "at most"
            found.append(
                Staleness(
                    StaleReason.BELOW_GATE,
                    f"latest {gate.metric} is {value:g}; the gate wants {side} {gate.threshold:g}",
                )
            )
    return found
