"""A placement's experiment may be a Thompson-sampling bandit: its strategy, each arm's least
share, and how long a weight holds.

Revision ID: 0010
Revises: 0009
Created: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as table:
        table.add_column(
            sa.Column("strategy", sa.String(16), nullable=False, server_default="split")
        )
        table.add_column(sa.Column("min_share", sa.Float(), nullable=False, server_default="0.1"))
        table.add_column(sa.Column("period_s", sa.Float(), nullable=False, server_default="86400"))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as table:
        table.drop_column("period_s")
        table.drop_column("min_share")
        table.drop_column("strategy")
