"""Initial registry schema: namespaces, models, versions, files, aliases, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "namespaces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("trusted", sa.Boolean, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_namespaces"),
        sa.UniqueConstraint("name", name="uq_namespaces_name"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("namespace_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.ForeignKeyConstraint(
            ["namespace_id"], ["namespaces.id"], name="fk_models_namespace_id_namespaces"
        ),
        sa.UniqueConstraint("namespace_id", "name", name="uq_models_namespace_name"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("runtime", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("published_at", _ts, nullable=False),
        sa.Column("published_by", sa.String(128)),
        sa.Column("yanked_at", _ts),
        sa.Column("yanked_reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_versions"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_versions_model_id_models"),
        sa.UniqueConstraint("model_id", "version", name="uq_versions_model_version"),
    )
    op.create_table(
        "files",
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("version_id", "path", name="pk_files"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_files_version_id_versions"
        ),
    )
    op.create_index("ix_files_sha256", "files", ["sha256"])
    op.create_table(
        "aliases",
        sa.Column("model_id", sa.Integer, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "alias", name="pk_aliases"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_aliases_model_id_models"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_aliases_version_id_versions"
        ),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", _ts, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("actor", sa.String(128)),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )


def downgrade() -> None:
    for table in ("events", "aliases", "files", "versions", "models", "namespaces"):
        op.drop_table(table)
