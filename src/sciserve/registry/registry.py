"""The model registry: publish, resolve, tag, yank, pull, verify.

Datasets are packages of another kind (``kind: dataset`` in the manifest, a
``kind`` on the name's row) published, versioned, tagged, yanked, pulled,
verified and exported through the very same code: the only difference is
that asking for one kind never returns the other (a dataset cannot be
loaded or served as a model, nor a model evaluated on as a dataset).

Metadata lives in a relational database (:mod:`.db`), bytes in a
content-addressed store (:mod:`.store`).  Publishing is crash-safe by
construction: blobs are written under their digest only when complete, and
the version row that makes them visible is committed last, in one
transaction.  A crash before the commit leaves at most unreferenced blobs,
which a later publish of the same content simply reuses.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from packaging.version import InvalidVersion, Version
from sqlalchemy.engine import Connection

from .._hashing import sha256_file
from ..config import Settings
from ..errors import (
    Conflict,
    DependencyMissing,
    IntegrityError,
    InvalidInput,
    ManifestError,
    NotFound,
    PermissionDenied,
    Problem,
    ReadOnlyRegistry,
    SciserveError,
    VersionConflict,
)
from ..package.croissant import CROISSANT_NAME
from ..package.manifest import (
    DATASET,
    MANIFEST_NAME,
    MODEL,
    NAME_RE,
    NAMESPACE_RE,
    Manifest,
    dump_manifest,
    load_manifest,
    parse_manifest,
)
from ..package.reference import (
    ALIAS_RE,
    LATEST,
    PRODUCTION,
    RESERVED_ALIASES,
    Reference,
    parse_reference,
    served_name,
    served_name_problem,
    version_problem,
)
from ..package.validate import ensure_valid
from . import db, promotion
from .leaderboard import Board, Direction, rank
from .search import ModelEntry, ModelFields, ModelQuery, entry_of, facets, fields_of, matches
from .store import ArtifactStore, open_store

if TYPE_CHECKING:
    from ..package.dataset import SplitData

__all__ = [
    "ModelPage",
    "NameIssue",
    "NamespaceInfo",
    "PublishResult",
    "Registry",
    "VerifyReport",
    "VersionInfo",
]

Progress = Callable[[int], None]

log = logging.getLogger(__name__)

#: Temporary files of uploads into the store older than this (s) are the
#: leftovers of killed publishers and are removed on open and on publish.
#: An upload in progress rewrites its file with every chunk (and a stalled
#: one fails its own read long before), so an hour spares every live upload
#: with a wide margin, while a crashed multi-GB upload is reclaimed the
#: same day.
ORPHAN_TEMP_AGE = 3600.0
#: A file in each publish's scratch directory, locked while the publish runs:
#: the kernel drops the lock of a killed publisher, so an unlocked scratch
#: directory (older than :data:`ORPHAN_TEMP_AGE`, so surely past its
#: creation) is a leftover, however long a live publish takes.
_SCRATCH_LOCK = ".in-use"
#: What scratch directories are for (their name's prefix): unpacking an
#: archive to publish, staging an upload or a download over HTTP, and the
#: output of an evaluation's batch job.
_SCRATCH_PURPOSES = frozenset({"unpack", "http", "evaluate"})


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    trusted: bool
    description: str | None
    created_at: datetime


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as the registry records it."""

    manifest: Manifest
    digest: str
    size: int
    published_at: datetime
    published_by: str | None = None
    yanked_at: datetime | None = None
    yanked_reason: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def namespace(self) -> str:
        return self.manifest.namespace

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def ref(self) -> str:
        return self.manifest.ref

    @property
    def yanked(self) -> bool:
        return self.yanked_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.manifest.kind,
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "digest": self.digest,
            "runtime": self.manifest.runtime,
            "size": self.size,
            "license": self.manifest.license,
            "published_at": self.published_at.isoformat(),
            "published_by": self.published_by,
            "yanked": self.yanked,
            "yanked_reason": self.yanked_reason,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class PublishResult:
    version: VersionInfo
    #: False when identical content was already published (a no-op).
    created: bool


@dataclass
class VerifyReport:
    ref: str
    checked: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class NameIssue:
    """A model or version whose name publishing refuses today (:meth:`Registry.check_names`)."""

    #: ``namespace/name`` or ``namespace/name:version``.
    subject: str
    problem: str
    hint: str

    def to_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "problem": self.problem, "hint": self.hint}


@contextlib.contextmanager
def _manifest_named(label: str | None) -> Iterator[None]:
    """Name manifest errors after ``label`` rather than a (scratch) path."""
    try:
        yield
    except ManifestError as exc:
        if label is None:
            raise
        raise ManifestError(exc.problems, f"{label}: {MANIFEST_NAME}") from exc


#: The most evaluation records one leaderboard reads (newest first).
_MAX_LEADERBOARD_RECORDS = 100_000


@dataclass(frozen=True)
class ModelPage:
    """One page of a model search (:meth:`Registry.search_models`)."""

    #: The default version of each model on the page, by namespace and name.
    models: list[VersionInfo]
    #: Models that match the query, on every page.
    matched: int
    #: Models the caller may see, matching or not.
    total: int
    #: The values each filter may take over the models the caller may see.
    facets: dict[str, list[str]]
    offset: int
    limit: int


@dataclass(frozen=True)
class _Model:
    """A model, its versions' light columns and its aliases, and which version is which."""

    namespace: str
    name: str
    aliases: dict[str, int]
    #: The version :meth:`Registry.resolve` gives for a bare reference, and its digest.
    default_id: int
    default_digest: str
    #: The newest version that is not yanked (``latest``), if any.
    newest_id: int | None


#: Most ids in one ``IN (...)`` (SQLite allows 32,766 bound parameters).
_IN_CHUNK = 500
#: Events whose count is part of the catalogue's stamp (see ``Registry._stamp``):
#: far more than can be written while one transaction is open.
_STAMP_WINDOW = 10_000
#: Events since the last catalogue read past which it is read whole again
#: rather than model by model (see ``Registry._catalogue``).
_CATCH_UP = 64
#: Events that change one model's catalogue entry; the subject names it
#: (``ns/name`` or ``ns/name:version``).
_MODEL_EVENTS = frozenset({"publish", "tag", "untag", "yank", "unyank"})
#: Events that change no catalogue entry.  Any action in neither set (a
#: rename, one added later) makes the catalogue be read whole: unknown is safe.
_NEUTRAL_EVENTS = frozenset(
    {
        "evaluation",
        "policy.set",
        "policy.clear",
        "namespace.create",
        "namespace.trust",
        "namespace.distrust",
        "token.create",
        "token.revoke",
        "request.denied",
        "job.submit",
        "job.cancel",
        "job.resume",
        "schedule-add",
        "schedule-remove",
    }
)


@dataclass(frozen=True)
class _Catalogue:
    """Every model and its search entry, as of an event stamp."""

    stamp: tuple[int, int]
    items: list[tuple[_Model, ModelEntry]]


