"""Alembic's entry: migrations run on the connection `app.store.db.Database` hands over."""

from __future__ import annotations

from alembic import context

from app.store.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
