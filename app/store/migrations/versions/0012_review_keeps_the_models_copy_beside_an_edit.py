"""Edit and approve: a stored banner keeps the model's copy beside the marketer's edit.

Revision ID: 0012
Revises: 0011
Created: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("placement_banners") as table:
        table.add_column(sa.Column("model_copy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("placement_banners") as table:
        table.drop_column("model_copy")
