"""The tree runtimes (``lightgbm``, ``sklearn``, ``xgboost``) on tiny real models."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import joblib
import lightgbm
import numpy as np
import pytest
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sciserve.errors import (
    DependencyMissing,
    DeviceUnavailable,
    InvalidInput,
    ManifestError,
    PermissionDenied,
)
from sciserve.runtimes import get_runtime
from sciserve.runtimes.base import Runtime
from sciserve.runtimes.lightgbm import LightGBMRuntime
from sciserve.runtimes.sklearn import SklearnRuntime
from sciserve.runtimes.xgboost import XGBoostRuntime

from .conftest import MakeSource

HAS_XGBOOST = importlib.util.find_spec("xgboost") is not None


def loaded(runtime_class: type[Runtime], source: Any) -> Any:
    runtime = runtime_class(source)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    features = rng.standard_normal((90, 4))
    labels = (features[:, 0] > 0).astype(int) + (features[:, 1] > 0.5).astype(int)
    return features, labels


# -- lightgbm ------------------------------------------------------------------


def train_lightgbm(
    path: Path, data: tuple[np.ndarray, np.ndarray], objective: str = "multiclass", **kw: Any
) -> lightgbm.Booster:
    features, labels = data
    params = {"objective": objective, "verbose": -1, "num_threads": 1, "seed": 1, **kw}
    if objective == "binary":
        labels = (labels > 0).astype(int)
    else:
        params["num_class"] = 3
    dataset = lightgbm.Dataset(features, labels, params={"verbose": -1})
    booster = lightgbm.train(params, dataset, num_boost_round=4)
    booster.save_model(str(path))
    return booster


def test_lightgbm_matches_booster_predict(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    booster = train_lightgbm(tmp_path / "model.txt", data)
    source = make_source(
        "lightgbm", "model.txt", [("input", "FP64", [-1, 4])], [("probs", "FP64", [-1, 3])]
    )
    x = data[0][:10]
    out = loaded(LightGBMRuntime, source).infer({"input": x})["probs"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, booster.predict(x))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_lightgbm_casts_outputs_and_fits_the_declared_rank(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    booster = train_lightgbm(tmp_path / "model.txt", data, "binary")
    source = make_source(
        "lightgbm", "model.txt", [("input", "FP32", [-1, 4])], [("p", "FP32", [-1, 1])]
    )
    x = data[0][:5].astype(np.float32)
    out = loaded(LightGBMRuntime, source).infer({"input": x})["p"]
    assert out.dtype == np.float32
    assert out.shape == (5, 1)
    np.testing.assert_allclose(out[:, 0], booster.predict(x), rtol=1e-6)


def test_lightgbm_inspect_reads_the_header(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    train_lightgbm(tmp_path / "model.txt", data)
    signature = LightGBMRuntime.inspect(tmp_path / "model.txt")
    assert signature is not None
    (spec,) = signature.inputs
    assert (spec.name, spec.datatype, spec.shape, spec.feature_names) == (
        "input",
        "FP32",
        [-1, 4],
        None,
    )
    assert [(t.name, t.shape) for t in signature.outputs] == [("probabilities", [-1, 3])]
    assert signature.max_batch_size == 1024


def test_lightgbm_inspect_keeps_real_feature_names(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = data
    dataset = lightgbm.Dataset(
        features,
        labels > 0,
        feature_name=["flux", "color", "period", "skew"],
        params={"verbose": -1},
    )
    lightgbm.train({"objective": "binary", "verbose": -1}, dataset, 2).save_model(
        str(tmp_path / "named.txt")
    )
    signature = LightGBMRuntime.inspect(tmp_path / "named.txt")
    assert signature is not None
    assert signature.inputs[0].feature_names == ["flux", "color", "period", "skew"]
    assert [(t.name, t.shape) for t in signature.outputs] == [("probability", [-1])]


def test_lightgbm_refuses_a_manifest_with_the_wrong_feature_count(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    train_lightgbm(tmp_path / "model.txt", data)
    source = make_source(
        "lightgbm", "model.txt", [("input", "FP64", [-1, 5])], [("p", "FP64", [-1, 3])]
    )
    with pytest.raises(ManifestError, match="4 features"):
        LightGBMRuntime(source).load()


def test_lightgbm_refuses_integer_features(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    train_lightgbm(tmp_path / "model.txt", data)
    source = make_source(
        "lightgbm", "model.txt", [("input", "INT32", [-1, 4])], [("p", "FP64", [-1, 3])]
    )
    with pytest.raises(ManifestError, match="FP32 or FP64"):
        LightGBMRuntime(source).load()


def test_lightgbm_checks_inputs(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    train_lightgbm(tmp_path / "model.txt", data)
    source = make_source(
        "lightgbm", "model.txt", [("input", "FP64", [-1, 4])], [("p", "FP64", [-1, 3])]
    )
    runtime = loaded(LightGBMRuntime, source)
    with pytest.raises(InvalidInput, match="dimension 1 must be 4, got 3"):
        runtime.infer({"input": np.ones((2, 3))})
    with pytest.raises(InvalidInput, match="dtype float32"):
        runtime.infer({"input": np.ones((2, 4), np.float32)})


# -- sklearn -------------------------------------------------------------------


def test_skops_logistic_regression_matches_predict_proba(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    model = LogisticRegression().fit(*data)
    skops.io.dump(model, tmp_path / "model.skops")
    source = make_source(
        "sklearn",
        "model.skops",
        [("features", "FP64", [-1, 4])],
        [{"name": "scores", "datatype": "FP64", "shape": [-1, 3], "labels": ["a", "b", "c"]}],
    )
    assert SklearnRuntime.executes_code(source.manifest) is False
    x = data[0][:7]
    out = loaded(SklearnRuntime, source).infer({"features": x})["scores"]
    np.testing.assert_array_equal(out, model.predict_proba(x))


def test_sklearn_picks_predict_or_the_method_option(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = data
    model = LogisticRegression().fit(features, np.array(["star", "galaxy", "qso"])[labels])
    skops.io.dump(model, tmp_path / "model.skops")
    x = features[:6]
    label_source = make_source(
        "sklearn", "model.skops", [("x", "FP64", [-1, 4])], [("label", "BYTES", [-1])]
    )
    labels_out = loaded(SklearnRuntime, label_source).infer({"x": x})["label"]
    assert labels_out.tolist() == [s.encode() for s in model.predict(x)]
    forced = make_source(
        "sklearn",
        "model.skops",
        [("x", "FP64", [-1, 4])],
        [("margin", "FP32", [-1, 3])],
        options={"method": "decision_function"},
    )
    margin = loaded(SklearnRuntime, forced).infer({"x": x})["margin"]
    np.testing.assert_allclose(margin, model.decision_function(x), rtol=1e-6)


def test_sklearn_refuses_methods_outside_its_list(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    skops.io.dump(LinearRegression().fit(*data), tmp_path / "model.skops")
    source = make_source(
        "sklearn",
        "model.skops",
        [("x", "FP64", [-1, 4])],
        [("y", "FP64", [-1])],
        options={"method": "__reduce__"},
    )
    with pytest.raises(ManifestError, match="not an estimator method"):
        SklearnRuntime(source).load()
    missing = make_source(
        "sklearn",
        "model.skops",
        [("x", "FP64", [-1, 4])],
        [("y", "FP64", [-1])],
        options={"method": "predict_proba"},
    )
    with pytest.raises(ManifestError, match="has no predict_proba"):
        SklearnRuntime(missing).load()


def test_skops_allows_sklearn_tree_types(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    model = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(*data)
    skops.io.dump(model, tmp_path / "model.skops")
    untrusted = skops.io.get_untrusted_types(file=tmp_path / "model.skops")
    assert untrusted == ["sklearn.tree._tree.Tree"]  # so the allow-list is what is tested
    source = make_source(
        "sklearn", "model.skops", [("x", "FP64", [-1, 4])], [("prob", "FP64", [-1, 3])]
    )
    x = data[0][:5]
    out = loaded(SklearnRuntime, source).infer({"x": x})["prob"]
    np.testing.assert_array_equal(out, model.predict_proba(x))


def test_skops_refuses_types_outside_the_allow_list(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    model = make_pipeline(FunctionTransformer(os.system), LinearRegression())
    skops.io.dump(model, tmp_path / "model.skops")
    source = make_source("sklearn", "model.skops", [("x", "FP64", [-1, 4])], [("y", "FP64", [-1])])
    with pytest.raises(PermissionDenied, match=r"system"):
        SklearnRuntime(source).load()


def test_skops_inspect_reads_features_and_classes_as_data(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = data
    model = LogisticRegression().fit(features, np.array(["star", "galaxy", "qso"])[labels])
    skops.io.dump(model, tmp_path / "model.skops")
    signature = SklearnRuntime.inspect(tmp_path / "model.skops")
    assert signature is not None
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [("input", "FP64", [-1, 4])]
    (output,) = signature.outputs
    assert (output.name, output.shape) == ("probabilities", [-1, 3])
    assert output.labels == [str(c) for c in model.classes_]


def test_skops_inspect_of_a_regressor_and_of_a_pipeline(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    skops.io.dump(LinearRegression().fit(*data), tmp_path / "reg.skops")
    signature = SklearnRuntime.inspect(tmp_path / "reg.skops")
    assert signature is not None
    assert [(t.name, t.shape) for t in signature.outputs] == [("prediction", [-1])]
    # A pipeline keeps its feature count in its steps: no signature, no guess.
    skops.io.dump(make_pipeline(LinearRegression()).fit(*data), tmp_path / "pipe.skops")
    assert SklearnRuntime.inspect(tmp_path / "pipe.skops") is None


def test_pickled_estimators_load_and_are_flagged_as_code(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    model = LogisticRegression().fit(*data)
    joblib.dump(model, tmp_path / "model.joblib")
    source = make_source(
        "sklearn", "model.joblib", [("x", "FP64", [-1, 4])], [("probabilities", "FP64", [-1, 3])]
    )
    assert SklearnRuntime.executes_code(source.manifest) is True
    assert SklearnRuntime.inspect(tmp_path / "model.joblib") is None
    x = data[0][:4]
    out = loaded(SklearnRuntime, source).infer({"x": x})["probabilities"]
    np.testing.assert_array_equal(out, model.predict_proba(x))


# -- xgboost -------------------------------------------------------------------


def test_xgboost_without_xgboost_names_the_extra(
    tmp_path: Path, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry makes ``import xgboost`` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "xgboost", None)
    (tmp_path / "model.json").write_text("{}")
    source = make_source("xgboost", "model.json", [("x", "FP32", [-1, 4])], [("y", "FP32", [-1])])
    with pytest.raises(DependencyMissing, match=r"sciserve\[xgboost\]"):
        XGBoostRuntime(source).load()


def test_xgboost_inspects_json_models_as_plain_json(tmp_path: Path) -> None:
    # The layout of XGBoost's JSON model schema, without trees.
    document = {
        "learner": {
            "feature_names": ["a", "b", "c", "d", "e"],
            "learner_model_param": {"num_class": "3", "num_feature": "5", "num_target": "1"},
            "objective": {"name": "multi:softprob"},
            "gradient_booster": {},
        },
        "version": [2, 0, 3],
    }
    (tmp_path / "model.json").write_text(json.dumps(document))
    signature = XGBoostRuntime.inspect(tmp_path / "model.json")
    assert signature is not None
    assert signature.inputs[0].shape == [-1, 5]
    assert signature.inputs[0].feature_names == ["a", "b", "c", "d", "e"]
    assert [(t.name, t.shape) for t in signature.outputs] == [("probabilities", [-1, 3])]
    (tmp_path / "model.ubj").write_bytes(b"{")
    assert XGBoostRuntime.inspect(tmp_path / "model.ubj") is None


@pytest.mark.skipif(not HAS_XGBOOST, reason="xgboost is not installed")
def test_xgboost_matches_booster_predict(
    tmp_path: Path, make_source: MakeSource, data: tuple[np.ndarray, np.ndarray]
) -> None:
    import xgboost

    features, labels = data
    booster = xgboost.train(
        {"objective": "multi:softprob", "num_class": 3, "nthread": 1},
        xgboost.DMatrix(features, labels),
        num_boost_round=3,
    )
    booster.save_model(str(tmp_path / "model.json"))
    source = make_source(
        "xgboost", "model.json", [("x", "FP64", [-1, 4])], [("p", "FP32", [-1, 3])]
    )
    out = loaded(XGBoostRuntime, source).infer({"x": features[:5]})["p"]
    np.testing.assert_allclose(out, booster.predict(xgboost.DMatrix(features[:5])), rtol=1e-6)


# -- shared rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime_class", "model_file"),
    [
        (LightGBMRuntime, "model.txt"),
        (SklearnRuntime, "model.skops"),
        (XGBoostRuntime, "model.json"),
    ],
)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_tree_runtimes_are_cpu_only(
    tmp_path: Path,
    make_source: MakeSource,
    runtime_class: type[Runtime],
    model_file: str,
    device: str,
) -> None:
    (tmp_path / model_file).write_bytes(b"unused")
    source = make_source(
        runtime_class.name,
        model_file,
        [("x", "FP64", [-1, 4])],
        [("y", "FP64", [-1])],
        device=device,
    )
    with pytest.raises(DeviceUnavailable, match="CPU only"):
        runtime_class(source).load()


@pytest.mark.parametrize("name", ["lightgbm", "sklearn", "xgboost"])
def test_entry_points_name_these_runtimes(name: str) -> None:
    expected = {"lightgbm": LightGBMRuntime, "sklearn": SklearnRuntime, "xgboost": XGBoostRuntime}
    assert get_runtime(name) is expected[name]


# -- safety ---------------------------------------------------------------------


# The payload's open() leaves a file object nobody closes.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_payload_really_runs_when_unpickled(
    tmp_path: Path, make_source: MakeSource, evil_joblib: bytes, sentinel: Path
) -> None:
    # The control experiment: if the safety tests below did unpickle the
    # payload, the sentinel would appear.  The runtime itself does not gate
    # pickles (the registry's trusted namespaces do), so loading one runs it.
    (tmp_path / "model.joblib").write_bytes(evil_joblib)
    source = make_source("sklearn", "model.joblib", [("x", "FP64", [-1, 4])], [("y", "FP64", [-1])])
    with pytest.raises(ManifestError):  # the payload returns a file, not an estimator
        SklearnRuntime(source).load()
    assert sentinel.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".joblib"])
def test_pickles_are_flagged_and_never_opened_by_inspect(
    tmp_path: Path,
    make_source: MakeSource,
    evil_pickle: bytes,
    evil_joblib: bytes,
    sentinel: Path,
    suffix: str,
) -> None:
    model_file = f"model{suffix}"
    (tmp_path / model_file).write_bytes(evil_joblib if suffix == ".joblib" else evil_pickle)
    source = make_source("sklearn", model_file, [("x", "FP64", [-1, 4])], [("y", "FP64", [-1])])
    assert SklearnRuntime.executes_code(source.manifest) is True
    assert SklearnRuntime.inspect(tmp_path / model_file) is None
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("runtime_class", "model_file"),
    [
        (SklearnRuntime, "model.skops"),
        (LightGBMRuntime, "model.txt"),
        (XGBoostRuntime, "model.json"),
    ],
)
def test_a_pickle_disguised_as_a_data_format_never_runs(
    tmp_path: Path,
    make_source: MakeSource,
    evil_pickle: bytes,
    sentinel: Path,
    runtime_class: type[Runtime],
    model_file: str,
) -> None:
    (tmp_path / model_file).write_bytes(evil_pickle)
    source = make_source(
        runtime_class.name, model_file, [("x", "FP64", [-1, 4])], [("y", "FP64", [-1])]
    )
    assert runtime_class.executes_code(source.manifest) is False
    with pytest.raises(InvalidInput):
        runtime_class.inspect(tmp_path / model_file)
    # Loading fails as well (or needs a missing extra), without unpickling.
    with pytest.raises((InvalidInput, DependencyMissing)):
        runtime_class(source).load()
    assert not sentinel.exists()
