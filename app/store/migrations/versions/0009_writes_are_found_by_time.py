"""Replicas follow each other's product and profile writes by their time: index it.

Revision ID: 0009
Revises: 0008
Created: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_products_updated_at", "products", ["updated_at"])
    op.create_index("ix_shoppers_updated_at", "shoppers", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_shoppers_updated_at", table_name="shoppers")
    op.drop_index("ix_products_updated_at", table_name="products")
