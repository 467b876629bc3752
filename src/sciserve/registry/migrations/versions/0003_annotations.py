"""Stream pipelines: the annotation result store.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "annotations",
        sa.Column("alert_id", sa.BigInteger, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_digest", sa.String(80), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("score", sa.Float),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("runtime", sa.String(64), nullable=False),
        sa.Column("library_versions", sa.Text, nullable=False),
        sa.Column("broker_timestamp_ms", sa.BigInteger),
        sa.Column("processed_at", _ts, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.Column("filter_error", sa.Text),
        sa.PrimaryKeyConstraint("alert_id", "model", "model_version", name="pk_annotations"),
    )
    op.create_index("ix_annotations_pipeline", "annotations", ["pipeline"])
    op.create_index("ix_annotations_label", "annotations", ["label"])


def downgrade() -> None:
    op.drop_index("ix_annotations_label", table_name="annotations")
    op.drop_index("ix_annotations_pipeline", table_name="annotations")
    op.drop_table("annotations")
