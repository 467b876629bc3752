"""The runner over real model packages loaded with ``sciserve.load``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

import sciserve
from sciserve.config import Settings
from sciserve.errors import MetricInputError, ModelExecutionError
from sciserve.evaluation import predictions_sha256, to_json
from sciserve.evaluation.runner import Task, evaluate_arrays, record_from_dict
from sciserve.examples import CLASSES, build_examples, extract_many, simulate
from sciserve.registry.registry import Registry

from helpers.packages import make_onnx_package


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("eval")
    built = {p.name: p for p in build_examples(root / "built")}
    with Registry(Settings.load(root / "home", environ={})) as reg:
        reg.publish(built["lc-classifier"])
        reg.publish(make_onnx_package(root / "linear", name="linear", n_in=4, n_out=3))
        reg.publish(make_onnx_package(root / "scalar", name="scalar", n_in=4, n_out=1))
        yield reg


@pytest.fixture(scope="module")
def objects() -> tuple[np.ndarray, np.ndarray]:
    curves = simulate(300, seed=2024)
    return extract_many(curves), np.array([lc.label for lc in curves])


def test_classifier_evaluation_matches_sklearn_on_the_same_outputs(
    registry: Registry, objects: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = objects
    with sciserve.load("examples/lc-classifier", registry=registry) as model:
        record, outputs = evaluate_arrays(
            model,
            features,
            labels,
            "classification",
            batch_size=64,
            dataset="examples/lightcurves:1.0.0",
            dataset_digest="sha256:" + "0" * 64,
            split="test",
            seeds={"simulate": 2024},
        )
        whole = model.predict(features=features)["probabilities"]
    probs = outputs["probabilities"]
    np.testing.assert_array_equal(probs, whole)  # batching changed nothing here
    y = np.array([CLASSES.index(label) for label in labels])
    m = record.metrics
    assert m.classes == tuple(CLASSES)  # from the manifest's output labels
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, probs.argmax(axis=1)))
    assert m.accuracy > 0.6
    p64 = probs.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)
    assert m.log_loss == pytest.approx(skm.log_loss(y, p64, labels=range(len(CLASSES))))
    assert record.predictions_sha256 == predictions_sha256(outputs)
    assert record.rows == 300 and record.performance.batches == 5
    assert record.performance.rows_per_second > 0
    assert record.model == model.ref and record.model_digest == model.digest
    assert record.threads == {}  # the ONNX runtime's default of one thread applies
    assert record.libraries["onnxruntime"] and record.libraries["sciserve"]
    assert record.hardware["cpus"] >= 1
    assert record.seeds == {"simulate": 2024}


def test_two_runs_give_the_same_record_apart_from_measurements(
    registry: Registry, objects: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = objects
    with sciserve.load("examples/lc-classifier", registry=registry, intra_op_threads=1) as model:
        one, _ = evaluate_arrays(model, features, labels, Task.CLASSIFICATION, batch_size=100)
        two, _ = evaluate_arrays(model, features, labels, Task.CLASSIFICATION, batch_size=100)
    assert one.reproducible() == two.reproducible()
    assert one.threads == {"intra_op_threads": 1}
    data = json.loads(to_json(one))
    assert list(data)[:4] == ["schema", "task", "model", "model_digest"]
    back = record_from_dict(data)
    assert back == one
    with pytest.raises(MetricInputError, match="schema"):
        record_from_dict({**data, "schema": 99})


def test_outputs_that_do_not_fit_the_task_are_refused(
    registry: Registry, objects: tuple[np.ndarray, np.ndarray]
) -> None:
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with sciserve.load("linear", registry=registry) as model:
        # y = x @ W + b: scores, not probabilities.
        with pytest.raises(MetricInputError, match=r"'y' of default/linear:1\.0\.0 does not fit"):
            evaluate_arrays(model, x, np.zeros(20, dtype=int), "classification")
        with pytest.raises(MetricInputError, match="no output 'probabilities'"):
            evaluate_arrays(
                model, x, np.zeros(20, dtype=int), "classification", output="probabilities"
            )
        with pytest.raises(MetricInputError, match=r"20 label.*19 row"):
            evaluate_arrays(model, x[:19], np.zeros(20, dtype=int), "classification")
        with pytest.raises(MetricInputError, match="no rows"):
            evaluate_arrays(model, x[:0], np.zeros(0, dtype=int), "classification")
        with pytest.raises(MetricInputError, match="batch_size"):
            evaluate_arrays(model, x, np.zeros(20, dtype=int), "classification", batch_size=0)
        with pytest.raises(MetricInputError, match="1-D"):
            evaluate_arrays(model, x, np.zeros(20), "regression")  # three columns
        with pytest.raises(MetricInputError, match="cannot be read as an array"):
            evaluate_arrays(model, x, [[0], [1, 2]] * 10, "classification")
        with pytest.raises(MetricInputError, match="cannot be read as an array"):
            evaluate_arrays(model, [[0.0] * 4, [1.0]], [0, 1], "classification")
        with pytest.raises(ValueError, match="clustering"):
            evaluate_arrays(model, x, np.zeros(20), "clustering")


def test_regression_evaluation(registry: Registry) -> None:
    x = np.random.default_rng(1).uniform(1, 2, size=(50, 4)).astype(np.float32)
    with sciserve.load("scalar", registry=registry) as model:
        truth = model.predict(x)["y"][:, 0].astype(np.float64) * 1.1
        record, outputs = evaluate_arrays(model, x, truth, "regression", batch_size=7, bins=3)
    pred = outputs["y"][:, 0]
    assert record.metrics.mae == pytest.approx(skm.mean_absolute_error(truth, pred))
    assert record.performance.batches == 8
    assert len(record.metrics.bins) == 3


class _DropsARow:
    """A model that loses a row of every batch: the runner must notice."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.ref, self.digest = model.ref, model.digest
        self.manifest, self.runtime_options = model.manifest, model.runtime_options

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        return {k: v[1:] for k, v in self._model.predict(inputs, **named).items()}


def test_a_model_losing_rows_is_an_error_not_a_shifted_metric(
    registry: Registry, objects: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = objects
    with (
        sciserve.load("examples/lc-classifier", registry=registry) as model,
        pytest.raises(ModelExecutionError, match="for a batch of 64 rows"),
    ):
        evaluate_arrays(_DropsARow(model), features, labels, "classification", batch_size=64)
