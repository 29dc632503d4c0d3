"""The database: SQLite (WAL) by default, PostgreSQL by URL, through the same SQLAlchemy code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def aware(moment: datetime) -> datetime:
    """A datetime read back from the database, in UTC: SQLite hands back naive ones (they
    were stored as UTC); PostgreSQL keeps the zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class BannerRecord(Base):
    """A generated banner, kept so the CMS can fetch it again by id."""

    __tablename__ = "banners"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_key: Mapped[str] = mapped_column(String(64), index=True)
    position: Mapped[int] = mapped_column()
    shopper_id: Mapped[str] = mapped_column(String(64), index=True)
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[int] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ApiKeyRecord(Base):
    """An API key: only its SHA-256 is stored; the key itself is shown once, at creation.
    Rows are never deleted: a revoked or rotated key stays listed, marked revoked."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the key's public prefix
    name: Mapped[str] = mapped_column(String(80))
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Written at most once a minute per key and process (see ApiKeyStore.verify): a hint for
    # finding unused keys, not an audit trail.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProductRecord(Base):
    """A product written through the API, on top of the seed catalog file."""

    __tablename__ = "products"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Order of first arrival: new products are appended to the catalog in this order, so a
    # restart rebuilds the same rows (and the saved index stays valid).
    seq: Mapped[int] = mapped_column(Integer, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Indexed: replicas read the writes made since they last looked.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Withdrawn from sale (DELETE): kept, so its row, vector and interactions keep their
    # meaning, but never offered again until it is written anew.
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ShopperRecord(Base):
    """A shopper profile written through the API (its history lives in ``events``)."""

    __tablename__ = "shoppers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class EventRecord(Base):
    """One shopper event received through the API; append-only."""

    __tablename__ = "events"

    # BigInteger on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    shopper_id: Mapped[str] = mapped_column(String(64), index=True)
    product_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The client's id for the event (or ``<Idempotency-Key>:<index>``, hence longer than an
    # identifier): unique, so a retried batch is stored once. NULL for events sent without
    # one, and for rows from before migration 0004; those are never deduplicated.
    event_id: Mapped[str | None] = mapped_column(String(80), unique=True, index=True)


class TemplateVersionRecord(Base):
    """One saved version of a prompt template. Never updated, never deleted."""

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(80))
    message: Mapped[str] = mapped_column(String(300))
    draft: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TemplateLabelRecord(Base):
    """A label (``production``, ``staging``, an experiment arm) pointing at one version."""

    __tablename__ = "template_labels"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExperimentRecord(Base):
    """A placement's traffic split between two labels of one template."""

    __tablename__ = "experiments"

    placement: Mapped[str] = mapped_column(String(64), primary_key=True)
    template: Mapped[str] = mapped_column(String(64))
    control: Mapped[str] = mapped_column(String(40))
    variant: Mapped[str] = mapped_column(String(40))
    variant_weight: Mapped[float] = mapped_column(Float)
    # "split" (the weight is the marketer's) or "thompson" (set every period_s from clicks,
    # neither arm under min_share); updated_at is when the weight was set.
    strategy: Mapped[str] = mapped_column(String(16), default="split", server_default="split")
    min_share: Mapped[float] = mapped_column(Float, default=0.1, server_default="0.1")
    period_s: Mapped[float] = mapped_column(Float, default=86_400.0, server_default="86400")
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRecord(Base):
    """Who changed which template how, and when: every save, label move and split."""

    __tablename__ = "template_audit"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(40))
    template: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class CampaignRecord(Base):
    """A sale or promotion copy may talk about (app/campaigns.py); ``payload`` is the campaign
    as the marketer stated it. Changes are audited in ``template_audit`` (action
    ``campaign``/``delete_campaign``), one trail for everything marketers change."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class FeedbackRecord(Base):
    """An impression, click or conversion on a served banner; the event id makes it idempotent."""

    __tablename__ = "feedback"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    banner_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    placement: Mapped[str] = mapped_column(String(64), index=True)
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[int] = mapped_column(Integer)
    template_label: Mapped[str] = mapped_column(String(40))
    shopper_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRecord(Base):
    """A pre-generation job: one placement, a selection of shoppers, its progress. Jobs are
    never deleted; a job ends succeeded, failed or cancelled, and a job whose runner stopped
    sending heartbeats is interrupted (another start of the same job resumes it)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    placement: Mapped[str] = mapped_column(String(64), index=True)
    # The selection as asked: "all", "segment:<name>" or "ids" (the ids themselves below).
    shoppers: Mapped[str] = mapped_column(String(120))
    shopper_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    stale_only: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # The placement while the job is queued or running, else NULL: a unique column, so two
    # processes can never both start a job for one placement (NULLs never conflict).
    active_placement: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    # Done when the current run started: its rate counts only what this run made.
    done_before_run: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(120), nullable=True)  # host:pid
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PlacementBannerRecord(Base):
    """The pre-generated banner a placement shows one audience: a shopper, a segment (served
    to shoppers without their own) or ``popular`` (everyone else). One row per (placement,
    audience, subject), replaced by each regeneration."""

    __tablename__ = "placement_banners"

    placement: Mapped[str] = mapped_column(String(64), primary_key=True)
    audience: Mapped[str] = mapped_column(String(16), primary_key=True)  # shopper|segment|popular
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" for popular
    banner_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    # What it was made from (app/pregeneration/freshness.py compares these with now).
    shopper_version: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[int] = mapped_column(Integer)
    template_label: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(120))
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)  # shown product id -> [price, in stock]
    anchor: Mapped[str | None] = mapped_column(String(64), nullable=True)  # named as viewed
    # Why it must be made again (NULL: fresh as far as is known): set by the read path or by
    # an invalidation, cleared by the next generation.
    stale_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    generated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # Human review, where the placement asks for it: "none" (not asked: served as made),
    # "pending", "approved" or "rejected". Only "none" and "approved" are ever served.
    review: Mapped[str] = mapped_column(String(16), default="none", index=True)
    review_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Edit and approve: the model's copy (headline, subheadline, cta) a marketer replaced;
    # the payload holds the edit. NULL: the payload is the model's own.
    model_copy: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


