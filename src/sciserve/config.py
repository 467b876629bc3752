"""Typed settings, and the only module that reads the environment.

Precedence, highest first: explicit arguments (CLI flags) > ``SCISERVE_*``
environment variables > ``sciserve.toml`` in the data directory > defaults.

All state lives under one data directory (``home``) unless the URLs point
elsewhere::

    <home>/sciserve.toml     optional settings file
    <home>/registry.db       SQLite metadata (default database_url)
    <home>/artifacts/        content-addressed artifact store (default store_url)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = ["Limits", "ServingConfig", "Settings"]

_ENV_PREFIX = "SCISERVE_"


class Limits(BaseModel):
    """Size limits that protect the registry from hostile or broken input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Largest total size an archive may unpack to.
    max_unpacked_bytes: int = Field(default=64 * 2**30, gt=0)
    #: Most members an archive may hold.
    max_archive_members: int = Field(default=10_000, gt=0)
    #: Largest ratio of unpacked to packed bytes for compressed archives
    #: (a gzip bomb reaches >1000).
    max_compression_ratio: float = Field(default=200.0, gt=1)
    #: Largest manifest file.
    max_manifest_bytes: int = Field(default=4 * 2**20, gt=0)


class ServingConfig(BaseModel):
    """How ``sciserve serve`` serves: addresses, limits, batching defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    #: Triton's default ports; 0 picks a free port.
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    #: References of the models to load at start; ``None`` loads every model.
    models: tuple[str, ...] | None = None
    #: Ready only when every model marked to load is ready (as Triton).
    strict_readiness: bool = True
    #: How often alias changes made by other processes are picked up (s).
    poll_interval: float = Field(default=5.0, gt=0)
    #: Largest request body (bytes) on HTTP and gRPC.
    max_request_bytes: int = Field(default=64 * 2**20, gt=0)
    #: Requests waiting per model version before new ones get 503 / UNAVAILABLE.
    max_queue_size: int = Field(default=1024, gt=0)
    #: How long the batcher may hold a request to fill a batch (s).
    max_queue_delay: float = Field(default=0.0, ge=0)
    #: Parallel executions per model version.
    instances: int = Field(default=1, gt=0, le=64)
    #: Device for every model (overrides the packages' own ``device``).
    device: str | None = None
    #: ONNX Runtime intra-op threads per session.
    intra_op_threads: int = Field(default=1, gt=0)
    #: Versions other than the default that may be loaded on demand at once.
    max_on_demand_versions: int = Field(default=4, ge=0)


class Settings(BaseModel):
    """Everything sciserve needs to know about where it keeps state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path
    database_url: str
    store_url: str
    #: Open the registry without ever writing to it (e.g. from a CVMFS export).
    read_only: bool = False
    #: A remote sciserve server; when set the CLI talks to it instead of a local registry.
    server_url: str | None = None
    #: Where verified packages are materialised for loading; default
    #: ``<home>/cache``, or the user cache directory for a read-only registry.
    cache_dir: Path | None = None
    limits: Limits = Limits()

    @property
    def package_cache(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        if self.read_only:
            return Path(platformdirs.user_cache_dir("sciserve")) / "packages"
        return self.home / "cache"

    @classmethod
    def load(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve settings from arguments, environment, file and defaults.

        ``overrides`` whose value is ``None`` are ignored, so CLI options that
        were not given simply fall through to the next source.
        """
        env = os.environ if environ is None else environ
        home_path = Path(
            home or env.get(_ENV_PREFIX + "HOME") or platformdirs.user_data_dir("sciserve")
        ).expanduser()
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{home_path / 'registry.db'}",
            "store_url": str(home_path / "artifacts"),
        }
        values.update(_read_file(home_path / "sciserve.toml"))
        for key in ("database_url", "store_url", "server_url", "read_only", "cache_dir"):
            raw = env.get(_ENV_PREFIX + key.upper())
            if raw:
                values[key] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["home"] = home_path
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {exc}") from exc


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    # A [sciserve] table is accepted so the file can be shared with other tools.
    table = data.get("sciserve", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return table
