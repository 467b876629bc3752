"""The ``torchscript`` runtime: its safety flags, and its behaviour without torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from sciserve.errors import DependencyMissing, DeviceUnavailable, ManifestError
from sciserve.runtimes import get_runtime
from sciserve.runtimes.torchscript import TorchScriptRuntime

from .conftest import MakeSource

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_the_entry_point_imports_without_torch() -> None:
    assert get_runtime("torchscript") is TorchScriptRuntime
    assert TorchScriptRuntime.suffixes == (".pt", ".pth", ".torchscript")


@pytest.mark.parametrize("model_file", ["model.pt", "model.pth", "model.torchscript"])
def test_torchscript_always_counts_as_code(
    tmp_path: Path, make_source: MakeSource, model_file: str
) -> None:
    (tmp_path / model_file).write_bytes(b"PK")
    source = make_source("torchscript", model_file, [("x", "FP32", [-1])], [("y", "FP32", [-1])])
    assert TorchScriptRuntime.executes_code(source.manifest) is True


def test_inspect_never_opens_the_file(
    tmp_path: Path, make_source: MakeSource, evil_pickle: bytes, sentinel: Path
) -> None:
    (tmp_path / "model.pt").write_bytes(evil_pickle)
    source = make_source("torchscript", "model.pt", [("x", "FP32", [-1])], [("y", "FP32", [-1])])
    assert TorchScriptRuntime.inspect(tmp_path / "model.pt") is None
    assert TorchScriptRuntime.executes_code(source.manifest) is True
    assert not sentinel.exists()


def test_loading_without_torch_names_the_extra(
    tmp_path: Path, make_source: MakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry makes ``import torch`` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    (tmp_path / "model.pt").write_bytes(b"PK")
    source = make_source("torchscript", "model.pt", [("x", "FP32", [-1])], [("y", "FP32", [-1])])
    with pytest.raises(DependencyMissing, match=r"pip install 'sciserve\[torch\]'"):
        TorchScriptRuntime(source).load()


def test_bytes_tensors_are_refused_before_torch_is_needed(
    tmp_path: Path, make_source: MakeSource
) -> None:
    (tmp_path / "model.pt").write_bytes(b"PK")
    source = make_source("torchscript", "model.pt", [("x", "BYTES", [-1])], [("y", "FP32", [-1])])
    with pytest.raises(ManifestError, match="BYTES"):
        TorchScriptRuntime(source).load()


# Making a TorchScript file needs torch.jit.script, deprecated in torch 2.13;
# experiments still ship such files, so the runtime must keep loading them.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_a_scripted_module_runs_with_positional_inputs(
    tmp_path: Path, make_source: MakeSource
) -> None:
    import torch

    class Net(torch.nn.Module):  # type: ignore[misc]
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x.sum(dim=1) + y

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.array([10, 20], dtype=np.float32)
    traced = torch.jit.script(Net())
    traced.save(str(tmp_path / "model.pt"))
    source = make_source(
        "torchscript",
        "model.pt",
        [("x", "FP32", [-1, 3]), ("y", "FP32", [-1])],
        [("doubled", "FP32", [-1, 3]), ("total", "FP64", [-1])],
    )
    runtime = TorchScriptRuntime(source)
    runtime.load()
    out = runtime.infer({"y": y, "x": x})
    np.testing.assert_array_equal(out["doubled"], x * 2)
    assert out["total"].dtype == np.float64
    np.testing.assert_array_equal(out["total"], x.sum(axis=1) + y)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_cuda_without_a_gpu_is_device_unavailable(tmp_path: Path, make_source: MakeSource) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    (tmp_path / "model.pt").write_bytes(b"PK")
    source = make_source(
        "torchscript", "model.pt", [("x", "FP32", [-1])], [("y", "FP32", [-1])], device="cuda:0"
    )
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        TorchScriptRuntime(source).load()
