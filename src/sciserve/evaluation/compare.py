"""Two model versions' predictions on the same rows, side by side.

For each headline metric: the value of ``a`` and of ``b``, the delta
``b - a`` and a paired bootstrap confidence interval of the delta (the same
resampled rows for both versions, drawn from a seeded generator, so the
interval is the same on every run).  For classification also the
confusion-matrix difference and the rows whose predicted class changed.

The interval is the percentile interval of the resampled deltas.  A
resample may leave a class without examples; a metric undefined on it (a
ROC-AUC) is left out of that resample, and the interval is ``None`` when
more than half the resamples had to be left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MetricInputError
from ._checks import DEFAULT_ROW_TOLERANCE
from .metrics import Weights, _Residuals, _Scored
from .result import Task

__all__ = [
    "ChangedRow",
    "Comparison",
    "MetricDelta",
    "compare_classification",
    "compare_regression",
]

#: Rows of a comparison listed one by one, at most; ``n_changed`` counts them all.
DEFAULT_MAX_CHANGED = 1000


@dataclass(frozen=True)
class MetricDelta:
    """One metric of versions ``a`` and ``b``, ``delta = b - a`` and its
    bootstrap interval ``[low, high]`` (``None`` where undefined)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ChangedRow:
    """A row that the two versions put in different classes."""

    index: int
    id: str
    truth: str
    a: str
    b: str


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_classification` or :func:`compare_regression` found.

    ``confusion_difference`` is ``b``'s confusion matrix minus ``a``'s (rows
    true, columns predicted); ``changed`` lists up to ``max_changed`` rows
    whose predicted class changed, in row order, and ``n_changed`` counts all
    of them.  Both are empty for regression.
    """

    task: Task
    n: int
    n_bootstrap: int
    seed: int
    confidence: float
    deltas: tuple[MetricDelta, ...]
    classes: tuple[str, ...]
    confusion_difference: tuple[tuple[int, ...], ...]
    n_changed: int
    changed: tuple[ChangedRow, ...]

    def delta(self, metric: str) -> MetricDelta:
        """The entry for ``metric``; :class:`KeyError` if it was not compared."""
        for entry in self.deltas:
            if entry.metric == metric:
                return entry
        raise KeyError(metric)


ScalarFn = Callable[[Weights], float | None]


def _check_bootstrap(n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 0:
        raise MetricInputError(f"n_bootstrap must be 0 or more, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise MetricInputError(f"confidence must be between 0 and 1, got {confidence}")


def _sub(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _deltas(
    fns: Mapping[str, tuple[ScalarFn, ScalarFn]],
    n: int,
    n_bootstrap: int,
    seed: int,
    confidence: float,
) -> tuple[MetricDelta, ...]:
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n_bootstrap):
        # Multiplicities of a resample with replacement: the metrics take weights.
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for name, (fa, fb) in fns.items():
            d = _sub(fb(w), fa(w))
            if d is not None:
                samples[name].append(d)
    tail = (1 - confidence) / 2 * 100
    out = []
    for name, (fa, fb) in fns.items():
        a, b = fa(None), fb(None)
        low = high = None
        found = samples[name]
        if n_bootstrap and len(found) * 2 > n_bootstrap:
            lo, hi = np.percentile(np.asarray(found), [tail, 100 - tail])
            low, high = float(lo), float(hi)
        out.append(MetricDelta(name, a, b, _sub(b, a), low, high))
    return tuple(out)


def _ids(ids: Sequence[Any] | npt.NDArray[Any] | None, n: int) -> list[str] | None:
    if ids is None:
        return None
    values = np.asarray(ids)
    if values.ndim != 1 or values.shape[0] != n:
        raise MetricInputError(f"{values.shape} ids for {n} rows: one id per row is needed")
    return [str(v) for v in values.tolist()]


def compare_classification(
    y_true: Any,
    probabilities_a: Any,
    probabilities_b: Any,
    *,
    classes: Sequence[Any] | None = None,
    ids: Sequence[Any] | npt.NDArray[Any] | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    tolerance: float = DEFAULT_ROW_TOLERANCE,
    max_changed: int = DEFAULT_MAX_CHANGED,
) -> Comparison:
    """Compare two classifiers' probabilities for the same labelled rows.

    Both must have the same shape (same rows, same class columns).  ``ids``
    name the rows (e.g. alert ids) in the list of changed rows; without them
    a row is named by its index.  ``weights`` are the PLAsTiCC class weights.
    """
    _check_bootstrap(n_bootstrap, confidence)
    a = _Scored(y_true, probabilities_a, classes, tolerance=tolerance)
    b = _Scored(y_true, probabilities_b, classes, tolerance=tolerance)
    if a.probs.shape != b.probs.shape:
        raise MetricInputError(
            f"the two versions' probabilities differ in shape: {a.probs.shape} and "
            f"{b.probs.shape}; compare them on the same rows and classes"
        )
    names = _ids(ids, a.n)
    cw = a.class_weights(weights)

    def macro_auc(s: _Scored) -> ScalarFn:
        def fn(w: Weights) -> float | None:
            defined = [v for v in s.auc(w) if v is not None]
            return float(np.mean(defined)) if defined else None

        return fn

    def pair(make: Callable[[_Scored], ScalarFn]) -> tuple[ScalarFn, ScalarFn]:
        return make(a), make(b)

    fns = {
        "accuracy": pair(lambda s: s.accuracy),
        "balanced_accuracy": pair(lambda s: s.balanced_accuracy),
        "macro_f1": pair(lambda s: lambda w: float(s.prf(w)[2].mean())),
        "roc_auc_macro": pair(macro_auc),
        "log_loss": pair(lambda s: s.log_loss),
        "weighted_log_loss": pair(lambda s: lambda w: s.weighted_log_loss(cw, w)),
    }
    changed_mask = a.pred != b.pred
    rows = np.flatnonzero(changed_mask)
    changed = tuple(
        ChangedRow(
            index=int(i),
            id=names[i] if names is not None else str(i),
            truth=a.classes[a.y[i]],
            a=a.classes[a.pred[i]],
            b=b.classes[b.pred[i]],
        )
        for i in rows[: max(max_changed, 0)]
    )
    difference = b.confusion() - a.confusion()
    return Comparison(
        task=Task.CLASSIFICATION,
        n=a.n,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        deltas=_deltas(fns, a.n, n_bootstrap, seed, confidence),
        classes=a.classes,
        confusion_difference=tuple(tuple(int(v) for v in row) for row in difference),
        n_changed=int(rows.size),
        changed=changed,
    )


def compare_regression(
    y_true: Any,
    predictions_a: Any,
    predictions_b: Any,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Compare two regressors' predictions for the same rows: MAE, RMSE,
    bias and the resolution's sigma (the 68 % half-width is a quantile, which
    weights cannot resample cheaply, so it is not bootstrapped)."""
    _check_bootstrap(n_bootstrap, confidence)
    a = _Residuals(y_true, predictions_a)
    b = _Residuals(y_true, predictions_b)

    def pair(make: Callable[[_Residuals], ScalarFn]) -> tuple[ScalarFn, ScalarFn]:
        return make(a), make(b)

    fns: dict[str, tuple[ScalarFn, ScalarFn]] = {
        "mae": pair(lambda r: r.mae),
        "rmse": pair(lambda r: r.rmse),
        "bias": pair(lambda r: r.bias),
        "resolution_sigma": pair(lambda r: r.sigma),
    }
    return Comparison(
        task=Task.REGRESSION,
        n=a.n,
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        deltas=_deltas(fns, a.n, n_bootstrap, seed, confidence),
        classes=(),
        confusion_difference=(),
        n_changed=0,
        changed=(),
    )
