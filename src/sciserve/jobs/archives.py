"""Where a job submitted over the API may read: the ``[jobs] archives`` roots.

A caller of ``POST /v2/sciserve/jobs`` names its input by a path or URL
that a runner on the server's side will open.  Left unchecked, that is a
way to make the server read its own disk (``/etc/passwd``, another
namespace's archive, the registry's files) or fetch any URL it can reach.
:class:`Archives` confines such locations to the configured roots:

* local paths (and ``file://`` URLs) must lie under a root directory once
  symbolic links and ``..`` are resolved; a relative path is taken relative
  to the first root directory;
* other URLs (``s3://bucket/archive/…``) must start with a configured
  prefix, with no ``.`` or ``..`` segment and no fsspec URL chaining
  (``::``), which would let a prefix-looking URL open another file system;
* every file a local directory or glob input holds is checked again once
  its links are resolved, so a link inside a root pointing out of it is
  refused too.

The result is the location in its resolved, absolute form: what is stored
with the job is what was checked.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import InvalidInput, PermissionDenied

__all__ = ["MAX_CHECKED_FILES", "Archives"]

#: Characters that make a local input a glob pattern (as the batch planner sees it).
_GLOB_CHARS = frozenset("*?[")
#: Most files of a directory or glob input checked at submission; a larger
#: input is refused (name a part of it), so one request cannot keep a
#: server thread walking a huge tree.
MAX_CHECKED_FILES = 100_000


class Archives:
    """The roots of ``[jobs] archives``: directories and URL prefixes."""

    def __init__(self, entries: Sequence[str]) -> None:
        self._dirs: list[Path] = []
        self._prefixes: list[str] = []
        for entry in entries:
            if _scheme(entry) == "file":
                self._dirs.append(_real(_file_path(entry)))
            elif "://" in entry:
                scheme, _, rest = entry.partition("://")
                # A prefix names a "directory": s3://bucket/a must not admit s3://bucket/ab.
                self._prefixes.append(f"{scheme.lower()}://{rest.rstrip('/')}/")
            else:
                self._dirs.append(_real(Path(entry).expanduser()))

    @property
    def directories(self) -> tuple[Path, ...]:
        """The root directories, resolved."""
        return tuple(self._dirs)

    def confine(self, location: str, *, what: str = "input") -> str:
        """``location`` resolved and absolute, if it is under a root; else
        :class:`~sciserve.errors.PermissionDenied` saying why."""
        if "\x00" in location:
            raise InvalidInput(f"{what} {location!r} contains a NUL character")
        scheme = _scheme(location)
        if scheme is None:
            return str(self._confine_path(Path(location), location, what))
        if scheme == "file":
            return str(self._confine_path(_file_path(location), location, what))
        return self._confine_url(location, scheme, what)

    def confine_file(self, location: str, *, what: str) -> Path:
        """A single local file (no URL, no pattern), resolved and confined."""
        if _scheme(location) not in (None, "file"):
            raise PermissionDenied(
                f"{what} {location!r} must be a file under a [jobs] archives root"
            )
        path = Path(self.confine(location, what=what))
        if _GLOB_CHARS & set(str(path)):
            raise PermissionDenied(f"{what} {location!r} must name one file, not a pattern")
        return path

    def check_contents(self, location: str) -> None:
        """Refuse a confined local input (a directory or a glob) that holds a
        file whose real path is outside every root (a link pointing out)."""
        if "://" in location:
            return
        count = 0
        for count, file in enumerate(_files(location), start=1):
            if count > MAX_CHECKED_FILES:
                raise InvalidInput(
                    f"input {location} holds over {MAX_CHECKED_FILES} files; "
                    "name a part of it (a partition directory or a narrower pattern)"
                )
            if self._root_of(_real(file)) is None:
                raise PermissionDenied(
                    f"input {location} holds {file}, a link to a file outside the "
                    "[jobs] archives roots; a job submitted over the API reads only under them"
                )
        if count == 0:
            raise InvalidInput(f"input {location} matches no files")

    # -- internals ---------------------------------------------------------

    def _confine_path(self, path: Path, given: str, what: str) -> Path:
        if not path.is_absolute():
            if not self._dirs:
                raise self._denied(given, what)
            path = self._dirs[0] / path
        parts = path.parts
        # The fixed part of a pattern is resolved; the pattern must not climb out of it.
        fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
        if ".." in parts[fixed:]:
            raise PermissionDenied(f"{what} {given!r}: a pattern must not contain '..'")
        resolved = _real(Path(*parts[:fixed]))
        if self._root_of(resolved) is None:
            raise self._denied(given, what)
        return resolved.joinpath(*parts[fixed:])

    def _confine_url(self, location: str, scheme: str, what: str) -> str:
        if "::" in location:
            raise PermissionDenied(
                f"{what} {location!r}: chained URLs ('::') are not accepted from the API"
            )
        rest = location.partition("://")[2]
        normal = f"{scheme}://{rest}"
        segments = unquote(urlsplit(normal).path).replace("\\", "/").split("/")
        if any(segment in (".", "..") for segment in segments):
            raise PermissionDenied(f"{what} {location!r}: '.' and '..' segments are not accepted")
        if not any(normal == p.rstrip("/") or normal.startswith(p) for p in self._prefixes):
            raise self._denied(location, what)
        return normal

    def _root_of(self, path: Path) -> Path | None:
        return next((root for root in self._dirs if path.is_relative_to(root)), None)

    def _denied(self, location: str, what: str) -> PermissionDenied:
        if not self._dirs and not self._prefixes:
            return PermissionDenied(
                f"{what} {location!r} is refused: this server accepts no files from jobs "
                "submitted over the API ([jobs] archives is empty)"
            )
        return PermissionDenied(
            f"{what} {location!r} is outside the archives this server lets API-submitted "
            "jobs read ([jobs] archives)"
        )


def _scheme(location: str) -> str | None:
    scheme, sep, _ = location.partition("://")
    return scheme.lower() if sep else None


def _file_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PermissionDenied(f"{url!r} names a file on another host")
    return Path(unquote(parts.path))


def _real(path: Path) -> Path:
    # strict=False: a path that does not exist (yet) resolves as far as it can.
    return Path(os.path.realpath(path))


def _files(location: str) -> Iterator[Path]:
    """Every file a local directory or glob input may read (links included)."""
    if _GLOB_CHARS & set(location):
        for match in glob.iglob(location, recursive=True):
            path = Path(match)
            if path.is_dir():
                yield from _walk(path)
            else:
                yield path
    elif os.path.isdir(location):
        yield from _walk(Path(location))
    elif os.path.lexists(location):
        yield Path(location)
    else:
        raise InvalidInput(f"input {location} does not exist")


def _walk(root: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in files:
            yield base / name
        # Links to directories are not descended into by the walk; the
        # link itself is checked like a file.
        for name in dirs:
            if (base / name).is_symlink():
                yield base / name
