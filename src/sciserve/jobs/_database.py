"""The registry database as the job and schedule stores use it."""

from __future__ import annotations

from typing import Self

from sqlalchemy.engine import Engine

from ..config import Settings
from ..registry import db

__all__ = ["DatabaseStore", "open_engine"]


def open_engine(settings: Settings, *, create: bool) -> Engine:
    """An engine on the registry database of ``settings``, migrated to the newest schema.

    A read-only registry (e.g. an export) is read as it is: never migrated,
    and every write refused by the engine.
    """
    read_only = settings.read_only
    engine = db.connect(settings.database_url, read_only=read_only, create=create and not read_only)
    try:
        if create and not read_only:
            settings.home.mkdir(parents=True, exist_ok=True)
        if not read_only:
            db.migrate(engine, lock_path=settings.home / ".migrate.lock", create=create)
    except BaseException:
        engine.dispose()
        raise
    return engine


class DatabaseStore:
    """Records in a registry database, through an engine the store may own.

    Synchronous (database I/O): asynchronous callers run its methods in a
    thread.  Use as a context manager or :meth:`close` it when it owns its
    engine (:meth:`open`).
    """

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns = owns_engine

    @classmethod
    def open(cls, settings: Settings, *, create: bool = True) -> Self:
        """The store in the registry database of ``settings``, migrated to the newest schema."""
        return cls(open_engine(settings, create=create), owns_engine=True)

    def close(self) -> None:
        if self._owns:
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        return self._engine
