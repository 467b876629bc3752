"""The public API is exactly what ``__all__`` curates."""

from __future__ import annotations

import importlib
import pkgutil

import sciserve
import sciserve.errors

EXPECTED = {
    "Manifest",
    "Model",
    "PublishResult",
    "Registry",
    "SciserveError",
    "Settings",
    "TensorSpec",
    "VersionInfo",
    "__version__",
    "load",
    "load_manifest",
}


def test_top_level_all_is_curated() -> None:
    assert set(sciserve.__all__) == EXPECTED
    for name in sciserve.__all__:
        assert getattr(sciserve, name) is not None


def test_every_error_derives_from_the_one_base() -> None:
    for name in sciserve.errors.__all__:
        obj = getattr(sciserve.errors, name)
        if isinstance(obj, type) and name != "Problem":
            assert issubclass(obj, sciserve.SciserveError), name
        # The hierarchy is documented at the top of errors.py.
        assert name in (sciserve.errors.__doc__ or "") or name == "Problem"


def test_every_module_imports_without_optional_extras() -> None:
    for info in pkgutil.walk_packages(sciserve.__path__, "sciserve."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
