"""Results serialise to the same bytes every time and read back; the
predictions' sha256 depends on values, dtype and shape, not on layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sciserve.errors import MetricInputError
from sciserve.evaluation import (
    classification_metrics,
    predictions_sha256,
    regression_metrics,
    to_dict,
    to_json,
)
from sciserve.evaluation.digest import canonical_bytes
from sciserve.evaluation.result import (
    ClassificationMetrics,
    RegressionMetrics,
    Task,
    metrics_from_dict,
)


def _classification() -> ClassificationMetrics:
    y = np.array([0, 1, 2, 1, 0])
    p = np.array(
        [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]
    )
    names = ["a", "b", "<c>"]
    return classification_metrics(np.array(names)[y], p, classes=names, n_bins=4)


def test_json_key_order_is_the_declared_order_and_stable() -> None:
    found = _classification()
    text = to_json(found)
    assert text == to_json(_classification())
    data = json.loads(text)
    assert list(data)[:5] == ["task", "n", "classes", "accuracy", "balanced_accuracy"]
    assert data["task"] == "classification"
    assert list(data["per_class"][0]) == ["name", "support", "precision", "recall", "f1", "roc_auc"]
    # Undefined numbers are null, never NaN (which JSON does not have).
    assert data["calibration"][0]["accuracy"] is None
    assert "NaN" not in text
    assert to_json(found, indent=2).startswith('{\n  "task": "classification"')


def test_metrics_read_back_from_their_json() -> None:
    found = _classification()
    assert metrics_from_dict(json.loads(to_json(found))) == found
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 2, 50)
    reg = regression_metrics(true, true * 1.01, bins=3)
    back = metrics_from_dict(json.loads(to_json(reg)))
    assert isinstance(back, RegressionMetrics)
    assert back == reg
    assert back.task is Task.REGRESSION
    assert to_dict(reg)["task"] == "regression"


def test_non_finite_numbers_never_reach_a_record() -> None:
    found = _classification()
    broken = ClassificationMetrics(**{**found.__dict__, "accuracy": float("nan")})
    with pytest.raises(ValueError, match="non-finite"):
        to_json(broken)


def test_predictions_sha256_ignores_layout_and_byte_order() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    digest = predictions_sha256({"probabilities": x})
    assert digest == predictions_sha256({"probabilities": np.asfortranarray(x)})
    assert digest == predictions_sha256({"probabilities": x.astype(">f4")})
    assert digest == predictions_sha256({"probabilities": x.copy()})
    # Values, dtype, shape and name all count.
    y = x.copy()
    y[1, 2] = np.nextafter(y[1, 2], np.float32(1))
    assert predictions_sha256({"probabilities": y}) != digest
    assert predictions_sha256({"probabilities": x.astype(np.float64)}) != digest
    assert predictions_sha256({"probabilities": x.reshape(4, 3)}) != digest
    assert predictions_sha256({"probs": x}) != digest
    # Order of outputs does not matter; a bare array is the output named "".
    z = np.array([1, 2], dtype=np.int64)
    assert predictions_sha256({"a": z, "b": x}) == predictions_sha256({"b": x, "a": z})
    assert predictions_sha256(z) == predictions_sha256({"": z})
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_canonical_bytes_are_little_endian_c_order() -> None:
    x = np.array([[1, 2], [3, 4]], dtype=">i2")
    raw = canonical_bytes(x)
    assert raw.endswith(bytes([1, 0, 2, 0, 3, 0, 4, 0]))
    assert b"<i2" in raw
    assert canonical_bytes(np.asfortranarray(x)) == raw


@pytest.mark.parametrize("value", [np.array(["a", "b"]), np.array([object(), 1], dtype=object)])
def test_outputs_without_canonical_bytes_are_refused(value) -> None:
    with pytest.raises(MetricInputError, match="canonical bytes"):
        predictions_sha256({"labels": value})
