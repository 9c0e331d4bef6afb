"""backfill_jobs: history jobs (POST /backfills), resumable.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backfill_jobs",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=False),
        sa.Column("end_time", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False, server_default="queued"),
        sa.Column("first_id", sa.BigInteger()),
        sa.Column("last_id", sa.BigInteger()),
        sa.Column("position", sa.BigInteger()),
        sa.Column("fetched", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("stored", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("stored_to", sa.BigInteger()),
        sa.Column("missing", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("pages", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("rate", sa.Double()),
        sa.Column("owner", sa.Text()),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed', 'cancelled')",
            name="backfill_jobs_state",
        ),
        sa.CheckConstraint("end_time > start_time", name="backfill_jobs_range"),
    )
    op.create_index("ix_backfill_jobs_state_id", "backfill_jobs", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_backfill_jobs_state_id", table_name="backfill_jobs")
    op.drop_table("backfill_jobs")
