"""Registry metadata tables and database engine set-up.

The schema is owned by the Alembic migrations in ``migrations/``; the table
definitions here are what the code queries and what the first migration
creates.  SQLite (the embedded default) and PostgreSQL are both first-class.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..errors import DependencyMissing, InvalidInput, NotFound, ReadOnlyRegistry, Unavailable

__all__ = ["NO_REGISTRY_HINT", "connect", "metadata", "migrate", "parse_url", "utcnow"]

#: The databases the registry (its migrations, its ``ON CONFLICT`` writes)
#: is written and tested for.
_BACKENDS = ("sqlite", "postgresql")
#: What to tell someone who reads a registry that was never created.
NO_REGISTRY_HINT = "run 'sciserve publish DIR' or 'sciserve up' first"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ts = sa.DateTime(timezone=True)

namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("trusted", sa.Boolean, nullable=False, default=False),
    sa.Column("description", sa.Text),
    sa.Column("created_at", _ts, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("namespace_id", sa.ForeignKey("namespaces.id"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_at", _ts, nullable=False),
    # 'model' or 'dataset' (revision 0007): a name is one or the other, for good.
    sa.Column("kind", sa.String(16), nullable=False, server_default="model"),
    sa.UniqueConstraint("namespace_id", "name", name="uq_models_namespace_name"),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model_id", sa.ForeignKey("models.id"), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(80), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("runtime", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("published_at", _ts, nullable=False),
    sa.Column("published_by", sa.String(128)),
    sa.Column("yanked_at", _ts),
    sa.Column("yanked_reason", sa.Text),
    sa.UniqueConstraint("model_id", "version", name="uq_versions_model_version"),
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("version_id", sa.ForeignKey("versions.id"), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model_id", sa.ForeignKey("models.id"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.ForeignKey("versions.id"), nullable=False),
    sa.Column("updated_at", _ts, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", _ts, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("actor", sa.String(128)),
    sa.Column("detail", sa.Text),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_url(url: str) -> URL:
    """``url`` parsed, if it names a database the registry supports.

    An operator's typo (``foo://``, ``mysql://``, ``postgres:/x``) is
    :class:`~sciserve.errors.InvalidInput` naming what is accepted, never a
    driver's traceback or a hint to install the wrong thing.  Passwords are
    masked in every message.
    """
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        shown = url.split("://", 1)[0] + "://…" if "://" in url else repr(url)
        raise InvalidInput(
            f"not a database URL: {shown}; use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in _BACKENDS:
        raise InvalidInput(
            f"unsupported database {backend!r} in {parsed.render_as_string(hide_password=True)}; "
            "the registry runs on SQLite (sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/DB)"
        )
    if backend == "sqlite" and parsed.get_driver_name() != "pysqlite":
        raise InvalidInput(f"unsupported SQLite driver in {parsed}; use sqlite:///PATH")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def connect(url: str, *, read_only: bool = False, create: bool = True) -> Engine:
    """An engine for ``url`` with the settings sciserve relies on.

    SQLite: WAL journal, a generous busy timeout and ``BEGIN IMMEDIATE`` for
    write transactions, so concurrent publishers queue up instead of failing
    with "database is locked" halfway through.  Read-only SQLite (e.g. an
    export on CVMFS) is opened ``immutable`` so nothing is ever written, not
    even a lock or WAL file.  Without ``create`` (and when read-only) a
    missing SQLite file is :class:`~sciserve.errors.NotFound`, not created.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed.database or "", read_only=read_only, create=create)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except ImportError as exc:
        hint = (
            "pip install 'sciserve[postgres]'"
            if parsed.get_driver_name() == "psycopg"
            else f"install the {parsed.get_driver_name()} package, or use postgresql://"
        )
        raise DependencyMissing(f"no driver for {parsed.drivername}; {hint}") from exc
    except sa.exc.ArgumentError as exc:  # e.g. postgresql+nosuchdriver://
        raise InvalidInput(
            f"unsupported database driver {parsed.drivername!r}; use postgresql://USER@HOST/DB"
        ) from exc
    if read_only:

        @event.listens_for(engine, "begin")
        def _read_only(conn: Connection) -> None:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    return engine


def _sqlite_engine(database: str, *, read_only: bool, create: bool) -> Engine:
    if not database or database == ":memory:":
        raise InvalidInput("the registry needs a SQLite file, not an in-memory database")
    path = Path(database)
    if (read_only or not create) and not path.is_file():
        raise NotFound(f"no registry at {path}; {NO_REGISTRY_HINT}")
    if read_only:
        target = f"file:{path.resolve()}?mode=ro&immutable=1"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = f"file:{path.resolve()}"
    engine = sa.create_engine(
        "sqlite+pysqlite://",
        creator=lambda: _sqlite_connect(target),
        poolclass=sa.pool.QueuePool,
        pool_size=4,
    )

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # pysqlite's own transaction handling is off (isolation_level=None),
        # so the transaction kind is chosen here.
        write = conn.get_execution_options().get("sciserve_write", False)
        if write and read_only:
            raise ReadOnlyRegistry("this registry is open read-only")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _sqlite_connect(target: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(
        target, uri=True, timeout=60, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA foreign_keys=ON")
    if "mode=ro" not in target:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextlib.contextmanager
def _migration_lock(engine: Engine, conn: Connection, lock_path: Path | None) -> Iterator[None]:
    """Serialise migrations between processes opening a fresh registry at once."""
    if engine.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")
        try:
            yield
        finally:
            conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
            conn.commit()
    elif lock_path is not None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    else:  # other databases: rely on the migration's own transaction
        yield


def migrate(engine: Engine, *, lock_path: Path | None = None, create: bool = True) -> None:
    """Bring the schema to the newest revision (a no-op when it already is).

    ``lock_path`` names a file used as an inter-process lock where the
    database has no lock of its own (SQLite).  Without ``create`` a database
    that holds no registry yet is :class:`~sciserve.errors.NotFound` instead
    of being given one (existing registries are still upgraded).
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "sciserve.registry:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            conn.rollback()
            if current == head:
                return
            if current is None and not create:
                where = engine.url.render_as_string(hide_password=True)
                raise NotFound(f"no registry in {where}; {NO_REGISTRY_HINT}")
            with _migration_lock(engine, conn, lock_path):
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"cannot reach the registry database: {exc.orig}") from exc
