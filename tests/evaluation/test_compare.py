"""Comparing two versions: deltas, seeded bootstrap intervals, changed rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from sciserve.errors import MetricInputError
from sciserve.evaluation.compare import compare_classification, compare_regression
from sciserve.evaluation.result import Task, to_json

K = 3


def _probs(y: np.ndarray, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(y.size, K)) + strength * np.eye(K)[y]
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.random.default_rng(1).integers(0, K, 300)
    return y, _probs(y, 1.0, 2), _probs(y, 3.0, 3)


def test_deltas_are_b_minus_a_with_the_values_of_each(pair) -> None:
    y, a, b = pair
    found = compare_classification(y, a, b, n_bootstrap=200, seed=5)
    acc = found.delta("accuracy")
    assert acc.a == pytest.approx(skm.accuracy_score(y, a.argmax(axis=1)))
    assert acc.b == pytest.approx(skm.accuracy_score(y, b.argmax(axis=1)))
    assert acc.delta == pytest.approx(acc.b - acc.a)
    ll = found.delta("log_loss")
    assert ll.delta == pytest.approx(
        skm.log_loss(y, b, labels=range(K)) - skm.log_loss(y, a, labels=range(K))
    )
    auc = found.delta("roc_auc_macro")
    assert auc.a == pytest.approx(skm.roc_auc_score(y, a, multi_class="ovr", labels=range(K)))
    # b is much better: its accuracy gain is significant, its log-loss lower.
    assert acc.low is not None and acc.low > 0
    assert acc.low <= acc.delta <= acc.high
    assert ll.high is not None and ll.high < 0
    assert {d.metric for d in found.deltas} == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "roc_auc_macro",
        "log_loss",
        "weighted_log_loss",
    }


def test_the_bootstrap_is_seeded(pair) -> None:
    y, a, b = pair
    one = compare_classification(y, a, b, n_bootstrap=100, seed=7)
    two = compare_classification(y, a, b, n_bootstrap=100, seed=7)
    other = compare_classification(y, a, b, n_bootstrap=100, seed=8)
    assert to_json(one) == to_json(two)
    assert one.delta("accuracy").low != other.delta("accuracy").low
    assert one.delta("accuracy").delta == other.delta("accuracy").delta


def test_a_version_against_itself_changes_nothing(pair) -> None:
    y, a, _ = pair
    found = compare_classification(y, a, a.copy(), n_bootstrap=50)
    for d in found.deltas:
        assert d.delta == 0 and d.low == 0 and d.high == 0
    assert found.n_changed == 0 and found.changed == ()
    assert set(np.ravel(found.confusion_difference).tolist()) == {0}


def test_confusion_difference_and_changed_rows() -> None:
    y = np.array([0, 1, 2, 1])
    a = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    b = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4], [0.1, 0.8, 0.1]])
    found = compare_classification(
        y, a, b, classes=None, ids=["ZTF1", "ZTF2", "ZTF3", "ZTF4"], n_bootstrap=0
    )
    diff = np.array(found.confusion_difference)
    expected = skm.confusion_matrix(y, b.argmax(1), labels=range(K)) - skm.confusion_matrix(
        y, a.argmax(1), labels=range(K)
    )
    np.testing.assert_array_equal(diff, expected)
    assert diff.sum() == 0
    assert found.n_changed == 2
    assert [(c.index, c.id, c.truth, c.a, c.b) for c in found.changed] == [
        (1, "ZTF2", "1", "0", "1"),
        (2, "ZTF3", "2", "2", "1"),
    ]
    assert found.delta("accuracy").low is None  # no bootstrap asked for
    limited = compare_classification(y, a, b, n_bootstrap=0, max_changed=1)
    assert limited.n_changed == 2 and [c.id for c in limited.changed] == ["1"]


def test_the_comparison_is_json(pair) -> None:
    y, a, b = pair
    data = json.loads(to_json(compare_classification(y, a, b, n_bootstrap=20)))
    assert data["task"] == "classification"
    assert list(data)[:3] == ["task", "n", "n_bootstrap"]
    assert data["deltas"][0]["metric"] == "accuracy"


def test_mismatched_or_bad_input_is_refused(pair) -> None:
    y, a, b = pair
    with pytest.raises(MetricInputError, match="differ in shape"):
        compare_classification(y, a, np.c_[b, np.zeros(len(y))], n_bootstrap=0)
    with pytest.raises(MetricInputError, match="one id per row"):
        compare_classification(y, a, b, ids=["x"], n_bootstrap=0)
    with pytest.raises(MetricInputError, match="confidence"):
        compare_classification(y, a, b, confidence=1.5)
    with pytest.raises(MetricInputError, match="n_bootstrap"):
        compare_classification(y, a, b, n_bootstrap=-1)
    bad = b.copy()
    bad[3, 0] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        compare_classification(y, a, bad)


def test_regression_comparison() -> None:
    rng = np.random.default_rng(4)
    true = rng.uniform(1, 2, 400)
    a = true + rng.normal(0, 0.2, true.size)
    b = true + rng.normal(0, 0.05, true.size)
    found = compare_regression(true, a, b, n_bootstrap=200, seed=1)
    assert found.task is Task.REGRESSION
    mae = found.delta("mae")
    assert mae.delta == pytest.approx(
        skm.mean_absolute_error(true, b) - skm.mean_absolute_error(true, a)
    )
    assert mae.high is not None and mae.high < 0
    assert found.delta("resolution_sigma").delta < 0
    with pytest.raises(KeyError):
        found.delta("accuracy")
    with pytest.raises(MetricInputError, match="predictions"):
        compare_regression(true, a, b[:-1])
