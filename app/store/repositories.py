"""Reading and writing what the service keeps: banners, API keys, catalog and shopper changes."""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.domain import Banner, Interaction, Product, Shopper
from app.store.db import (
    ApiKeyRecord,
    BannerRecord,
    Database,
    EventRecord,
    ProductRecord,
    ShopperRecord,
    aware,
)

SCOPES = ("cms", "marketer", "admin")
KEY_PREFIX = "mq_"

log = logging.getLogger(__name__)


class BannerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, request_key: str, banners: list[Banner]) -> None:
        """Store one request's banners, replacing any earlier answer to the same request."""
        async with self.db.writing(f"banners:{request_key}") as session:
            ids = [b.id for b in banners]
            await session.execute(delete(BannerRecord).where(BannerRecord.id.in_(ids)))
            session.add_all(
                BannerRecord(
                    id=b.id,
                    request_key=request_key,
                    position=i,
                    shopper_id=b.shopper_id,
                    template=b.template,
                    template_version=b.template_version,
                    payload=b.model_dump(mode="json"),
                    created_at=b.created_at,
                )
                for i, b in enumerate(banners)
            )

    async def get(self, banner_id: str) -> Banner | None:
        async with self.db.sessions() as session:
            record = await session.get(BannerRecord, banner_id)
        return None if record is None else Banner.model_validate(record.payload)

    async def fresh(self, request_key: str, ttl_s: float) -> list[Banner] | None:
        """The stored answer to this exact request, if younger than ``ttl_s``."""
        since = datetime.now(UTC) - timedelta(seconds=ttl_s)
        async with self.db.sessions() as session:
            records = (
                await session.scalars(
                    select(BannerRecord)
                    .where(BannerRecord.request_key == request_key)
                    .order_by(BannerRecord.position)
                )
            ).all()
        if not records or any(aware(r.created_at) < since for r in records):
            return None
        return [Banner.model_validate(r.payload) for r in records]

    async def latest_for(self, shopper_id: str, limit: int = 5) -> list[Banner]:
        """The shopper's latest model-written banners (no fallbacks), newest first."""
        async with self.db.sessions() as session:
            payloads = (
                await session.scalars(
                    select(BannerRecord.payload)
                    .where(BannerRecord.shopper_id == shopper_id)
                    .order_by(BannerRecord.created_at.desc())
                    .limit(4 * limit)  # room for the fallbacks skipped
                )
            ).all()
        banners = (Banner.model_validate(payload) for payload in payloads)
        return [banner for banner in banners if not banner.fallback][:limit]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# mq_<id>_<secret>: the id is the row's primary key (no "_": the first one ends it); a key
# given from outside (adopt) must carry at least as much secret as the ones made here.
KEY_SHAPE = re.compile(rf"{KEY_PREFIX}(?P<id>[A-Za-z0-9]{{1,32}})_(?P<secret>[A-Za-z0-9_-]{{32,}})")
# A busy key would otherwise cost a database write per request; a minute is precise enough
# for "when was this key last used".
LAST_USED_EVERY = timedelta(minutes=1)
VERIFIED_FOR_S = 5.0  # how long a verified key is trusted without reading it again
MAX_VERIFIED = 10_000
_monotonic = time.monotonic  # the trust window's clock (tests move it)

