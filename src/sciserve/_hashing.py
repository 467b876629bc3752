"""Streaming sha256 helpers shared by packages and the artifact store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Read size for hashing and copying: large enough to be fast, small enough
#: that a multi-GB weight file never sits in memory.
CHUNK = 1 << 20


def sha256_stream(
    stream: BinaryIO, *, progress: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Return ``(hexdigest, size)`` of everything left in ``stream``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest(), size


def sha256_file(
    path: str | Path, *, progress: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """Return ``(hexdigest, size)`` of the file at ``path``, read in chunks."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, progress=progress)
