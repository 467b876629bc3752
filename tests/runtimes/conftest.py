"""Fixtures for runtime tests: package sources on disk and a malicious pickle.

``make_source`` turns files already written under ``tmp_path`` into the
:class:`ModelSource` a runtime receives, with a real, validated manifest.
``evil_pickle`` and ``evil_joblib`` are files whose loading creates
``sentinel``: any test that finds the sentinel afterwards has caught code
execution.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import pytest

from sciserve._hashing import sha256_file
from sciserve.package.manifest import parse_manifest
from sciserve.runtimes import ModelSource

#: ``("name", "FP32", [-1, 4])`` or a full TensorSpec mapping.
Tensor = tuple[str, str, list[int]] | dict[str, Any]
MakeSource = Callable[..., ModelSource]


def _tensor(spec: Tensor) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec
    name, datatype, shape = spec
    return {"name": name, "datatype": datatype, "shape": shape}


@pytest.fixture
def make_source(tmp_path: Path) -> MakeSource:
    """Factory: ``make_source(runtime, model_file, inputs, outputs, ...)``.

    Every file named (``model_file`` and ``files``) must already exist under
    ``tmp_path``, the package root; its size and sha256 are recorded.
    """

    def make(
        runtime: str,
        model_file: str | None,
        inputs: Sequence[Tensor],
        outputs: Sequence[Tensor],
        *,
        files: Sequence[str] = (),
        options: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> ModelSource:
        listed = [*([model_file] if model_file else []), *files]
        entries = []
        for path in listed:
            digest, size = sha256_file(tmp_path / path)
            entries.append({"path": path, "size": size, "sha256": digest})
        manifest = parse_manifest(
            {
                "name": "test-model",
                "version": "1.0.0",
                "runtime": runtime,
                "model_file": model_file,
                "runtime_options": options or {},
                "max_batch_size": 64,
                "inputs": [_tensor(t) for t in inputs],
                "outputs": [_tensor(t) for t in outputs],
                "files": entries,
            }
        )
        return ModelSource(manifest, tmp_path, device, dict(manifest.runtime_options))

    return make


class Payload:
    """Unpickling this calls ``open(sentinel, "w")``: arbitrary code execution."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.sentinel), "w"))


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """The file a malicious payload creates when it gets to run."""
    return tmp_path / "SENTINEL"


@pytest.fixture
def evil_pickle(sentinel: Path) -> bytes:
    """A plain pickle that creates ``sentinel`` when loaded."""
    return pickle.dumps(Payload(sentinel))


@pytest.fixture
def evil_joblib(sentinel: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A joblib file that creates ``sentinel`` when loaded."""
    path = tmp_path_factory.mktemp("payload") / "payload.joblib"
    joblib.dump(Payload(sentinel), path)
    return path.read_bytes()
