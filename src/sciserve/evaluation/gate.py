"""Promotion requirements: ``"DATASET:metric <= threshold"``, parsed and checked.

A requirement names a dataset reference (which may hold ``/``, ``:`` and
``@`` itself: the metric follows the *last* colon), a headline metric, a
comparison and a finite threshold.  Checking one against an evaluation's
metrics says whether it passes and, if not, which number failed; an
undefined metric (``None``) never passes.  Storing policies and finding the
records is the registry's business; this module is only the arithmetic.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import MetricInputError
from .leaderboard import DIRECTIONS

__all__ = ["GateResult", "Requirement", "parse_requirement"]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

_PATTERN = re.compile(
    r"^\s*(?P<dataset>\S+):(?P<metric>[a-z][a-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)

#: Longest requirement text accepted (it is typed by people, stored and shown).
_MAX_LENGTH = 512


@dataclass(frozen=True)
class GateResult:
    """Whether one requirement passed, with the number it saw."""

    requirement: Requirement
    passed: bool
    actual: float | None

    def __str__(self) -> str:
        seen = "undefined" if self.actual is None else f"{self.actual:.6g}"
        verdict = "passes" if self.passed else "fails"
        return f"{self.requirement} {verdict}: {self.requirement.metric} is {seen}"


@dataclass(frozen=True)
class Requirement:
    """``dataset:metric op threshold``."""

    dataset: str
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.dataset}:{self.metric} {self.op} {self.threshold:g}"

    def check(self, scalars: Mapping[str, float | None]) -> GateResult:
        """Check against a result's ``scalars()``; a metric missing from them
        (another task's) is an error, an undefined one a failure."""
        if self.metric not in scalars:
            raise MetricInputError(
                f"{self.metric!r} is not among the evaluation's metrics {sorted(scalars)}"
            )
        actual = scalars[self.metric]
        passed = actual is not None and _OPERATORS[self.op](actual, self.threshold)
        return GateResult(requirement=self, passed=passed, actual=actual)


def parse_requirement(text: str) -> Requirement:
    """Parse ``"examples/lightcurves:1.0.0:weighted_log_loss <= 0.9"``."""
    if len(text) > _MAX_LENGTH:
        raise MetricInputError(f"a requirement is at most {_MAX_LENGTH} characters")
    match = _PATTERN.match(text)
    if match is None:
        raise MetricInputError(
            f"cannot read the requirement {text!r}: write DATASET:METRIC OP NUMBER, "
            "e.g. 'examples/lightcurves:weighted_log_loss <= 0.9' (OP one of <=, >=, <, >)"
        )
    metric = match["metric"]
    if metric not in DIRECTIONS:
        raise MetricInputError(
            f"unknown metric {metric!r} in {text!r}; known: {sorted(DIRECTIONS)}"
        )
    threshold = float(match["value"])
    if not math.isfinite(threshold):
        raise MetricInputError(f"the threshold of {text!r} is not a finite number")
    return Requirement(dataset=match["dataset"], metric=metric, op=match["op"], threshold=threshold)
