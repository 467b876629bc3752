"""In-process use of a registered model: ``sciserve.load("name@production")``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInput, PermissionDenied
from .package.manifest import Manifest
from .registry.registry import Registry, VersionInfo
from .runtimes import ModelSource, Runtime, get_runtime

__all__ = ["Model", "load"]


class Model:
    """A verified, loaded model package, callable on numpy arrays.

    >>> model = sciserve.load("examples/lc-classifier@latest")
    >>> model.predict(features=x)["probabilities"]
    """

    def __init__(self, info: VersionInfo, root: Path, runtime: Runtime) -> None:
        self.info = info
        self.root = root
        self._runtime = runtime

    @property
    def manifest(self) -> Manifest:
        return self.info.manifest

    @property
    def ref(self) -> str:
        return self.info.ref

    @property
    def digest(self) -> str:
        return self.info.digest

    @property
    def runtime_options(self) -> Mapping[str, Any]:
        """The runtime options in effect: the manifest's, overridden by ``load(**options)``
        (thread counts among them, which an evaluation record keeps)."""
        return dict(self._runtime.source.options)

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run the model on inputs given as a mapping or as keyword arguments.

        A model with a single input also takes it as a plain array:
        ``model.predict(x)``.  numpy arrays must already have the declared
        datatype (a silent cast could lose precision); plain Python numbers and
        lists are converted to it.  Anything else is refused with
        :class:`InvalidInput`.
        """
        given = {**self._positional(inputs), **named}
        unknown = set(given) - {t.name for t in self.manifest.inputs}
        if unknown:
            raise InvalidInput(
                f"{self.ref} has no input(s) {sorted(unknown)}; it takes "
                f"{[t.name for t in self.manifest.inputs]}"
            )
        specs = {t.name: t for t in self.manifest.inputs}
        arrays = {name: _as_array(value, specs[name].datatype) for name, value in given.items()}
        return self._runtime.infer(arrays)

    __call__ = predict

    def _positional(self, inputs: Any) -> dict[str, Any]:
        """The positional argument of :meth:`predict` as a mapping of inputs."""
        if inputs is None:
            return {}
        if isinstance(inputs, Mapping):
            return dict(inputs)
        names = [t.name for t in self.manifest.inputs]
        if len(names) != 1:
            raise InvalidInput(
                f"{self.ref} takes {len(names)} inputs {names}: pass them by name, "
                f"e.g. predict({names[0] if names else 'x'}=...)"
            )
        return {names[0]: inputs}

    def close(self) -> None:
        self._runtime.unload()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Model {self.ref} {self.digest[:19]} runtime={self.manifest.runtime}>"


def _as_array(value: Any, datatype: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    from .runtimes._tensors import numpy_dtype

    try:
        return np.asarray(value, dtype=numpy_dtype(datatype))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"cannot convert the given value to {datatype}: {exc}") from exc


def load(
    ref: str,
    *,
    registry: Registry | None = None,
    home: str | Path | None = None,
    device: str | None = None,
    **options: Any,
) -> Model:
    """Resolve ``ref`` in the registry, verify every file and load the model.

    ``registry`` defaults to the one at ``home`` (or ``SCISERVE_HOME``).
    Packages whose runtime executes code load only from trusted namespaces.
    """
    own = registry is None
    # Loading only reads: a mistyped home is reported, not created empty.
    reg = registry if registry is not None else Registry.open(home, create=False)
    try:
        info = reg.resolve(ref)
        if reg.executes_code(info.manifest) and not reg.namespace(info.namespace).trusted:
            raise PermissionDenied(
                f"{info.ref} uses runtime {info.manifest.runtime!r}, which executes code, and "
                f"namespace {info.namespace!r} is not trusted"
            )
        root = reg.pull(info.ref)
    finally:
        if own:
            reg.close()
    runtime_cls = get_runtime(info.manifest.runtime)
    source = ModelSource(
        manifest=info.manifest,
        root=root,
        device=device or info.manifest.device,
        options={**info.manifest.runtime_options, **options},
    )
    runtime = runtime_cls(source)
    runtime.load()
    return Model(info, root, runtime)
