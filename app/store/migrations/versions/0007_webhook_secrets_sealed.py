"""Webhook secrets may be stored sealed (Fernet: about twice the plain secret's length).

Revision ID: 0007
Revises: 0006
Created: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as table:
        table.alter_column(
            "secret", existing_type=sa.String(length=120), type_=sa.String(length=400)
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as table:
        table.alter_column(
            "secret", existing_type=sa.String(length=400), type_=sa.String(length=120)
        )
