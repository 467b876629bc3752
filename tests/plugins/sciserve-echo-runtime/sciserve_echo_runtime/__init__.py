"""The ``echo`` runtime: a minimal third-party sciserve runtime.

The package's model file is JSON such as ``{"scale": 2.0}``.  Output *i* is
input *i* multiplied by ``scale`` in its own dtype; BYTES and BOOL tensors
are returned unchanged.  It needs nothing but numpy, which makes it a
convenient stand-in for any plugin registered under ``sciserve.runtimes``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from sciserve.errors import (
    InvalidInput,
    ManifestError,
    ModelExecutionError,
    ModelNotReady,
    Problem,
)
from sciserve.package.manifest import Manifest
from sciserve.runtimes.base import ModelSource, Runtime

__all__ = ["EchoRuntime"]

#: numpy kinds that are scaled: signed and unsigned integers, floats.
_NUMERIC = "iuf"


class EchoRuntime(Runtime):
    """Returns each input, scaled, as the output at the same position."""

    name = "echo"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._scale: float | None = None

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        return False  # the model file is read as JSON, never executed

    def load(self) -> None:
        manifest = self.source.manifest
        if len(manifest.inputs) != len(manifest.outputs):
            problem = Problem(
                "outputs",
                f"the echo runtime returns one output per input; {len(manifest.inputs)} "
                f"inputs and {len(manifest.outputs)} outputs are declared",
            )
            raise ManifestError([problem], manifest.ref)
        path = self.source.model_path
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelExecutionError(f"cannot read {path.name}: {exc}") from exc
        scale = config.get("scale", 1) if isinstance(config, dict) else None
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ModelExecutionError(f"{path.name} must be a JSON object with a numeric 'scale'")
        self._scale = float(scale)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        scale = self._scale
        manifest = self.source.manifest
        if scale is None:
            raise ModelNotReady(f"{manifest.ref} is not loaded")
        outputs = {}
        for given, returned in zip(manifest.inputs, manifest.outputs, strict=True):
            if given.name not in inputs:
                raise InvalidInput(f"missing input {given.name!r}")
            array = np.asarray(inputs[given.name])
            if array.dtype.kind in _NUMERIC:
                outputs[returned.name] = (array * scale).astype(array.dtype)
            else:
                outputs[returned.name] = array.copy()
        return outputs

    def unload(self) -> None:
        self._scale = None
