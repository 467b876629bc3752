"""Schedules: cron and alias-trigger schedules that submit jobs, and their runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("cron", sa.String(128)),
        sa.Column("timezone", sa.String(64)),
        sa.Column("trigger_model", sa.String(200)),
        sa.Column("trigger_alias", sa.String(64)),
        sa.Column("missed", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("cluster", sa.String(64)),
        sa.Column("owner", sa.String(384), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("next_due_at", _ts),
        sa.Column("trigger_seen", sa.String(120)),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("namespace", "name", name="uq_schedules_namespace_name"),
    )
    op.create_index("ix_schedules_next_due_at", "schedules", ["next_due_at"])
    op.create_table(
        "schedule_runs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("schedule_id", sa.Integer, nullable=False),
        sa.Column("due_key", sa.String(200), nullable=False),
        sa.Column("due_at", _ts, nullable=False),
        sa.Column("decided_at", _ts, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(40)),
        sa.Column("scheduler", sa.String(128), nullable=False),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_schedule_runs"),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name="fk_schedule_runs_schedule_id_schedules",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("schedule_id", "due_key", name="uq_schedule_runs_schedule_id"),
    )
    op.create_index("ix_schedule_runs_schedule_id", "schedule_runs", ["schedule_id"])


def downgrade() -> None:
    op.drop_index("ix_schedule_runs_schedule_id", table_name="schedule_runs")
    op.drop_table("schedule_runs")
    op.drop_index("ix_schedules_next_due_at", table_name="schedules")
    op.drop_table("schedules")
