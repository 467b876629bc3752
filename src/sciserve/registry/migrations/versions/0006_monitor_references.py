"""Monitoring: reference statistics (sketches) of served model versions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "monitor_references",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_monitor_references"),
    )
    op.create_index("ix_monitor_references_digest", "monitor_references", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_monitor_references_digest", table_name="monitor_references")
    op.drop_table("monitor_references")
