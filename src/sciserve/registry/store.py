"""Content-addressed artifact store.

Artifacts (model weights, often many GB) are stored under their sha256, so a
digest recorded in the registry pins exactly one sequence of bytes and
identical files are kept once::

    <root>/sha256/<first 2 hex>/<full hex>     one immutable blob per digest
    <root>/tmp/                                local uploads in progress

:class:`LocalStore` keeps the blobs in a directory; :class:`FsspecStore` keeps
them behind any fsspec URL, typically an S3-compatible object store shared by
several servers.  :func:`open_store` picks one from a URL.

Both only make a blob visible under its digest once it is complete, so a
crashed upload never leaves a half-written blob that a later reader would take
for the real thing.  Everything is streamed in :data:`~sciserve._hashing.CHUNK`
pieces: a file is never held in memory as a whole.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname

from .._hashing import CHUNK, sha256_file, sha256_stream
from ..errors import (
    DependencyMissing,
    IntegrityError,
    InvalidInput,
    NotFound,
    ReadOnlyRegistry,
    Unavailable,
)

__all__ = [
    "ArtifactStore",
    "FsspecStore",
    "LocalStore",
    "Progress",
    "open_store",
    "validate_digest",
]

#: Called with the number of bytes just processed; the calls of one operation
#: add up to the artifact's size.
Progress = Callable[[int], None]

_DIGEST = re.compile(r"[0-9a-f]{64}")

#: Read-ahead of remote streams: large enough to keep round trips rare, small
#: enough that reading a many-GB blob needs only this much memory.
_REMOTE_BLOCK = 8 * CHUNK


def validate_digest(value: object) -> str:
    """Return ``value`` if it is a sha256 hex digest (64 lowercase hex digits).

    Digests become path components, so anything else (``../../etc/passwd``)
    is refused with :class:`~sciserve.errors.InvalidInput` before it gets near
    a file system.
    """
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise InvalidInput(f"not a sha256 digest (64 lowercase hex digits): {value!r}")
    return value


class ArtifactStore(abc.ABC):
    """Blobs addressed by their sha256.

    Subclasses implement storage; checked copies (:meth:`fetch`) and
    re-hashing (:meth:`verify`) are built on :meth:`open` here.
    """

    #: Where the store lives: a directory path or an fsspec URL.
    url: str
    #: When true every write raises :class:`~sciserve.errors.ReadOnlyRegistry`.
    read_only: bool
    #: Exceptions of the storage backend that mean "cannot reach the data now".
    _transient: tuple[type[BaseException], ...] = (OSError,)

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"{type(self).__name__}({self.url!r}{mode})"

    @abc.abstractmethod
    def put_file(
        self,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[str, int]:
        """Store the file at ``path``; return its ``(sha256 hex, size)``.

        Storing content that is already present is a cheap no-op.  If
        ``expected_sha256`` is given and the file hashes differently,
        :class:`~sciserve.errors.IntegrityError` is raised and nothing is stored.
        """

    @abc.abstractmethod
    def has(self, sha256: str) -> bool:
        """Whether a blob with this digest is stored."""

    @abc.abstractmethod
    def size(self, sha256: str) -> int:
        """Size in bytes of a stored blob; :class:`~sciserve.errors.NotFound` if absent."""

    @abc.abstractmethod
    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading, without verifying it.

        Use :meth:`fetch` or :meth:`verify` when the bytes must be trusted.
        """

    @abc.abstractmethod
    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every stored blob, in sorted order."""

    @abc.abstractmethod
    def remove_orphan_temps(self, older_than_s: float = 3600) -> int:
        """Delete leftovers of crashed uploads older than ``older_than_s``; return how many."""

    @abc.abstractmethod
    def _location(self, digest: str) -> str:
        """Human-readable address of a blob, for messages."""

    def fetch(
        self,
        sha256: str,
        dest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
    ) -> None:
        """Copy a blob to ``dest``, verifying its digest on the way.

        The bytes go to a temporary file beside ``dest`` that replaces
        ``dest`` atomically only once the digest matched, so ``dest`` is
        either the complete, verified blob or untouched.  A mismatch raises
        :class:`~sciserve.errors.IntegrityError` naming the blob and both
        digests.
        """
        digest = validate_digest(sha256)
        target = Path(dest)
        with self.open(digest) as src, self._guard(f"copy {self._location(digest)} to {target}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    actual, _ = _copy(src, out, progress)
                    _sync(out)
                self._check_digest(digest, actual)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def verify(self, sha256: str) -> None:
        """Re-hash a stored blob.

        Raises :class:`~sciserve.errors.IntegrityError` if its bytes no longer
        match the digest and :class:`~sciserve.errors.NotFound` if it is absent.
        """
        digest = validate_digest(sha256)
        with self.open(digest) as stream, self._guard(f"read {self._location(digest)}"):
            actual, _ = sha256_stream(stream)
        self._check_digest(digest, actual)

    def _check_digest(self, digest: str, actual: str) -> None:
        if actual != digest:
            location = self._location(digest)
            raise IntegrityError(
                f"artifact {location} is corrupt: its bytes hash to sha256 {actual}, "
                f"expected {digest}",
                path=location,
                expected=digest,
                actual=actual,
            )

    def _require_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyRegistry(f"artifact store {self.url} is read-only")

    def _guard(
        self, action: str, *, missing: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return _storage_errors(action, missing=missing, transient=self._transient)

    def _not_found(self, digest: str) -> str:
        return f"no artifact {digest} in {self.url}"


class LocalStore(ArtifactStore):
    """Blobs in a directory on a local (or network-mounted) file system.

    Uploads are copied into a uniquely named temporary file under ``tmp/``,
    hashed on the way, fsynced and then renamed into place, which is atomic
    on POSIX file systems.  Stored blobs are made read-only (``0o444``) so an
    accidental write fails loudly instead of corrupting them.
    """

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self.read_only = read_only

    def put_file(
        self,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[str, int]:
        """Store the file at ``path``; return its ``(sha256 hex, size)``.

        See :meth:`ArtifactStore.put_file`.  ``progress`` sees every chunk
        as it is copied.
        """
        self._require_writable()
        expected = None if expected_sha256 is None else validate_digest(expected_sha256)
        source = Path(path)
        with self._guard(f"store {source} in {self.url}", missing=f"no such file: {source}"):
            self._tmp.mkdir(parents=True, exist_ok=True)
            # A fresh name per upload: a crashed upload's leftover can never
            # collide with, or be mistaken for, a later upload of the same file.
            fd, tmp = _create_temp(self._tmp, prefix="put-")
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    digest, size = _copy(src, out, progress)
                    _sync(out)
                if expected is not None and digest != expected:
                    raise IntegrityError(
                        f"{source} has sha256 {digest}, expected {expected}",
                        path=str(source),
                        expected=expected,
                        actual=digest,
                    )
                blob = self._blob(digest)
                if blob.exists():
                    tmp.unlink()
                    return digest, size
                blob.parent.mkdir(parents=True, exist_ok=True)
                tmp.chmod(0o444)
                os.replace(tmp, blob)
                _sync_dir(blob.parent)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return digest, size

    def has(self, sha256: str) -> bool:
        """Whether a blob with this digest is stored."""
        blob = self._blob(validate_digest(sha256))
        with self._guard(f"look up {blob}"):
            return blob.is_file()

    def size(self, sha256: str) -> int:
        """Size in bytes of a stored blob; :class:`~sciserve.errors.NotFound` if absent."""
        digest = validate_digest(sha256)
        with self._guard(f"stat {self._blob(digest)}", missing=self._not_found(digest)):
            return self._blob(digest).stat().st_size

    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading, without verifying it."""
        digest = validate_digest(sha256)
        with self._guard(f"open {self._blob(digest)}", missing=self._not_found(digest)):
            return self._blob(digest).open("rb")

    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every stored blob, in sorted order."""
        shards = self.root / "sha256"
        for shard in self._listdir(shards):
            for name in self._listdir(shards / shard):
                if _DIGEST.fullmatch(name) and name[:2] == shard:
                    yield name

    def remove_orphan_temps(self, older_than_s: float = 3600) -> int:
        """Delete temporary files of crashed uploads; return how many.

        Only files not modified for ``older_than_s`` seconds are removed: an
        upload in progress keeps touching its file, so it is left alone.
        """
        self._require_writable()
        if older_than_s < 0:
            raise InvalidInput(f"older_than_s must not be negative, got {older_than_s}")
        cutoff = time.time() - older_than_s
        removed = 0
        for name in self._listdir(self._tmp):
            path = self._tmp / name
            with self._guard(f"remove {path}"):
                try:
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue  # another cleaner got there first
        return removed

    @property
    def _tmp(self) -> Path:
        return self.root / "tmp"

    def _blob(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    def _location(self, digest: str) -> str:
        return str(self._blob(digest))

    def _listdir(self, path: Path) -> list[str]:
        with self._guard(f"list {path}"):
            try:
                return sorted(os.listdir(path))
            except FileNotFoundError:
                return []


class FsspecStore(ArtifactStore):
    """Blobs behind an fsspec URL, e.g. ``s3://bucket/prefix``.

    A file is hashed locally first, then uploaded straight to its final key
    with ``put_file`` unless that blob already exists.  Object stores (S3,
    GCS, Azure) only make an object visible once its upload completed,
    multipart uploads included, so no temporary names are needed.  The
    source file must not change while it is stored: the size is checked after
    the upload, :meth:`verify` catches anything else.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.read_only = read_only
        self._transient = _backend_errors()
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        except ImportError as exc:
            raise DependencyMissing(
                f"no file system implementation for {self.url} is installed ({exc}); "
                "for S3 install the sciserve[s3] extra"
            ) from exc
        except ValueError as exc:  # fsspec's "Protocol not known"
            raise InvalidInput(f"unsupported artifact store URL {self.url!r}: {exc}") from exc
        self._fs: Any = fs
        self._root = cast(str, root).rstrip("/")
        if not self._root:
            raise InvalidInput(f"artifact store URL {self.url!r} names no bucket or directory")

    def put_file(
        self,
        path: str | os.PathLike[str],
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
    ) -> tuple[str, int]:
        """Store the file at ``path``; return its ``(sha256 hex, size)``.

        See :meth:`ArtifactStore.put_file`.  ``progress`` follows the upload
        (possibly from the backend's I/O thread) and jumps to the end when the
        blob already exists.
        """
        import fsspec.callbacks

        self._require_writable()
        expected = None if expected_sha256 is None else validate_digest(expected_sha256)
        source = Path(path)
        with _storage_errors(f"hash {source}", missing=f"no such file: {source}"):
            digest, size = sha256_file(source)
        if expected is not None and digest != expected:
            raise IntegrityError(
                f"{source} has sha256 {digest}, expected {expected}",
                path=str(source),
                expected=expected,
                actual=digest,
            )
        blob = self._blob(digest)
        bridge = _ProgressBridge(progress)
        with self._guard(f"upload {source} to {self._location(digest)}"):
            self._fs.invalidate_cache(blob)
            if not self._fs.exists(blob):
                callback = fsspec.callbacks.Callback(hooks={"progress": bridge})
                self._fs.put_file(str(source), blob, callback=callback)
                self._fs.invalidate_cache(blob)
                stored = int(self._fs.info(blob)["size"])
                if stored != size:
                    # Do not leave a wrong blob under the digest name.
                    self._fs.rm_file(blob)
                    raise IntegrityError(
                        f"upload of {source} to {self._location(digest)} stored {stored} "
                        f"bytes instead of {size}",
                        path=self._location(digest),
                        expected=digest,
                    )
        bridge.advance_to(size)
        return digest, size

    def has(self, sha256: str) -> bool:
        """Whether a blob with this digest is stored."""
        blob = self._blob(validate_digest(sha256))
        with self._guard(f"look up {self._fs.unstrip_protocol(blob)}"):
            # Listings are cached per process; another server may have
            # uploaded since, so always ask the store itself.
            self._fs.invalidate_cache(blob)
            return bool(self._fs.exists(blob))

    def size(self, sha256: str) -> int:
        """Size in bytes of a stored blob; :class:`~sciserve.errors.NotFound` if absent."""
        digest = validate_digest(sha256)
        blob = self._blob(digest)
        with self._guard(f"stat {self._location(digest)}", missing=self._not_found(digest)):
            self._fs.invalidate_cache(blob)
            return int(self._fs.info(blob)["size"])

    def open(self, sha256: str) -> BinaryIO:
        """Open a stored blob for reading, without verifying it.

        Reads fetch at most a few MiB ahead, and backend failures while
        reading surface as sciserve errors like everywhere else.
        """
        digest = validate_digest(sha256)
        blob = self._blob(digest)
        with self._guard(f"open {self._location(digest)}", missing=self._not_found(digest)):
            self._fs.invalidate_cache(blob)
            raw = self._fs.open(blob, "rb", block_size=_REMOTE_BLOCK)
        reader = _GuardedReader(raw, lambda: self._guard(f"read {self._location(digest)}"))
        return cast(BinaryIO, io.BufferedReader(reader, buffer_size=CHUNK))

    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every stored blob, in sorted order."""
        base = f"{self._root}/sha256"
        with self._guard(f"list {self._fs.unstrip_protocol(base)}"):
            self._fs.invalidate_cache(base)
            try:
                keys = [str(key) for key in self._fs.find(base)]
            except FileNotFoundError:
                keys = []
        for key in sorted(keys):
            shard, _, name = key[len(base) + 1 :].partition("/")
            if _DIGEST.fullmatch(name) and name[:2] == shard:
                yield name

    def remove_orphan_temps(self, older_than_s: float = 3600) -> int:
        """Return 0: uploads go straight to their final key, so none leave temporaries.

        Parts of interrupted S3 multipart uploads are invisible and are best
        reclaimed by the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule.
        """
        self._require_writable()
        if older_than_s < 0:
            raise InvalidInput(f"older_than_s must not be negative, got {older_than_s}")
        return 0

    def _blob(self, digest: str) -> str:
        return f"{self._root}/sha256/{digest[:2]}/{digest}"

    def _location(self, digest: str) -> str:
        return str(self._fs.unstrip_protocol(self._blob(digest)))


def open_store(
    url: str | os.PathLike[str],
    *,
    read_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ArtifactStore:
    """Open the artifact store at ``url``.

    A plain path or a ``file://`` URL gives a :class:`LocalStore`; any other
    URL a :class:`FsspecStore`, to which ``storage_options`` are passed
    (credentials, ``client_kwargs={"endpoint_url": ...}`` for S3, ...).
    """
    text = os.fspath(url)
    if "://" in text and not text.startswith("file://"):
        return FsspecStore(text, read_only=read_only, storage_options=storage_options)
    if storage_options:
        raise InvalidInput(f"storage_options only apply to remote stores, not {text!r}")
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"file URL with a remote host is not supported: {text!r}")
        text = url2pathname(parts.path)
    return LocalStore(text, read_only=read_only)


# -- helpers -----------------------------------------------------------------


@contextlib.contextmanager
def _storage_errors(
    action: str,
    *,
    missing: str | None = None,
    transient: tuple[type[BaseException], ...] = (OSError,),
) -> Iterator[None]:
    """Report storage failures as sciserve errors, keeping the cause."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(missing or f"cannot {action}: not found") from exc
    except transient as exc:
        raise Unavailable(f"cannot {action}: {exc}") from exc


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Exception types fsspec backends raise for I/O failures.

    Most translate their failures into ``OSError``; s3fs passes botocore's
    connection errors through unchanged.
    """
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        pass
    else:
        errors += [BotoCoreError, ClientError]
    return tuple(errors)


def _copy(src: BinaryIO, dst: BinaryIO, progress: Progress | None) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` chunk by chunk, hashing on the way; return ``(hex, size)``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return digest.hexdigest(), size


def _create_temp(directory: Path, *, prefix: str) -> tuple[int, Path]:
    """Create a new, uniquely named ``.part`` file; return its descriptor and path.

    Unlike :func:`tempfile.mkstemp` this honours the umask (mode ``0o666``),
    so a fetched file gets the permissions any newly written file would.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = directory / f"{prefix}{secrets.token_hex(8)}.part"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def _sync(stream: BinaryIO) -> None:
    """Push a file's bytes to the disk before it is renamed into place."""
    stream.flush()
    os.fsync(stream.fileno())


def _sync_dir(path: Path) -> None:
    """Make a rename into ``path`` durable: on POSIX the new directory entry
    only survives a power cut once the directory itself is fsynced."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _ProgressBridge:
    """Turn fsspec's running totals into the increments :data:`Progress` expects."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._reported = 0

    def __call__(self, size: int | None, value: int, **_: object) -> None:
        self.advance_to(value)

    def advance_to(self, value: int) -> None:
        """Report the bytes between the last reported total and ``value``."""
        if self._progress is not None and value > self._reported:
            self._progress(value - self._reported)
            self._reported = value


class _GuardedReader(io.RawIOBase):
    """A remote file whose read failures surface as sciserve errors."""

    def __init__(
        self, inner: Any, guard: Callable[[], contextlib.AbstractContextManager[None]]
    ) -> None:
        self._inner = inner
        self._guard = guard

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        with self._guard():
            data = self._inner.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._guard():
            return int(self._inner.seek(offset, whence))

    def tell(self) -> int:
        return int(self._inner.tell())

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()
