"""Alembic environment: migrations always run on a connection sciserve passes in."""

from __future__ import annotations

from alembic import context

from sciserve.registry.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by a misconfigured alembic CLI call
    raise RuntimeError("sciserve migrations run through sciserve.registry.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