def _version_key(version: str, published_at: datetime) -> tuple[int, Any, datetime]:
    # PEP 440 versions sort by their meaning; any other version sorts below
    # them, by publish time.
    return (*_meaning(version), published_at)


def _ranks(versions: set[str]) -> dict[str, int]:
    """Each version string's place in the version order (equal meanings, equal places)."""
    out: dict[str, int] = {}
    previous: tuple[int, Version] | None = None
    place = -1
    for version in sorted(versions, key=_meaning):
        meaning = _meaning(version)
        if meaning != previous:
            place += 1
            previous = meaning
        out[version] = place
    return out


@functools.lru_cache(maxsize=1 << 16)
def _meaning(version: str) -> tuple[int, Version]:
    # Parsed once per distinct string: listing every model parses each
    # version of each model, and most registries reuse a few hundred strings.
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, Version("0"))


def _catalogue_key(item: tuple[_Model, ModelEntry]) -> tuple[str, str]:
    return item[0].namespace, item[0].name


def _model_of(subject: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of an event's subject (``ns/name[:version]``)."""
    namespace, slash, rest = subject.partition("/")
    name = rest.partition(":")[0]
    return (namespace, name) if slash and namespace and name else None


def _new_id(conn: Connection, insert: sa.Insert) -> int:
    key = conn.execute(insert).inserted_primary_key
    assert key is not None
    return int(key[0])


class Registry:
    """A registry of model packages.  Use as a context manager or call :meth:`close`.

    ``create=False`` is for commands that only read: a registry that does not
    exist yet is :class:`~sciserve.errors.NotFound` rather than created empty
    (e.g. under a mistyped ``--database-url``).
    """

    def __init__(
        self, settings: Settings, *, store: ArtifactStore | None = None, create: bool = True
    ) -> None:
        self.settings = settings
        self.read_only = settings.read_only
        # The last catalogue read (see _catalogue), with the stamp it is valid for.
        self._kept: _Catalogue | None = None
        # The URL is checked first: a mistyped one creates nothing.
        self._engine = db.connect(settings.database_url, read_only=self.read_only, create=create)
        try:
            if not self.read_only and create:
                settings.home.mkdir(parents=True, exist_ok=True)
            if not self.read_only:
                db.migrate(self._engine, lock_path=settings.home / ".migrate.lock", create=create)
            self.store = store or open_store(settings.store_url, read_only=self.read_only)
        except BaseException:
            self._engine.dispose()
            raise
        if not self.read_only and create:
            self._remove_orphan_temps()

    @classmethod
    def open(
        cls, home: str | os.PathLike[str] | None = None, *, create: bool = True, **overrides: Any
    ) -> Registry:
        """Open the registry of ``home`` (see :meth:`Settings.load` for the rest)."""
        return cls(Settings.load(home, **overrides), create=create)

    def _remove_orphan_temps(self) -> None:
        """Reclaim what killed publishers left in the store and in the data
        directory's scratch space (see :data:`ORPHAN_TEMP_AGE`)."""
        try:
            removed = self.store.remove_orphan_temps(ORPHAN_TEMP_AGE)
        except SciserveError as exc:  # housekeeping must never fail the caller's work
            log.warning("cannot remove leftover upload files from %s: %s", self.store, exc)
        else:
            if removed:
                log.info("removed %d leftover upload file(s) from %s", removed, self.store)
        try:
            removed = self._remove_orphan_scratch()
        except OSError as exc:
            log.warning("cannot remove leftover scratch directories: %s", exc)
        else:
            if removed:
                log.info("removed %d leftover scratch director(ies)", removed)

    def _remove_orphan_scratch(self) -> int:
        """Remove scratch directories of killed publishers; how many."""
        base = self.settings.home / "tmp"
        cutoff = time.time() - ORPHAN_TEMP_AGE
        removed = 0
        try:
            entries = sorted(base.iterdir())
        except FileNotFoundError:
            return 0
        for path in entries:
            if path.name.partition("-")[0] not in _SCRATCH_PURPOSES or path.is_symlink():
                continue
            try:
                if not path.is_dir() or path.stat().st_mtime >= cutoff:
                    continue
                fd = os.open(path / _SCRATCH_LOCK, os.O_RDONLY)
            except FileNotFoundError:
                # Killed before it made its lock file (or removed meanwhile).
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a publish is still working in it
            finally:
                os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        if self.read_only:
            raise ReadOnlyRegistry("this registry is open read-only")
        engine = self._engine.execution_options(sciserve_write=True)
        with engine.connect() as conn, conn.begin():
            yield conn

    @staticmethod
    def _event(
        conn: Connection,
        action: str,
        subject: str,
        actor: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        conn.execute(
            sa.insert(db.events).values(
                at=db.utcnow(),
                action=action,
                subject=subject,
                actor=actor,
                detail=json.dumps(detail, sort_keys=True) if detail else None,
            )
        )

    # -- namespaces ------------------------------------------------------

    def create_namespace(
        self,
        name: str,
        *,
        trusted: bool = False,
        description: str | None = None,
        actor: str | None = None,
    ) -> NamespaceInfo:
        if not NAMESPACE_RE.fullmatch(name):
            raise InvalidInput(
                f"{name!r} is not a valid namespace (lowercase letters, digits, '_' and '-')"
            )
        with self._write() as conn:
            if self._namespace_row(conn, name) is not None:
                raise Conflict(f"namespace {name!r} already exists")
            conn.execute(
                sa.insert(db.namespaces).values(
                    name=name, trusted=trusted, description=description, created_at=db.utcnow()
                )
            )
            self._event(conn, "namespace.create", name, actor, {"trusted": trusted})
        return self.namespace(name)

    def set_trusted(self, name: str, trusted: bool, *, actor: str | None = None) -> NamespaceInfo:
        """Allow (or forbid) a namespace to publish code-executing runtimes."""
        with self._write() as conn:
            if self._namespace_row(conn, name) is None:
                raise NotFound(f"no namespace {name!r}")
            conn.execute(
                sa.update(db.namespaces).where(db.namespaces.c.name == name).values(trusted=trusted)
            )
            self._event(conn, "namespace.trust" if trusted else "namespace.distrust", name, actor)
        return self.namespace(name)

    def namespace(self, name: str) -> NamespaceInfo:
        with self._read() as conn:
            row = self._namespace_row(conn, name)
        if row is None:
            raise NotFound(f"no namespace {name!r}")
        return NamespaceInfo(row.name, bool(row.trusted), row.description, row.created_at)

    def namespaces(self) -> list[NamespaceInfo]:
        with self._read() as conn:
            rows = conn.execute(sa.select(db.namespaces).order_by(db.namespaces.c.name)).all()
        return [NamespaceInfo(r.name, bool(r.trusted), r.description, r.created_at) for r in rows]

    @staticmethod
    def _namespace_row(conn: Connection, name: str) -> Any:
        return conn.execute(sa.select(db.namespaces).where(db.namespaces.c.name == name)).first()

    # -- publishing ------------------------------------------------------

    def publish(
        self,
        source: str | os.PathLike[str],
        *,
        actor: str | None = None,
        progress: Progress | None = None,
        check: Callable[[Manifest], None] | None = None,
        label: str | None = None,
    ) -> PublishResult:
        """Publish the package directory or archive at ``source``.

        Identical content already published is a no-op (``created=False``);
        different content under the same ``namespace/name:version`` raises
        :class:`VersionConflict`.  Packages whose runtime can execute code
        (pickles, TorchScript, custom Python) are refused unless the
        namespace is trusted.  ``check`` sees the manifest before anything
        else is read (a server checks the publisher's scope on its namespace).
        Errors name the package ``label`` (default: its path), so a server
        can keep its own paths out of what a client sees.
        """
        if self.read_only:
            raise ReadOnlyRegistry("this registry is open read-only")
        self._remove_orphan_temps()
        source = Path(source)
        if source.is_file():
            from ..package.archive import unpack

            with self.scratch() as scratch:
                limits = self.settings.limits
                root = unpack(source, scratch / "package", limits=limits, label=label)
                with _manifest_named(label):
                    return self._publish_dir(root, actor, progress, check)
        if not source.is_dir():
            raise NotFound(f"no package directory or archive at {source}")
        with _manifest_named(label):
            return self._publish_dir(source, actor, progress, check)

    @contextlib.contextmanager
    def scratch(self, purpose: str = "unpack") -> Iterator[Path]:
        """A scratch directory under ``<home>/tmp``, locked as in use until it
        is removed on exit; one a killed process leaves behind is removed
        later (see :data:`ORPHAN_TEMP_AGE`).  ``purpose`` is ``"unpack"``,
        ``"http"`` or ``"evaluate"``."""
        if purpose not in _SCRATCH_PURPOSES:
            raise ValueError(f"unknown scratch purpose {purpose!r}")
        base = self.settings.home / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=base))
        fd = os.open(path / _SCRATCH_LOCK, os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def _publish_dir(
        self,
        root: Path,
        actor: str | None,
        progress: Progress | None,
        check: Callable[[Manifest], None] | None,
    ) -> PublishResult:
        # The code policy needs only the manifest, and is checked before
        # validation so no reader ever touches a file it forbids.
        manifest = load_manifest(
            root / MANIFEST_NAME, max_bytes=self.settings.limits.max_manifest_bytes
        )
        if check is not None:
            check(manifest)
        self._check_names(manifest)
        self._check_size(manifest)
        self._check_code_policy(manifest)
        ensure_valid(root, manifest)
        existing = self._existing(manifest)
        if existing is not None:
            return PublishResult(existing, created=False)
        for entry in manifest.files:
            self.store.put_file(root / entry.path, expected_sha256=entry.sha256, progress=progress)
        for attempt in range(5):
            try:
                with self._write() as conn:
                    self._insert_version(conn, manifest, actor)
                break
            except sa.exc.IntegrityError:
                # A concurrent publisher created the same namespace, model or
                # version first.  Theirs may be this very version (identical:
                # a no-op; different: a conflict), else retry on top of theirs.
                existing = self._existing(manifest)
                if existing is not None:
                    return PublishResult(existing, created=False)
                if attempt == 4:
                    raise
        return PublishResult(self.resolve(manifest.ref, kind=None), created=True)

    def _check_names(self, manifest: Manifest) -> None:
        """Refuse names that would make a served name or a version selector ambiguous."""
        for problem in (
            served_name_problem(manifest.namespace, manifest.name),
            version_problem(manifest.version),
        ):
            if problem is not None:
                raise InvalidInput(problem)
        with self._read() as conn:
            self._check_version_not_alias(conn, manifest)

    def _check_version_not_alias(self, conn: Connection, manifest: Manifest) -> None:
        if manifest.version in self._aliases(conn, manifest.namespace, manifest.name):
            raise Conflict(
                f"{manifest.namespace}/{manifest.name} has an alias {manifest.version!r}; a "
                "version of that name could be taken for it: choose another version"
            )

    def _check_size(self, manifest: Manifest) -> None:
        # The canonical form is what the database stores and every listing
        # reads back: bound it, whatever the YAML it came from looked like.
        limit = self.settings.limits.max_manifest_bytes
        size = len(manifest.canonical_bytes())
        if size > limit:
            raise ManifestError(
                [
                    Problem(
                        "",
                        f"the canonical manifest is {size} bytes, over the {limit}-byte limit",
                        "move long texts into files of the package",
                    )
                ]
            )

    def _check_code_policy(self, manifest: Manifest) -> None:
        if manifest.kind == DATASET or not self.executes_code(manifest):
            return
        try:
            trusted = self.namespace(manifest.namespace).trusted
        except NotFound:
            trusted = False
        if not trusted:
            raise PermissionDenied(
                f"runtime {manifest.runtime!r} with {manifest.model_file or 'custom code'} can "
                f"execute code, and namespace {manifest.namespace!r} is not trusted; "
                f"an admin can allow it with 'sciserve namespace trust {manifest.namespace}'"
            )

    @staticmethod
    def executes_code(manifest: Manifest) -> bool:
        """Whether loading ``manifest`` may run code shipped in the package."""
        from ..runtimes import get_runtime

        try:
            return get_runtime(manifest.runtime).executes_code(manifest)
        except (NotFound, DependencyMissing):
            # A runtime we cannot inspect is treated as the dangerous kind.
            return True

    def _existing(self, manifest: Manifest) -> VersionInfo | None:
        try:
            found = self.resolve(manifest.ref, kind=None)
        except NotFound:
            return None
        if found.digest != manifest.digest:
            raise VersionConflict(
                f"{manifest.ref} is already published with digest {found.digest}; this package "
                f"has {manifest.digest}. Published versions are immutable: bump the version."
            )
        return found

    def _insert_version(self, conn: Connection, manifest: Manifest, actor: str | None) -> None:
        now = db.utcnow()
        ns = self._namespace_row(conn, manifest.namespace)
        if ns is None:
            ns_id = _new_id(
                conn,
                sa.insert(db.namespaces).values(
                    name=manifest.namespace, trusted=False, created_at=now
                ),
            )
            self._event(conn, "namespace.create", manifest.namespace, actor, {"trusted": False})
        else:
            ns_id = ns.id
        # Again inside the transaction: an alias may have been set meanwhile.
        self._check_version_not_alias(conn, manifest)
        found = conn.execute(
            sa.select(db.models.c.id, db.models.c.kind).where(
                db.models.c.namespace_id == ns_id, db.models.c.name == manifest.name
            )
        ).first()
        if found is None:
            model_id = _new_id(
                conn,
                sa.insert(db.models).values(
                    namespace_id=ns_id, name=manifest.name, created_at=now, kind=manifest.kind
                ),
            )
        elif found.kind != manifest.kind:
            raise Conflict(
                f"{manifest.namespace}/{manifest.name} is a {found.kind}; a {manifest.kind} "
                "cannot take its name: choose another name"
            )
        else:
            model_id = found.id
        version_id = _new_id(
            conn,
            sa.insert(db.versions).values(
                model_id=model_id,
                version=manifest.version,
                digest=manifest.digest,
                manifest=manifest.canonical_bytes().decode(),
                runtime=manifest.runtime,
                size=sum(f.size for f in manifest.files),
                published_at=now,
                published_by=actor,
            ),
        )
        conn.execute(
            sa.insert(db.files),
            [
                {
                    "version_id": version_id,
                    "path": f.path,
                    "sha256": f.sha256,
                    "size": f.size,
                    "role": f.role,
                }
                for f in manifest.files
            ],
        )
        detail = {"digest": manifest.digest}
        if manifest.kind != MODEL:
            detail["kind"] = manifest.kind
        self._event(conn, "publish", manifest.ref, actor, detail)

    # -- queries ---------------------------------------------------------

    def _version_rows(self, conn: Connection, namespace: str, name: str) -> list[Any]:
        v, m, n = db.versions, db.models, db.namespaces
        return list(
            conn.execute(
                sa.select(v, m.c.kind)
                .join(m, v.c.model_id == m.c.id)
                .join(n, m.c.namespace_id == n.c.id)
                .where(n.c.name == namespace, m.c.name == name)
            ).all()
        )

    def _aliases(self, conn: Connection, namespace: str, name: str) -> dict[str, int]:
        a, m, n = db.aliases, db.models, db.namespaces
        rows = conn.execute(
            sa.select(a.c.alias, a.c.version_id)
            .join(m, a.c.model_id == m.c.id)
            .join(n, m.c.namespace_id == n.c.id)
            .where(n.c.name == namespace, m.c.name == name)
        ).all()
        return {r.alias: r.version_id for r in rows}

    @staticmethod
    def _newest(rows: Sequence[Any]) -> Any | None:
        live = [r for r in rows if r.yanked_at is None]
        return max(live, key=lambda r: _version_key(r.version, r.published_at), default=None)

    def _info(self, row: Any, aliases: dict[str, int], newest_id: int | None) -> VersionInfo:
        names = sorted(a for a, vid in aliases.items() if vid == row.id)
        if row.id == newest_id:
            names.insert(0, LATEST)
        return VersionInfo(
            manifest=parse_manifest(json.loads(row.manifest)),
            digest=row.digest,
            size=row.size,
            published_at=row.published_at,
            published_by=row.published_by,
            yanked_at=row.yanked_at,
            yanked_reason=row.yanked_reason,
            aliases=tuple(names),
        )

    @staticmethod
    def _check_kind(r: Reference, rows: Sequence[Any], kind: str | None) -> None:
        """Refuse a name of no or another kind than ``kind`` (``None``: either)."""
        if not rows:
            raise NotFound(f"no {kind or 'model or dataset'} {r.namespace}/{r.name}")
        found = rows[0].kind
        if kind is not None and found != kind:
            hint = (
                "'sciserve datasets show' lists its versions"
                if found == DATASET
                else "'sciserve models show' lists its versions"
            )
            raise NotFound(f"{r.namespace}/{r.name} is a {found}, not a {kind}; {hint}")

    def resolve(self, ref: str | Reference, *, kind: str | None = MODEL) -> VersionInfo:
        """The version a reference means (see :mod:`sciserve.package.reference`).

        ``kind`` is what the caller wants (a model by default, ``None`` for
        either): a name of the other kind is :class:`NotFound`, saying what it is.
        """
        r = parse_reference(ref) if isinstance(ref, str) else ref
        with self._read() as conn:
            rows = self._version_rows(conn, r.namespace, r.name)
            aliases = self._aliases(conn, r.namespace, r.name)
        self._check_kind(r, rows, kind)
        newest = self._newest(rows)
        newest_id = newest.id if newest is not None else None
        if r.version is not None:
            row = next((x for x in rows if x.version == r.version), None)
            if row is None:
                raise NotFound(f"no version {r.version} of {r.namespace}/{r.name}")
        elif r.alias is not None and r.alias != LATEST:
            vid = aliases.get(r.alias)
            if vid is None:
                raise NotFound(f"no alias {r.alias!r} on {r.namespace}/{r.name}")
            row = next(x for x in rows if x.id == vid)
        elif r.alias is None and PRODUCTION in aliases:
            row = next(x for x in rows if x.id == aliases[PRODUCTION])
        else:
            if newest is None:
                raise NotFound(
                    f"every version of {r.namespace}/{r.name} is yanked; ask for one by its version"
                )
            row = newest
        return self._info(row, aliases, newest_id)

    def resolve_selector(self, namespace: str, name: str, selector: str) -> VersionInfo:
        """What a server's ``/versions/{selector}`` means: the alias of that name, else the version.

        The alias comes first, so ``production`` means in a server what
        ``name@production`` means here, even where an older release let a
        version be named like an alias (publishing and tagging refuse that now).
        """
        try:
            return self.resolve(Reference(namespace, name, alias=selector))
        except NotFound:
            pass
        try:
            return self.resolve(Reference(namespace, name, version=selector))
        except NotFound:
            raise NotFound(f"no version or alias {selector!r} of {namespace}/{name}") from None

    def resolve_dataset(self, ref: str | Reference) -> VersionInfo:
        """The dataset version a reference means; a model's name is :class:`NotFound`."""
        return self.resolve(ref, kind=DATASET)

    def croissant(self, ref: str | Reference) -> dict[str, Any]:
        """The Croissant document of a dataset version, its bytes checked against their digest."""
        info = self.resolve_dataset(ref)
        entry = info.manifest.file(CROISSANT_NAME)
        with self.store.open(entry.sha256) as fh:
            data = fh.read(entry.size + 1)
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.sha256:
            raise IntegrityError(
                f"{info.ref}: {CROISSANT_NAME} has sha256 {actual}, recorded {entry.sha256}",
                path=CROISSANT_NAME,
                expected=entry.sha256,
                actual=actual,
            )
        document: dict[str, Any] = json.loads(data)
        return document

    def load_split(self, ref: str | Reference, split: str, *, features: bool = True) -> SplitData:
        """One split of a dataset as numpy arrays (features, labels; see
        :func:`sciserve.package.dataset.load_split`), from the package cache,
        every file verified against its digest before it is read."""
        from ..package.dataset import load_split

        info = self.resolve_dataset(ref)
        return load_split(self.pull(info.ref, kind=DATASET), split, features=features)

    def versions(self, ref: str | Reference, *, kind: str | None = MODEL) -> list[VersionInfo]:
        """Every version of a model (or dataset), newest first (yanked ones included)."""
        r = parse_reference(ref) if isinstance(ref, str) else ref
        with self._read() as conn:
            rows = self._version_rows(conn, r.namespace, r.name)
            aliases = self._aliases(conn, r.namespace, r.name)
        self._check_kind(r, rows, kind)
        newest = self._newest(rows)
        ordered = sorted(rows, key=lambda x: _version_key(x.version, x.published_at), reverse=True)
        return [self._info(x, aliases, newest.id if newest is not None else None) for x in ordered]

    def list_models(
        self, namespace: str | None = None, *, kind: str | None = MODEL
    ) -> list[VersionInfo]:
        """The default version (see :meth:`resolve`) of every model (or ``kind``;
        ``None``: all), by namespace and name; of a model whose every version is
        yanked, its newest."""
        with self._read() as conn:
            found = self._models(conn, namespace, kind)
            rows = self._rows_by_id(conn, [m.default_id for m in found], full=True)
        return [self._info(rows[m.default_id], m.aliases, m.newest_id) for m in found]

    def search_models(
        self,
        query: ModelQuery,
        *,
        visible: Callable[[str], bool],
        offset: int = 0,
        limit: int = 50,
    ) -> ModelPage:
        """The models (default versions, as :meth:`list_models`) in namespaces
        ``visible`` accepts that match ``query``, from the ``offset``-th, at
        most ``limit`` of them, with their counts and facets.

        A fixed number of queries whatever the number of models; only the
        page's manifests are validated.  Models in other namespaces count
        nowhere: not in ``total``, ``matched`` nor the facets.
        """
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        with self._read() as conn:
            shown = [(m, e) for m, e in self._catalogue(conn).items if visible(m.namespace)]
            entries = [e for _, e in shown]
            matched = [e for e in entries if matches(e, query)]
            page = matched[offset : offset + limit]
            rows = self._rows_by_id(conn, [e.version_id for e in page], full=True)
        by_id = {m.default_id: m for m, _ in shown}
        models = [
            self._info(rows[i], by_id[i].aliases, by_id[i].newest_id)
            for i in (e.version_id for e in page)
        ]
        return ModelPage(models, len(matched), len(entries), facets(entries), offset, limit)

    def _catalogue(self, conn: Connection) -> _Catalogue:
        """Every model with its default version's entry, as of now.

        Kept while the registry's events say nothing changed: every write to
        namespaces, models, versions or aliases adds an event in its own
        transaction (keep it so), and the stamp is read before the rows, so
        a catalogue is never older than its stamp.  After a few writes only
        the models they name are read again (:meth:`_caught_up`); otherwise,
        and on the first call, every model.
        """
        stamp = self._stamp(conn)
        kept = self._kept
        if kept is not None and kept.stamp == stamp:
            return kept
        items = None if kept is None else self._caught_up(conn, kept, stamp)
        if items is None:
            # The catalogue is of models; datasets have their own listing.
            items = self._entries(conn, self._models(conn, None, MODEL), kept)
        self._kept = _Catalogue(stamp, items)
        return self._kept

    def _caught_up(
        self, conn: Connection, kept: _Catalogue, stamp: tuple[int, int]
    ) -> list[tuple[_Model, ModelEntry]] | None:
        """``kept`` brought up to ``stamp`` by reading again only the models
        that the events since name; ``None`` when that cannot be known (too
        many events, one of an unknown kind, or one that committed late with
        an id below ``kept``'s: then the whole catalogue is read again)."""
        e = db.events
        old_top, old_count = kept.stamp
        top = stamp[0]
        # A transaction that took an id at or below the old top and committed
        # since would change this count (PostgreSQL hands out ids at insert).
        settled = conn.execute(
            sa.select(sa.func.count())
            .select_from(e)
            .where(e.c.id > old_top - _STAMP_WINDOW, e.c.id <= old_top)
        ).scalar()
        if settled != old_count:
            return None
        since = conn.execute(
            sa.select(e.c.action, e.c.subject)
            .where(e.c.id > old_top, e.c.id <= top)
            .order_by(e.c.id)
            .limit(_CATCH_UP + 1)
        ).all()
        if len(since) > _CATCH_UP:
            return None
        touched: set[tuple[str, str]] = set()
        for action, subject in since:
            if action in _NEUTRAL_EVENTS:
                continue
            named = _model_of(subject) if action in _MODEL_EVENTS else None
            if named is None:
                return None
            touched.add(named)
        items = list(kept.items)
        for namespace, name in sorted(touched):
            fresh = self._models(conn, namespace, MODEL, name=name)
            at = bisect.bisect_left(items, (namespace, name), key=_catalogue_key)
            present = at < len(items) and _catalogue_key(items[at]) == (namespace, name)
            replaced = self._entries(conn, fresh, kept)
            items[at : at + 1 if present else at] = replaced
        return items

    def _entries(
        self, conn: Connection, found: list[_Model], kept: _Catalogue | None
    ) -> list[tuple[_Model, ModelEntry]]:
        """The catalogue entry of each model in ``found``."""
        # A version's manifest changes only with its digest (a rename): the
        # fields of the ones read last time are still right.
        known: dict[tuple[int, str], ModelFields] = {}
        if kept is not None:
            known = {(m.default_id, m.default_digest): e.fields for m, e in kept.items}
        missing = [m.default_id for m in found if (m.default_id, m.default_digest) not in known]
        stored = self._rows_by_id(conn, missing, full=False)
        items = []
        for m in found:
            fields = known.get((m.default_id, m.default_digest))
            if fields is None:
                fields = fields_of(json.loads(stored[m.default_id].manifest))
            latest = [LATEST] if m.newest_id is not None else []
            entry = entry_of(m.namespace, m.name, m.default_id, fields, [*m.aliases, *latest])
            items.append((m, entry))
        return items

    @staticmethod
    def _stamp(conn: Connection) -> tuple[int, int]:
        """What changes with every event: the newest event id, and how many
        events there are among the newest :data:`_STAMP_WINDOW` ids (on
        PostgreSQL a transaction that took an older id may commit later)."""
        e = db.events
        top = conn.execute(sa.select(sa.func.max(e.c.id))).scalar() or 0
        recent = sa.select(sa.func.count()).select_from(e).where(e.c.id > top - _STAMP_WINDOW)
        return int(top), int(conn.execute(recent).scalar() or 0)

    def _models(
        self,
        conn: Connection,
        namespace: str | None,
        kind: str | None = MODEL,
        *,
        name: str | None = None,
    ) -> list[_Model]:
        """Every model (of ``namespace``; of ``kind``, ``None`` for any; the
        one called ``name`` in ``namespace``), by namespace and name, with
        which of its versions is the default: three queries, whatever the
        number of models."""
        v, m, n, a = db.versions, db.models, db.namespaces, db.aliases
        # Three plain queries joined here: SQLite joins the version rows
        # (manifests inline, so long rows) to their models several times slower.
        models = sa.select(m.c.id, n.c.name.label("ns"), m.c.name).join(
            n, m.c.namespace_id == n.c.id
        )
        # In publish order, so a row's position stands for its publish time
        # in the version order (no timestamp to convert on every row).
        versions = sa.select(
            v.c.model_id,
            v.c.id,
            v.c.version,
            v.c.digest,
            # As a number: a Boolean would be converted row by row.
            sa.type_coerce(v.c.yanked_at.is_(None), sa.Integer).label("live"),
        ).order_by(v.c.published_at, v.c.id)
        aliases = sa.select(a.c.model_id, a.c.alias, a.c.version_id)
        if kind is not None:
            # Versions of the other kind are read and skipped below (as not
            # named): cheaper than restricting the version query to ids.
            models = models.where(m.c.kind == kind)
        if namespace is not None:
            models = models.where(n.c.name == namespace)
            if name is not None:
                models = models.where(m.c.name == name)
            ids = models.with_only_columns(m.c.id).scalar_subquery()
            versions = versions.where(v.c.model_id.in_(ids))
            aliases = aliases.where(a.c.model_id.in_(ids))
        named = {i: (ns, name) for i, ns, name in conn.execute(models).all()}
        # Unpacked as tuples: for ten thousand rows, attribute lookups cost more than the query.
        rows = conn.execute(versions).all()
        tags: dict[int, dict[str, int]] = {}
        for model_id, alias, version_id in conn.execute(aliases).all():
            tags.setdefault(model_id, {})[alias] = version_id
        rank = _ranks({row[2] for row in rows})
        # Per model: (version order, position, id, digest) of its newest live
        # version and of its newest version at all; each version's digest.
        newest: dict[int, tuple[int, int, int, str]] = {}
        newest_any: dict[int, tuple[int, int, int, str]] = {}
        digests: dict[int, str] = {}
        for position, (model_id, version_id, version, digest, live) in enumerate(rows):
            key = (rank[version], position, version_id, digest)
            digests[version_id] = digest
            if model_id not in newest_any or key > newest_any[model_id]:
                newest_any[model_id] = key
            if live and (model_id not in newest or key > newest[model_id]):
                newest[model_id] = key
        out = []
        for model_id, latest in newest_any.items():
            if model_id not in named:
                continue  # created after the models were read
            on = tags.get(model_id, {})
            live = newest.get(model_id)
            production = on.get(PRODUCTION)
            # As resolve() does for a bare reference; when every version is
            # yanked, the newest of them (as versions()[0]).
            if production is not None and production in digests:
                default_id, digest = production, digests[production]
            elif live is not None:
                default_id, digest = live[2], live[3]
            else:
                default_id, digest = latest[2], latest[3]
            namespace_name, name = named[model_id]
            out.append(
                _Model(
                    namespace_name,
                    name,
                    on,
                    default_id,
                    digest,
                    live[2] if live is not None else None,
                )
            )
        out.sort(key=lambda x: (x.namespace, x.name))
        return out

    @staticmethod
    def _rows_by_id(conn: Connection, ids: Sequence[int], *, full: bool) -> dict[int, Any]:
        """Version rows by id: every column, or the id and the manifest."""
        v = db.versions
        columns = [v] if full else [v.c.id, v.c.digest, v.c.manifest]
        out: dict[int, Any] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            for row in conn.execute(sa.select(*columns).where(v.c.id.in_(chunk))).all():
                out[row.id] = row
        return out

    def list_datasets(self, namespace: str | None = None) -> list[VersionInfo]:
        """The default version of every dataset."""
        return self.list_models(namespace, kind=DATASET)

    def check_names(self) -> list[NameIssue]:
        """Models and versions whose names publishing refuses today.

        Older releases accepted names with a dot in namespace ``default``
        (served under the same name as ``namespace.name`` of another
        namespace) and versions named like aliases.  A server does not serve
        such models; :meth:`rename_model` fixes them.
        """
        m, n, v, a = db.models, db.namespaces, db.versions, db.aliases
        with self._read() as conn:
            pairs = conn.execute(
                sa.select(n.c.name.label("ns"), m.c.name)
                .join(n, m.c.namespace_id == n.c.id)
                .order_by(n.c.name, m.c.name)
            ).all()
            versions = conn.execute(
                sa.select(n.c.name.label("ns"), m.c.name, v.c.version)
                .join(m, v.c.model_id == m.c.id)
                .join(n, m.c.namespace_id == n.c.id)
                .order_by(n.c.name, m.c.name, v.c.version)
            ).all()
            aliases = conn.execute(
                sa.select(n.c.name.label("ns"), m.c.name, a.c.alias)
                .join(m, a.c.model_id == m.c.id)
                .join(n, m.c.namespace_id == n.c.id)
            ).all()
        models = {(ns, name) for ns, name in pairs}
        issues = []
        for ns, name in pairs:
            if served_name_problem(ns, name) is None:
                continue
            served = served_name(ns, name)
            prefix, _, rest = name.partition(".")
            if (prefix, rest) in models:
                problem = (
                    f"not served: its served name {served!r} is that of {prefix}/{rest}, "
                    "which is served under it"
                )
            else:
                problem = (
                    f"not served: a dotted served name such as {served!r} means "
                    "namespace.name, so its name in namespace 'default' may not contain '.'"
                )
            hint = f"sciserve models rename {ns}/{name} {name.replace('.', '-')}"
            if NAMESPACE_RE.fullmatch(prefix):
                hint += f" (or pull it and publish it in namespace {prefix!r})"
            issues.append(NameIssue(f"{ns}/{name}", problem, hint))
        alias_names = {(ns, name, alias) for ns, name, alias in aliases}
        for ns, name, version in versions:
            if version_problem(version) is None and (ns, name, version) not in alias_names:
                continue
            issues.append(
                NameIssue(
                    f"{ns}/{name}:{version}",
                    f"version {version!r} is named like an alias of the model; servers take "
                    f"/versions/{version} for the alias",
                    f"use it as {ns}/{name}:{version} in the registry, or publish its content "
                    "again under another version and yank this one",
                )
            )
        return issues

    def rename_model(
        self, namespace: str, name: str, new_name: str, *, actor: str | None = None
    ) -> list[VersionInfo]:
        """Give ``namespace/name`` (every version, alias and file) the name ``new_name``.

        Each version's manifest records the name, so each gets a new digest;
        the files are unchanged.  The audit event lists old and new digests.
        """
        if not NAME_RE.fullmatch(new_name):
            raise InvalidInput(
                f"{new_name!r} is not a valid model name "
                "(letters, digits, '.', '_' and '-', starting with a letter or digit)"
            )
        if (problem := served_name_problem(namespace, new_name)) is not None:
            raise InvalidInput(problem)
        m, n = db.models, db.namespaces
        with self._write() as conn:
            found = {
                row.name: row.id
                for row in conn.execute(
                    sa.select(m.c.id, m.c.name)
                    .join(n, m.c.namespace_id == n.c.id)
                    .where(n.c.name == namespace, m.c.name.in_([name, new_name]))
                ).all()
            }
            if name not in found:
                raise NotFound(f"no model {namespace}/{name}")
            if new_name in found:
                raise Conflict(f"model {namespace}/{new_name} already exists")
            conn.execute(sa.update(m).where(m.c.id == found[name]).values(name=new_name))
            digests = {}
            for row in self._version_rows(conn, namespace, new_name):
                renamed = parse_manifest({**json.loads(row.manifest), "name": new_name})
                conn.execute(
                    sa.update(db.versions)
                    .where(db.versions.c.id == row.id)
                    .values(manifest=renamed.canonical_bytes().decode(), digest=renamed.digest)
                )
                digests[row.version] = {"from": row.digest, "to": renamed.digest}
            self._event(
                conn,
                "model.rename",
                f"{namespace}/{name}",
                actor,
                {"to": f"{namespace}/{new_name}", "digests": digests},
            )
        return self.versions(Reference(namespace, new_name))

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent registry events (audit trail), newest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(db.events).order_by(db.events.c.id.desc()).limit(limit)
            ).all()
        return [
            {
                "at": r.at.isoformat(),
                "action": r.action,
                "subject": r.subject,
                "actor": r.actor,
                "detail": json.loads(r.detail) if r.detail else None,
            }
            for r in rows
        ]

    # -- aliases and yanking ---------------------------------------------

    def _version_id(self, conn: Connection, info: VersionInfo) -> tuple[int, int]:
        rows = self._version_rows(conn, info.namespace, info.name)
        row = next(x for x in rows if x.version == info.version)
        return row.id, row.model_id

    def tag(
        self,
        ref: str,
        alias: str,
        *,
        actor: str | None = None,
        kind: str | None = None,
        force: bool = False,
    ) -> VersionInfo:
        """Point ``alias`` of the model (or dataset) at the version ``ref`` names.

        When the model has a promotion policy for ``alias``
        (:mod:`sciserve.registry.promotion`), the version must meet it or the
        tag raises :class:`~sciserve.errors.PolicyViolation`; ``force`` moves
        the alias anyway and records what failed in the event (adapters allow
        it to admins only).
        """
        if not ALIAS_RE.fullmatch(alias):
            raise InvalidInput(f"{alias!r} is not a valid alias")
        if alias == LATEST:
            raise InvalidInput(
                "'latest' is maintained by the registry: it always names the "
                "newest version that is not yanked"
            )
        info = self.resolve(ref, kind=kind)
        if info.yanked:
            raise Conflict(f"{info.ref} is yanked; an alias cannot point at it")
        with self._write() as conn:
            # A new alias may not take a version's name (``production`` is always
            # an alias; an alias an older release let clash stays movable).
            rows = self._version_rows(conn, info.namespace, info.name)
            if (
                alias not in RESERVED_ALIASES
                and alias not in self._aliases(conn, info.namespace, info.name)
                and any(row.version == alias for row in rows)
            ):
                raise Conflict(
                    f"{info.namespace}/{info.name} has a version {alias!r}; an alias of that "
                    "name could be taken for it: choose another alias"
                )
            # In the transaction that moves the alias: a record or policy
            # changing meanwhile cannot slip a version past the gate.
            failures = promotion.check(
                conn, info.namespace, info.name, info.version, info.digest, alias
            )
            if failures and not force:
                raise promotion.violation(info.ref, alias, failures)
            vid, mid = self._version_id(conn, info)
            done = conn.execute(
                sa.update(db.aliases)
                .where(db.aliases.c.model_id == mid, db.aliases.c.alias == alias)
                .values(version_id=vid, updated_at=db.utcnow())
            ).rowcount
            if not done:
                conn.execute(
                    sa.insert(db.aliases).values(
                        model_id=mid, alias=alias, version_id=vid, updated_at=db.utcnow()
                    )
                )
            detail: dict[str, Any] = {"alias": alias}
            if failures:
                detail |= {"forced": True, "failing": [str(f) for f in failures]}
            self._event(conn, "tag", info.ref, actor, detail)
        return self.resolve(info.ref, kind=None)

    # -- evaluations and promotion policies --------------------------------

    def add_evaluation(
        self,
        ref: str,
        *,
        dataset: str,
        dataset_version: str,
        dataset_digest: str,
        split: str,
        metrics: dict[str, Any],
        record: dict[str, Any],
        actor: str | None = None,
    ) -> promotion.EvaluationInfo:
        """Store an evaluation record of the exact version ``ref`` names."""
        info = self.resolve(ref)
        with self._write() as conn:
            stored = promotion.add_evaluation(
                conn,
                namespace=info.namespace,
                name=info.name,
                version=info.version,
                model_digest=info.digest,
                dataset=dataset,
                dataset_version=dataset_version,
                dataset_digest=dataset_digest,
                split=split,
                metrics=metrics,
                record=record,
                actor=actor,
            )
            self._event(
                conn,
                "evaluation",
                info.ref,
                actor,
                {"record_id": stored.record_id, "dataset": f"{dataset}:{dataset_version}"},
            )
        return stored

    def evaluations(
        self, ref: str | None = None, *, dataset: str | None = None, limit: int = 1000
    ) -> list[promotion.EvaluationInfo]:
        """Evaluation records, newest first, of one model (or version) and/or one dataset."""
        namespace = name = version = None
        if ref is not None:
            r = parse_reference(ref)
            namespace, name = r.namespace, r.name
            if r.version is not None or r.alias is not None:
                version = self.resolve(r).version
        if dataset is not None:
            d = parse_reference(dataset)
            dataset = f"{d.namespace}/{d.name}"
        with self._read() as conn:
            if namespace is not None and name is not None:
                rows = self._version_rows(conn, namespace, name)
                self._check_kind(Reference(namespace, name), rows, MODEL)
            return promotion.evaluations(
                conn, namespace=namespace, name=name, version=version, dataset=dataset, limit=limit
            )

    def leaderboard(
        self,
        dataset: str,
        metric: str,
        *,
        split: str = promotion.DEFAULT_SPLIT,
        direction: Direction | None = None,
        visible: Callable[[str], bool] | None = None,
    ) -> Board:
        """Model versions ranked by ``metric`` on ``dataset`` (see :mod:`.leaderboard`).

        ``visible`` (a namespace test) leaves out the models of namespaces a
        caller may not see before anything is ranked.
        """
        d = parse_reference(dataset)
        if d.version is not None or d.alias is not None:
            raise InvalidInput("a leaderboard is of a dataset: name it without a version")
        name = f"{d.namespace}/{d.name}"
        with self._read() as conn:
            records = promotion.evaluations(conn, dataset=name, limit=_MAX_LEADERBOARD_RECORDS)
        if visible is not None:
            records = [r for r in records if visible(r.namespace)]
        return rank(records, name, metric, split=split, direction=direction)

    def evaluation(self, record_id: str) -> promotion.EvaluationInfo:
        with self._read() as conn:
            found = promotion.get_evaluation(conn, record_id)
        if found is None:
            raise NotFound(f"no evaluation record {record_id[:40]!r}")
        return found

    def set_policy(
        self,
        model: str,
        requirements: Sequence[str],
        *,
        alias: str = PRODUCTION,
        split: str = promotion.DEFAULT_SPLIT,
        actor: str | None = None,
    ) -> promotion.Policy:
        """Require passing evaluations before a version of ``model`` takes ``alias``."""
        r = self._model_reference(model)
        parsed = [promotion.parse_requirement(text, split) for text in requirements]
        if not ALIAS_RE.fullmatch(alias) or alias == LATEST:
            raise InvalidInput(f"{alias!r} is not an alias a policy can guard")
        with self._write() as conn:
            self._check_kind(r, self._version_rows(conn, r.namespace, r.name), MODEL)
            policy = promotion.set_policy(conn, r.namespace, r.name, alias, parsed, actor)
            self._event(
                conn,
                "policy.set",
                f"{r.namespace}/{r.name}",
                actor,
                {"alias": alias, "require": [str(p) for p in parsed]},
            )
        return policy

    def policies(self, model: str) -> list[promotion.Policy]:
        r = self._model_reference(model)
        with self._read() as conn:
            self._check_kind(r, self._version_rows(conn, r.namespace, r.name), MODEL)
            return promotion.policies(conn, r.namespace, r.name)

    def clear_policy(
        self, model: str, *, alias: str = PRODUCTION, actor: str | None = None
    ) -> None:
        r = self._model_reference(model)
        with self._write() as conn:
            self._check_kind(r, self._version_rows(conn, r.namespace, r.name), MODEL)
            if not promotion.clear_policy(conn, r.namespace, r.name, alias):
                raise NotFound(f"no promotion policy for {alias!r} on {r.namespace}/{r.name}")
            self._event(conn, "policy.clear", f"{r.namespace}/{r.name}", actor, {"alias": alias})

    @staticmethod
    def _model_reference(model: str) -> Reference:
        r = parse_reference(model)
        if r.version is not None or r.alias is not None:
            raise InvalidInput(
                f"a policy belongs to a model: name it without a version ({model!r})"
            )
        return r

    def untag(
        self, ref: str, alias: str, *, actor: str | None = None, kind: str | None = None
    ) -> None:
        r = parse_reference(ref)
        with self._write() as conn:
            rows = self._version_rows(conn, r.namespace, r.name)
            self._check_kind(r, rows, kind)
            aliases = self._aliases(conn, r.namespace, r.name)
            if alias not in aliases:
                raise NotFound(f"no alias {alias!r} on {r.namespace}/{r.name}")
            conn.execute(
                sa.delete(db.aliases).where(
                    db.aliases.c.model_id == rows[0].model_id, db.aliases.c.alias == alias
                )
            )
            self._event(conn, "untag", f"{r.namespace}/{r.name}", actor, {"alias": alias})

    def yank(
        self, ref: str, reason: str, *, actor: str | None = None, kind: str | None = None
    ) -> VersionInfo:
        """Mark a version as withdrawn; its record and files are kept (like PyPI).

        A yanked version is skipped by bare names and ``@latest`` but still
        resolves when asked for exactly, so reproductions keep working.
        """
        r = parse_reference(ref)
        if r.version is None:
            raise InvalidInput("yank names an exact version: NAME:VERSION")
        info = self.resolve(r, kind=kind)
        pinned = [a for a in info.aliases if a != LATEST]
        if pinned:
            raise Conflict(
                f"{info.ref} is the target of alias(es) {', '.join(pinned)}; "
                "move them first ('sciserve tag')"
            )
        with self._write() as conn:
            vid, _ = self._version_id(conn, info)
            conn.execute(
                sa.update(db.versions)
                .where(db.versions.c.id == vid)
                .values(yanked_at=db.utcnow(), yanked_reason=reason)
            )
            self._event(conn, "yank", info.ref, actor, {"reason": reason})
        return self.resolve(info.ref, kind=None)

    def unyank(self, ref: str, *, actor: str | None = None, kind: str | None = None) -> VersionInfo:
        info = self.resolve(ref, kind=kind)
        with self._write() as conn:
            vid, _ = self._version_id(conn, info)
            conn.execute(
                sa.update(db.versions)
                .where(db.versions.c.id == vid)
                .values(yanked_at=None, yanked_reason=None)
            )
            self._event(conn, "unyank", info.ref, actor)
        return self.resolve(info.ref, kind=None)

    # -- files -----------------------------------------------------------

    def pull(
        self,
        ref: str | Reference,
        dest: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
        kind: str | None = MODEL,
    ) -> Path:
        """Materialise a package as a directory, every file verified.

        Without ``dest`` the package goes to the registry's cache (keyed by
        digest) and a cached copy is re-verified before it is returned.
        """
        info = self.resolve(ref, kind=kind)
        target = (
            Path(dest)
            if dest is not None
            else (self.settings.package_cache / info.digest.removeprefix("sha256:"))
        )
        if target.is_dir() and (target / MANIFEST_NAME).is_file():
            if dest is not None or self._cached_ok(target, info.manifest):
                return target
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
        try:
            for entry in info.manifest.files:
                path = staging / entry.path
                path.parent.mkdir(parents=True, exist_ok=True)
                self.store.fetch(entry.sha256, path, progress=progress)
            (staging / MANIFEST_NAME).write_text(dump_manifest(info.manifest), encoding="utf-8")
            os.replace(staging, target)
        except OSError as exc:
            if target.is_dir():  # a concurrent pull got there first
                return target
            raise Conflict(f"cannot write {target}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @staticmethod
    def _cached_ok(root: Path, manifest: Manifest) -> bool:
        for entry in manifest.files:
            path = root / entry.path
            if not path.is_file() or sha256_file(path)[0] != entry.sha256:
                return False
        return True

    def verify(self, ref: str | None = None, *, kind: str | None = MODEL) -> list[VerifyReport]:
        """Re-hash stored bytes of one version, or of every version of ``kind`` (``None``: all)."""
        if ref is not None:
            targets = [self.resolve(ref, kind=kind)]
        else:
            targets = [
                v for m in self.list_models(kind=kind) for v in self.versions(m.ref, kind=None)
            ]
        reports = []
        for info in targets:
            report = VerifyReport(info.ref)
            for entry in info.manifest.files:
                report.checked += 1
                try:
                    self.store.verify(entry.sha256)
                except (IntegrityError, NotFound) as exc:
                    report.failures.append(f"{entry.path}: {exc}")
            reports.append(report)
        return reports
