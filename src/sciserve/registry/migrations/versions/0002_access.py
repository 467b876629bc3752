"""Access layer: API tokens and usage accounting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("rate_limit", sa.Text),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("created_by", sa.String(128)),
        sa.Column("expires_at", _ts),
        sa.Column("revoked_at", _ts),
        sa.Column("last_used_at", _ts),
        sa.PrimaryKeyConstraint("token_id", name="pk_tokens"),
    )
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("period_start", _ts, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(384), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("compute_seconds", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage"),
        sa.UniqueConstraint(
            "period_start", "namespace", "principal", "model", name="uq_usage_period_start"
        ),
    )


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("tokens")
