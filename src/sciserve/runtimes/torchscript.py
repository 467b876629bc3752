"""The ``torchscript`` runtime: TorchScript modules saved with ``torch.jit.save``.

Deserialising TorchScript has had code-execution advisories, so
:meth:`TorchScriptRuntime.executes_code` is always true and such packages
are only accepted from trusted namespaces.  The file format carries no usable
signature, so the manifest's ``inputs`` and ``outputs`` are authoritative.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import (
    DependencyMissing,
    DeviceUnavailable,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
    Problem,
)
from ..package.manifest import Manifest, TensorSpec
from ._tensors import check_inputs, conform_output, numpy_dtype
from .base import ModelSource, Runtime, Signature

__all__ = ["TorchScriptRuntime"]


def _import_torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise DependencyMissing(
            "the torchscript runtime needs PyTorch; install it with: pip install 'sciserve[torch]'"
        ) from exc
    module: ModuleType = torch
    return module


class TorchScriptRuntime(Runtime):
    """Calls a TorchScript module with the inputs as positional tensors.

    Inputs are passed in manifest order.  The module may return one tensor,
    a tuple or list of tensors (matched to the outputs in manifest order) or
    a dict keyed by output name.
    """

    name = "torchscript"
    suffixes = (".pt", ".pth", ".torchscript")
    in_process = True

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._torch: Any = None
        self._module: Any = None
        self._device: Any = None

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        return True

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        # Nothing in the file is safe to read for a signature without
        # deserialising it, and deserialising is what must not happen here.
        return None

    def load(self) -> None:
        manifest = self.source.manifest
        for group, specs in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
            for index, spec in enumerate(specs):
                if spec.datatype == "BYTES":
                    raise ManifestError(
                        [Problem(f"{group}[{index}].datatype", "torch has no BYTES tensors")],
                        manifest.ref,
                    )
        torch = _import_torch()
        device = _torch_device(torch, self.source.device)
        path = self.source.model_path
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript, but experiments keep
                # shipping .pt files; loading them is this runtime's purpose.
                warnings.filterwarnings(
                    "ignore", "`torch.jit.load` is deprecated", DeprecationWarning
                )
                module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # torch raises RuntimeError for any bad archive
            raise ModelExecutionError(f"torch cannot load {path.name}: {exc}") from exc
        module.eval()
        self._torch, self._module, self._device = torch, module, device

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise ModelNotReady(f"{self.source.manifest.ref} is not loaded")
        manifest = self.source.manifest
        arrays = check_inputs(manifest.inputs, inputs)
        torch = self._torch
        try:
            tensors = [_to_torch(torch, array, self._device) for array in arrays]
            with torch.inference_mode():
                result = self._module(*tensors)
            values = _match_outputs(manifest.outputs, result)
            arrays = [_from_torch(torch, value) for value in values]
        except ModelExecutionError:
            raise
        except Exception as exc:  # anything the scripted code raised
            raise ModelExecutionError(f"{manifest.ref} failed: {exc}") from exc
        return {
            spec.name: conform_output(spec, array)
            for spec, array in zip(manifest.outputs, arrays, strict=True)
        }

    def unload(self) -> None:
        self._torch = self._module = self._device = None


def _torch_device(torch: Any, device: str) -> Any:
    if device == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise DeviceUnavailable(f"unknown device {device!r}; use 'cpu' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device {device!r} was requested but torch sees no CUDA device; use device 'cpu'"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"device {device!r} was requested but torch sees "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def _to_torch(torch: Any, array: np.ndarray, device: Any) -> Any:
    if array.dtype.name == "bfloat16":  # an ml_dtypes array; see _tensors.numpy_dtype
        # torch cannot adopt ml_dtypes arrays, but takes the same bits as int16.
        bits = np.require(array.view(np.int16), requirements=["C", "W"])
        return torch.from_numpy(bits).view(torch.bfloat16).to(device)
    # from_numpy shares memory and warns on read-only arrays: copy those.
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)


def _from_torch(torch: Any, tensor: Any) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        raise ModelExecutionError(f"the module returned {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach().to("cpu")
    if tensor.dtype == torch.bfloat16:
        bits: np.ndarray = tensor.view(torch.int16).numpy()
        return bits.view(numpy_dtype("BF16"))
    array: np.ndarray = tensor.numpy()
    return array


def _match_outputs(specs: Sequence[TensorSpec], result: Any) -> list[Any]:
    """The module's result as one value per declared output, in manifest order."""
    if isinstance(result, Mapping):
        missing = [spec.name for spec in specs if spec.name not in result]
        if missing:
            raise ModelExecutionError(
                f"the module returned no {', '.join(map(repr, missing))} "
                f"(it returned {', '.join(map(repr, result))})"
            )
        return [result[spec.name] for spec in specs]
    values = list(result) if isinstance(result, tuple | list) else [result]
    if len(values) != len(specs):
        raise ModelExecutionError(
            f"the module returned {len(values)} value(s) for {len(specs)} declared output(s)"
        )
    return values
