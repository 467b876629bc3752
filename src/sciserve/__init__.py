"""sciserve: publish scientific ML models once, then serve, stream and re-run them.

The public API is what ``__all__`` lists; everything else is internal and may
change without notice.
"""

from __future__ import annotations

from ._version import __version__
from .config import Settings
from .errors import SciserveError
from .model import Model, load
from .package.manifest import Manifest, TensorSpec, load_manifest
from .registry.registry import PublishResult, Registry, VersionInfo

__all__ = [
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
]