T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about a key: never its hash, never the key."""

    id: str
    name: str
    scopes: tuple[str, ...]  # sorted
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or _utc_now()):
            return "expired"
        return "active"


def _info(record: ApiKeyRecord) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=record.id,
        name=record.name,
        scopes=tuple(record.scopes.split()),
        created_at=aware(record.created_at),
        expires_at=None if record.expires_at is None else aware(record.expires_at),
        last_used_at=None if record.last_used_at is None else aware(record.last_used_at),
        revoked=record.revoked,
    )


class LastAdminKey(Exception):
    """Revoking this key would leave no active admin key."""


def key_id_of(key: str) -> str | None:
    """The id part of ``mq_<id>_<secret>`` (public: it names the key in lists and logs)."""
    if not key.startswith(KEY_PREFIX) or "_" not in key[len(KEY_PREFIX) :]:
        return None
    return key[len(KEY_PREFIX) :].split("_", 1)[0]


def _scopes(scopes: Sequence[str]) -> str:
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
    return " ".join(sorted(set(scopes)))


class ApiKeyStore:
    """Keys are made (create, rotate) or taken in (adopt), listed, revoked; never deleted.

    ``clock`` is the time everything here runs on (creation, expiry, last use); tests move it.
    """

    def __init__(self, db: Database, clock: Callable[[], datetime] = _utc_now) -> None:
        self.db = db
        self.clock = clock
        # key id -> when this process last wrote its last_used_at (see verify).
        self._last_written: dict[str, datetime] = {}
        # hash of a key -> (until when, its info): see authenticate.
        self._verified: dict[str, tuple[float, ApiKeyInfo]] = {}

    def _new_record(
        self, name: str, scopes: str, expires_at: datetime | None
    ) -> tuple[ApiKeyRecord, str]:
        now = self.clock()
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise ValueError("expires_at must be timezone-aware")
            if expires_at <= now:
                raise ValueError("expires_at must be in the future")
            # SQLite keeps no zone: store UTC, which is what `aware` assumes on reading back.
            expires_at = expires_at.astimezone(UTC)
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        record = ApiKeyRecord(
            id=key_id,
            name=name,
            key_hash=hash_key(key),
            scopes=scopes,
            created_at=now,
            revoked=False,
            expires_at=expires_at,
        )
        return record, key

    async def create(
        self, name: str, scopes: Sequence[str], *, expires_at: datetime | None = None
    ) -> str:
        """A new key; the plaintext is returned once and never stored."""
        record, key = self._new_record(name, _scopes(scopes), expires_at)
        async with self.db.writing() as session:
            session.add(record)
        return key

    async def adopt(self, name: str, scopes: Sequence[str], key: str) -> None:
        """Store a key made elsewhere (a bootstrap admin key from the environment) by its hash.

        Adopting a key already stored does nothing, whatever ``name`` and ``scopes`` say now:
        a service starting again with the same key keeps it as it is, revoked ones included.
        """
        shape = KEY_SHAPE.fullmatch(key)
        if shape is None:
            raise ValueError(
                f"an API key must look like {KEY_PREFIX}<id>_<secret>: an id of letters and "
                "digits (at most 32), then at least 32 characters of secret (A-Z a-z 0-9 _ -)"
            )
        stored_scopes, key_id = _scopes(scopes), shape["id"]
        async with self.db.writing(f"api_key:{key_id}") as session:
            record = await session.get(ApiKeyRecord, key_id)
            if record is not None:
                if not hmac.compare_digest(record.key_hash, hash_key(key)):
                    raise ValueError(f"another API key already has the id '{key_id}'")
                return
            session.add(
                ApiKeyRecord(
                    id=key_id,
                    name=name,
                    key_hash=hash_key(key),
                    scopes=stored_scopes,
                    created_at=self.clock(),
                    revoked=False,
                )
            )

    async def list(self) -> builtins.list[ApiKeyInfo]:  # (in here, `list` is this method)
        """Every key, oldest first, revoked and expired ones included."""
        async with self.db.sessions() as session:
            records = await session.scalars(
                select(ApiKeyRecord).order_by(ApiKeyRecord.created_at, ApiKeyRecord.id)
            )
            return [_info(r) for r in records]

    async def get(self, key_id: str) -> ApiKeyInfo | None:
        """The key with this id, whatever its status."""
        async with self.db.sessions() as session:
            record = await session.get(ApiKeyRecord, key_id)
        return None if record is None else _info(record)

    async def active(self, key_id: str) -> ApiKeyInfo | None:
        """The key with this id if it still works (not revoked, not expired). The studio's
        session holds a key id, not the key: each page asks here, so a revoke bites at once."""
        found = await self.get(key_id)
        return found if found is not None and found.status(self.clock()) == "active" else None

    async def revoke(self, key_id: str, *, keep_an_admin: bool = False) -> bool:
        """Revoke a key for good. False when no key has that id; revoking twice is fine.

        ``keep_an_admin``: refuse (LastAdminKey) to revoke the last active admin key, so the
        API can never lock every admin out. The check and the revoke share one lock: two admins
        revoking each other at once cannot both succeed.
        """
        locks = [f"api_key:{key_id}", *(["api_keys:admins"] if keep_an_admin else [])]
        async with self.db.writing(*locks) as session:
            record = await session.get(ApiKeyRecord, key_id)
            if record is None:
                return False
            last_admin = (
                keep_an_admin
                and "admin" in record.scopes.split()
                and _info(record).status(self.clock()) == "active"
                and await self._active_admins(session) <= 1
            )
            if last_admin:
                raise LastAdminKey(f"'{record.name}' ({key_id}) is the last active admin key")
            record.revoked = True
        self._verified.clear()  # committed: no request here trusts it any more
        return True

    async def _active_admins(self, session: AsyncSession) -> int:
        now = self.clock()
        records = await session.scalars(select(ApiKeyRecord).where(ApiKeyRecord.revoked.is_(False)))
        return sum(
            1
            for r in records
            if "admin" in r.scopes.split() and (r.expires_at is None or aware(r.expires_at) > now)
        )

    async def rotate(self, key_id: str, *, expires_at: datetime | None = None) -> str:
        """A new key with the old one's name and scopes; the old one is revoked in the same
        transaction, so there is never a moment with neither or (after a failure) both."""
        async with self.db.writing(f"api_key:{key_id}") as session:
            old = await session.get(ApiKeyRecord, key_id)
            if old is None or old.revoked:
                raise LookupError(f"no active API key with id '{key_id}'")
            record, key = self._new_record(old.name, old.scopes, expires_at)
            old.revoked = True
            session.add(record)
        self._verified.clear()
        return key

    async def verify(self, key: str) -> tuple[str, frozenset[str]] | None:
        """(name, scopes) for a valid key; None otherwise (unknown, wrong secret, revoked,
        expired). Constant-time comparison."""
        found = await self.authenticate(key)
        return None if found is None else (found.name, frozenset(found.scopes))

    async def authenticate(self, key: str) -> ApiKeyInfo | None:
        """What ``verify`` checks, answered with the key's info (its id, for a session)."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        digest = hash_key(key)
        now = self.clock()
        # A key verified in the last VERIFIED_FOR_S is not read again: reads in the hundreds a
        # second need no database round trip each for the same few keys. A revocation made
        # here takes effect at once (it clears this); made by another process, within
        # VERIFIED_FOR_S. Expiry is checked on every use.
        cached = self._verified.get(digest)
        if cached is not None and cached[0] > _monotonic():
            info = cached[1]
        else:
            async with self.db.sessions() as session:
                record = await session.get(ApiKeyRecord, key_id)
            expected = record.key_hash if record is not None else hash_key("absent")
            matches = hmac.compare_digest(expected, digest)
            if record is None or record.revoked or not matches:
                self._verified.pop(digest, None)
                return None
            info = _info(record)
            if len(self._verified) >= MAX_VERIFIED:  # many keys: start over, never grow
                self._verified.clear()
            self._verified[digest] = (_monotonic() + VERIFIED_FOR_S, info)
        if info.expires_at is not None and info.expires_at <= now:
            return None
        await self._note_use(key_id, now)
        return info

    async def _note_use(self, key_id: str, now: datetime) -> None:
        last = self._last_written.get(key_id)
        if last is not None and now - last < LAST_USED_EVERY:
            return
        # Noted before writing: concurrent requests with this key do not all write, and a
        # failing database is tried again in a minute, not on every request.
        self._last_written[key_id] = now
        try:
            async with self.db.writing() as session:
                await session.execute(
                    update(ApiKeyRecord).where(ApiKeyRecord.id == key_id).values(last_used_at=now)
                )
        except Exception:  # bookkeeping only: the key is valid whatever happens here
            log.warning("could not record the use of API key %s", key_id, exc_info=True)

    @staticmethod
    async def using(database_url: str, work: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
        """Run ``work`` on the keys in the database at ``database_url`` (brought to the newest
        migration first): one piece of work from the CLI."""
        async with Database.upgraded(database_url) as db:
            return await work(ApiKeyStore(db))

    @staticmethod
    async def create_in(database_url: str, name: str, scopes: Sequence[str]) -> str:
        """Create a key in the database at ``database_url`` (tables made if missing)."""
        return await ApiKeyStore.using(database_url, lambda keys: keys.create(name, scopes))

    async def count(self) -> int:
        async with self.db.sessions() as session:
            return len((await session.scalars(select(ApiKeyRecord.id))).all())


@dataclass
class StoredChanges:
    """Everything written through the API, to lay over the seed files at start-up."""

    products: list[Product] = field(default_factory=list)  # in order of first arrival
    withdrawn: list[str] = field(default_factory=list)  # products no longer on sale
    profiles: list[Shopper] = field(default_factory=list)  # without history
    events: dict[str, list[Interaction]] = field(default_factory=dict)  # by shopper, in order
    last_event_row: int = 0  # the highest event row among them: where following starts


@dataclass(frozen=True)
class StoredEvent:
    row: int  # the database's id for it: increasing in order of arrival
    shopper_id: str
    event: Interaction


@dataclass
class WrittenSince:
    """What was written since a moment (products, profiles) and past a row (events): what a
    replica reads to follow the writes other replicas took."""

    products: list[Product] = field(default_factory=list)  # withdrawn or not, by first arrival
    withdrawn: list[str] = field(default_factory=list)  # which of them are off sale
    profiles: list[Shopper] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)  # by row


