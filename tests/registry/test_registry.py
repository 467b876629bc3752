"""The registry on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import sciserve
from sciserve.errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidReference,
    ManifestError,
    NotFound,
    ReadOnlyRegistry,
    VersionConflict,
)
from sciserve.registry.registry import Registry

from helpers.packages import expected_linear, write_package

MakePackage = Callable[..., Path]


def _blob_path(reg: Registry, sha256: str) -> Path:
    return Path(reg.settings.store_url) / "sha256" / sha256[:2] / sha256


def test_publish_resolve_and_load(registry: Registry, onnx_package: MakePackage) -> None:
    result = registry.publish(onnx_package())
    assert result.created
    info = registry.resolve("linear")
    assert info.ref == "default/linear:1.0.0"
    assert info.digest == result.version.digest
    assert info.digest.startswith("sha256:")
    assert info.aliases == ("latest",)
    with sciserve.load("linear", registry=registry) as model:
        x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
        np.testing.assert_allclose(model.predict(x=x)["y"], expected_linear(x), rtol=1e-6)


def test_republish_identical_is_noop_and_different_content_is_refused(
    registry: Registry, onnx_package: MakePackage
) -> None:
    first = registry.publish(onnx_package())
    again = registry.publish(onnx_package())
    assert not again.created
    assert again.version.digest == first.version.digest
    with pytest.raises(VersionConflict, match="immutable"):
        registry.publish(onnx_package(scale=2.0))
    # Metadata alone is part of the digest too.
    with pytest.raises(VersionConflict):
        registry.publish(onnx_package(extra={"description": "changed"}))
    assert [v.version for v in registry.versions("linear")] == ["1.0.0"]
    assert registry.resolve("linear").digest == first.version.digest


def test_aliases_latest_and_production(registry: Registry, onnx_package: MakePackage) -> None:
    registry.publish(onnx_package(version="1.0.0"))
    registry.publish(onnx_package(version="1.10.0", scale=3.0))
    registry.publish(onnx_package(version="1.2.0", scale=2.0))
    # Newest by version meaning, not by publish order or string order.
    assert registry.resolve("linear").version == "1.10.0"
    assert registry.resolve("linear@latest").version == "1.10.0"
    registry.tag("linear:1.2.0", "production")
    assert registry.resolve("linear").version == "1.2.0"
    assert registry.resolve("default/linear@production").version == "1.2.0"
    registry.tag("linear:1.0.0", "production")  # move it
    assert registry.resolve("linear").version == "1.0.0"
    with pytest.raises(InvalidInput, match="latest"):
        registry.tag("linear:1.0.0", "latest")
    with pytest.raises(NotFound, match="staging"):
        registry.resolve("linear@staging")
    registry.untag("linear", "production")
    assert registry.resolve("linear").version == "1.10.0"


def test_yank_keeps_the_record(registry: Registry, onnx_package: MakePackage) -> None:
    registry.publish(onnx_package(version="1.0.0"))
    registry.publish(onnx_package(version="2.0.0", scale=2.0))
    registry.yank("linear:2.0.0", "wrong normalisation")
    assert registry.resolve("linear").version == "1.0.0"
    pinned = registry.resolve("linear:2.0.0")
    assert pinned.yanked and pinned.yanked_reason == "wrong normalisation"
    assert {v.version for v in registry.versions("linear")} == {"1.0.0", "2.0.0"}
    with pytest.raises(Conflict, match="yanked"):
        registry.tag("linear:2.0.0", "production")
    registry.tag("linear:1.0.0", "production")
    with pytest.raises(Conflict, match="production"):
        registry.yank("linear:1.0.0", "x")
    assert [e["action"] for e in registry.events(3)] == ["tag", "yank", "publish"]


def test_unknown_and_malformed_references(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.resolve("nothing")
    for bad in ("", "a/b/c", "x:", "x@", "../x", "x:1.0@y y", "UPPER/x"):
        with pytest.raises(InvalidReference):
            registry.resolve(bad)


def test_bad_packages_change_nothing(registry: Registry, onnx_package: MakePackage) -> None:
    good = onnx_package()
    cases: dict[str, Callable[[Path], None]] = {
        "not valid YAML": lambda p: (p / "sciserve.yaml").write_text("name: [unclosed"),
        "datatype": lambda p: _edit(p, lambda d: d["inputs"][0].update(datatype="FLOAT")),
        "rank": lambda p: _edit(p, lambda d: d["inputs"][0].update(shape=[-1, 4, 1])),
        "dim 1 is 4": lambda p: _edit(p, lambda d: d["inputs"][0].update(shape=[-1, 5])),
        "does not exist": lambda p: (p / "model.onnx").unlink(),
        "sha256": lambda p: _edit(p, lambda d: d["files"][0].update(sha256="0" * 64)),
        "SPDX": lambda p: _edit(p, lambda d: d.update(license="Do whatever")),
        "'..'": lambda p: _edit(p, lambda d: d["files"][0].update(path="../model.onnx")),
        "absolute": lambda p: _edit(p, lambda d: d["files"][0].update(path="/etc/passwd")),
    }
    for expected, breaker in cases.items():
        pkg = onnx_package()
        breaker(pkg)
        with pytest.raises(ManifestError) as err:
            registry.publish(pkg)
        assert expected in str(err.value), (expected, str(err.value))
    assert registry.list_models() == []
    assert list(registry.store.iter_digests()) == []
    assert registry.publish(good).created


def test_symlink_escaping_the_package_is_refused(
    registry: Registry, onnx_package: MakePackage, tmp_path: Path
) -> None:
    pkg = onnx_package()
    outside = tmp_path / "outside.onnx"
    shutil.move(pkg / "model.onnx", outside)
    (pkg / "model.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the package"):
        registry.publish(pkg)


def _edit(pkg: Path, change: Callable[[dict[str, object]], None]) -> None:
    data = yaml.safe_load((pkg / "sciserve.yaml").read_text())
    change(data)
    (pkg / "sciserve.yaml").write_text(yaml.safe_dump(data))


def test_tampered_artifact_is_refused_on_load(
    registry: Registry, onnx_package: MakePackage, tmp_path: Path
) -> None:
    info = registry.publish(onnx_package()).version
    sha = info.manifest.files[0].sha256
    blob = _blob_path(registry, sha) if registry.settings.store_url.startswith("/") else None
    assert blob is not None and blob.is_file()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        sciserve.load("linear", registry=registry)
    assert sha in str(err.value)
    [report] = registry.verify("linear")
    assert not report.ok and sha in report.failures[0]
    assert not (tmp_path / "pulled").exists()
    with pytest.raises(IntegrityError):
        registry.pull("linear", tmp_path / "pulled")
    assert not (tmp_path / "pulled" / "model.onnx").exists()


def test_cached_package_is_verified_again(registry: Registry, onnx_package: MakePackage) -> None:
    registry.publish(onnx_package())
    root = registry.pull("linear")
    (root / "model.onnx").write_bytes(b"garbage")
    # The cache is keyed by digest and re-verified: a damaged copy is replaced.
    again = registry.pull("linear")
    assert (again / "model.onnx").read_bytes() != b"garbage"
    with sciserve.load("linear", registry=registry) as model:
        assert model.predict(x=np.ones((1, 4), np.float32))["y"].shape == (1, 3)


def test_export_import_and_read_only(
    registry: Registry, onnx_package: MakePackage, tmp_path: Path
) -> None:
    registry.publish(onnx_package(version="1.0.0"))
    registry.publish(onnx_package(version="2.0.0", scale=2.0))
    registry.tag("linear:1.0.0", "production")
    for out in (tmp_path / "export-dir", tmp_path / "export.tar.gz"):
        from sciserve.registry.exchange import export_models, import_models

        written = export_models(registry, ["linear"], out, all_versions=True)
        assert {v.version for v in written} == {"1.0.0", "2.0.0"}
        if out.is_dir():
            # Read-only open, as a worker node reading the export from CVMFS would.
            os.chmod(out / "registry.db", 0o444)
            ro = Registry.open(out, read_only=True, cache_dir=tmp_path / "ro-cache")
            with ro:
                assert ro.resolve("linear").version == "1.0.0"
                with sciserve.load("linear:2.0.0", registry=ro) as model:
                    x = np.ones((2, 4), np.float32)
                    np.testing.assert_allclose(
                        model.predict(x=x)["y"], expected_linear(x, scale=2.0)
                    )
                with pytest.raises(ReadOnlyRegistry):
                    ro.tag("linear:2.0.0", "production")
                with pytest.raises(ReadOnlyRegistry):
                    ro.publish(onnx_package(version="3.0.0"))
            assert sorted(p.name for p in out.iterdir()) == [
                "artifacts",
                "registry.db",
                "sciserve-export.json",
            ]
        with Registry.open(tmp_path / f"other-{out.name}", environ={}) as other:
            results = import_models(other, out)
            assert all(r.created for r in results)
            assert other.resolve("linear").version == "1.0.0"  # alias came along
            assert other.resolve("linear:2.0.0").digest == registry.resolve("linear:2.0.0").digest


def test_loading_from_a_home_without_a_registry_creates_none(tmp_path: Path) -> None:
    home = tmp_path / "mistyped"
    with pytest.raises(NotFound, match="no registry"):
        sciserve.load("linear", home=home)
    assert not home.exists()


def test_predict_takes_a_plain_array_for_a_single_input_model(
    registry: Registry, onnx_package: MakePackage
) -> None:
    registry.publish(onnx_package())
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    with sciserve.load("linear", registry=registry) as model:
        for given in (x, x.tolist()):
            np.testing.assert_allclose(model.predict(given)["y"], expected_linear(x), rtol=1e-6)
        np.testing.assert_allclose(model(x)["y"], expected_linear(x), rtol=1e-6)
        np.testing.assert_allclose(model.predict({"x": x})["y"], expected_linear(x), rtol=1e-6)


def test_a_plain_array_for_a_model_with_several_inputs_asks_for_names(
    registry: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "add"
    root.mkdir()
    spec = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["b", 2]) for n in "ab"]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        spec,
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 2])],
    )
    model_proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    (root / "model.onnx").write_bytes(model_proto.SerializeToString())
    tensor = {"datatype": "FP32", "shape": [-1, 2]}
    registry.publish(
        write_package(
            root,
            name="add",
            runtime="onnx",
            model_file="model.onnx",
            inputs=[{"name": "a", **tensor}, {"name": "b", **tensor}],
            outputs=[{"name": "y", **tensor}],
        )
    )
    ones = np.ones((1, 2), np.float32)
    with sciserve.load("add", registry=registry) as model:
        with pytest.raises(InvalidInput, match=r"takes 2 inputs \['a', 'b'\]: pass them by name"):
            model.predict(ones)
        np.testing.assert_allclose(model.predict(a=ones, b=ones)["y"], 2 * ones)
