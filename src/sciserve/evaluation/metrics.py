"""Task metrics over numpy arrays: classification and regression.

Each public function checks its input first (see :mod:`._checks`: NaN,
labels outside the classes, rows that are not probabilities, shape
mismatches and empty input are :class:`~sciserve.errors.MetricInputError`),
then computes with numpy alone.  The definitions follow scikit-learn's, and
the tests compare each one with it on the same data; where a definition
needs a choice it is stated on the function.

Classification takes the true labels and the ``(N, K)`` class probabilities
(the predicted class is the column of the highest probability, ties to the
first); labels are column indices unless ``classes`` names the columns.

Internally every metric also takes per-row weights, so the bootstrap in
:mod:`.compare` resamples by multiplicity (``bincount`` of the drawn rows)
instead of copying arrays and re-sorting for each resample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import MetricInputError
from ._checks import DEFAULT_ROW_TOLERANCE, as_labels, as_probabilities, as_values, row_sums
from .result import (
    BinMetrics,
    CalibrationBin,
    ClassificationMetrics,
    ClassMetrics,
    RegressionMetrics,
    Resolution,
)

__all__ = [
    "CLIP",
    "DEFAULT_CALIBRATION_BINS",
    "Calibration",
    "accuracy",
    "balanced_accuracy",
    "bias",
    "calibration",
    "classification_metrics",
    "confusion_matrix",
    "expected_calibration_error",
    "log_loss",
    "mae",
    "per_bin",
    "precision_recall_f1",
    "regression_metrics",
    "resolution",
    "rmse",
    "roc_auc_ovr",
    "roc_curve",
    "weighted_log_loss",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Weights = FloatArray | None

#: Probabilities are clipped to ``[CLIP, 1 - CLIP]`` before a logarithm (the
#: PLAsTiCC convention), so one confident mistake costs ln(1e15) ≈ 34.5, not
#: infinity.
CLIP = 1e-15

#: Equal-width confidence bins of the expected calibration error.
DEFAULT_CALIBRATION_BINS = 15

#: The central interval of the resolution: plus or minus one sigma of a normal distribution.
_LOW_PCT, _HIGH_PCT = 15.865525393145708, 84.13447460685429


def _ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _weights(w: Weights, n: int) -> FloatArray:
    return np.ones(n, dtype=np.float64) if w is None else w


class _Scored:
    """Checked labels and probabilities, with what several metrics share."""

    def __init__(
        self,
        y_true: Any,
        probabilities: Any,
        classes: Sequence[Any] | None = None,
        *,
        tolerance: float = DEFAULT_ROW_TOLERANCE,
    ) -> None:
        self.probs = as_probabilities(probabilities, tolerance=tolerance)
        # Rankings sort the model's own numbers: float32 -> float64 is exact and
        # monotone, so the order and the ties are the same, and float32 sorts faster.
        given = np.asarray(probabilities)
        self.scores = given if given.dtype in (np.float32, np.float64) else self.probs
        self.n, self.k = self.probs.shape
        self.y, self.classes = as_labels(y_true, self.n, classes, self.k)
        self.pred = np.argmax(self.probs, axis=1).astype(np.int64)
        self.correct = (self.pred == self.y).astype(np.float64)

    @cached_property
    def nll(self) -> FloatArray:
        """Per row, ``-ln p`` of the true class (clipped, then normalised per row)."""
        # maximum + minimum: the same as np.clip, several times faster.
        clipped = np.maximum(self.probs, CLIP)
        np.minimum(clipped, 1 - CLIP, out=clipped)
        truth = clipped[np.arange(self.n), self.y]
        # -ln(p / sum) without dividing the whole matrix.
        return np.asarray(np.log(row_sums(clipped)) - np.log(truth), dtype=np.float64)

    @cached_property
    def rankings(self) -> list[_Ranking]:
        return [_Ranking(self.scores[:, c], self.y == c) for c in range(self.k)]

    def counts(self, labels: IntArray, w: Weights) -> FloatArray:
        return np.bincount(labels, weights=w, minlength=self.k).astype(np.float64)

    def accuracy(self, w: Weights = None) -> float:
        ww = _weights(w, self.n)
        return float(np.dot(ww, self.correct) / ww.sum())

    def prf(self, w: Weights = None) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        support = self.counts(self.y, w)
        predicted = self.counts(self.pred, w)
        tp = np.bincount(
            self.y, weights=self.correct if w is None else self.correct * w, minlength=self.k
        ).astype(np.float64)
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        f1 = _ratio(2 * tp, support + predicted)
        return precision, recall, f1, support

    def balanced_accuracy(self, w: Weights = None) -> float:
        _, recall, _, support = self.prf(w)
        return float(recall[support > 0].mean())

    def log_loss(self, w: Weights = None) -> float:
        ww = _weights(w, self.n)
        return float(np.dot(ww, self.nll) / ww.sum())

    def weighted_log_loss(self, class_weights: FloatArray, w: Weights = None) -> float:
        support = self.counts(self.y, w)
        losses = np.bincount(
            self.y, weights=self.nll if w is None else self.nll * w, minlength=self.k
        )
        present = support > 0
        used = class_weights[present]
        if used.sum() <= 0:
            raise MetricInputError(
                "the class weights of the classes present are all 0: the weighted "
                "log-loss is undefined"
            )
        return float(np.dot(used, losses[present] / support[present]) / used.sum())

    def auc(self, w: Weights = None) -> list[float | None]:
        return [ranking.auc(w) for ranking in self.rankings]

    def confusion(self, w: Weights = None) -> FloatArray:
        flat = np.bincount(self.y * self.k + self.pred, weights=w, minlength=self.k * self.k)
        return flat.reshape(self.k, self.k).astype(np.float64)

    def class_weights(self, weights: Mapping[str, float] | Sequence[float] | None) -> FloatArray:
        if weights is None:
            return np.ones(self.k, dtype=np.float64)
        if isinstance(weights, Mapping):
            unknown = sorted(set(map(str, weights)) - set(self.classes))
            if unknown:
                raise MetricInputError(f"class weights name unknown classes {unknown[:5]}")
            given = {str(k): v for k, v in weights.items()}
            values = [given.get(name, 1.0) for name in self.classes]
        else:
            values = list(weights)
            if len(values) != self.k:
                raise MetricInputError(
                    f"{len(values)} class weight(s) for {self.k} classes: they must match"
                )
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise MetricInputError(f"class weights must be numbers: {exc}") from exc
        if not np.isfinite(array).all() or (array < 0).any():
            raise MetricInputError("class weights must be finite and not negative")
        return array


class _Ranking:
    """One class's scores sorted once, with their tie groups.

    The ROC-AUC is the probability that a positive scores above a negative
    (ties count a half): per tie group, the positive weight times the
    negative weight below the group plus half the negative weight in it.
    That equals the trapezoidal area under the ROC curve, ties included.
    """

    def __init__(self, scores: npt.NDArray[np.floating], positive: npt.NDArray[np.bool_]) -> None:
        # Any sort will do: ties are grouped, and order inside a group does not count.
        self.order = np.argsort(scores)
        ordered = scores[self.order]
        starts = np.r_[True, ordered[1:] != ordered[:-1]]
        self.group = np.cumsum(starts) - 1
        self.n_groups = int(self.group[-1]) + 1
        self.positive = positive[self.order]

    def auc(self, w: Weights = None) -> float | None:
        ww = np.ones(self.order.size) if w is None else w[self.order]
        pos = np.bincount(self.group, weights=ww * self.positive, minlength=self.n_groups)
        neg = np.bincount(self.group, weights=ww * ~self.positive, minlength=self.n_groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos <= 0 or n_neg <= 0:
            return None
        below = np.cumsum(neg) - neg
        return float(np.dot(pos, below + 0.5 * neg) / (n_pos * n_neg))


# ---------------------------------------------------------------- classification


def accuracy(y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None) -> float:
    """Fraction of rows whose highest-probability class is the true one."""
    return _Scored(y_true, probabilities, classes).accuracy()


def balanced_accuracy(
    y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None
) -> float:
    """Mean recall over the classes that have true examples."""
    return _Scored(y_true, probabilities, classes).balanced_accuracy()


def precision_recall_f1(
    y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None
) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    """Per class: precision, recall, F1 and support (true examples).

    A ratio with a zero denominator is 0 (scikit-learn's ``zero_division=0``).
    """
    precision, recall, f1, support = _Scored(y_true, probabilities, classes).prf()
    return precision, recall, f1, support.astype(np.int64)


def roc_auc_ovr(
    y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None
) -> tuple[list[float | None], float | None]:
    """One-vs-rest ROC-AUC per class, and their unweighted mean.

    A class without true examples (or with nothing else) has no AUC
    (``None``) and is left out of the mean.
    """
    per_class = _Scored(y_true, probabilities, classes).auc()
    return per_class, _macro(per_class)


def _macro(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def roc_curve(
    positive: Any, scores: Any, *, drop_intermediate: bool = True
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """False- and true-positive rates at each distinct score threshold.

    Returns ``(fpr, tpr, thresholds)`` starting at ``(0, 0, inf)``, as
    scikit-learn's ``roc_curve``; ``drop_intermediate`` drops points on a
    straight segment (they change nothing in a plot or the area).
    """
    truth = np.asarray(positive)
    if truth.dtype != np.bool_:
        raise MetricInputError(f"roc_curve takes a boolean positive mask, got {truth.dtype}")
    values = as_values(scores, "scores", truth.shape[0] if truth.ndim == 1 else None)
    if truth.ndim != 1:
        raise MetricInputError(f"the positive mask must be 1-D, got shape {truth.shape}")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError("a ROC curve needs both positive and negative rows")
    order = np.argsort(-values)
    ordered = values[order]
    ends = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    tps = np.cumsum(truth[order])[ends].astype(np.float64)
    fps = (ends + 1) - tps
    thresholds = ordered[ends]
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    return (
        np.r_[0.0, fps / n_neg],
        np.r_[0.0, tps / n_pos],
        np.r_[np.inf, thresholds],
    )


def log_loss(y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None) -> float:
    """Mean ``-ln p`` of the true class, probabilities clipped to
    ``[1e-15, 1 - 1e-15]`` and normalised per row."""
    return _Scored(y_true, probabilities, classes).log_loss()


def weighted_log_loss(
    y_true: Any,
    probabilities: Any,
    *,
    classes: Sequence[Any] | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
) -> float:
    """The PLAsTiCC weighted log-loss.

    ``-Σ_i w_i · (1/N_i) Σ_{j∈i} ln p_ij / Σ_i w_i`` over the classes ``i``
    with true examples (``N_i > 0``; an absent class drops out of both sums),
    with probabilities clipped to ``[1e-15, 1 - 1e-15]`` and normalised per
    row.  ``weights`` maps class names to weights (missing ones are 1) or
    lists one per class; the default weighs every class 1, so each class
    counts the same however rare it is.
    """
    scored = _Scored(y_true, probabilities, classes)
    return scored.weighted_log_loss(scored.class_weights(weights))


def confusion_matrix(
    y_true: Any, probabilities: Any, *, classes: Sequence[Any] | None = None
) -> IntArray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    return _Scored(y_true, probabilities, classes).confusion().astype(np.int64)


@dataclass(frozen=True)
class Calibration:
    """A reliability diagram's bins and the expected calibration error."""

    bins: tuple[CalibrationBin, ...]
    ece: float


def _calibration(scored: _Scored, n_bins: int) -> Calibration:
    if n_bins < 1:
        raise MetricInputError(f"calibration needs at least one bin, got {n_bins}")
    confidence = scored.probs.max(axis=1) / row_sums(scored.probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds (edge_b, edge_b+1]; bin 0 also holds 0 (scikit-learn's binning).
    which = np.searchsorted(edges[1:-1], confidence)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins).astype(np.float64)
    correct_sum = np.bincount(which, weights=scored.correct, minlength=n_bins).astype(np.float64)
    mean_conf = _ratio(conf_sum, count)
    mean_acc = _ratio(correct_sum, count)
    ece = float(np.dot(count / scored.n, np.abs(mean_acc - mean_conf)))
    bins = tuple(
        CalibrationBin(
            lower=float(edges[b]),
            upper=float(edges[b + 1]),
            count=int(count[b]),
            confidence=float(mean_conf[b]) if count[b] else None,
            accuracy=float(mean_acc[b]) if count[b] else None,
        )
        for b in range(n_bins)
    )
    return Calibration(bins=bins, ece=ece)


def calibration(
    y_true: Any,
    probabilities: Any,
    *,
    classes: Sequence[Any] | None = None,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> Calibration:
    """Top-label calibration in ``n_bins`` equal-width bins of confidence.

    A row's confidence is its highest (row-normalised) probability and it is
    correct when that class is the true one.  Bin ``b`` holds confidences in
    ``(b/n, (b+1)/n]`` (the first also 0); the expected calibration error is
    ``Σ_b (n_b / N) · |accuracy_b - confidence_b|``.
    """
    return _calibration(_Scored(y_true, probabilities, classes), n_bins)


def expected_calibration_error(
    y_true: Any,
    probabilities: Any,
    *,
    classes: Sequence[Any] | None = None,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> float:
    """The expected calibration error of :func:`calibration`."""
    return calibration(y_true, probabilities, classes=classes, n_bins=n_bins).ece


def classification_metrics(
    y_true: Any,
    probabilities: Any,
    *,
    classes: Sequence[Any] | None = None,
    weights: Mapping[str, float] | Sequence[float] | None = None,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
    tolerance: float = DEFAULT_ROW_TOLERANCE,
) -> ClassificationMetrics:
    """Every classification metric at once (the input checked once).

    ``weights`` are the PLAsTiCC class weights (see :func:`weighted_log_loss`),
    ``n_bins`` the calibration bins, ``tolerance`` how far a row may sum from 1.
    """
    scored = _Scored(y_true, probabilities, classes, tolerance=tolerance)
    class_weights = scored.class_weights(weights)
    precision, recall, f1, support = scored.prf()
    aucs = scored.auc()
    cal = _calibration(scored, n_bins)
    per_class = tuple(
        ClassMetrics(
            name=name,
            support=int(support[c]),
            precision=float(precision[c]),
            recall=float(recall[c]),
            f1=float(f1[c]),
            roc_auc=aucs[c],
        )
        for c, name in enumerate(scored.classes)
    )
    return ClassificationMetrics(
        n=scored.n,
        classes=scored.classes,
        accuracy=scored.accuracy(),
        balanced_accuracy=float(recall[support > 0].mean()),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        roc_auc_macro=_macro(aucs),
        log_loss=scored.log_loss(),
        weighted_log_loss=scored.weighted_log_loss(class_weights),
        class_weights=tuple(float(w) for w in class_weights),
        expected_calibration_error=cal.ece,
        per_class=per_class,
        confusion_matrix=tuple(tuple(int(v) for v in row) for row in scored.confusion()),
        calibration=cal.bins,
    )


# ---------------------------------------------------------------- regression


class _Residuals:
    """Checked true and predicted values, their residuals and relative residuals."""

    def __init__(self, y_true: Any, y_pred: Any) -> None:
        self.true = as_values(y_true, "true values")
        self.pred = as_values(y_pred, "predictions", self.true.shape[0])
        self.n = self.true.shape[0]
        self.residual = self.pred - self.true

    def mae(self, w: Weights = None) -> float:
        return float(np.average(np.abs(self.residual), weights=w))

    def rmse(self, w: Weights = None) -> float:
        return float(np.sqrt(np.average(self.residual**2, weights=w)))

    def bias(self, w: Weights = None) -> float:
        return float(np.average(self.residual, weights=w))

    @cached_property
    def relative(self) -> FloatArray | None:
        if (self.true == 0).any():
            return None
        return self.residual / self.true

    def sigma(self, w: Weights = None) -> float | None:
        rel = self.relative
        if rel is None:
            return None
        mean = np.average(rel, weights=w)
        return float(np.sqrt(np.average((rel - mean) ** 2, weights=w)))

    def resolution(self) -> Resolution | None:
        rel = self.relative
        sigma = self.sigma()
        if rel is None or sigma is None:
            return None
        low, high = np.percentile(rel, [_LOW_PCT, _HIGH_PCT])
        return Resolution(sigma=sigma, half_width_68=float((high - low) / 2))


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error."""
    return _Residuals(y_true, y_pred).mae()


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error."""
    return _Residuals(y_true, y_pred).rmse()


def bias(y_true: Any, y_pred: Any) -> float:
    """Mean of ``predicted - true``."""
    return _Residuals(y_true, y_pred).bias()


def resolution(y_true: Any, y_pred: Any) -> Resolution:
    """Spread of ``(predicted - true) / true``: its standard deviation
    (population, ``ddof=0``) and the half-width of its central 68.27 %
    interval (linearly interpolated percentiles).  A true value of 0 is a
    :class:`MetricInputError` (the relative residual is undefined)."""
    found = _Residuals(y_true, y_pred).resolution()
    if found is None:
        raise MetricInputError("the resolution divides by the true values, and one of them is 0")
    return found


def _edges(true: FloatArray, bins: int | Sequence[float]) -> FloatArray:
    if isinstance(bins, int):
        if bins < 1:
            raise MetricInputError(f"per-bin metrics need at least one bin, got {bins}")
        low, high = float(true.min()), float(true.max())
        if low == high:
            high = low + 1.0
        return np.linspace(low, high, bins + 1)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2:
        raise MetricInputError("bin edges must be a 1-D sequence of at least two numbers")
    if not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise MetricInputError("bin edges must be finite and strictly increasing")
    return edges


def _per_bin(found: _Residuals, bins: int | Sequence[float]) -> tuple[BinMetrics, ...]:
    edges = _edges(found.true, bins)
    which = np.searchsorted(edges, found.true, side="right") - 1
    # The last edge closes the last bin.
    which[found.true == edges[-1]] = edges.size - 2
    out = []
    for b in range(edges.size - 1):
        mask = which == b
        count = int(mask.sum())
        if count == 0:
            out.append(BinMetrics(float(edges[b]), float(edges[b + 1]), 0, None, None, None, None))
            continue
        part = _Residuals(found.true[mask], found.pred[mask])
        out.append(
            BinMetrics(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=count,
                mae=part.mae(),
                rmse=part.rmse(),
                bias=part.bias(),
                resolution=part.resolution(),
            )
        )
    return tuple(out)


def per_bin(y_true: Any, y_pred: Any, *, bins: int | Sequence[float] = 10) -> list[BinMetrics]:
    """MAE, RMSE, bias and resolution in bins of the true value.

    ``bins`` is a number of equal-width bins over the true values' range or
    the edges themselves; bin ``b`` holds ``[edge_b, edge_b+1)``, the last
    bin also its upper edge, and rows outside the edges are in no bin.
    """
    return list(_per_bin(_Residuals(y_true, y_pred), bins))


def regression_metrics(
    y_true: Any, y_pred: Any, *, bins: int | Sequence[float] = 10
) -> RegressionMetrics:
    """Every regression metric at once (the input checked once)."""
    found = _Residuals(y_true, y_pred)
    return RegressionMetrics(
        n=found.n,
        mae=found.mae(),
        rmse=found.rmse(),
        bias=found.bias(),
        resolution=found.resolution(),
        bins=_per_bin(found, bins),
    )