@dataclass(frozen=True)
class AddedEvents:
    positions: list[int]  # in the batch given, of the events stored now
    rows: list[int]  # their database ids


class CatalogChanges:
    """Products, shopper profiles and events written through the API.

    The seed files stay read-only; the database holds the changes on top of them, so a restart
    (or another replica) rebuilds the same catalog and histories.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert_products(self, products: Sequence[Product]) -> None:
        now = datetime.now(UTC)
        async with self.db.writing("catalog") as session:
            for product, record in await _product_records(session, products):
                record.payload = product.model_dump(mode="json")
                record.updated_at = now
                record.withdrawn_at = None  # written anew: on sale again

    async def withdraw_products(self, products: Sequence[Product]) -> None:
        """Mark products as no longer on sale. One known only from the seed file gets a row of
        its own to carry the mark."""
        now = datetime.now(UTC)
        async with self.db.writing("catalog") as session:
            for _, record in await _product_records(session, products):
                record.updated_at = now
                record.withdrawn_at = now

    async def put_profile(self, profile: Shopper) -> None:
        payload = profile.model_dump(mode="json", exclude={"history"})
        now = datetime.now(UTC)
        async with self.db.writing(f"shopper:{profile.id}") as session:
            record = await session.get(ShopperRecord, profile.id)
            if record is None:
                session.add(ShopperRecord(id=profile.id, payload=payload, updated_at=now))
            else:
                record.payload = payload
                record.updated_at = now

    async def add_events(
        self,
        events: Sequence[tuple[str, Interaction]],
        event_ids: Sequence[str | None] | None = None,
    ) -> AddedEvents:
        """Store events, skipping those whose id is stored already; returns the positions (in
        ``events``) of those stored now, and their rows. An event without an id is always
        stored.

        One statement, ``INSERT .. ON CONFLICT (event_id) DO NOTHING .. RETURNING``: the unique
        index decides, not an earlier SELECT, so two identical batches racing (two requests,
        two replicas) store each event once, and each request learns which ones were its own.
        """
        ids = list(event_ids) if event_ids is not None else [None] * len(events)
        if len(ids) != len(events):
            raise ValueError("one event id (or None) per event")
        if not events:
            return AddedEvents([], [])
        now = datetime.now(UTC)
        rows = [
            {
                "event_id": event_id,
                "shopper_id": shopper_id,
                "product_id": e.product_id,
                "type": e.type.value,
                "ts": e.ts,
                "received_at": now,
            }
            for (shopper_id, e), event_id in zip(events, ids, strict=True)
        ]
        dialect = sqlite if self.db.engine.dialect.name == "sqlite" else postgresql
        table = EventRecord.__table__
        statement = (
            dialect.insert(table)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(table.c.id, table.c.event_id)
        )
        async with self.db.writing() as session:
            # A list of rows: executed in pages of VALUES (SQLAlchemy's "insertmanyvalues"),
            # within the drivers' parameter limits, RETURNING gathered over all pages.
            returned = (await session.execute(statement, rows)).all()
        stored = {event_id for _, event_id in returned}
        new = []
        for position, event_id in enumerate(ids):
            if event_id is None:
                new.append(position)
            elif event_id in stored:  # the first of an id repeated in one batch is the one stored
                stored.discard(event_id)
                new.append(position)
        return AddedEvents(new, sorted(row for row, _ in returned))

    async def written_since(
        self, moment: datetime | None, after_row: int, rows: Sequence[int] = (), limit: int = 10_000
    ) -> WrittenSince:
        """Products and profiles written after ``moment`` (None: all), and up to ``limit``
        events past ``after_row`` or among ``rows`` (ones a replica is still waiting for)."""
        wanted = EventRecord.id > after_row
        if rows:
            wanted = wanted | EventRecord.id.in_(list(rows))
        events = select(EventRecord).where(wanted)
        products = select(ProductRecord).order_by(ProductRecord.seq)
        profiles = select(ShopperRecord).order_by(ShopperRecord.id)
        if moment is not None:
            products = products.where(ProductRecord.updated_at > moment)
            profiles = profiles.where(ShopperRecord.updated_at > moment)
        async with self.db.sessions() as session:
            product_rows = (await session.scalars(products)).all()
            profile_rows = (await session.scalars(profiles)).all()
            event_rows = (await session.scalars(events.order_by(EventRecord.id).limit(limit))).all()
        return WrittenSince(
            products=[Product.model_validate(r.payload) for r in product_rows],
            withdrawn=[r.id for r in product_rows if r.withdrawn_at is not None],
            profiles=[Shopper.model_validate(r.payload) for r in profile_rows],
            events=[
                StoredEvent(
                    r.id,
                    r.shopper_id,
                    Interaction(product_id=r.product_id, type=r.type, ts=aware(r.ts)),
                )
                for r in event_rows
            ],
        )

    async def load(self) -> StoredChanges:
        async with self.db.sessions() as session:
            products = (
                await session.scalars(select(ProductRecord).order_by(ProductRecord.seq))
            ).all()
            profiles = (
                await session.scalars(select(ShopperRecord).order_by(ShopperRecord.id))
            ).all()
            events = (await session.scalars(select(EventRecord).order_by(EventRecord.id))).all()
        by_shopper: dict[str, list[Interaction]] = defaultdict(list)
        for record in events:
            by_shopper[record.shopper_id].append(
                Interaction(product_id=record.product_id, type=record.type, ts=aware(record.ts))
            )
        return StoredChanges(
            products=[Product.model_validate(r.payload) for r in products],
            withdrawn=[r.id for r in products if r.withdrawn_at is not None],
            profiles=[Shopper.model_validate(r.payload) for r in profiles],
            events=dict(by_shopper),
            last_event_row=events[-1].id if events else 0,
        )

    @staticmethod
    async def load_from(database_url: str) -> StoredChanges:
        """The changes in the database at ``database_url`` (tables made if missing)."""
        async with Database.upgraded(database_url) as db:
            return await CatalogChanges(db).load()


async def _product_records(
    session: AsyncSession, products: Sequence[Product]
) -> list[tuple[Product, ProductRecord]]:
    """Each product with its stored row; a product not stored yet gets a new row (holding its
    payload), numbered after the others in order of first arrival. Call it inside a write
    transaction holding the catalog lock."""
    existing = {
        record.id: record
        for record in await session.scalars(
            select(ProductRecord).where(ProductRecord.id.in_([p.id for p in products]))
        )
    }
    last = (await session.scalar(select(func.max(ProductRecord.seq)))) or 0
    paired = []
    for product in products:
        record = existing.get(product.id)
        if record is None:
            last += 1
            record = ProductRecord(id=product.id, seq=last, payload=product.model_dump(mode="json"))
            session.add(record)
        paired.append((product, record))
    return paired
