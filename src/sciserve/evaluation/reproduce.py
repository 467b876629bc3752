"""Whether a re-run reproduced a model's outputs: bit for bit, within a
tolerance, or not at all, and where they differ.

Bit-identical means equal sha256 (:func:`.digest.predictions_sha256`).
Within tolerance means same names, dtypes and shapes, with every value
within ``atol + rtol * |expected|`` of the recorded one (NaN only where NaN
was).  Floating-point outputs can differ in the last bits between runs with
other thread counts, batch sizes or CPU instruction sets (sums taken in
another order round differently), which a tolerance allows and a digest
does not.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MetricInputError
from .digest import predictions_sha256

__all__ = ["OutputDifference", "Reproduction", "Verdict", "compare_outputs"]

#: Rows quoted per differing output, at most.
_QUOTED_ROWS = 10


class Verdict(enum.StrEnum):
    """How closely a re-run matched."""

    BIT_IDENTICAL = "bit-identical"
    WITHIN_TOLERANCE = "within-tolerance"
    DIFFERENT = "different"


@dataclass(frozen=True)
class OutputDifference:
    """How one output differs: why (``reason``), how many values are outside
    the tolerance, the largest absolute difference and the first rows."""

    name: str
    reason: str
    differing: int
    max_abs_difference: float | None
    rows: tuple[int, ...]


@dataclass(frozen=True)
class Reproduction:
    """The verdict, both digests and every output that differs at all."""

    verdict: Verdict
    expected_sha256: str
    actual_sha256: str
    rtol: float
    atol: float
    differences: tuple[OutputDifference, ...]


def _compare(
    name: str, expected: np.ndarray, actual: np.ndarray, rtol: float, atol: float
) -> tuple[OutputDifference | None, bool]:
    """The difference of one output (``None`` if bit-identical) and whether it is tolerated."""
    if expected.dtype != actual.dtype or expected.shape != actual.shape:
        reason = f"{expected.dtype}{list(expected.shape)} became {actual.dtype}{list(actual.shape)}"
        return OutputDifference(name, reason, -1, None, ()), False
    if np.array_equal(expected, actual, equal_nan=expected.dtype.kind in "fc"):
        return None, True
    if expected.dtype.kind not in "fc":
        bad = expected != actual
        close = False
        diff = None
    else:
        bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        close = not bad.any()
        both = np.isfinite(expected) & np.isfinite(actual)
        delta = np.abs(actual[both].astype(np.float64) - expected[both].astype(np.float64))
        diff = float(delta.max()) if delta.size else None
        if close:
            # Within the tolerance, yet not identical: report where it moved.
            bad = expected != actual
    flat = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim > 1 else bad
    rows = tuple(int(i) for i in np.flatnonzero(flat)[:_QUOTED_ROWS])
    reason = "within the tolerance" if close else "outside the tolerance"
    return OutputDifference(name, reason, int(bad.sum()), diff, rows), close


def compare_outputs(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-7,
) -> Reproduction:
    """Compare a re-run's outputs with the recorded ones, by name."""
    if not (rtol >= 0 and atol >= 0):
        raise MetricInputError(f"tolerances must be 0 or more, got rtol={rtol}, atol={atol}")
    want = {str(k): np.asarray(v) for k, v in expected.items()}
    got = {str(k): np.asarray(v) for k, v in actual.items()}
    want_sha, got_sha = predictions_sha256(want), predictions_sha256(got)
    differences: list[OutputDifference] = []
    tolerated = True
    for name in sorted(set(want) | set(got)):
        if name not in got or name not in want:
            reason = "missing from the re-run" if name not in got else "not in the record"
            differences.append(OutputDifference(name, reason, -1, None, ()))
            tolerated = False
            continue
        found, ok = _compare(name, want[name], got[name], rtol, atol)
        tolerated = tolerated and ok
        if found is not None:
            differences.append(found)
    if want_sha == got_sha:
        verdict = Verdict.BIT_IDENTICAL
    elif tolerated:
        verdict = Verdict.WITHIN_TOLERANCE
    else:
        verdict = Verdict.DIFFERENT
    return Reproduction(verdict, want_sha, got_sha, rtol, atol, tuple(differences))
