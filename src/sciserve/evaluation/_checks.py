"""Labels and predictions checked before any metric sees them.

Every refusal is a :class:`~sciserve.errors.MetricInputError` that says what
was wrong and where (how many rows, the first one), because a metric computed
over NaN or over labels the model does not know is a wrong number, not an
error anyone would notice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MetricInputError

__all__ = ["ClassSet", "as_array", "as_labels", "as_probabilities", "as_values", "row_sums"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: How far a row of probabilities may sum from 1 before it is refused rather
#: than normalised: float32 softmax outputs stay within 1e-6; logits, scores
#: or a missing column are off by far more.
DEFAULT_ROW_TOLERANCE = 1e-3

#: Offending values quoted in an error message, at most.
_QUOTED = 5

ClassSet = tuple[str, ...]


def _where(mask: Any) -> str:
    rows = np.flatnonzero(mask)
    return f"{rows.size} row(s), the first at index {int(rows[0])}"


def row_sums(matrix: FloatArray) -> FloatArray:
    """Per-row sums, column by column: numpy's ``sum(axis=1)`` is slow over a
    few columns, and a BLAS product could add in another order on another
    machine; this adds left to right, the same everywhere."""
    total = matrix[:, 0].copy()
    for j in range(1, matrix.shape[1]):
        total += matrix[:, j]
    return total


def as_array(value: Any, what: str) -> npt.NDArray[Any]:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"{what} cannot be read as an array: {exc}") from exc
    return array


def as_probabilities(
    value: Any, *, tolerance: float = DEFAULT_ROW_TOLERANCE, what: str = "probabilities"
) -> FloatArray:
    """``value`` as a float64 ``(N, K)`` array of per-row class probabilities.

    Refused: not 2-D, fewer than two columns, no rows, a non-float dtype,
    NaN or infinite values, negative values, or a row whose sum is further
    than ``tolerance`` from 1 (logits passed as probabilities).
    """
    array = as_array(value, what)
    if array.ndim != 2:
        raise MetricInputError(f"{what} must be 2-D (rows, classes), got shape {array.shape}")
    if array.shape[0] == 0:
        raise MetricInputError(f"{what} has no rows: there is nothing to evaluate")
    if array.shape[1] < 2:
        raise MetricInputError(
            f"{what} has {array.shape[1]} column(s); a classifier's output needs one "
            "per class (at least 2)"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise MetricInputError(f"{what} must be floating point, got dtype {array.dtype}")
    probs = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise MetricInputError(f"{what} hold NaN or infinite values in {_where(bad)}")
    negative = (probs < 0).any(axis=1)
    if negative.any():
        raise MetricInputError(f"{what} hold negative values in {_where(negative)}")
    sums = row_sums(probs)
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise MetricInputError(
            f"{what} rows must sum to 1 (within {tolerance:g}): {_where(off)} sums to "
            f"{float(sums[first]):.6g}; pass probabilities, not logits or scores"
        )
    return probs


def as_labels(
    value: Any, n_rows: int, classes: Sequence[Any] | None, n_classes: int
) -> tuple[IntArray, ClassSet]:
    """True labels as column indices ``0..K-1``, and the class names.

    Without ``classes`` the labels must be integers in ``[0, n_classes)``
    (column indices); with them, each label must equal one of the classes
    and its index in ``classes`` is the column of the probabilities.
    """
    array = as_array(value, "labels")
    if array.ndim != 1:
        raise MetricInputError(f"labels must be 1-D, got shape {array.shape}")
    if array.shape[0] != n_rows:
        raise MetricInputError(
            f"{array.shape[0]} label(s) for {n_rows} row(s) of predictions: they must match"
        )
    if n_rows == 0:
        raise MetricInputError("labels are empty: there is nothing to evaluate")
    if classes is None:
        if not np.issubdtype(array.dtype, np.integer):
            raise MetricInputError(
                f"labels of dtype {array.dtype} need the class names (classes=...); "
                "without them labels are integer column indices"
            )
        outside = (array < 0) | (array >= n_classes)
        if outside.any():
            values = np.unique(array[outside])[:_QUOTED].tolist()
            raise MetricInputError(
                f"labels outside the {n_classes} classes (0..{n_classes - 1}) in "
                f"{_where(outside)}: {values}"
            )
        return array.astype(np.int64), tuple(str(i) for i in range(n_classes))
    names = list(classes)
    if len(names) != n_classes:
        raise MetricInputError(
            f"{len(names)} class name(s) for {n_classes} probability column(s): they must match"
        )
    index: dict[Any, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise MetricInputError(f"class {name!r} is named twice")
        index[name] = i
    if array.dtype.kind == "U" and all(isinstance(n, str) for n in names):
        # Text labels against a few names: K vectorised comparisons beat
        # sorting a million strings.
        encoded = np.full(n_rows, -1, dtype=np.int64)
        for i, name in enumerate(names):
            encoded[array == name] = i
        outside = encoded < 0
        if outside.any():
            values = np.unique(array[outside])[:_QUOTED].tolist()
            raise MetricInputError(
                f"labels outside the classes {names[:10]} in {_where(outside)}: {values}"
            )
        return encoded, tuple(names)
    try:
        uniques, inverse = np.unique(array, return_inverse=True)
    except TypeError as exc:
        raise MetricInputError(f"labels cannot be compared with each other: {exc}") from exc
    lookup = np.array([index.get(u, -1) for u in uniques.tolist()], dtype=np.int64)
    encoded = lookup[inverse.reshape(-1)]
    outside = encoded < 0
    if outside.any():
        values = [u for u, k in zip(uniques.tolist(), lookup.tolist(), strict=True) if k < 0]
        raise MetricInputError(
            f"labels outside the classes {names[:10]} in {_where(outside)}: {values[:_QUOTED]}"
        )
    return encoded, tuple(str(name) for name in names)


def as_values(value: Any, what: str, n_rows: int | None = None) -> FloatArray:
    """A 1-D float64 array of finite regression targets or predictions.

    A ``(N, 1)`` column (a regressor's usual output) is taken as ``(N,)``.
    """
    array = as_array(value, what)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise MetricInputError(f"{what} must be 1-D (or one column), got shape {array.shape}")
    if n_rows is not None and array.shape[0] != n_rows:
        raise MetricInputError(
            f"{array.shape[0]} {what} for {n_rows} true value(s): they must match"
        )
    if array.shape[0] == 0:
        raise MetricInputError(f"{what} are empty: there is nothing to evaluate")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise MetricInputError(f"{what} must be numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise MetricInputError(f"{what} hold NaN or infinite values in {_where(bad)}")
    return values
