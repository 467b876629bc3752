"""Every metric against scikit-learn on the same data; the PLAsTiCC weighted
log-loss against numbers worked out by hand; hostile input refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import calibration as skcal
from sklearn import metrics as skm

from sciserve.errors import InvalidInput, MetricInputError
from sciserve.evaluation import metrics as m

K = 4


def _data(n: int = 500, k: int = K, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are informative but imperfect,
    with every class present and ties in the scores (rounded to 2 decimals)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs = np.round(probs, 2)
    probs /= probs.sum(axis=1, keepdims=True)
    return y, probs


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return _data()


def test_accuracy_and_balanced_accuracy_match_sklearn(data) -> None:
    y, p = data
    pred = p.argmax(axis=1)
    assert m.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-15)
    assert m.balanced_accuracy(y, p) == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=1e-15
    )
    # A class that is never predicted and imbalanced classes: the two differ.
    y2 = np.r_[np.zeros(90, int), np.ones(10, int), np.full(5, 2)]
    p2 = np.tile([0.8, 0.15, 0.05], (105, 1))
    assert m.balanced_accuracy(y2, p2) == pytest.approx(
        skm.balanced_accuracy_score(y2, p2.argmax(axis=1))
    )
    assert m.balanced_accuracy(y2, p2) == pytest.approx(1 / 3)
    assert m.accuracy(y2, p2) == pytest.approx(90 / 105)


def test_precision_recall_f1_match_sklearn(data) -> None:
    y, p = data
    precision, recall, f1, support = m.precision_recall_f1(y, p)
    ref = skm.precision_recall_fscore_support(y, p.argmax(axis=1), labels=range(K), zero_division=0)
    for ours, theirs in zip((precision, recall, f1, support), ref, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-13)
    assert support.dtype == np.int64


def test_zero_division_is_zero_like_sklearn() -> None:
    # Class 2 is never predicted, class 3 neither predicted nor present.
    y = np.array([0, 0, 1, 1, 2])
    p = np.array(
        [[0.9, 0.1, 0, 0], [0.2, 0.8, 0, 0], [0.1, 0.9, 0, 0], [0.6, 0.4, 0, 0], [0.5, 0.3, 0.2, 0]]
    )
    ours = m.precision_recall_f1(y, p)
    ref = skm.precision_recall_fscore_support(y, p.argmax(axis=1), labels=range(4), zero_division=0)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b)
    assert ours[0][2] == 0 and ours[2][3] == 0


def test_roc_auc_one_vs_rest_matches_sklearn(data) -> None:
    y, p = data
    per_class, macro = m.roc_auc_ovr(y, p)
    for c in range(K):
        assert per_class[c] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]), abs=1e-12)
    assert macro == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=range(K)), abs=1e-12
    )
    # Binary: the positive column's AUC, the same for both classes (scores on
    # a grid of 1/64, so 1 - q keeps every tie of q).
    yb = (y == 1).astype(int)
    q = np.round(p[:, 1] * 64) / 64
    pb = np.c_[1 - q, q]
    per_b, macro_b = m.roc_auc_ovr(yb, pb)
    assert per_b[1] == pytest.approx(skm.roc_auc_score(yb, pb[:, 1]), abs=1e-12)
    assert macro_b == pytest.approx(per_b[1])


def test_roc_auc_of_an_absent_class_is_undefined() -> None:
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    per_class, macro = m.roc_auc_ovr(y, p)
    assert per_class[2] is None
    assert per_class[0] == pytest.approx(skm.roc_auc_score(y == 0, p[:, 0]))
    assert macro == pytest.approx((per_class[0] + per_class[1]) / 2)


def test_weighted_auc_matches_sklearn_sample_weight(data) -> None:
    # The bootstrap resamples by weights: the weighted path must be right too.
    y, p = data
    w = np.random.default_rng(0).integers(0, 4, y.size).astype(float)
    scored = m._Scored(y, p)
    ours = scored.auc(w)
    for c in range(K):
        assert ours[c] == pytest.approx(
            skm.roc_auc_score(y == c, p[:, c], sample_weight=w), abs=1e-12
        )
    assert scored.accuracy(w) == pytest.approx(
        skm.accuracy_score(y, p.argmax(axis=1), sample_weight=w)
    )
    assert scored.log_loss(w) == pytest.approx(
        skm.log_loss(y, p, sample_weight=w, labels=range(K)), rel=1e-12
    )
    assert scored.balanced_accuracy(w) == pytest.approx(
        skm.balanced_accuracy_score(y, p.argmax(axis=1), sample_weight=w)
    )
    np.testing.assert_allclose(
        scored.prf(w)[2],
        skm.f1_score(
            y, p.argmax(axis=1), sample_weight=w, average=None, labels=range(K), zero_division=0
        ),
    )


@pytest.mark.parametrize("drop", [False, True])
def test_roc_curve_matches_sklearn(data, drop: bool) -> None:
    y, p = data
    fpr, tpr, thresholds = m.roc_curve(y == 2, p[:, 2], drop_intermediate=drop)
    rf, rt, rth = skm.roc_curve(y == 2, p[:, 2], drop_intermediate=drop)
    np.testing.assert_allclose(fpr, rf)
    np.testing.assert_allclose(tpr, rt)
    np.testing.assert_allclose(thresholds, rth)
    assert np.trapezoid(tpr, fpr) == pytest.approx(m.roc_auc_ovr(y, p)[0][2])


def test_log_loss_matches_sklearn(data) -> None:
    y, p = data
    assert m.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=range(K)), rel=1e-12)


def test_log_loss_clips_a_zero_probability_of_the_true_class() -> None:
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    # Row 2: p = 1e-15 after clipping and normalising by (1 - 1e-15 + 1e-15) = 1.
    assert m.log_loss(y, p) == pytest.approx((-math.log(1 - 1e-15) - math.log(1e-15)) / 2)
    assert math.isfinite(m.weighted_log_loss(y, p))


def test_weighted_log_loss_worked_by_hand() -> None:
    # Three classes, weights 1, 2, 0.5; class 2 has a single row.
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array(
        [
            [0.5, 0.25, 0.25],  # ln 0.5
            [0.8, 0.1, 0.1],  # ln 0.8
            [0.1, 0.6, 0.3],  # ln 0.6
            [0.2, 0.2, 0.6],  # ln 0.2
            [0.0, 1.0, 0.0],  # ln(1 - 1e-15) after clipping: ~0
            [0.25, 0.25, 0.5],  # ln 0.5
        ]
    )
    # class 0: -(ln .5 + ln .8)/2 = (0.693147 + 0.223144)/2 = 0.458145
    # class 1: -(ln .6 + ln .2 + ~0)/3 = (0.510826 + 1.609438)/3 = 0.706755
    # class 2: -ln .5 = 0.693147
    # (1*0.458145 + 2*0.706755 + 0.5*0.693147) / 3.5 = 2.218229 / 3.5 = 0.633780
    expected = 0.633780
    ours = m.weighted_log_loss(y, p, weights=[1, 2, 0.5])
    assert ours == pytest.approx(expected, abs=2e-6)
    # By name, missing names weigh 1.
    names = ["SNIa", "SNII", "AGN"]
    labels = np.array(names)[y]
    assert m.weighted_log_loss(labels, p, classes=names, weights={"SNII": 2, "AGN": 0.5}) == (
        pytest.approx(ours, rel=1e-15)
    )
    # Equal weights: the mean of the per-class means, not the row mean (log-loss).
    equal = (0.458145 + 0.706755 + 0.693147) / 3
    assert m.weighted_log_loss(y, p) == pytest.approx(equal, abs=2e-6)
    assert m.log_loss(y, p) != pytest.approx(equal, abs=1e-3)


def test_weighted_log_loss_leaves_out_absent_classes_and_normalises_rows() -> None:
    y = np.array([0, 1])
    p = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    # Class 2 has no rows: its weight 10 does not count.
    by_hand = (-math.log(0.5) + -math.log(0.4)) / 2
    assert m.weighted_log_loss(y, p, weights=[1, 1, 10]) == pytest.approx(by_hand)
    # A row summing to 1.0005 (inside the tolerance) is normalised first.
    q = np.array([[0.5005, 0.3, 0.2], [0.4, 0.4, 0.2]])
    assert m.weighted_log_loss(y, q) == pytest.approx(
        (-math.log(0.5005 / 1.0005) - math.log(0.4)) / 2
    )
    with pytest.raises(MetricInputError, match="weights"):
        m.weighted_log_loss(y, p, weights=[0, 0, 1])
    with pytest.raises(MetricInputError, match="unknown classes"):
        m.weighted_log_loss(y, p, weights={"nope": 1})
    with pytest.raises(MetricInputError, match="finite"):
        m.weighted_log_loss(y, p, weights=[1, float("nan"), 1])
    with pytest.raises(MetricInputError, match="2 class weight"):
        m.weighted_log_loss(y, p, weights=[1, 1])


def test_confusion_matrix_matches_sklearn(data) -> None:
    y, p = data
    ours = m.confusion_matrix(y, p)
    np.testing.assert_array_equal(ours, skm.confusion_matrix(y, p.argmax(axis=1), labels=range(K)))
    assert ours.sum() == y.size


def test_calibration_bins_match_sklearn_calibration_curve(data) -> None:
    y, p = data
    cal = m.calibration(y, p, n_bins=10)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(int)
    prob_true, prob_pred = skcal.calibration_curve(correct, confidence, n_bins=10)
    full = [b for b in cal.bins if b.count]
    np.testing.assert_allclose([b.accuracy for b in full], prob_true, rtol=1e-12)
    np.testing.assert_allclose([b.confidence for b in full], prob_pred, rtol=1e-12)
    assert sum(b.count for b in cal.bins) == y.size
    ece = sum(
        b.count / y.size * abs(t - q) for b, t, q in zip(full, prob_true, prob_pred, strict=True)
    )
    assert cal.ece == pytest.approx(ece, rel=1e-12)
    assert m.expected_calibration_error(y, p, n_bins=10) == cal.ece


def test_expected_calibration_error_worked_by_hand() -> None:
    # Two bins: (0, .5] and (.5, 1].  Confidences .5 (bin 0, edge inclusive),
    # .6, .9, .9 (bin 1); correct: no, yes, yes, no.
    y = np.array([1, 0, 0, 1])
    p = np.array([[0.5, 0.5], [0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    cal = m.calibration(y, p, n_bins=2)
    assert [b.count for b in cal.bins] == [1, 3]
    assert cal.bins[1].confidence == pytest.approx(0.8)
    assert cal.bins[1].accuracy == pytest.approx(2 / 3)
    # 1/4 * |0 - .5| + 3/4 * |2/3 - .8| = .125 + .1 = .225
    assert cal.ece == pytest.approx(0.225)
    assert m.calibration(y, p, n_bins=3).bins[0].count == 0
    assert m.calibration(y, p, n_bins=3).bins[0].accuracy is None


def test_classification_metrics_agree_with_the_single_functions(data) -> None:
    y, p = data
    found = m.classification_metrics(y, p, weights=[1, 2, 1, 1])
    assert found.n == y.size
    assert found.classes == ("0", "1", "2", "3")
    assert found.accuracy == m.accuracy(y, p)
    assert found.balanced_accuracy == pytest.approx(m.balanced_accuracy(y, p))
    assert found.macro_f1 == pytest.approx(
        skm.f1_score(y, p.argmax(axis=1), average="macro", labels=range(K))
    )
    assert found.macro_precision == pytest.approx(
        skm.precision_score(y, p.argmax(axis=1), average="macro", labels=range(K))
    )
    assert found.roc_auc_macro == m.roc_auc_ovr(y, p)[1]
    assert found.weighted_log_loss == m.weighted_log_loss(y, p, weights=[1, 2, 1, 1])
    assert found.class_weights == (1.0, 2.0, 1.0, 1.0)
    assert found.expected_calibration_error == m.expected_calibration_error(y, p)
    assert [c.support for c in found.per_class] == np.bincount(y).tolist()
    assert np.array(found.confusion_matrix).tolist() == m.confusion_matrix(y, p).tolist()
    assert len(found.calibration) == m.DEFAULT_CALIBRATION_BINS
    assert set(found.scalars()) >= {"accuracy", "weighted_log_loss", "roc_auc_macro"}


def test_float32_probabilities_and_string_labels() -> None:
    y, p = _data(200)
    names = ["SNIa", "SNII", "KN", "AGN"]
    labels = np.array(names)[y]
    p32 = p.astype(np.float32)
    found = m.classification_metrics(labels, p32, classes=names)
    assert found.classes == tuple(names)
    assert found.accuracy == pytest.approx(skm.accuracy_score(y, p32.argmax(axis=1)))
    # Rows of float32 sum to 1 only within ~1e-7: normalised, as the metric does.
    p64 = p32.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)
    assert found.log_loss == pytest.approx(skm.log_loss(y, p64, labels=range(K)), rel=1e-12)


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 1], [[0.5, np.nan], [0.5, 0.5]], "NaN or infinite values in 1 row"),
        ([0, 1], [[0.5, 0.5], [np.inf, 0.5]], "NaN or infinite.*index 1"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], r"outside the 2 classes.*\[2\]"),
        ([0, -1], [[0.5, 0.5], [0.5, 0.5]], "outside the 2 classes"),
        ([0, 1], [[2.0, 1.0], [0.5, 0.5]], "sum to 1.*logits"),
        ([0, 1], [[0.7, 0.7], [0.5, 0.5]], "sum to 1"),
        ([0, 1], [[1.2, -0.2], [0.5, 0.5]], "negative"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "3 label.*2 row"),
        ([0, 1], [0.5, 0.5], "2-D"),
        ([0, 1], [[1.0], [1.0]], "at least 2"),
        ([], np.zeros((0, 2)), "no rows"),
        ([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], "need the class names"),
        ([[0], [1]], [[0.5, 0.5], [0.5, 0.5]], "labels must be 1-D"),
        ([0, 1], [[1, 0], [0, 1]], "floating point"),
        ([0, 1], [["a", "b"], ["c", "d"]], "floating point"),
    ],
)
def test_hostile_classification_input_is_refused(labels, probs, match) -> None:
    with pytest.raises(MetricInputError, match=match) as info:
        m.classification_metrics(np.asarray(labels), np.asarray(probs))
    assert isinstance(info.value, InvalidInput)


def test_named_classes_refuse_unknown_labels_and_bad_names() -> None:
    p = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(MetricInputError, match=r"outside the classes.*\['KN'\]"):
        m.accuracy(np.array(["SNIa", "KN", "SNII"]), p, classes=["SNIa", "SNII"])
    with pytest.raises(MetricInputError, match="named twice"):
        m.accuracy(np.array(["a", "a", "a"]), p, classes=["a", "a"])
    with pytest.raises(MetricInputError, match="3 class name"):
        m.accuracy(np.array(["a", "a", "a"]), p, classes=["a", "b", "c"])
    # NaN labels never match a class.
    with pytest.raises(MetricInputError, match="outside the classes"):
        m.accuracy(np.array([0.0, np.nan, 1.0]), p, classes=[0.0, 1.0])


def test_a_wider_tolerance_accepts_rounded_rows() -> None:
    p = np.array([[0.33, 0.33, 0.33], [0.5, 0.5, 0.0]])
    with pytest.raises(MetricInputError):
        m.classification_metrics([0, 1], p)
    found = m.classification_metrics([0, 1], p, tolerance=0.02)
    assert found.log_loss == pytest.approx((math.log(3) + math.log(2)) / 2)


# ---------------------------------------------------------------- regression


@pytest.fixture
def reg() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    true = rng.uniform(0.1, 3.0, 400)
    pred = true + rng.normal(0.02, 0.1, true.size) * (1 + true)
    return true, pred


def test_mae_rmse_bias_match_sklearn(reg) -> None:
    true, pred = reg
    assert m.mae(true, pred) == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-13)
    assert m.rmse(true, pred) == pytest.approx(skm.root_mean_squared_error(true, pred), rel=1e-13)
    # Bias against sklearn: MSE = bias² + variance of the residual.
    b = m.bias(true, pred)
    assert b**2 + np.var(pred - true) == pytest.approx(
        skm.mean_squared_error(true, pred), rel=1e-12
    )
    assert b > 0
    assert m.bias(true, true - 1.0) == pytest.approx(-1.0)
    # A (N, 1) column is taken as (N,).
    assert m.mae(true, pred[:, None]) == m.mae(true, pred)


def test_resolution_worked_by_hand_and_against_sklearn() -> None:
    true = np.array([1.0, 2.0, 4.0, 5.0])
    pred = np.array([1.1, 1.8, 4.4, 5.0])
    # relative residuals: .1, -.1, .1, 0 → mean .025, var = (.075² · 2 + .125² + .025²)/4
    rel = np.array([0.1, -0.1, 0.1, 0.0])
    res = m.resolution(true, pred)
    assert res.sigma == pytest.approx(math.sqrt((2 * 0.075**2 + 0.125**2 + 0.025**2) / 4))
    # sigma of the relative residual is sklearn's RMSE of it about its mean.
    assert res.sigma == pytest.approx(skm.root_mean_squared_error(rel, np.full(4, rel.mean())))
    # 68 % half-width: percentiles 15.87 and 84.13 of (-.1, 0, .1, .1), linear:
    # position .1587*3 = .476 → -.1 + .476*.1 = -.0524; .8413*3 = 2.524 → .1
    assert res.half_width_68 == pytest.approx((0.1 - (-0.1 + 0.4760 * 0.1)) / 2, abs=1e-4)


def test_resolution_ignores_outliers_where_sigma_does_not(reg) -> None:
    true, pred = reg
    clean = m.resolution(true, pred)
    spoiled = pred.copy()
    spoiled[0] = true[0] * 50
    dirty = m.resolution(true, spoiled)
    assert dirty.sigma > 5 * clean.sigma
    assert dirty.half_width_68 == pytest.approx(clean.half_width_68, rel=0.05)


def test_per_bin_metrics_match_sklearn_on_each_bin(reg) -> None:
    true, pred = reg
    bins = m.per_bin(true, pred, bins=[0.0, 1.0, 2.0, 3.0, 10.0, 11.0])
    assert [b.count for b in bins[:4]] == [
        int(((true >= lo) & (true < hi)).sum()) for lo, hi in [(0, 1), (1, 2), (2, 3), (3, 10)]
    ]
    assert sum(b.count for b in bins) == true.size
    assert bins[4].count == 0 and bins[4].mae is None and bins[4].resolution is None
    for b in bins[:3]:
        mask = (true >= b.lower) & (true < b.upper)
        assert b.mae == pytest.approx(skm.mean_absolute_error(true[mask], pred[mask]))
        assert b.rmse == pytest.approx(skm.root_mean_squared_error(true[mask], pred[mask]))
        assert b.resolution is not None
    # Equal-width bins over the range: the maximum lands in the last bin.
    auto = m.per_bin(true, pred, bins=4)
    assert len(auto) == 4 and sum(b.count for b in auto) == true.size
    assert auto[-1].upper == true.max()


def test_regression_metrics_and_zero_truths(reg) -> None:
    true, pred = reg
    found = m.regression_metrics(true, pred, bins=3)
    assert found.mae == m.mae(true, pred) and found.n == true.size
    assert found.resolution == m.resolution(true, pred)
    assert len(found.bins) == 3
    zero = m.regression_metrics([0.0, 1.0], [0.1, 1.0])
    assert zero.resolution is None
    assert zero.mae == pytest.approx(0.05)
    with pytest.raises(MetricInputError, match="is 0"):
        m.resolution([0.0, 1.0], [0.1, 1.0])


@pytest.mark.parametrize(
    ("true", "pred", "match"),
    [
        ([1.0, np.nan], [1.0, 1.0], "true values hold NaN"),
        ([1.0, 2.0], [1.0, np.inf], "predictions hold NaN or infinite"),
        ([1.0, 2.0], [1.0], "1 predictions for 2"),
        ([], [], "empty"),
        ([1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], "1-D"),
        (["a", "b"], [1.0, 2.0], "numbers"),
    ],
)
def test_hostile_regression_input_is_refused(true, pred, match) -> None:
    with pytest.raises(MetricInputError, match=match):
        m.regression_metrics(np.asarray(true), np.asarray(pred))


@pytest.mark.parametrize("edges", [[1.0], [2.0, 1.0], [0.0, np.inf], 0])
def test_bad_bins_are_refused(edges) -> None:
    with pytest.raises(MetricInputError, match="bin"):
        m.per_bin([1.0, 2.0], [1.0, 2.0], bins=edges)


def test_metric_input_errors_map_to_invalid_input_everywhere() -> None:
    from sciserve.cli._context import exit_code_for
    from sciserve.protocol.rest import status_of

    exc = MetricInputError("labels outside the classes")
    assert exit_code_for(exc) == 2
    assert status_of(exc) == 400
