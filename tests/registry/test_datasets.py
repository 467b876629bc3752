"""Datasets in the registry: packages of kind ``dataset`` under the models' rules."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from sciserve.config import Limits, Settings
from sciserve.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    ManifestError,
    NotFound,
    PayloadTooLarge,
    VersionConflict,
)
from sciserve.package import croissant
from sciserve.package.dataset import (
    DatasetSource,
    assemble,
    from_croissant,
    load_split,
    read_croissant,
)
from sciserve.package.manifest import DATASET, parse_manifest
from sciserve.registry import db
from sciserve.registry.exchange import export_models, import_models
from sciserve.registry.registry import Registry

from helpers.datasets import make_dataset as helper_dataset
from helpers.datasets import write_split

MakeDataset = Callable[..., Path]


@pytest.fixture
def make_dataset(tmp_path: Path) -> MakeDataset:
    """Factory: a dataset package directory with train (9 rows) and test (6 rows) splits."""
    counter = iter(range(1000))

    def make(**kw: object) -> Path:
        return helper_dataset(tmp_path / f"ds{next(counter)}", **kw)  # type: ignore[arg-type]

    return make


def _state(reg: Registry) -> tuple[int, int, int]:
    with reg._read() as conn:  # what a refused add must leave untouched
        return (
            conn.execute(sa.select(sa.func.count()).select_from(db.versions)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(db.models)).scalar_one(),
            len(list((reg.settings.home / "artifacts").rglob("*")))
            if (reg.settings.home / "artifacts").exists()
            else 0,
        )


# -- the package --------------------------------------------------------------


def test_an_assembled_dataset_is_valid_croissant_with_its_label_and_splits(
    make_dataset: MakeDataset,
) -> None:
    root = make_dataset()
    doc = json.loads((root / "croissant.json").read_text())
    assert croissant.validate(doc) == []
    card = read_croissant(root)
    assert card.label == "label"
    assert card.task == "classification"
    assert card.classes == ("galaxy", "qso", "star")
    assert set(card.splits) == {"train", "test"}
    assert card.features("test") == ("flux", "colour")
    assert card.license == "CC-BY-4.0"
    assert doc["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert card.creators == ("A. Astronomer",)
    for entry in doc["distribution"]:
        path = root / entry["contentUrl"]
        assert entry["contentSize"] == f"{path.stat().st_size} B"
        import hashlib

        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_digests_do_not_change_with_the_kind_field() -> None:
    data = {"name": "m", "version": "1", "runtime": "onnx"}
    manifest = parse_manifest(data)
    assert "kind" not in manifest.to_dict()
    assert manifest.digest == parse_manifest({**data, "kind": "model"}).digest


def test_a_dataset_manifest_cannot_pose_as_a_model() -> None:
    with pytest.raises(ManifestError, match="runtime 'dataset' is for datasets"):
        parse_manifest({"name": "m", "version": "1", "runtime": "dataset"})
    with pytest.raises(ManifestError, match="a dataset has runtime 'dataset'"):
        parse_manifest({"kind": "dataset", "name": "m", "version": "1", "runtime": "onnx"})


def test_a_missing_label_field_is_refused(tmp_path: Path) -> None:
    src = write_split(tmp_path / "train.parquet", 4, label="class")
    with pytest.raises(InvalidInput, match=r"no label field 'label'.*--label"):
        assemble(
            {"train": src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
        )
    assert not (tmp_path / "pkg").exists()


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    src = write_split(tmp_path / "train.parquet", 50)
    with pytest.raises(PayloadTooLarge, match="max_dataset_file_bytes"):
        assemble(
            {"train": src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=100,
        )


@pytest.mark.parametrize("split", ["../up", "Train", "a/b", ""])
def test_split_names_are_plain(tmp_path: Path, split: str) -> None:
    src = write_split(tmp_path / "train.parquet", 4)
    with pytest.raises(InvalidInput, match="not a split name"):
        assemble(
            {split: src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
        )


def test_not_parquet_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"PAR1 but not really")
    with pytest.raises(InvalidInput, match="not a readable Parquet file"):
        assemble(
            {"train": bad},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
        )


def test_load_split_gives_features_and_labels_from_the_document(make_dataset: MakeDataset) -> None:
    data = load_split(make_dataset(), "train")
    assert data.feature_names == ("flux", "colour")
    assert data.features.shape == (9, 2) and data.features.dtype.name == "float32"
    assert data.features[3].tolist() == pytest.approx([0.3, 3.0])
    assert data.labels.tolist() == ["star", "galaxy", "qso"] * 3
    assert data.ids is not None and data.ids.tolist() == list(range(9))
    with pytest.raises(InvalidInput, match="no split 'validation'"):
        load_split(make_dataset(), "validation")


# -- a user's own Croissant document -----------------------------------------------


def _own_document(make_dataset: MakeDataset, tmp_path: Path) -> Path:
    """A directory as a user would bring it: data files and croissant.json, no manifest."""
    pkg = make_dataset()
    own = tmp_path / "own"
    own.mkdir()
    for name in ("croissant.json", "train.parquet", "test.parquet"):
        (own / name).write_bytes((pkg / name).read_bytes())
    return own


def test_from_croissant_checks_the_files_it_names(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    own = _own_document(make_dataset, tmp_path)
    manifest = from_croissant(own, tmp_path / "out", max_file_bytes=2**30)
    assert manifest.kind == DATASET and manifest.name == "stars"
    data = bytearray((own / "test.parquet").read_bytes())
    data[len(data) // 2] ^= 1
    (own / "test.parquet").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"test\.parquet has sha256"):
        from_croissant(own, tmp_path / "out2", max_file_bytes=2**30)


def test_a_document_mlcroissant_refuses_is_refused(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    own = _own_document(make_dataset, tmp_path)
    doc = json.loads((own / "croissant.json").read_text())
    doc["recordSet"][-1]["field"][0]["dataType"] = ["sc:Float", "sc:Bogus"]
    doc["distribution"][0].pop("encodingFormat")
    (own / "croissant.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as caught:
        from_croissant(own, tmp_path / "out", max_file_bytes=2**30)
    assert any("encodingFormat" in p.message for p in caught.value.problems)


@pytest.mark.parametrize("path", ["../secret.parquet", "/etc/passwd", "a/../../b.parquet"])
def test_a_document_naming_files_outside_is_refused(
    make_dataset: MakeDataset, tmp_path: Path, path: str
) -> None:
    own = _own_document(make_dataset, tmp_path)
    (tmp_path / "secret.parquet").write_bytes((own / "test.parquet").read_bytes())
    doc = json.loads((own / "croissant.json").read_text())
    old = doc["distribution"][0]["contentUrl"]
    text = json.dumps(doc).replace(f'"{old}"', json.dumps(path))
    (own / "croissant.json").write_text(text)
    with pytest.raises((InvalidInput, ManifestError)):
        from_croissant(own, tmp_path / "out", max_file_bytes=2**30)
    assert not (tmp_path / "out" / "secret.parquet").exists()


def test_a_document_without_a_label_is_refused(make_dataset: MakeDataset, tmp_path: Path) -> None:
    own = _own_document(make_dataset, tmp_path)
    text = (own / "croissant.json").read_text().replace('"cr:Label"', '"sc:Text"')
    (own / "croissant.json").write_text(text)
    with pytest.raises(ManifestError) as caught:
        from_croissant(own, tmp_path / "out", max_file_bytes=2**30)
    assert "no label field" in str(caught.value.problems)


# -- the registry -------------------------------------------------------------------


def test_publish_resolve_pull_verify_a_dataset(
    registry: Registry, make_dataset: MakeDataset
) -> None:
    result = registry.publish(make_dataset(), actor="t")
    info = result.version
    assert result.created and info.manifest.kind == DATASET
    assert info.to_dict()["kind"] == "dataset"
    assert registry.resolve_dataset("stars").digest == info.digest
    assert [v.ref for v in registry.list_datasets()] == ["default/stars:1.0.0"]
    assert registry.list_models() == []
    root = registry.pull("stars", kind=DATASET)
    assert load_split(root, "test").features.shape == (6, 2)
    (report,) = registry.verify("stars", kind=DATASET)
    assert report.ok and report.checked == 3
    assert registry.events(1)[0]["detail"] == {"digest": info.digest, "kind": "dataset"}


def test_a_dataset_is_not_a_model_and_a_model_not_a_dataset(
    registry: Registry, make_dataset: MakeDataset, onnx_package: Callable[..., Path]
) -> None:
    registry.publish(make_dataset())
    registry.publish(onnx_package(name="clf"))
    with pytest.raises(NotFound, match="stars is a dataset, not a model"):
        registry.resolve("stars")
    with pytest.raises(NotFound, match="is a dataset, not a model"):
        registry.pull("stars")
    with pytest.raises(NotFound, match="clf is a model, not a dataset"):
        registry.resolve_dataset("clf")
    with pytest.raises(NotFound, match="no dataset default/nope"):
        registry.resolve_dataset("nope")
    assert [v.name for v in registry.list_models()] == ["clf"]
    assert [v.name for v in registry.list_datasets()] == ["stars"]


def test_a_name_is_one_kind_for_good(
    registry: Registry, make_dataset: MakeDataset, onnx_package: Callable[..., Path]
) -> None:
    registry.publish(onnx_package(name="stars", version="0.1.0"))
    before = _state(registry)
    with pytest.raises(Conflict, match="stars is a model; a dataset cannot take its name"):
        registry.publish(make_dataset(version="2.0.0"))
    assert _state(registry)[:2] == before[:2]


def test_datasets_are_immutable_and_tag_and_yank_like_models(
    registry: Registry, make_dataset: MakeDataset
) -> None:
    registry.publish(make_dataset())
    assert not registry.publish(make_dataset()).created  # identical: a no-op
    with pytest.raises(VersionConflict, match="immutable"):
        registry.publish(make_dataset(offset=1.0))
    registry.publish(make_dataset(version="1.1.0", offset=1.0))
    registry.tag("stars:1.0.0", "benchmark")
    assert registry.resolve_dataset("stars@benchmark").version == "1.0.0"
    registry.untag("stars", "benchmark")
    registry.yank("stars:1.1.0", "bad labels")
    assert registry.resolve_dataset("stars").version == "1.0.0"
    assert registry.resolve_dataset("stars:1.1.0").yanked


def test_verify_detects_one_changed_byte(
    sqlite_registry: Registry, make_dataset: MakeDataset
) -> None:
    info = sqlite_registry.publish(make_dataset()).version
    entry = info.manifest.file("train.parquet")
    blob = next(p for p in (sqlite_registry.settings.home / "artifacts").rglob(entry.sha256 + "*"))
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    (report,) = sqlite_registry.verify("stars", kind=DATASET)
    assert not report.ok
    assert "train.parquet" in report.failures[0]


def test_a_dataset_whose_document_disagrees_with_its_manifest_is_refused(
    registry: Registry, make_dataset: MakeDataset
) -> None:
    root = make_dataset()
    doc = json.loads((root / "croissant.json").read_text())
    doc["distribution"][0]["sha256"] = "0" * 64
    (root / "croissant.json").write_text(json.dumps(doc))
    # Refresh the manifest's entry for the document, so only the disagreement remains.
    import hashlib

    from sciserve.package.manifest import dump_manifest, load_manifest

    manifest = load_manifest(root)
    files = [
        f.model_copy(
            update={
                "sha256": hashlib.sha256((root / f.path).read_bytes()).hexdigest(),
                "size": (root / f.path).stat().st_size,
            }
        )
        if f.path == "croissant.json"
        else f
        for f in manifest.files
    ]
    (root / "sciserve.yaml").write_text(dump_manifest(manifest.model_copy(update={"files": files})))
    before = _state(registry)
    with pytest.raises(ManifestError, match="disagree"):
        registry.publish(root)
    assert _state(registry)[:2] == before[:2]


def test_datasets_export_and_import_with_models(
    sqlite_registry: Registry,
    make_dataset: MakeDataset,
    onnx_package: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sqlite_registry.publish(make_dataset())
    sqlite_registry.publish(onnx_package(name="clf"))
    sqlite_registry.tag("stars:1.0.0", "benchmark")
    export_models(sqlite_registry, ["stars", "clf"], tmp_path / "export")
    with Registry.open(tmp_path / "export", read_only=True) as ro:
        assert ro.resolve_dataset("stars@benchmark").version == "1.0.0"
    with Registry(Settings.load(tmp_path / "other", environ={})) as other:
        import_models(other, tmp_path / "export")
        assert [v.name for v in other.list_datasets()] == ["stars"]
        assert [v.name for v in other.list_models()] == ["clf"]
        assert (
            other.resolve_dataset("stars@benchmark").digest
            == sqlite_registry.resolve_dataset("stars").digest
        )


def test_a_registry_from_before_datasets_is_upgraded_and_its_names_are_models(
    tmp_path: Path,
) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    home = tmp_path / "home"
    home.mkdir()
    engine = db.connect(f"sqlite:///{home / 'registry.db'}")
    config = Config()
    config.set_main_option("script_location", "sciserve.registry:migrations")
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0006")
        conn.exec_driver_sql(
            "insert into namespaces (id, name, trusted, created_at) "
            "values (1, 'default', 0, '2026-01-01')"
        )
        conn.exec_driver_sql(
            "insert into models (id, namespace_id, name, created_at) "
            "values (1, 1, 'old', '2026-01-01')"
        )
        conn.commit()
    engine.dispose()
    with Registry(Settings.load(home, environ={})):
        pass
    conn2 = sqlite3.connect(home / "registry.db")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert conn2.execute("select version_num from alembic_version").fetchone() == (head,)
    assert conn2.execute("select name, kind from models").fetchall() == [("old", "model")]
    conn2.close()


def test_the_size_cap_comes_from_the_settings() -> None:
    assert Limits().max_dataset_file_bytes == 16 * 2**30
    assert Limits(max_dataset_file_bytes=5).max_dataset_file_bytes == 5


def test_a_dataset_cannot_be_loaded_as_a_model(
    sqlite_registry: Registry, make_dataset: MakeDataset
) -> None:
    import sciserve

    sqlite_registry.publish(make_dataset())
    with pytest.raises(NotFound, match="stars is a dataset, not a model"):
        sciserve.load("stars", registry=sqlite_registry)


def test_load_split_through_the_registry_verifies_first(
    sqlite_registry: Registry, make_dataset: MakeDataset
) -> None:
    info = sqlite_registry.publish(make_dataset()).version
    data = sqlite_registry.load_split("stars", "test")
    assert data.features.shape == (6, 2) and data.label == "label"
    assert sqlite_registry.croissant("stars")["name"] == "stars"
    # One changed byte of a stored file: nothing is read from it.
    entry = info.manifest.file("test.parquet")
    cached = sqlite_registry.settings.package_cache / info.digest.removeprefix("sha256:")
    blob = next((sqlite_registry.settings.home / "artifacts").rglob(entry.sha256 + "*"))
    damaged = bytearray(blob.read_bytes())
    damaged[-20] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(damaged))
    import shutil

    shutil.rmtree(cached)
    with pytest.raises(IntegrityError):
        sqlite_registry.load_split("stars", "test")


# -- NumPy splits and Avro alert archives -------------------------------------------


def _npz(path: Path, **arrays: object) -> Path:
    import numpy as np

    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_a_numpy_split_becomes_parquet_with_named_classes(tmp_path: Path) -> None:
    import numpy as np

    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    src = _npz(
        tmp_path / "train.npz",
        features=x,
        labels=np.array([0, 2, 1, 0], np.uint8),
        feature_names=np.array(["a", "b", "c"]),
        classes=np.array(["star", "galaxy", "qso"]),
        ids=np.array([10, 11, 12, 13]),
    )
    source = DatasetSource(
        name="np", version="1", license="CC0-1.0", classes=("star", "galaxy", "qso")
    )
    manifest = assemble({"train": src}, tmp_path / "pkg", source, max_file_bytes=2**30)
    assert [f.path for f in manifest.files] == ["croissant.json", "train.parquet"]
    data = load_split(tmp_path / "pkg", "train")
    assert data.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(data.features, x)
    assert data.labels.tolist() == ["star", "qso", "galaxy", "star"]
    assert data.ids is not None and data.ids.tolist() == [10, 11, 12, 13]
    assert read_croissant(tmp_path / "pkg").classes == ("star", "galaxy", "qso")
    # The same arrays give the same bytes.
    again = assemble({"train": src}, tmp_path / "pkg2", source, max_file_bytes=2**30)
    assert again.digest == manifest.digest


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"features": [[1.0]]}, "needs arrays 'features'"),
        ({"features": [1.0, 2.0], "labels": [0, 1]}, "2-D numeric"),
        ({"features": [[1.0], [2.0]], "labels": [0]}, "one integer or text label per row"),
        (
            {"features": [[1.0], [2.0]], "labels": [0, 5], "classes": ["a", "b"]},
            "outside the 2 classes",
        ),
        ({"features": [[1.0]], "labels": [0], "feature_names": ["label"]}, "unique and not"),
    ],
)
def test_bad_numpy_splits_are_refused(
    tmp_path: Path, arrays: dict[str, object], message: str
) -> None:
    import numpy as np

    src = _npz(tmp_path / "train.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(InvalidInput, match=message):
        assemble(
            {"train": src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
        )
    assert not (tmp_path / "pkg").exists()


def test_a_pickled_numpy_array_is_never_loaded(tmp_path: Path) -> None:
    import numpy as np

    src = tmp_path / "train.npz"
    np.savez(src, features=np.array([[1.0]]), labels=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidInput, match="object arrays are refused"):
        assemble(
            {"train": src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
        )


def test_a_numpy_file_that_unpacks_over_the_cap_is_refused(tmp_path: Path) -> None:
    import numpy as np

    src = tmp_path / "train.npz"
    np.savez_compressed(src, features=np.zeros((20_000, 10)), labels=np.zeros(20_000, np.int64))
    assert src.stat().st_size < 100_000
    with pytest.raises(PayloadTooLarge, match="unpacks to"):
        assemble(
            {"train": src},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=100_000,
        )


def _avro(path: Path) -> Path:
    import fastavro

    schema = {
        "type": "record",
        "name": "alert",
        "fields": [{"name": "alertId", "type": "long"}, {"name": "band", "type": "string"}],
    }
    with path.open("wb") as out:
        fastavro.writer(out, schema, [{"alertId": i, "band": "g"} for i in range(5)])
    return path


def test_avro_alert_archives_travel_with_the_splits(registry: Registry, tmp_path: Path) -> None:
    split = write_split(tmp_path / "train.parquet", 6)
    alerts = _avro(tmp_path / "night-1.avro")
    manifest = assemble(
        {"train": split},
        tmp_path / "pkg",
        DatasetSource(name="alerts", version="1", license="CC0-1.0"),
        max_file_bytes=2**30,
        attachments=[alerts],
    )
    assert manifest.file("alerts/night-1.avro").role == "data"
    doc = json.loads((tmp_path / "pkg" / "croissant.json").read_text())
    (entry,) = [d for d in doc["distribution"] if d["contentUrl"] == "alerts/night-1.avro"]
    assert entry["encodingFormat"] == "application/avro"
    assert croissant.validate(doc) == []
    registry.publish(tmp_path / "pkg")
    pulled = registry.pull("alerts", tmp_path / "out", kind=DATASET)
    assert (pulled / "alerts" / "night-1.avro").read_bytes() == alerts.read_bytes()


def test_a_file_that_is_not_avro_is_not_an_alert_archive(tmp_path: Path) -> None:
    split = write_split(tmp_path / "train.parquet", 6)
    fake = tmp_path / "night.avro"
    fake.write_bytes(b"PAR1 not avro")
    with pytest.raises(InvalidInput, match="not an Avro object container file"):
        assemble(
            {"train": split},
            tmp_path / "pkg",
            DatasetSource(name="x", version="1", license="CC0-1.0"),
            max_file_bytes=2**30,
            attachments=[fake],
        )


def test_a_regression_dataset_needs_no_classes(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"x": pa.array([1.0, 2.0, 3.0]), "energy": pa.array([0.5, 1.5, 2.5])}),
        tmp_path / "test.parquet",
    )
    source = DatasetSource(
        name="calo", version="1", license="CC0-1.0", task="regression", label="energy"
    )
    assemble({"test": tmp_path / "test.parquet"}, tmp_path / "pkg", source, max_file_bytes=2**30)
    card = read_croissant(tmp_path / "pkg")
    assert (card.task, card.classes, card.label) == ("regression", (), "energy")
    assert croissant.validate(json.loads((tmp_path / "pkg" / "croissant.json").read_text())) == []
    data = load_split(tmp_path / "pkg", "test")
    np.testing.assert_array_equal(data.labels, [0.5, 1.5, 2.5])


def test_a_document_describing_other_columns_than_its_file_is_refused(
    registry: Registry, make_dataset: MakeDataset, tmp_path: Path
) -> None:
    own = _own_document(make_dataset, tmp_path)
    doc = json.loads((own / "croissant.json").read_text())
    split = next(r for r in doc["recordSet"] if r["@id"] == "test")
    field = next(f for f in split["field"] if f["name"] == "flux")
    field["dataType"] = "sc:Text"
    (own / "croissant.json").write_text(json.dumps(doc))
    package = tmp_path / "pkg"
    from_croissant(own, package, max_file_bytes=2**30)
    with pytest.raises(ManifestError, match="the document says sc:Text"):
        registry.publish(package)
    assert registry.list_datasets() == []


def test_a_deeply_nested_document_is_a_clear_error(
    make_dataset: MakeDataset, tmp_path: Path
) -> None:
    own = _own_document(make_dataset, tmp_path)
    (own / "croissant.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ManifestError, match="nests too deeply"):
        from_croissant(own, tmp_path / "out", max_file_bytes=2**30)
    (own / "croissant.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        from_croissant(own, tmp_path / "out2", max_file_bytes=2**30)


def test_without_the_datasets_extra_the_error_says_what_to_install(
    make_dataset: MakeDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from sciserve.errors import DependencyMissing

    root = make_dataset()
    doc = json.loads((root / "croissant.json").read_text())
    monkeypatch.setitem(sys.modules, "mlcroissant", None)
    with pytest.raises(DependencyMissing, match=r"sciserve\[datasets\]"):
        croissant.validate(doc)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DependencyMissing, match=r"sciserve\[datasets\]"):
        load_split(root, "test")
