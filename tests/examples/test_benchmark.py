"""The built-in light-curve benchmark: reproducible bytes, the example classifier's task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sciserve._hashing import sha256_file
from sciserve.errors import Conflict
from sciserve.examples import CLASSES, FEATURE_NAMES, extract_many, simulate
from sciserve.examples.benchmark import BENCHMARK_NAME, build_benchmark
from sciserve.package import croissant
from sciserve.package.dataset import load_split, read_croissant
from sciserve.package.manifest import DATASET, load_manifest
from sciserve.registry.registry import Registry

#: The bytes of the default benchmark (seed 42, 4000 + 1000 objects) as
#: this pyarrow writes them; a change here is a change of the benchmark.
PINNED = {
    "croissant.json": "43d5e49ece22c902355d35358a429a448d016ae3d2a5cf4e070ca8c80da08ef8",
    "train.parquet": "09e4c9c811ec6d9d2980c38c44512fdcbf613ee2583172ec13ed02c32681128d",
    "test.parquet": "675d25c52158219d7b750fc0810d8163199515be63cdf4e2e020c5c93dfe5a2f",
}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "lightcurves"
    build_benchmark(out)
    return out


def test_the_benchmark_regenerates_byte_identically(benchmark: Path) -> None:
    assert {p: sha256_file(benchmark / p)[0] for p in PINNED} == PINNED
    manifest = load_manifest(benchmark)
    assert {f.path: f.sha256 for f in manifest.files} == PINNED
    assert manifest.kind == DATASET
    assert manifest.ref == f"examples/{BENCHMARK_NAME}:1.0.0"


def test_the_benchmark_is_valid_croissant(benchmark: Path) -> None:
    doc = json.loads((benchmark / "croissant.json").read_text())
    assert croissant.validate(doc) == []
    assert "datePublished" not in doc and "dateCreated" not in doc


def test_the_benchmark_is_the_example_classifier_task(benchmark: Path) -> None:
    card = read_croissant(benchmark)
    assert card.task == "classification"
    assert card.classes == CLASSES
    assert card.features("test") == FEATURE_NAMES
    test = load_split(benchmark, "test")
    # The example classifier's held-out objects (seed 43), features unchanged.
    curves = simulate(1000, seed=43)
    np.testing.assert_array_equal(test.features, extract_many(curves))
    assert test.labels.tolist() == [lc.label for lc in curves]
    train = load_split(benchmark, "train")
    assert train.features.shape == (4000, len(FEATURE_NAMES))
    assert set(train.labels.tolist()) == set(CLASSES)


def test_the_benchmark_publishes(benchmark: Path, sqlite_registry: Registry) -> None:
    info = sqlite_registry.publish(benchmark).version
    assert sqlite_registry.resolve_dataset(f"examples/{BENCHMARK_NAME}").digest == info.digest


def test_another_seed_is_another_version(tmp_path: Path) -> None:
    manifest = build_benchmark(tmp_path / "small", seed=7, n_train=20, n_test=10)
    assert manifest.version == "1.0.0+s7.20.10"
    assert load_split(tmp_path / "small", "train").features.shape == (20, len(FEATURE_NAMES))
    with pytest.raises(Conflict, match="already exists"):
        build_benchmark(tmp_path / "small", seed=7, n_train=20, n_test=10)


def test_the_example_classifier_scores_its_published_accuracy_on_the_benchmark(
    benchmark: Path, tmp_path: Path
) -> None:
    import sciserve
    from sciserve.examples import build_examples

    (package,) = [p for p in build_examples(tmp_path / "examples") if p.name == "lc-classifier"]
    manifest = load_manifest(package)
    (output,) = manifest.outputs
    assert output.labels == list(CLASSES)
    assert manifest.inputs[0].feature_names == list(FEATURE_NAMES)
    published = {m.name: m.value for m in manifest.metrics}["accuracy"]
    with Registry.open(tmp_path / "home") as reg:
        reg.publish(package)
        reg.publish(benchmark)
        test = reg.load_split(f"examples/{BENCHMARK_NAME}", "test")
        model = sciserve.load("examples/lc-classifier", registry=reg)
        probabilities = model.predict(test.features)["probabilities"]
    predicted = np.asarray(output.labels)[np.argmax(probabilities, axis=1)]
    accuracy = float(np.mean(predicted == test.labels))
    assert round(accuracy, 4) == published
