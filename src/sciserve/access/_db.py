"""Transactions on the registry database, shared by the access modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypeAlias, overload

from sqlalchemy.engine import Connection, Engine

from ..registry.registry import Registry

__all__ = ["Database", "aware", "engine_of"]

#: Where the access tables are: a registry, or an engine on its database.
Database: TypeAlias = Registry | Engine


def engine_of(source: Database) -> Engine:
    """The engine behind a registry (or the engine itself)."""
    if isinstance(source, Engine):
        return source
    # The access tables live in the registry's database, so they share its
    # engine (pool, SQLite locking, read-only mode) rather than opening another.
    return source._engine


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn, conn.begin():
        yield conn


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    # ``sciserve_write`` makes SQLite take its write lock up front
    # (BEGIN IMMEDIATE) and a read-only registry refuse, as in the registry.
    with engine.execution_options(sciserve_write=True).connect() as conn, conn.begin():
        yield conn


@overload
def aware(value: datetime) -> datetime: ...


@overload
def aware(value: None) -> None: ...


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for UTC timestamps; make them aware again."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
