"""Runtimes: one module per model format, found through entry points.

Built-in runtimes are registered in sciserve's own ``pyproject.toml`` under
the ``sciserve.runtimes`` group, exactly as a third-party plugin would be.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import DependencyMissing, NotFound
from .base import ModelSource, Runtime, Signature

__all__ = ["ModelSource", "Runtime", "Signature", "available_runtimes", "get_runtime"]

GROUP = "sciserve.runtimes"


def available_runtimes() -> list[str]:
    """Names of every registered runtime (installed or not importable)."""
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get_runtime(name: str) -> type[Runtime]:
    """The runtime class registered as ``name``.

    Raises :class:`NotFound` for an unknown name and
    :class:`DependencyMissing` when the runtime's optional extra is absent.
    """
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        known = ", ".join(available_runtimes()) or "none"
        raise NotFound(f"no runtime named {name!r} is installed (known: {known})")
    try:
        cls = matches[0].load()
    except ImportError as exc:
        raise DependencyMissing(
            f"runtime {name!r} needs a package that is not installed ({exc.name or exc}); "
            f"install it with: pip install 'sciserve[{name}]'"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise NotFound(f"entry point {name!r} does not name a sciserve Runtime subclass")
    return cls
