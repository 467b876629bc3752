"""Untrusted packages never execute code, through any registry, SDK or CLI path.

Each malicious file, when unpickled, creates a sentinel file.  The tests run
every operation a user or a shared server performs on such packages and
check the sentinel never appears.  Only after an admin trusts the namespace
does loading run the package's code, which shows the trust flag is the gate.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest

import sciserve
from sciserve._hashing import sha256_file
from sciserve.errors import ManifestError, PermissionDenied, SciserveError
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.registry.registry import Registry


class _Payload:
    """Unpickling this calls ``os.mkdir(sentinel)``: code execution."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.sentinel),))


def _package(
    root: Path, *, runtime: str, model_file: str, write: Any, namespace: str = "untrusted"
) -> Path:
    root.mkdir(parents=True)
    write(root / model_file)
    sha, size = sha256_file(root / model_file)
    manifest = Manifest.model_validate(
        {
            "name": f"evil-{runtime}-{Path(model_file).suffix.lstrip('.')}",
            "version": "1.0.0",
            "namespace": namespace,
            "runtime": runtime,
            "model_file": model_file,
            "license": "MIT",
            "files": [{"path": model_file, "size": size, "sha256": sha, "role": "model"}],
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
            "max_batch_size": 8,
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "SENTINEL"


@pytest.fixture
def evil_packages(tmp_path: Path, sentinel: Path) -> list[Path]:
    payload = _Payload(sentinel)

    def pickled(path: Path) -> None:
        path.write_bytes(pickle.dumps(payload))

    def joblibbed(path: Path) -> None:
        joblib.dump(payload, path)

    made = [
        _package(tmp_path / "p1", runtime="sklearn", model_file="model.pkl", write=pickled),
        _package(tmp_path / "p2", runtime="sklearn", model_file="model.joblib", write=joblibbed),
        _package(tmp_path / "p3", runtime="torchscript", model_file="model.pt", write=pickled),
        _package(tmp_path / "p4", runtime="python", model_file="model.pkl", write=pickled),
    ]
    assert not sentinel.exists()
    return made


@pytest.fixture
def disguised_packages(tmp_path: Path, sentinel: Path) -> list[Path]:
    """Pickles pretending to be formats that are pure data."""
    payload = pickle.dumps(_Payload(sentinel))
    return [
        _package(
            tmp_path / f"d{i}",
            runtime=runtime,
            model_file=name,
            write=lambda p: p.write_bytes(payload),
        )
        for i, (runtime, name) in enumerate(
            [("onnx", "model.onnx"), ("sklearn", "model.skops"), ("lightgbm", "model.txt")]
        )
    ]


def test_untrusted_code_never_runs(
    sqlite_registry: Registry,
    evil_packages: list[Path],
    disguised_packages: list[Path],
    sentinel: Path,
    tmp_path: Path,
) -> None:
    reg = sqlite_registry
    home = str(reg.settings.home)
    for pkg in evil_packages:
        # The CLI paths a scientist uses on a downloaded package.
        for args in (["validate", str(pkg)], ["verify", str(pkg)]):
            subprocess.run(
                [sys.executable, "-m", "sciserve", "--home", home, *args],
                capture_output=True,
                check=False,
            )
        with pytest.raises(PermissionDenied, match="not trusted"):
            reg.publish(pkg)
    for pkg in disguised_packages:
        with pytest.raises(ManifestError):
            reg.publish(pkg)
    assert not sentinel.exists()
    # `init` reads signatures without loading the file.
    model = evil_packages[0] / "model.pkl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sciserve",
            "--home",
            home,
            "init",
            str(model),
            "--name",
            "x",
            "--version",
            "1",
            "--out",
            str(tmp_path / "init-out"),
            "--input",
            "x:FP32:-1,4",
            "--output",
            "y:FP32:-1,3",
        ],
        capture_output=True,
        check=False,
    )
    assert (tmp_path / "init-out" / "sciserve.yaml").is_file()
    assert not sentinel.exists()


def test_trust_is_the_gate(
    sqlite_registry: Registry, evil_packages: list[Path], sentinel: Path, tmp_path: Path
) -> None:
    reg = sqlite_registry
    reg.create_namespace("untrusted", trusted=True)
    info = reg.publish(evil_packages[0]).version
    reg.set_trusted("untrusted", False)
    # Registry operations on the stored package never unpickle it.
    reg.pull(info.ref, tmp_path / "pulled")
    assert all(r.ok for r in reg.verify())
    from sciserve.registry.exchange import export_models, import_models

    export_models(reg, [info.ref], tmp_path / "export")
    with (
        Registry.open(tmp_path / "elsewhere", environ={}) as other,
        pytest.raises(PermissionDenied),
    ):
        import_models(other, tmp_path / "export")
    with pytest.raises(PermissionDenied, match="not trusted"):
        sciserve.load(info.ref, registry=reg)
    assert not sentinel.exists()
    # Once an admin trusts the namespace, loading runs the package's code:
    # that is what "trusted" means, and why it is off by default.
    reg.set_trusted("untrusted", True)
    with contextlib.suppress(SciserveError):  # the payload is no estimator
        sciserve.load(info.ref, registry=reg)
    assert sentinel.exists()
