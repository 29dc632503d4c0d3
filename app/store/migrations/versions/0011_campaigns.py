"""Campaigns: the running sales copy may name, with the products or categories they cover.

Revision ID: 0011
Revises: 0010
Created: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(80), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_campaigns_ends_at", "campaigns", ["ends_at"])
    op.create_index("ix_campaigns_updated_at", "campaigns", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_campaigns_updated_at", "campaigns")
    op.drop_index("ix_campaigns_ends_at", "campaigns")
    op.drop_table("campaigns")
