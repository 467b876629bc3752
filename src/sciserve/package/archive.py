"""Model packages as single ``.tar`` / ``.tar.gz`` files, packed reproducibly
and unpacked without trusting the sender.

:func:`pack` writes ``sciserve.yaml`` and exactly the files it lists, with
every header field that could differ between machines fixed, so one package
always packs to the same bytes.

:func:`unpack` reads archives from strangers.  It never calls
``tarfile.extractall``: it walks the members itself, refuses anything but
regular files and directories at safe relative paths, copies data in bounded
chunks while counting what it writes, and stops a compressed archive as soon
as it inflates suspiciously (an archive bomb).  Everything is written to a
hidden staging directory beside the destination and renamed into place only
once the whole archive has passed, so a refusal leaves nothing behind.
:func:`extract_tree` applies the same rules to archives that are not model
packages (e.g. registry exports).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._hashing import CHUNK
from ..config import Limits
from ..errors import ArchiveError, Conflict, ManifestError, NotFound, Problem
from .manifest import MANIFEST_NAME, Manifest, check_member_path, load_manifest

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ARCHIVE_SUFFIXES", "extract_tree", "is_archive", "pack", "unpack"]

#: File name endings :func:`is_archive` recognises.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GZIP_SUFFIXES = (".tar.gz", ".tgz")
_GZIP_MAGIC = b"\x1f\x8b"

_DEFAULT_LIMITS = Limits()
#: The compression ratio is judged only after this much has been inflated:
#: the start of any archive is tar headers and padding, which compress so well
#: that an honest small package would otherwise look like a bomb.
_RATIO_FLOOR = 1 << 20
#: Compressed input reaches the decompressor in slices this small, so the
#: count of compressed bytes consumed (and with it the ratio) stays accurate
#: and a bomb is stopped after a few MiB rather than tens of MiB.
_PACKED_SLICE = 16 << 10
#: Read size of the tar layer over the inflated stream.
_TAR_BUFSIZE = 64 << 10
#: gzip's own default level: much faster than 9 and barely larger.
_GZIP_LEVEL = 6

_FILE_MODE = 0o644
_DIR_MODE = 0o755
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


def is_archive(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a package archive (``.tar``, ``.tar.gz``, ``.tgz``)."""
    return Path(path).name.lower().endswith(ARCHIVE_SUFFIXES)


# -- packing ----------------------------------------------------------------


def pack(
    package_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    compress: bool | None = None,
) -> Path:
    """Write the package in ``package_dir`` to the archive ``dest`` and return ``dest``.

    The archive holds ``sciserve.yaml`` first, then the files the manifest
    lists in sorted order, and nothing else from the directory.  Headers carry
    no timestamps, owners or permissions from the machine, and a gzip header
    carries neither time nor file name, so the same package always gives the
    same bytes.  ``compress=None`` decides from the suffix of ``dest``.

    Raises :class:`ManifestError` if the manifest is invalid or a listed file
    is missing, a symbolic link or not a regular file, and
    :class:`ArchiveError` if ``dest`` has an unknown suffix and ``compress``
    is not given.  ``dest`` is replaced atomically and never left half-written.
    """
    package_dir, dest = Path(package_dir), Path(dest)
    gzipped = _wants_gzip(dest) if compress is None else compress
    manifest = load_manifest(package_dir / MANIFEST_NAME)
    _check_sources(package_dir, manifest)
    members = [MANIFEST_NAME, *sorted(entry.path for entry in manifest.files)]

    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            _write_tar(out, package_dir, members, gzipped=gzipped)
        # mkstemp creates 0600; an archive is meant to be shared.
        os.chmod(tmp_name, _FILE_MODE)
        os.replace(tmp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return dest


def _wants_gzip(dest: Path) -> bool:
    name = dest.name.lower()
    if name.endswith(_GZIP_SUFFIXES):
        return True
    if name.endswith(".tar"):
        return False
    raise ArchiveError(
        f"cannot tell from the name {dest.name!r} whether to compress: "
        "end it in .tar, .tar.gz or .tgz, or say compress=True/False"
    )


def _check_sources(package_dir: Path, manifest: Manifest) -> None:
    """Refuse, naming every culprit at once, files that cannot be packed as they are."""
    problems: list[Problem] = []
    reason = _not_a_regular_file(package_dir, MANIFEST_NAME)
    if reason:
        problems.append(Problem("", f"{MANIFEST_NAME} {reason}"))
    for index, entry in enumerate(manifest.files):
        reason = _not_a_regular_file(package_dir, entry.path)
        if reason:
            problems.append(
                Problem(
                    f"files[{index}].path",
                    f"{entry.path!r} {reason}",
                    "a package holds regular files inside its directory; copy the file in",
                )
            )
    if problems:
        raise ManifestError(problems, str(package_dir / MANIFEST_NAME))


def _not_a_regular_file(root: Path, relpath: str) -> str | None:
    """Why ``root/relpath`` cannot be packed, or ``None`` if it can.

    Every component is checked, not just the last: a symlinked directory
    would pull files from outside the package as surely as a symlinked file.
    """
    parts = relpath.split("/")
    current = root
    for depth, part in enumerate(parts, start=1):
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            return "does not exist"
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if stat.S_ISLNK(mode):
            if depth == len(parts):
                return "is a symbolic link"
            return f"lies under {'/'.join(parts[:depth])!r}, which is a symbolic link"
        if depth < len(parts) and not stat.S_ISDIR(mode):
            return "does not exist"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def _write_tar(out: IO[bytes], root: Path, members: list[str], *, gzipped: bool) -> None:
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | gzip.GzipFile = out
        if gzipped:
            # filename="" and mtime=0 keep the gzip header free of anything
            # that depends on where or when the archive was written.
            sink = stack.enter_context(
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=out, mtime=0, compresslevel=_GZIP_LEVEL
                )
            )
        tar = stack.enter_context(
            tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")
        )
        for name in members:
            _add_file(tar, root, name)


