"""The server-side key ("pepper") API token secrets are HMAC'ed with.

A database dump alone is then useless to an attacker: without the pepper the
stored HMACs cannot be checked against guesses, and the secrets themselves
(32 random bytes) were never stored.  Every replica that shares a database
(e.g. several servers on one PostgreSQL registry) must share the pepper file
too, or tokens minted by one are rejected by the others.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError

__all__ = ["PEPPER_BYTES", "load_pepper", "pepper_path"]

PEPPER_BYTES = 32


def pepper_path(settings: Settings) -> Path:
    """``access.token_pepper_file``, by default ``<home>/token-pepper``."""
    return settings.access.token_pepper_file or settings.home / "token-pepper"


def load_pepper(path: Path, *, create: bool = True) -> bytes:
    """Read the pepper, creating it (mode 0600, random bytes) when missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"no token pepper at {path}") from None
        data = _create(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the token pepper {path}: {exc}") from exc
    if len(data) < PEPPER_BYTES:
        raise ConfigError(f"the token pepper {path} is shorter than {PEPPER_BYTES} bytes")
    return data


def _create(path: Path) -> bytes:
    data = secrets.token_bytes(PEPPER_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: when two processes start at once exactly one pepper wins,
        # and the loser reads it instead of overwriting it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_complete(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the token pepper {path}: {exc}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return data


def _read_complete(path: Path) -> bytes:
    # The winner of a creation race may still be writing: wait briefly for it.
    for _ in range(50):
        data = path.read_bytes()
        if len(data) >= PEPPER_BYTES:
            return data
        time.sleep(0.01)
    raise ConfigError(f"the token pepper {path} is shorter than {PEPPER_BYTES} bytes")
