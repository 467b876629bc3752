"""Migration 0002 creates exactly the tables the code queries."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from sciserve.access import tables
from sciserve.registry.registry import Registry


def test_migrated_schema_matches_the_table_definitions(registry: Registry) -> None:
    inspector = sa.inspect(registry._engine)
    for table in (tables.tokens, tables.usage):
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == set(table.columns.keys())
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, column.name
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns]
    [unique] = inspector.get_unique_constraints("usage")
    assert unique["column_names"] == ["period_start", "namespace", "principal", "model"]
    with registry._engine.connect() as conn:
        current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    config = Config()
    config.set_main_option("script_location", "sciserve.registry:migrations")
    script = ScriptDirectory.from_config(config)
    assert script.get_revision("0002").down_revision == "0001"
    applied = [r.revision for r in script.iterate_revisions(current, "base")]
    assert "0002" in applied
