"""The schema comes from migrations: they match the models, and they adopt older databases."""

from __future__ import annotations

import asyncio
import importlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.domain import EventType, Interaction
from app.store.db import BannerRecord, Base, Database, alembic_config, head_revision
from app.store.repositories import ApiKeyStore, CatalogChanges, hash_key

BASELINE = importlib.import_module("app.store.migrations.versions.0001_baseline")


def _differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def _inspect(db: Database) -> tuple[list[Any], set[str]]:
    async with db.engine.connect() as connection:
        differences = await connection.run_sync(_differences)
        tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    return differences, tables


def test_migrations_build_exactly_the_models(database_url: str) -> None:
    """Fails when a model changes without a migration (or a migration drifts from the models)."""

    async def scenario() -> None:
        db = Database(database_url)
        assert await db.revision() is None
        await db.upgrade()
        await db.upgrade()  # at head already: nothing to do, nothing fails
        assert await db.revision() == head_revision()
        differences, tables = await _inspect(db)
        assert differences == []
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        await db.dispose()

    asyncio.run(scenario())


def test_a_database_from_before_migrations_is_adopted_with_its_rows(database_url: str) -> None:
    url = database_url
    banner = BannerRecord(
        id="b_old",
        request_key="k",
        position=0,
        shopper_id="u001",
        template="hero_banner",
        template_version=1,
        payload={"headline": "kept"},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )

    async def scenario() -> None:
        old = Database(url)
        # An earlier version made its tables straight from its models (the baseline's layout),
        # and had fewer of them.
        layout = sa.MetaData()
        for name, (columns, indexed) in BASELINE.tables().items():
            if name in ("banners", "api_keys", "products"):
                table = sa.Table(name, layout, *columns)
                for column in indexed:
                    sa.Index(f"ix_{name}_{column}", table.c[column])
        async with old.engine.begin() as connection:
            await connection.run_sync(layout.create_all)
        async with old.sessions() as session, session.begin():
            session.add(banner)
        await old.dispose()

        db = Database(url)
        await db.upgrade()
        assert await db.revision() == head_revision()
        differences, tables = await _inspect(db)
        assert differences == [] and "template_versions" in tables
        async with db.sessions() as session:
            kept = await session.get(BannerRecord, "b_old")
        assert kept is not None and kept.payload == {"headline": "kept"}
        await db.dispose()

    asyncio.run(scenario())


def test_api_keys_from_before_expiry_keep_working_after_0003(database_url: str) -> None:
    """0003 adds expiry and last use to api_keys: keys already there survive, never expire,
    and get their columns back off again on a downgrade."""
    key = "mq_old00001_" + "k" * 32

    async def scenario() -> None:
        db = Database(database_url)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0002"))
            table = sa.Table("api_keys", sa.MetaData(), *BASELINE.tables()["api_keys"][0])
            await connection.execute(
                table.insert().values(
                    id="old00001",
                    name="cms-prod",
                    key_hash=hash_key(key),
                    scopes="cms",
                    created_at=datetime(2026, 1, 1, tzinfo=UTC),
                    revoked=False,
                )
            )
        await db.upgrade()
        assert await db.revision() == head_revision()
        keys = ApiKeyStore(db)
        assert await keys.verify(key) == ("cms-prod", frozenset({"cms"}))
        [kept] = await keys.list()
        assert kept.created_at == datetime(2026, 1, 1, tzinfo=UTC)
        assert kept.expires_at is None and kept.last_used_at is not None

        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "0002"))
            rows = (await connection.execute(sa.text("SELECT id, name FROM api_keys"))).all()
            columns = await connection.run_sync(
                lambda c: {column["name"] for column in sa.inspect(c).get_columns("api_keys")}
            )
        assert [tuple(row) for row in rows] == [("old00001", "cms-prod")]
        assert not {"expires_at", "last_used_at"} & columns
        await db.dispose()

    asyncio.run(scenario())


def test_events_from_before_0004_are_kept_and_live_beside_events_with_ids(
    database_url: str,
) -> None:
    """0004 adds a unique, nullable event_id to events: the rows already there keep their
    place in the histories, many rows without an id do not collide, and a downgrade takes the
    column off again, rows kept."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    old = {"shopper_id": "u001", "type": "view", "ts": at, "received_at": at}
    view = Interaction(product_id="P9", type=EventType.VIEW, ts=at)

    async def scenario() -> None:
        db = Database(database_url)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0003"))
            table = sa.Table("events", sa.MetaData(), *BASELINE.tables()["events"][0])
            # The same event twice: before 0004 nothing told a retry apart, and both stay.
            await connection.execute(
                table.insert(), [dict(old, product_id=p) for p in ("P1", "P2", "P2")]
            )
        await db.upgrade()
        assert await db.revision() == head_revision()
        changes = CatalogChanges(db)
        assert [e.product_id for e in (await changes.load()).events["u001"]] == ["P1", "P2", "P2"]
        assert (await changes.add_events([("u001", view)] * 2, ["e1", None])).positions == [0, 1]
        assert (await changes.add_events([("u001", view)] * 2, ["e1", None])).positions == [1]
        assert len((await changes.load()).events["u001"]) == 6

        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "0003"))
            rows = (
                await connection.execute(sa.text("SELECT product_id FROM events ORDER BY id"))
            ).all()
            columns = await connection.run_sync(
                lambda c: {column["name"] for column in sa.inspect(c).get_columns("events")}
            )
        assert [row[0] for row in rows] == ["P1", "P2", "P2", "P9", "P9", "P9"]
        assert "event_id" not in columns
        await db.dispose()

    asyncio.run(scenario())


def test_the_db_commands_report_and_apply_pending_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from app.cli import cli
    from app.config import get_settings

    monkeypatch.setenv("MARQUEE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MARQUEE_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        pending = runner.invoke(cli, ["db", "status"])
        assert pending.exit_code == 1 and "no migration applied" in pending.output
        applied = runner.invoke(cli, ["db", "upgrade"])
        assert applied.exit_code == 0 and f"revision {head_revision()}" in applied.output
        current = runner.invoke(cli, ["db", "status"])
        assert current.exit_code == 0, current.output
    finally:
        get_settings.cache_clear()