def _add_file(tar: tarfile.TarFile, root: Path, name: str) -> None:
    # O_NOFOLLOW closes the gap between the check in _check_sources and this
    # open: a file swapped for a symlink meanwhile is refused, not followed.
    try:
        fd = os.open(root / name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"cannot read {name!r} in {root}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArchiveError(f"{name!r} in {root} is not a regular file")
        member = tarfile.TarInfo(name)
        member.size = info.st_size
        member.mtime = 0
        member.mode = _FILE_MODE
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        # addfile streams the data through in small blocks.
        tar.addfile(member, source)


# -- unpacking --------------------------------------------------------------


def unpack(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    limits: Limits = _DEFAULT_LIMITS,
    label: str | None = None,
) -> Path:
    """Extract the package archive ``archive`` into ``dest`` and return ``dest``.

    ``dest`` must be missing or an empty directory.  An archive whose members
    all sit under one top-level directory (``mymodel-1.0/sciserve.yaml``) is
    unpacked without that directory.  The result is exactly ``sciserve.yaml``
    plus the files it lists; checksums are left to validation.

    Raises :class:`ArchiveError` (naming the member and the reason) for unsafe
    members (links, devices, fifos, absolute or escaping paths, duplicates),
    archives over ``limits`` or inflating like a bomb, truncated or corrupt
    archives, a missing top-level manifest, and members the manifest does not
    list or listed files the archive lacks; :class:`ManifestError` if the
    manifest is invalid; :class:`NotFound` if ``archive`` does not exist;
    :class:`Conflict` if ``dest`` is not empty.  On any error nothing is left
    at or beside ``dest``.  Errors name the archive ``label`` (default: its
    path), so a server can keep its own paths out of what a client sees.
    """
    return _install(Path(archive), Path(dest), limits, _package_root, label)


def extract_tree(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    limits: Limits = _DEFAULT_LIMITS,
) -> Path:
    """Extract any archive into ``dest`` under the same safety rules as :func:`unpack`.

    For archives that are not model packages: nothing is required of the
    content and the tree is kept as it is (no top-level directory stripped).
    Raises like :func:`unpack`, minus the manifest checks.
    """
    return _install(Path(archive), Path(dest), limits, _whole_tree)


class _Refused(Exception):
    """An archive breaks a rule; the caller adds which archive and member
    (``member``, when the rule is broken before the member is current)."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class _NoSparseInfo(tarfile.TarInfo):
    """Refuses GNU sparse members as soon as their PAX header announces them.

    tarfile would otherwise parse the sparse map, which it reads with
    ``int()`` from the member's data: a malformed one is a bare
    ``ValueError`` rather than a refusal.  Sparse files are refused anyway.
    """

    def _refuse_sparse(self, next: tarfile.TarInfo, *args: Any) -> None:
        raise _Refused(
            "is a GNU sparse file; only regular files and directories are allowed", next.name
        )

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _Corrupt(Exception):
    """The archive's bytes cannot be decoded."""


class _Extraction:
    """Writes checked members under ``root`` and remembers what it wrote."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.files: set[str] = set()
        #: Every directory created, whether named by a member or implied by a path.
        self.dirs: set[str] = set()
        self._named_dirs: set[str] = set()
        self._members = 0
        self._written = 0

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self._members += 1
        if self._members > self.limits.max_archive_members:
            raise _Refused(
                f"is one too many: the limit is {self.limits.max_archive_members} members"
            )
        if not (member.isreg() or member.isdir()) or member.issparse():
            raise _Refused(f"is {_kind(member)}; only regular files and directories are allowed")
        path = _member_path(member.name)
        if path is None:
            return  # "." names the archive root itself
        if path in self.files or path in self._named_dirs:
            raise _Refused("appears twice")
        if member.isdir():
            self._add_dir(path)
        else:
            self._add_file(path, tar, member)

    def _add_dir(self, path: str) -> None:
        self._make_parents(path)
        if path not in self.dirs:
            self._mkdir(path)
        self._named_dirs.add(path)

    def _add_file(self, path: str, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if path in self.dirs:
            raise _Refused("is a file, but earlier members use it as a directory")
        self._make_parents(path)
        source = tar.extractfile(member)
        if source is None:  # cannot happen for a regular file; keeps the types honest
            raise _Refused("has no data")
        try:
            # O_EXCL: never write through anything that is already there.
            fd = os.open(self.root / path, _CREATE_NEW, _FILE_MODE)
        except FileExistsError as exc:
            raise _Refused("collides with another member (case-insensitive file system?)") from exc
        except OSError as exc:
            raise _Refused(f"cannot be created: {exc.strerror}") from exc
        self.files.add(path)
        with source, os.fdopen(fd, "wb") as out:
            # Count what actually arrives: the header's size may lie.
            while chunk := source.read(CHUNK):
                if self._written + len(chunk) > self.limits.max_unpacked_bytes:
                    raise _Refused(
                        "takes the unpacked size over the limit of "
                        f"{self.limits.max_unpacked_bytes} bytes"
                    )
                out.write(chunk)
                self._written += len(chunk)

    def _make_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            if parent in self.files:
                raise _Refused(f"lies under {parent!r}, which is a file")
            if parent not in self.dirs:
                self._mkdir(parent)

    def _mkdir(self, path: str) -> None:
        try:
            os.mkdir(self.root / path, _DIR_MODE)
        except FileExistsError as exc:
            raise _Refused("collides with another member (case-insensitive file system?)") from exc
        except OSError as exc:
            raise _Refused(f"cannot be created: {exc.strerror}") from exc
        self.dirs.add(path)


#: Decides, once every member is out, which staged directory becomes ``dest``.
_RootPicker = Callable[[str, Path, _Extraction, Limits], Path]


def _install(
    archive: Path, dest: Path, limits: Limits, pick_root: _RootPicker, label: str | None = None
) -> Path:
    _require_empty(dest)
    label = str(archive) if label is None else label
    with _open_archive(archive) as raw:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        )
        try:
            extraction = _Extraction(staging, limits)
            _extract(raw, extraction, label, limits)
            root = pick_root(label, staging, extraction, limits)
            os.chmod(root, _DIR_MODE)  # mkdtemp makes it 0700
            try:
                # Atomic, and POSIX allows renaming over an empty directory.
                os.rename(root, dest)
            except OSError as exc:
                raise Conflict(f"cannot move the unpacked archive to {dest}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _require_empty(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise Conflict(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise Conflict(f"{dest} is not empty; unpack into a new or empty directory")


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[io.BufferedReader]:
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed below, after the with-body
    except FileNotFoundError as exc:
        raise NotFound(f"no archive at {archive}") from exc
    except OSError as exc:
        raise ArchiveError(f"cannot read {archive}: {exc.strerror}") from exc
    with raw:
        yield raw


def _extract(raw: io.BufferedReader, extraction: _Extraction, label: str, limits: Limits) -> None:
    stream = _Inflated(raw, limits)
    current: str | None = None
    try:
        with tarfile.open(
            fileobj=stream,
            mode="r|",
            bufsize=_TAR_BUFSIZE,
            encoding="utf-8",
            tarinfo=_NoSparseInfo,
        ) as tar:
            for member in tar:
                current = member.name
                extraction.add(tar, member)
        current = None
        stream.drain()
    except _Refused as exc:
        current = exc.member if exc.member is not None else current
        where = f"member {current!r} " if current is not None else ""
        raise ArchiveError(f"{label}: {where}{exc}") from None
    # tarfile reports some malformed headers as ValueError (e.g. a bad number).
    except (tarfile.TarError, _Corrupt, EOFError, zlib.error, ValueError) as exc:
        raise ArchiveError(f"{label} is truncated or not a tar archive: {exc}") from exc


class _Inflated(io.RawIOBase):
    """The tar stream inside an archive, gunzipped if need be, watched for bombs.

    The ratio is checked on every read, so the tar layer's own reads (headers,
    long names, skipped data) are covered as well as the member data.
    """

    def __init__(self, raw: io.BufferedReader, limits: Limits) -> None:
        super().__init__()
        self._limits = limits
        self._packed = _CountingReader(raw)
        # Sniff rather than trust the file name: uploads arrive under any name.
        self._compressed = raw.peek(len(_GZIP_MAGIC))[: len(_GZIP_MAGIC)] == _GZIP_MAGIC
        self._source: io.BufferedIOBase = (
            gzip.GzipFile(fileobj=self._packed, mode="rb") if self._compressed else raw
        )
        self._unpacked = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        try:
            size = self._source.readinto(buffer)
        except (EOFError, zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
            raise _Corrupt(str(exc) or type(exc).__name__) from exc
        self._unpacked += size
        ratio = self._limits.max_compression_ratio
        if (
            self._compressed
            and self._unpacked >= _RATIO_FLOOR
            and self._unpacked > ratio * self._packed.count
        ):
            raise _Refused(
                f"inflates more than {ratio:g} times ({self._unpacked} bytes from "
                f"{self._packed.count} compressed); refusing a likely archive bomb"
            )
        return size

    def drain(self) -> None:
        """Read a gzip stream to its end, which is where gzip checks its CRC."""
        if self._compressed:
            buffer = bytearray(CHUNK)
            while self.readinto(buffer):
                pass


class _CountingReader(io.RawIOBase):
    """Hands out a file's bytes in small slices and counts them."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        super().__init__()
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        size = self._raw.readinto(memoryview(buffer)[:_PACKED_SLICE])
        self.count += size
        return size


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a fifo"
    if member.issparse():
        return "a sparse file"
    return f"of unsupported type {member.type!r}"


