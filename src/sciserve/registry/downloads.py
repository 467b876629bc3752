"""Files fetched by URL for the registry: once, checked against their sha256, cached.

A dataset may be added from a URL with the sha256 its publisher gives.
:func:`fetch` downloads it into ``<cache>/<sha256>/<name>`` unless a copy
with that digest is already there, refuses it before reading further when
it is over the size cap, and keeps it only if every byte hashes to the
promised digest: a mismatch, a 404, a refused connection or a server that
stops sending are errors, and the cache holds nothing new.  Messages show
the URL without its query string, where tokens tend to travel.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import httpx

from .._hashing import sha256_file
from ..errors import IntegrityError, InvalidInput, NotFound, PayloadTooLarge, Unavailable

__all__ = ["fetch", "public_url", "url_file_name"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def public_url(url: str) -> str:
    """``url`` without user info, query string or fragment: what may be shown and recorded."""
    return _shown(url)


def _shown(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def url_file_name(url: str) -> str:
    """The file name a URL ends in (``…/train.parquet?x=1`` → ``train.parquet``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"not an http(s) URL: {_shown(url) if parts.scheme else url!r}")
    name = PurePosixPath(parts.path).name
    if not name or name in (".", ".."):
        raise InvalidInput(f"{_shown(url)} names no file")
    return name


def fetch(
    url: str,
    sha256: str,
    cache_dir: Path,
    *,
    max_bytes: int,
    timeout: float = 30.0,
) -> Path:
    """The file at ``url``, verified against ``sha256``, from the cache or downloaded into it."""
    if not _SHA256_RE.fullmatch(sha256):
        raise InvalidInput("--sha256 must be 64 lowercase hexadecimal characters")
    name = url_file_name(url)
    target = cache_dir / sha256 / name
    if target.is_file() and sha256_file(target)[0] == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
                    if response.status_code in (404, 410):
                        raise NotFound(f"cannot fetch {_shown(url)}: {response.status_code}")
                    if response.status_code != 200:
                        raise Unavailable(
                            f"cannot fetch {_shown(url)}: the server answered "
                            f"{response.status_code}"
                        )
                    declared = response.headers.get("content-length")
                    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                        raise PayloadTooLarge(
                            f"{_shown(url)} is {declared} bytes, over the {max_bytes}-byte "
                            "limit for a dataset file ([limits] max_dataset_file_bytes)"
                        )
                    for chunk in response.iter_bytes(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise PayloadTooLarge(
                                f"{_shown(url)} is over the {max_bytes}-byte limit for a "
                                "dataset file ([limits] max_dataset_file_bytes)"
                            )
                        digest.update(chunk)
                        out.write(chunk)
            except httpx.TimeoutException as exc:
                raise Unavailable(
                    f"cannot fetch {_shown(url)}: timed out after {timeout} s"
                ) from exc
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot fetch {_shown(url)}: {type(exc).__name__}") from exc
        if digest.hexdigest() != sha256:
            raise IntegrityError(
                f"{_shown(url)} has sha256 {digest.hexdigest()}, not the {sha256} given; "
                "nothing was added"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
