"""Batch jobs: job records and their log lines.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("submitter", sa.String(384), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False, server_default="local"),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cluster", sa.String(64)),
        sa.Column("schedule_id", sa.Integer),
        sa.Column("batch_id", sa.String(100)),
        sa.Column("out_dir", sa.Text),
        sa.Column("shards_total", sa.Integer),
        sa.Column("shards_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_in", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_out", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dead_letters", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("submitted_at", _ts, nullable=False),
        sa.Column("started_at", _ts),
        sa.Column("finished_at", _ts),
        sa.Column("heartbeat_at", _ts),
        sa.Column("runner", sa.String(128)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("report", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_namespace", "jobs", ["namespace"])
    op.create_table(
        "job_log",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("at", _ts, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_log"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_log_job_id_jobs"),
    )
    op.create_index("ix_job_log_job_id", "job_log", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_log_job_id", table_name="job_log")
    op.drop_table("job_log")
    op.drop_index("ix_jobs_namespace", table_name="jobs")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")