def _member_path(name: str) -> str | None:
    """The normalised relative path of a member, ``None`` for the root itself."""
    # "tar -C dir ." names members "./x"; that prefix is harmless.
    while name.startswith("./"):
        name = name[2:]
    if name == ".":
        return None
    if "." in name.split("/"):
        raise _Refused("has an unsafe path: '.' components are not allowed")
    try:
        check_member_path(name)
    except ValueError as exc:
        raise _Refused(f"has an unsafe path: {exc}") from None
    return name


# -- choosing what becomes dest ---------------------------------------------


def _whole_tree(label: str, staging: Path, extraction: _Extraction, limits: Limits) -> Path:
    return staging


def _package_root(label: str, staging: Path, extraction: _Extraction, limits: Limits) -> Path:
    """The staged package directory, once its content matches its manifest."""
    prefix = _package_prefix(label, extraction)
    root = staging / prefix if prefix else staging
    try:
        manifest = load_manifest(root / MANIFEST_NAME, max_bytes=limits.max_manifest_bytes)
    except ManifestError as exc:
        # Name the manifest by the archive, not by the staging path that is about to vanish.
        raise ManifestError(exc.problems, f"{label}: {prefix}{MANIFEST_NAME}") from exc
    _check_listed(label, prefix, extraction, manifest)
    return root


