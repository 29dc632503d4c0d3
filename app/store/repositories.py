"""Reading and writing what the service keeps: banners, API keys, catalog and shopper changes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
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


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, scopes: list[str]) -> str:
        """A new key; the plaintext is returned once and never stored."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"
        async with self.db.writing() as session:
            session.add(
                ApiKeyRecord(
                    id=key_id,
                    name=name,
                    key_hash=hash_key(key),
                    scopes=" ".join(sorted(set(scopes))),
                    created_at=datetime.now(UTC),
                )
            )
        return key

    async def verify(self, key: str) -> tuple[str, frozenset[str]] | None:
        """(name, scopes) for a valid key; None otherwise. Constant-time comparison."""
        if not key.startswith(KEY_PREFIX) or "_" not in key[len(KEY_PREFIX) :]:
            return None
        key_id = key[len(KEY_PREFIX) :].split("_", 1)[0]
        async with self.db.sessions() as session:
            record = await session.get(ApiKeyRecord, key_id)
        expected = record.key_hash if record is not None else hash_key("absent")
        matches = hmac.compare_digest(expected, hash_key(key))
        if record is None or record.revoked or not matches:
            return None
        return record.name, frozenset(record.scopes.split())

    @staticmethod
    async def create_in(database_url: str, name: str, scopes: list[str]) -> str:
        """Create a key in the database at ``database_url`` (tables made if missing)."""
        async with Database.upgraded(database_url) as db:
            return await ApiKeyStore(db).create(name, scopes)

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

    async def add_events(self, events: Sequence[tuple[str, Interaction]]) -> None:
        now = datetime.now(UTC)
        async with self.db.writing() as session:
            session.add_all(
                EventRecord(
                    shopper_id=shopper_id,
                    product_id=e.product_id,
                    type=e.type.value,
                    ts=e.ts,
                    received_at=now,
                )
                for shopper_id, e in events
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
