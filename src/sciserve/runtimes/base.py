"""The runtime plugin interface: load, infer, unload.

A runtime turns the verified files of one model package into a callable on
numpy arrays.  Runtimes know tensors and nothing of HTTP, registries or
queues.  Third parties add one by exposing a :class:`Runtime` subclass under
the ``sciserve.runtimes`` entry-point group::

    [project.entry-points."sciserve.runtimes"]
    mine = "my_package.runtime:MyRuntime"
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..package.manifest import Manifest, TensorSpec

__all__ = ["ModelSource", "Runtime", "Signature"]


@dataclass(frozen=True)
class Signature:
    """What a model file says about its tensors (used by ``sciserve init``)."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: Suggested ``max_batch_size`` (0 when the file has no batch dimension).
    max_batch_size: int = 0
    #: Whether the tensor names come from the file.  Formats without names
    #: (LightGBM, XGBoost, scikit-learn) make some up; manifests may rename
    #: those tensors, so validation then matches them by position.
    named: bool = True
    #: Each input's and output's dimensions as the file declares them: a
    #: symbolic name, a fixed size, or ``None`` (variable, unnamed); empty for
    #: formats that declare none.  Validation checks batch dims against them.
    input_dims: tuple[tuple[str | int | None, ...], ...] = ()
    output_dims: tuple[tuple[str | int | None, ...], ...] = ()
    #: How the suggested batch dimensions were found, for ``sciserve init`` to say.
    batch_note: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """A package whose files are present and verified under ``root``."""

    manifest: Manifest
    root: Path
    device: str = "cpu"
    #: Runtime options: the manifest's ``runtime_options`` merged with the caller's.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        if self.manifest.model_file is None:
            raise ValueError(f"{self.manifest.ref} names no model_file")
        return self.root / self.manifest.model_file


class Runtime(abc.ABC):
    """Base class of every runtime.  Instances serve one loaded model."""

    #: The name used in manifests (``runtime: onnx``).
    name: ClassVar[str]
    #: File suffixes ``sciserve init`` maps to this runtime.
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`infer` computes in this process and never waits on I/O
    #: or another process, so that a batch it finishes in microseconds may
    #: run on the server's event loop (see ``ServingConfig.max_inline_compute``).
    in_process: ClassVar[bool] = False

    def __init__(self, source: ModelSource) -> None:
        self.source = source

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        """Whether loading this package can run code shipped inside it.

        Such packages are only accepted from namespaces an admin marked
        ``trusted``.  The default is the safe answer for formats that are
        pure data (ONNX, LightGBM text, XGBoost JSON).
        """
        return False

    @classmethod
    def inspect(cls, model_file: Path) -> Signature | None:
        """Read the signature from ``model_file`` without executing any of it.

        Returns ``None`` when the format carries no signature, in which case
        ``sciserve init`` asks for ``--input`` / ``--output``.
        """
        return None

    @abc.abstractmethod
    def load(self) -> None:
        """Prepare the model for :meth:`infer` (may take seconds)."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute the outputs for one batch of inputs, keyed by tensor name."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`load` acquired."""
