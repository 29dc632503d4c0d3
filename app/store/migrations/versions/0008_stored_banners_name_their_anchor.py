"""A stored "because you viewed" banner keeps the product it names: withdrawn, it is stale.

Revision ID: 0008
Revises: 0007
Created: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("placement_banners") as table:
        table.add_column(sa.Column("anchor", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("placement_banners") as table:
        table.drop_column("anchor")
