"""Events carry an optional id, unique, so a retried batch is recorded once (POST /v1/events).

The column is nullable: events already stored, and events sent without an id, have none and
are never deduplicated. A unique index (not a table constraint) enforces it: SQLite creates
one without copying the table, and many NULLs never conflict on either database.

Revision ID: 0004
Revises: 0003
Created: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("event_id", sa.String(length=80), nullable=True))
        batch_op.create_index("ix_events_event_id", ["event_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_index("ix_events_event_id")
        batch_op.drop_column("event_id")
