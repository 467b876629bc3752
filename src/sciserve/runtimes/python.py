"""The ``python`` runtime: a model class shipped as Python source in the package.

The manifest names it with ``runtime_options.entrypoint: "model.py:Model"``.
The class is constructed as ``Model(root, options)`` with the package
directory and the runtime options, may define ``load()``, and must define
``predict(inputs) -> outputs`` on dicts of numpy arrays.

This is arbitrary code: :meth:`PythonRuntime.executes_code` is always true and
the registry accepts such packages only from trusted namespaces.  The file is
imported from its own path under a unique module name, without touching
``sys.path``, so two versions of one model can be loaded side by side and
the entry file cannot shadow installed modules (it cannot import sibling
files by name either).
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ManifestError, ModelExecutionError, ModelNotReady, Problem
from ..package.manifest import Manifest, check_member_path
from ._tensors import check_inputs, conform_output
from .base import ModelSource, Runtime

__all__ = ["PythonRuntime", "parse_entrypoint"]


def parse_entrypoint(manifest: Manifest, entrypoint: Any) -> tuple[str, str]:
    """Split ``"file.py:ClassName"`` and check the file is listed in the package.

    Raises :class:`ManifestError` for anything else.
    """
    if not isinstance(entrypoint, str) or entrypoint.count(":") != 1:
        raise _entrypoint_error(manifest, f"expected 'file.py:ClassName', got {entrypoint!r}")
    filename, class_name = entrypoint.split(":")
    try:
        check_member_path(filename)
    except ValueError as exc:
        raise _entrypoint_error(manifest, str(exc)) from exc
    if not filename.endswith(".py") or not class_name.isidentifier():
        raise _entrypoint_error(manifest, f"expected 'file.py:ClassName', got {entrypoint!r}")
    if filename not in {entry.path for entry in manifest.files}:
        raise _entrypoint_error(manifest, f"{filename!r} is not listed under files")
    return filename, class_name


def _entrypoint_error(manifest: Manifest, message: str) -> ManifestError:
    return ManifestError([Problem("runtime_options.entrypoint", message)], manifest.ref)


class PythonRuntime(Runtime):
    """Runs a trusted, package-provided Python class in this process."""

    name = "python"

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._model: Any = None
        self._module_name: str | None = None

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        return True

    def load(self) -> None:
        self.unload()  # a second load() replaces the model, never leaks the first
        manifest = self.source.manifest
        filename, class_name = parse_entrypoint(manifest, self.source.options.get("entrypoint"))
        path = self.source.root / filename
        module_name = f"sciserve_model_{uuid.uuid4().hex}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise _entrypoint_error(manifest, f"{filename!r} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        # Registered like any imported module, so that dataclasses, pickle and
        # typing inside the user's code can find it; removed again by unload().
        sys.modules[module_name] = module
        self._module_name = module_name
        try:
            spec.loader.exec_module(module)
            model_class = getattr(module, class_name, None)
            if not isinstance(model_class, type):
                raise _entrypoint_error(manifest, f"{filename} defines no class {class_name}")
            model = model_class(self.source.root, dict(self.source.options))
            if callable(getattr(model, "load", None)):
                model.load()
            if not callable(getattr(model, "predict", None)):
                raise _entrypoint_error(manifest, f"{class_name} has no predict() method")
        except ManifestError:
            self.unload()
            raise
        except Exception as exc:  # the user's import, __init__ or load() failed
            self.unload()
            raise ModelExecutionError(f"{manifest.ref}: loading {filename} failed: {exc}") from exc
        self._model = model

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._model is None:
            raise ModelNotReady(f"{self.source.manifest.ref} is not loaded")
        manifest = self.source.manifest
        arrays = check_inputs(manifest.inputs, inputs)
        named = {spec.name: array for spec, array in zip(manifest.inputs, arrays, strict=True)}
        try:
            result = self._model.predict(named)
        except Exception as exc:  # whatever the user's predict() raised
            raise ModelExecutionError(f"{manifest.ref} failed: {exc}") from exc
        if not isinstance(result, Mapping):
            raise ModelExecutionError(
                f"{manifest.ref}: predict() returned {type(result).__name__}, not a dict"
            )
        missing = [spec.name for spec in manifest.outputs if spec.name not in result]
        if missing:
            raise ModelExecutionError(
                f"{manifest.ref}: predict() returned no {', '.join(map(repr, missing))}"
            )
        return {spec.name: conform_output(spec, result[spec.name]) for spec in manifest.outputs}

    def unload(self) -> None:
        self._model = None
        if self._module_name is not None:
            sys.modules.pop(self._module_name, None)
            self._module_name = None
