"""Evaluation records and promotion policies.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("record_id", sa.String(32), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("model_digest", sa.String(80), nullable=False),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("dataset_version", sa.String(64), nullable=False),
        sa.Column("dataset_digest", sa.String(80), nullable=False),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("created_by", sa.String(128)),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.UniqueConstraint("record_id", name="uq_evaluations_record_id"),
    )
    op.create_index("ix_evaluations_model", "evaluations", ["namespace", "name", "version"])
    op.create_table(
        "promotion_policies",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("requirements", sa.Text, nullable=False),
        sa.Column("updated_at", _ts, nullable=False),
        sa.Column("updated_by", sa.String(128)),
        sa.PrimaryKeyConstraint("id", name="pk_promotion_policies"),
        sa.UniqueConstraint("namespace", "name", "alias", name="uq_promotion_policies_model_alias"),
    )


def downgrade() -> None:
    op.drop_table("promotion_policies")
    op.drop_index("ix_evaluations_model", table_name="evaluations")
    op.drop_table("evaluations")