class PlacementSettingsRecord(Base):
    """How a placement is run: whether its pre-generated banners wait for a marketer's
    approval before they are served."""

    __tablename__ = "placement_settings"

    placement: Mapped[str] = mapped_column(String(64), primary_key=True)
    review_required: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpointRecord(Base):
    """A URL that receives the events it subscribed to (Standard Webhooks). Never deleted:
    a disabled endpoint stays listed, with its delivery log."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # whk_<hex>
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)  # the event types it receives
    # The signing secret (whsec_<base64>). Unlike an API key it cannot be a hash: signing each
    # delivery needs the secret itself. Sealed under MARQUEE_WEBHOOK_SECRET_KEYS when set
    # (app/store/sealing.py); never shown again after the answer that made it.
    secret: Mapped[str] = mapped_column(String(400))
    description: Mapped[str] = mapped_column(String(300))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDeliveryRecord(Base):
    """One event for one endpoint: the outbox row written in the transaction that recorded the
    event, then sent (and retried) by a dispatcher. Its id is the ``webhook-id`` header."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # msg_<hex>
    endpoint_id: Mapped[str] = mapped_column(String(32), index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the event's data
    state: Mapped[str] = mapped_column(String(16))  # pending, succeeded or failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a dispatcher may send it (next); a claimed one is pushed a lease ahead. NULL once it
    # succeeded or failed, so the index holds only what is still to send.
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), index=True, nullable=True
    )
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# A PostgreSQL lock held until the transaction ends, named by a string (see Database.writing).
PG_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:lock))")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        # sqlite3's own busy timeout: a writer waits for the lock instead of failing at once.
        self.engine: AsyncEngine = create_async_engine(
            url, connect_args={"timeout": 30} if sqlite else {}
        )
        # SQLite has one writer at a time: writes from this process queue here rather than
        # contend for the file lock (PostgreSQL needs no such thing).
        self.write_lock: asyncio.Lock | contextlib.nullcontext[None] = (
            asyncio.Lock() if sqlite else contextlib.nullcontext()
        )
        if sqlite:

            @event.listens_for(self.engine.sync_engine, "connect")
            def _sqlite_pragmas(connection: Any, _record: Any) -> None:
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
                cursor.execute("PRAGMA busy_timeout=5000")
                cursor.close()

        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def writing(self, *locks: str) -> AsyncIterator[AsyncSession]:
        """A write transaction. Writers naming the same lock run one after the other, across
        processes too: read-modify-writes (the next version number, where a label pointed) must
        not interleave. SQLite: this process's lock (the file admits one writer anyway).
        PostgreSQL: advisory locks held until the transaction ends."""
        async with self.write_lock, self.sessions.begin() as session:
            if self.engine.dialect.name == "postgresql":
                for lock in sorted(set(locks)):  # one order everywhere: no deadlocks
                    await session.execute(PG_LOCK, {"lock": f"marquee:{lock}"})
            yield session

    async def upgrade(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there already)."""
        async with self.write_lock, self.engine.begin() as connection:
            await connection.run_sync(upgrade_schema)

    async def revision(self) -> str | None:
        """The migration the schema is at (None: an empty database)."""
        async with self.engine.connect() as connection:
            return await connection.run_sync(current_revision)

    async def dispose(self) -> None:
        await self.engine.dispose()

    @classmethod
    @contextlib.asynccontextmanager
    async def upgraded(cls, url: str) -> AsyncIterator[Database]:
        """The database at ``url``, brought to the newest migration, for one piece of work
        (the CLI, loader threads); disposed of afterwards."""
        db = cls(url)
        try:
            await db.upgrade()
            yield db
        finally:
            await db.dispose()


# --- migrations (Alembic; the scripts live in app/store/migrations/versions) -------------------

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_schema(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait and find nothing to do.
        connection.execute(PG_LOCK, {"lock": "marquee:migrations"})
    elif connection.dialect.name == "sqlite":
        # sqlite3 opens a transaction only before DML: without this BEGIN every DDL statement
        # commits on its own, and a process killed mid-migration leaves a schema no later
        # start can upgrade (a column added, its revision not recorded: "duplicate column").
        # One transaction, all or nothing; IMMEDIATE: a second process waits, then finds the
        # schema at head.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    command.upgrade(alembic_config(connection), "head")


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()
