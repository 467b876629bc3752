"""The shared shape of runtimes that score one feature matrix on the CPU.

LightGBM, XGBoost and scikit-learn models take one ``[-1, n_features]``
matrix and give one output; they differ only in how the model file is opened
and which function scores it.  Subclasses supply :meth:`MatrixRuntime._open`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import DeviceUnavailable, ManifestError, ModelExecutionError, ModelNotReady, Problem
from ..package.manifest import TensorSpec
from ._tensors import check_inputs, conform_output, only_tensor
from .base import ModelSource, Runtime

__all__ = ["MatrixRuntime"]

Score = Callable[[np.ndarray], Any]


class MatrixRuntime(Runtime):
    """One input matrix in, one output out, CPU only."""

    #: How the library is called in messages ("LightGBM").
    library: ClassVar[str]
    #: Input datatypes the library takes; ``None`` lets the model decide.
    input_datatypes: ClassVar[tuple[str, ...] | None] = ("FP32", "FP64")
    in_process = True

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._score: Score | None = None

    @abc.abstractmethod
    def _open(self, features: TensorSpec, output: TensorSpec) -> Score:
        """Open the model file and return the function that scores a matrix."""

    def _check_width(self, features: TensorSpec, n_features: int) -> None:
        """Refuse a manifest whose feature count contradicts the model's."""
        if features.shape[-1:] not in ([-1], [n_features]):
            raise ManifestError(
                [Problem("inputs[0].shape", f"the model takes {n_features} features")],
                self.source.manifest.ref,
            )

    def load(self) -> None:
        if self.source.device != "cpu":
            raise DeviceUnavailable(
                f"the {self.name} runtime runs on the CPU only, not {self.source.device!r}"
            )
        manifest = self.source.manifest
        features = only_tensor(manifest.inputs, "inputs", self.name)
        output = only_tensor(manifest.outputs, "outputs", self.name)
        allowed = self.input_datatypes
        if allowed is not None and features.datatype not in allowed:
            raise ManifestError(
                [
                    Problem(
                        "inputs[0].datatype",
                        f"{self.library} takes {' or '.join(allowed)} features",
                    )
                ],
                manifest.ref,
            )
        self._score = self._open(features, output)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._score is None:
            raise ModelNotReady(f"{self.source.manifest.ref} is not loaded")
        manifest = self.source.manifest
        (features,) = check_inputs(manifest.inputs, inputs)
        try:
            result = self._score(features)
        except Exception as exc:  # library errors, or ValueError for odd shapes
            raise ModelExecutionError(f"{manifest.ref} failed: {exc}") from exc
        output = manifest.outputs[0]
        return {output.name: conform_output(output, result)}

    def unload(self) -> None:
        self._score = None
