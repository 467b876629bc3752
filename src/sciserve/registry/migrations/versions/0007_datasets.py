"""Datasets: a kind ('model' or 'dataset') on every registered name.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every name registered so far is a model.  A plain ADD COLUMN with a
    # default: no table rebuild on SQLite, no rewrite on PostgreSQL.
    op.add_column(
        "models", sa.Column("kind", sa.String(16), nullable=False, server_default="model")
    )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("kind")
