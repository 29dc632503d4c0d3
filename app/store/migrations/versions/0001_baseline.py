"""The tables as they stood before migrations existed.

A database made by an earlier version (tables created straight from the models, no
``alembic_version``) is adopted: tables it has are kept as they are, with their rows, and only
the missing ones are created. From here on, every schema change is a new migration.

Revision ID: 0001
Revises:
Created: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT keys on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(column: str) -> sa.Column[object]:
    return sa.Column(column, sa.DateTime(timezone=True), nullable=False)


def _text(column: str, length: int) -> sa.Column[object]:
    return sa.Column(column, sa.String(length=length), nullable=False)


def tables() -> dict[str, tuple[list[sa.schema.SchemaItem], list[str]]]:
    """name: (columns and constraints, indexed columns); new objects on every call (a column
    belongs to one table once created)."""
    return {
        "api_keys": (
            [
                _text("id", 32),
                _text("name", 80),
                _text("key_hash", 64),
                _text("scopes", 200),
                _when("created_at"),
                sa.Column("revoked", sa.Boolean(), nullable=False),
                sa.PrimaryKeyConstraint("id"),
            ],
            [],
        ),
        "banners": (
            [
                _text("id", 64),
                _text("request_key", 64),
                sa.Column("position", sa.Integer(), nullable=False),
                _text("shopper_id", 64),
                _text("template", 64),
                sa.Column("template_version", sa.Integer(), nullable=False),
                sa.Column("payload", sa.JSON(), nullable=False),
                _when("created_at"),
                sa.PrimaryKeyConstraint("id"),
            ],
            ["created_at", "request_key", "shopper_id"],
        ),
        "events": (
            [
                sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
                _text("shopper_id", 64),
                _text("product_id", 64),
                _text("type", 16),
                _when("ts"),
                _when("received_at"),
                sa.PrimaryKeyConstraint("id"),
            ],
            ["shopper_id"],
        ),
        "experiments": (
            [
                _text("placement", 64),
                _text("template", 64),
                _text("control", 40),
                _text("variant", 40),
                sa.Column("variant_weight", sa.Float(), nullable=False),
                _text("updated_by", 80),
                _when("updated_at"),
                sa.PrimaryKeyConstraint("placement"),
            ],
            [],
        ),
        "feedback": (
            [
                _text("event_id", 64),
                _text("banner_id", 64),
                _text("kind", 16),
                _text("placement", 64),
                _text("template", 64),
                sa.Column("template_version", sa.Integer(), nullable=False),
                _text("template_label", 40),
                _text("shopper_id", 64),
                _when("at"),
                sa.PrimaryKeyConstraint("event_id"),
            ],
            ["banner_id", "placement"],
        ),
        "products": (
            [
                _text("id", 64),
                sa.Column("seq", sa.Integer(), nullable=False),
                sa.Column("payload", sa.JSON(), nullable=False),
                _when("updated_at"),
                sa.PrimaryKeyConstraint("id"),
            ],
            ["seq"],
        ),
        "shoppers": (
            [
                _text("id", 64),
                sa.Column("payload", sa.JSON(), nullable=False),
                _when("updated_at"),
                sa.PrimaryKeyConstraint("id"),
            ],
            [],
        ),
        "template_audit": (
            [
                sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
                _when("at"),
                _text("actor", 80),
                _text("action", 40),
                _text("template", 64),
                sa.Column("detail", sa.JSON(), nullable=False),
                sa.PrimaryKeyConstraint("id"),
            ],
            ["at", "template"],
        ),
        "template_labels": (
            [
                _text("name", 64),
                _text("label", 40),
                sa.Column("version", sa.Integer(), nullable=False),
                _text("updated_by", 80),
                _when("updated_at"),
                sa.PrimaryKeyConstraint("name", "label"),
            ],
            [],
        ),
        "template_versions": (
            [
                sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
                _text("name", 64),
                sa.Column("version", sa.Integer(), nullable=False),
                sa.Column("source", sa.Text(), nullable=False),
                _text("content_hash", 64),
                _text("author", 80),
                _text("message", 300),
                sa.Column("draft", sa.Boolean(), nullable=False),
                _when("created_at"),
                sa.PrimaryKeyConstraint("id"),
                sa.UniqueConstraint("name", "version"),
            ],
            ["name"],
        ),
    }


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, (columns, indexed) in tables().items():
        if name in existing:
            continue
        op.create_table(name, *columns)
        for column in indexed:
            op.create_index(f"ix_{name}_{column}", name, [column])


def downgrade() -> None:
    for name in reversed(tables()):
        op.drop_table(name)
