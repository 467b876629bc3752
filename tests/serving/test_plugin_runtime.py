"""A runtime from another distribution, found through the ``sciserve.runtimes`` entry points.

The plugin lives in ``tests/plugins/sciserve-echo-runtime`` and is installed
by ``make install-dev``.  Without it these tests fail in CI (``CI`` set) and
are skipped, with the reason, on a developer machine.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import pytest

import sciserve
from sciserve._hashing import sha256_file
from sciserve.errors import PermissionDenied
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.registry.registry import Registry
from sciserve.runtimes import ModelSource, Runtime, available_runtimes, get_runtime
from sciserve.serving.process import ProcessRuntime

from helpers.required import unavailable

PLUGIN = "sciserve-echo-runtime"


@pytest.fixture(autouse=True)
def _plugin_installed() -> None:
    try:
        distribution(PLUGIN)
    except PackageNotFoundError:
        unavailable(f"{PLUGIN} is not installed: pip install -e tests/plugins/{PLUGIN}")


def echo_package(root: Path, *, runtime: str = "echo", scale: float = 2.0) -> Path:
    """A publishable package that runs with the plugin's ``echo`` runtime."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "echo.json").write_text(json.dumps({"scale": scale}))
    digest, size = sha256_file(root / "echo.json")
    manifest = Manifest.model_validate(
        {
            "name": "echo-model",
            "version": "1.0.0",
            "description": "Returns its inputs, scaled",
            "runtime": runtime,
            "model_file": "echo.json",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "same_label", "datatype": "BYTES", "shape": [-1]},
            ],
            "files": [{"path": "echo.json", "size": size, "sha256": digest, "role": "model"}],
            "license": "MIT",
            "authors": [{"name": "Test Author", "orcid": "0000-0002-1825-0097"}],
        }
    )
    (root / "sciserve.yaml").write_text(dump_manifest(manifest))
    return root


def test_the_plugin_is_found_by_name() -> None:
    runtime = get_runtime("echo")
    assert runtime.__module__ == "sciserve_echo_runtime"
    assert issubclass(runtime, Runtime) and runtime.name == "echo"
    assert "echo" in available_runtimes()


def test_an_echo_package_publishes_and_loads(sqlite_registry: Registry, tmp_path: Path) -> None:
    # The default namespace is not trusted, so publishing succeeds only
    # because the plugin itself declares that its packages run no code.
    result = sqlite_registry.publish(echo_package(tmp_path / "pkg", scale=2.5))
    assert result.created
    with sciserve.load("echo-model@latest", registry=sqlite_registry) as model:
        assert model.manifest.runtime == "echo"
        out = model.predict(x=[[1.0, 2.0, 4.0]], label=np.array([b"m31"], dtype=object))
    assert out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], [[2.5, 5.0, 10.0]])
    assert list(out["same_label"]) == [b"m31"]


def test_an_unknown_runtime_is_refused_where_the_plugin_is_accepted(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    # The same package naming a runtime nobody installed: sciserve cannot
    # ask it whether it executes code, so it assumes the worst.
    with pytest.raises(PermissionDenied, match="'not-installed'"):
        sqlite_registry.publish(echo_package(tmp_path / "pkg", runtime="not-installed"))


def test_the_plugin_runs_in_a_model_process(sqlite_registry: Registry, tmp_path: Path) -> None:
    sqlite_registry.publish(echo_package(tmp_path / "pkg"))
    info = sqlite_registry.resolve("echo-model:1.0.0")
    runtime = ProcessRuntime(ModelSource(info.manifest, sqlite_registry.pull(info.ref)))
    assert ProcessRuntime.executes_code(info.manifest) is False
    runtime.load()
    assert runtime.pid not in (None, os.getpid())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = runtime.infer({"x": x, "label": np.array([b"a", b"b"], dtype=object)})
    runtime.unload()
    np.testing.assert_array_equal(out["y"], x * 2)
    assert list(out["same_label"]) == [b"a", b"b"]
