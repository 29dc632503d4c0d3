"""Reading and writing what the service keeps: banners and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from app.domain import Banner
from app.store.db import ApiKeyRecord, BannerRecord, Database

SCOPES = ("cms", "marketer", "admin")
KEY_PREFIX = "mq_"


class BannerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, request_key: str, banners: list[Banner]) -> None:
        """Store one request's banners, replacing any earlier answer to the same request."""
        async with self.db.write_lock, self.db.sessions.begin() as session:
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
        if not records or any(_aware(r.created_at) < since for r in records):
            return None
        return [Banner.model_validate(r.payload) for r in records]


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes: they were stored as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
        async with self.db.write_lock, self.db.sessions.begin() as session:
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
        db = Database(database_url)
        try:
            await db.create_all()
            return await ApiKeyStore(db).create(name, scopes)
        finally:
            await db.dispose()

    async def count(self) -> int:
        async with self.db.sessions() as session:
            return len((await session.scalars(select(ApiKeyRecord.id))).all())
