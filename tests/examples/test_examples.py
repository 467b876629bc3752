"""The example light-curve simulator, features and model packages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from sciserve._hashing import sha256_file
from sciserve.errors import Conflict, InvalidInput
from sciserve.examples import (
    CLASSES,
    FEATURE_NAMES,
    LightCurve,
    build_examples,
    extract,
    extract_many,
    simulate,
)
from sciserve.package.manifest import MANIFEST_NAME, Manifest, load_manifest

# Neither the training seed (42) nor the held-out one (43).
FRESH_SEED = 2024


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("lightgbm")  # the second example needs the 'trees' extra
    out = tmp_path_factory.mktemp("examples")
    return {path.name: path for path in build_examples(out)}


@pytest.fixture(scope="module")
def fresh() -> tuple[np.ndarray, np.ndarray]:
    curves = simulate(500, seed=FRESH_SEED)
    labels = np.array([CLASSES.index(lc.label) for lc in curves])
    return extract_many(curves), labels


def _decline_times(curves: list[LightCurve], label: str) -> np.ndarray:
    column = FEATURE_NAMES.index("decline_time")
    return extract_many([lc for lc in curves if lc.label == label])[:, column]


# -- simulate ----------------------------------------------------------------


def test_simulate_is_deterministic_per_seed() -> None:
    first, again, other = simulate(25, seed=7), simulate(25, seed=7), simulate(25, seed=8)
    for a, b in zip(first, again, strict=True):
        assert (a.object_id, a.label) == (b.object_id, b.label)
        for field in ("mjd", "band", "flux", "flux_err"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(first[0].flux, other[0].flux)


def test_simulate_is_balanced_with_enough_finite_detections() -> None:
    curves = simulate(103, seed=1, n_detections=40)
    counts = Counter(lc.label for lc in curves)
    assert set(counts) == set(CLASSES)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert [lc.object_id for lc in curves] == list(range(103))
    for lc in curves:
        assert len(lc) >= 40
        assert np.all(np.isfinite(lc.mjd))
        assert np.all(np.diff(lc.mjd) >= 0)
        assert np.all(np.isfinite(lc.flux))
        assert np.all(np.isfinite(lc.flux_err))
        assert np.all(lc.flux_err > 0)
        assert set(lc.band.tolist()) <= set("ugrizy")


def test_simulate_default_gives_thirty_detections_and_honours_classes() -> None:
    curves = simulate(10, seed=3, classes=("kilonova", "AGN"))
    assert Counter(lc.label for lc in curves) == {"kilonova": 5, "AGN": 5}
    assert all(len(lc) == 30 for lc in curves)


def test_simulate_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        simulate(5, seed=0, classes=("SN Ib",))
    with pytest.raises(InvalidInput):
        simulate(5, seed=0, n_detections=0)


def test_classes_differ_physically() -> None:
    curves = simulate(400, seed=11)
    assert np.median(_decline_times(curves, "kilonova")) < 5.0
    assert np.median(_decline_times(curves, "SN Ia")) > 3 * np.median(
        _decline_times(curves, "kilonova")
    )
    # A kilonova is seen for days, a supernova for months.
    spans = {
        label: np.median([np.ptp(lc.mjd) for lc in curves if lc.label == label])
        for label in CLASSES
    }
    assert spans["kilonova"] < 25 < spans["SN Ia"] < spans["AGN"]


def test_noise_grows_towards_faint_magnitudes() -> None:
    curves = simulate(50, seed=5, classes=("SN Ia",))
    flux = np.concatenate([lc.flux for lc in curves])
    err = np.concatenate([lc.flux_err for lc in curves])
    bright, faint = flux > 20_000, (flux > 300) & (flux < 1_000)
    # Magnitude error ~ 1.0857 / SNR.
    assert np.median(err[faint] / flux[faint]) > 5 * np.median(err[bright] / flux[bright])


# -- features ----------------------------------------------------------------


def test_features_have_the_right_shape_and_are_finite() -> None:
    features = extract_many(simulate(60, seed=2))
    assert features.shape == (60, len(FEATURE_NAMES))
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    assert 15 <= len(FEATURE_NAMES) <= 25
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert np.all(features[:, FEATURE_NAMES.index("n_detections")] == 30)


@pytest.mark.parametrize(
    ("mjd", "band", "flux", "flux_err"),
    [
        ([], [], [], []),
        ([60000.0], ["r"], [100.0], [10.0]),
        ([1.0, 1.0, 1.0], ["y", "y", "y"], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([3.0, 1.0, 2.0], ["g", "r", "i"], [-5.0, np.nan, 1e30], [np.inf, 1.0, 0.0]),
    ],
)
def test_features_stay_finite_on_degenerate_curves(
    mjd: list[float], band: list[str], flux: list[float], flux_err: list[float]
) -> None:
    lc = LightCurve(0, "SN Ia", np.array(mjd), np.array(band), np.array(flux), np.array(flux_err))
    features = extract(lc)
    assert features.shape == (len(FEATURE_NAMES),)
    assert np.all(np.isfinite(features))


def test_colour_falls_back_to_zero_without_the_band() -> None:
    lc = simulate(1, seed=4)[0]
    keep = lc.band != "g"
    only_red = LightCurve(
        lc.object_id, lc.label, lc.mjd[keep], lc.band[keep], lc.flux[keep], lc.flux_err[keep]
    )
    assert extract(only_red)[FEATURE_NAMES.index("g_r_at_peak")] == 0.0


def test_light_curve_rejects_ragged_arrays() -> None:
    with pytest.raises(InvalidInput):
        LightCurve(1, "AGN", np.zeros(3), np.array(["g"] * 3), np.zeros(2), np.ones(3))


# -- build_examples ----------------------------------------------------------


def test_packages_hold_exactly_their_listed_files(built: dict[str, Path]) -> None:
    assert set(built) == {"lc-classifier", "lc-classifier-gbm"}
    for name, root in built.items():
        manifest = load_manifest(root)
        assert (manifest.namespace, manifest.name, manifest.version) == ("examples", name, "1.0.0")
        on_disk = {p.name for p in root.iterdir()}
        assert on_disk == {entry.path for entry in manifest.files} | {MANIFEST_NAME}
        for entry in manifest.files:
            assert sha256_file(root / entry.path) == (entry.sha256, entry.size)


def test_manifests_carry_the_fair_metadata(built: dict[str, Path]) -> None:
    for root in built.values():
        manifest = load_manifest(root)
        assert manifest.license == "CC-BY-4.0"
        assert manifest.max_batch_size == 1024
        assert manifest.compatible_with == {"features": "sciserve.examples.features v1"}
        assert manifest.inputs[0].feature_names == list(FEATURE_NAMES)
        assert manifest.outputs[0].labels == list(CLASSES)
        assert manifest.code is not None
        assert manifest.code.path == "src/sciserve/examples/build.py"
        training = manifest.training_data[0]
        assert training.identifier == "urn:sciserve:synthetic-lightcurves-v1?seed=42&n=4000"
        assert training.sha256 == manifest.file("training-data.npz").sha256
        accuracy = next(m for m in manifest.metrics if m.name == "accuracy")
        assert (accuracy.dataset, accuracy.split) == ("synthetic-lightcurves-v1", "test")
        assert accuracy.value > 0.8

        assert manifest.citation is not None
        assert manifest.citation.cff == "CITATION.cff"
        cff = yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))
        assert cff["cff-version"] == "1.2.0"
        assert {"message", "title", "authors"} <= set(cff)

        with np.load(root / "training-data.npz", allow_pickle=False) as data:
            assert data["features"].shape == (4000, len(FEATURE_NAMES))
            assert sorted(np.bincount(data["labels"])) == [800] * 5
            assert tuple(data["classes"]) == CLASSES


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    assert probabilities.shape == (len(labels), len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def test_onnx_model_classifies_fresh_objects(
    built: dict[str, Path], fresh: tuple[np.ndarray, np.ndarray]
) -> None:
    root = built["lc-classifier"]
    manifest: Manifest = load_manifest(root)
    model_path = root / str(manifest.model_file)
    onnx.checker.check_model(onnx.load(model_path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    features, labels = fresh
    (probabilities,) = session.run(["probabilities"], {"features": features})
    assert probabilities.dtype == np.float32
    assert _accuracy(probabilities, labels) > 0.7


def test_lightgbm_model_classifies_fresh_objects(
    built: dict[str, Path], fresh: tuple[np.ndarray, np.ndarray]
) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    root = built["lc-classifier-gbm"]
    manifest = load_manifest(root)
    assert manifest.runtime == "lightgbm"
    model_path = root / str(manifest.model_file)
    assert model_path.read_text(encoding="utf-8").startswith("tree\n")
    booster = lightgbm.Booster(model_file=str(model_path))
    assert booster.feature_name() == list(FEATURE_NAMES)
    features, labels = fresh
    assert _accuracy(np.asarray(booster.predict(features)), labels) > 0.7


def test_building_again_gives_the_same_bytes(built: dict[str, Path], tmp_path: Path) -> None:
    # The build reads no clock and seeds every random draw, so separate
    # processes agree too; one process is what a quick test can check.
    again = {path.name: path for path in build_examples(tmp_path)}
    for name, root in built.items():
        for member in root.iterdir():
            assert (again[name] / member.name).read_bytes() == member.read_bytes(), member.name


def test_rebuilding_replaces_an_earlier_build(tmp_path: Path) -> None:
    pytest.importorskip("lightgbm")
    first = build_examples(tmp_path)
    (first[0] / "stale.txt").write_text("left over", encoding="utf-8")
    second = build_examples(tmp_path)
    assert second == first
    assert not (second[0] / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc-classifier", "lc-classifier-gbm"]


def test_build_refuses_to_overwrite_foreign_directories(tmp_path: Path) -> None:
    # Checked before any training, so this is quick.
    (tmp_path / "lc-classifier").mkdir()
    (tmp_path / "lc-classifier" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(Conflict):
        build_examples(tmp_path)
    assert (tmp_path / "lc-classifier" / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lc-classifier"]
