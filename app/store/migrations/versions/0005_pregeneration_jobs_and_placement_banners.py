"""Pre-generation: jobs (their selection, state and progress), the banner each placement
keeps per shopper, segment and for everyone else (with the inputs it was made from and its
review), and each placement's settings (whether its banners wait for approval).

Revision ID: 0005
Revises: 0004
Created: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("placement", sa.String(length=64), nullable=False),
        sa.Column("shoppers", sa.String(length=120), nullable=False),
        sa.Column("shopper_ids", sa.JSON(), nullable=True),
        sa.Column("stale_only", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("active_placement", sa.String(length=64), nullable=True, unique=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("done_before_run", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("runner", sa.String(length=120), nullable=True),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_jobs_placement", "jobs", ["placement"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "placement_banners",
        sa.Column("placement", sa.String(length=64), primary_key=True),
        sa.Column("audience", sa.String(length=16), primary_key=True),
        sa.Column("subject", sa.String(length=64), primary_key=True),
        sa.Column("banner_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("fallback", sa.Boolean(), nullable=False),
        sa.Column("shopper_version", sa.String(length=64), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("template_version", sa.Integer(), nullable=False),
        sa.Column("template_label", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=120), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("stale_reason", sa.String(length=300), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review", sa.String(length=16), nullable=False),
        sa.Column("review_reason", sa.String(length=300), nullable=True),
        sa.Column("reviewed_by", sa.String(length=80), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_placement_banners_job_id", "placement_banners", ["job_id"])
    op.create_index("ix_placement_banners_generated_at", "placement_banners", ["generated_at"])
    op.create_index("ix_placement_banners_review", "placement_banners", ["review"])
    op.create_table(
        "placement_settings",
        sa.Column("placement", sa.String(length=64), primary_key=True),
        sa.Column("review_required", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sa.String(length=80), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("placement_settings")
    op.drop_table("placement_banners")
    op.drop_table("jobs")