def _package_prefix(label: str, extraction: _Extraction) -> str:
    """``""``, or ``"top/"`` when the package sits in a single top-level directory."""
    if MANIFEST_NAME in extraction.files:
        return ""
    tops = {path.split("/")[0] for path in extraction.files | extraction.dirs}
    if len(tops) == 1:
        (top,) = tops
        if top in extraction.dirs and f"{top}/{MANIFEST_NAME}" in extraction.files:
            return f"{top}/"
    raise ArchiveError(f"{label} has no top-level {MANIFEST_NAME}: it is not a model package")


def _check_listed(label: str, prefix: str, extraction: _Extraction, manifest: Manifest) -> None:
    listed = {entry.path for entry in manifest.files}
    present = {path.removeprefix(prefix) for path in extraction.files} - {MANIFEST_NAME}
    extra = sorted(present - listed)
    if extra:
        raise ArchiveError(
            f"{label}: member {prefix + extra[0]!r} is not listed in {MANIFEST_NAME}"
            + _and_more(extra)
        )
    missing = sorted(listed - present)
    if missing:
        raise ArchiveError(
            f"{label}: {MANIFEST_NAME} lists {missing[0]!r} but the archive does not contain it"
            + _and_more(missing)
        )
    # Directories are fine as parents of listed files; anything else would
    # make the unpacked directory more than the package.
    needed = {"/".join(p.split("/")[:i]) for p in listed for i in range(1, p.count("/") + 1)}
    stray = sorted(
        d.removeprefix(prefix)
        for d in extraction.dirs
        if d.startswith(prefix) and d != prefix.rstrip("/")
    )
    stray = [d for d in stray if d not in needed]
    if stray:
        raise ArchiveError(
            f"{label}: member {prefix + stray[0]!r} is a directory holding no listed file"
            + _and_more(stray)
        )


def _and_more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""
