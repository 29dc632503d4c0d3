"""Webhooks' tables: the endpoints (URL, event types, signing secret) and the outbox of
deliveries a dispatcher sends.

An event is recorded as one delivery row per active endpoint subscribed to its type, in one
transaction (``enqueue``): either every endpoint will hear of it or none. Dispatchers claim due
deliveries (``due``) by pushing them a lease ahead in the claiming transaction, so two
processes never send the same delivery at once; one that dies mid-send leaves its claim to
expire, and the delivery is sent again (at least once: receivers deduplicate by its id).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update

from app.store.db import Database, WebhookDeliveryRecord, WebhookEndpointRecord, aware
from app.store.sealing import Sealer, SecretUnavailable, is_sealed

DeliveryState = Literal["pending", "succeeded", "failed"]
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # a generated secret; Standard Webhooks asks for 24 to 64
MAX_ERROR = 500


def _now() -> datetime:
    return datetime.now(UTC)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    events: tuple[str, ...]
    description: str
    created_by: str
    created_at: datetime
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


@dataclass(frozen=True)
class NewEndpoint(Endpoint):
    """An endpoint as ``create`` returns it: with its signing secret, shown to a client once
    (what is stored may be sealed, app/store/sealing.py)."""

    secret: str = field(repr=False)


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id header
    endpoint_id: str
    event_type: str
    payload: dict[str, Any]
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery with where it goes and what signs it."""

    delivery: Delivery
    url: str
    stored_secret: str = field(repr=False)
    sealer: Sealer = field(repr=False)

    @property
    def secret(self) -> str:
        """The signing secret; SecretUnavailable when no configured key opens it (opened at
        sending, so that one endpoint's failure is its deliveries' alone)."""
        return self.sealer.open(self.stored_secret)


def _endpoint(record: WebhookEndpointRecord) -> Endpoint:
    return Endpoint(
        id=record.id,
        url=record.url,
        events=tuple(record.events),
        description=record.description,
        created_by=record.created_by,
        created_at=aware(record.created_at),
        disabled_at=aware(record.disabled_at) if record.disabled_at else None,
    )


def _delivery(record: WebhookDeliveryRecord) -> Delivery:
    state: DeliveryState = record.state  # type: ignore[assignment]
    return Delivery(
        id=record.id,
        endpoint_id=record.endpoint_id,
        event_type=record.event_type,
        payload=record.payload,
        state=state,
        attempts=record.attempts,
        next_attempt_at=aware(record.next_attempt_at) if record.next_attempt_at else None,
        last_status=record.last_status,
        last_error=record.last_error,
        created_at=aware(record.created_at),
        delivered_at=aware(record.delivered_at) if record.delivered_at else None,
    )


def _new_delivery(
    endpoint_id: str, event_type: str, data: dict[str, Any], now: datetime
) -> WebhookDeliveryRecord:
    return WebhookDeliveryRecord(
        id="msg_" + secrets.token_hex(12),
        endpoint_id=endpoint_id,
        event_type=event_type,
        payload=data,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


class WebhookStore:
    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self.db = db
        self.sealer = sealer or Sealer()

    # --- endpoints -------------------------------------------------------------------------------

    async def create(
        self,
        url: str,
        events: Sequence[str],
        *,
        created_by: str,
        secret: str | None = None,
        description: str = "",
    ) -> NewEndpoint:
        """A new endpoint, with ``secret`` (whsec_<base64>) or a generated one."""
        secret = secret or new_secret()
        record = WebhookEndpointRecord(
            id="whk_" + secrets.token_hex(8),
            url=url,
            events=list(dict.fromkeys(events)),
            secret=self.sealer.seal(secret),
            description=description,
            created_by=created_by,
            created_at=_now(),
            disabled_at=None,
        )
        async with self.db.writing() as session:
            session.add(record)
        return NewEndpoint(**vars(_endpoint(record)), secret=secret)

    async def seal_secrets(self) -> tuple[int, int]:
        """Every endpoint's secret sealed under the sealer's first key, in one transaction:
        (how many, how many of them were plain). SecretUnavailable when a stored secret opens
        with none of the keys: nothing is written then."""
        if not self.sealer.sealing:
            raise SecretUnavailable("no key to seal with: set MARQUEE_WEBHOOK_SECRET_KEYS")
        async with self.db.writing() as session:
            records = (await session.scalars(select(WebhookEndpointRecord))).all()
            plain = sum(not is_sealed(record.secret) for record in records)
            for record in records:
                record.secret = self.sealer.reseal(record.secret)
        return len(records), plain

    async def get(self, endpoint_id: str) -> Endpoint | None:
        async with self.db.sessions() as session:
            record = await session.get(WebhookEndpointRecord, endpoint_id)
        return None if record is None else _endpoint(record)

    async def disable(self, endpoint_id: str) -> Endpoint | None:
        """Stop sending to an endpoint (again: harmless): nothing new is queued for it, and
        what was still pending fails, so the log says so. Rows are kept. None: no such one."""
        now = _now()
        async with self.db.writing(f"webhook:{endpoint_id}") as session:
            record = await session.get(WebhookEndpointRecord, endpoint_id)
            if record is None:
                return None
            if record.disabled_at is None:
                record.disabled_at = now
                await session.execute(
                    update(WebhookDeliveryRecord)
                    .where(
                        WebhookDeliveryRecord.endpoint_id == endpoint_id,
                        WebhookDeliveryRecord.state == "pending",
                    )
                    .values(state="failed", next_attempt_at=None, last_error="endpoint disabled")
                )
            return _endpoint(record)

    # --- the outbox ------------------------------------------------------------------------------

    async def enqueue(self, event_type: str, data: dict[str, Any]) -> int:
        """One pending delivery per active endpoint subscribed to ``event_type``, all in one
        transaction. Returns how many."""
        now = _now()
        async with self.db.writing() as session:
            endpoints = await session.scalars(
                select(WebhookEndpointRecord).where(WebhookEndpointRecord.disabled_at.is_(None))
            )
            # Few endpoints, JSON lists: filtered here, the same way on both databases.
            subscribed = [e.id for e in endpoints if event_type in e.events]
            session.add_all(_new_delivery(eid, event_type, data, now) for eid in subscribed)
        return len(subscribed)

    async def enqueue_for(
        self, endpoint_id: str, event_type: str, data: dict[str, Any]
    ) -> Delivery:
        """One delivery to one endpoint, whatever it subscribed to (a test ping). Raises
        LookupError for an unknown or disabled endpoint."""
        now = _now()
        async with self.db.writing(f"webhook:{endpoint_id}") as session:
            endpoint = await session.get(WebhookEndpointRecord, endpoint_id)
            if endpoint is None or endpoint.disabled_at is not None:
                raise LookupError(f"no active webhook endpoint '{endpoint_id}'")
            record = _new_delivery(endpoint_id, event_type, data, now)
            session.add(record)
        return _delivery(record)

    async def due(self, now: datetime, limit: int, lease: timedelta) -> list[Outgoing]:
        """Claim up to ``limit`` deliveries due at ``now``, oldest due first: each is pushed
        ``lease`` ahead, so no other dispatcher takes it while this one sends it (and it is sent
        again if this one never reports back). PostgreSQL: rows another transaction is claiming
        are skipped (FOR UPDATE SKIP LOCKED). SQLite: one writer at a time; the claim re-checks
        that each row is still due, so a second process never takes a claimed one."""
        async with self.db.writing() as session:
            query = (
                select(WebhookDeliveryRecord.id)
                .where(
                    WebhookDeliveryRecord.state == "pending",
                    WebhookDeliveryRecord.next_attempt_at <= now,
                )
                .order_by(WebhookDeliveryRecord.next_attempt_at)
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(await session.scalars(query))
            if not ids:
                return []
            claimed = list(
                await session.scalars(
                    update(WebhookDeliveryRecord)
                    .where(
                        WebhookDeliveryRecord.id.in_(ids),
                        WebhookDeliveryRecord.state == "pending",
                        WebhookDeliveryRecord.next_attempt_at <= now,
                    )
                    .values(next_attempt_at=now + lease)
                    .returning(WebhookDeliveryRecord.id)
                    .execution_options(synchronize_session=False)
                )
            )
            if not claimed:
                return []
            rows = await session.execute(
                select(
                    WebhookDeliveryRecord, WebhookEndpointRecord.url, WebhookEndpointRecord.secret
                )
                .join(
                    WebhookEndpointRecord,
                    WebhookEndpointRecord.id == WebhookDeliveryRecord.endpoint_id,
                )
                .where(WebhookDeliveryRecord.id.in_(claimed))
                .order_by(WebhookDeliveryRecord.created_at)
            )
            return [
                Outgoing(_delivery(record), url, secret, self.sealer)
                for record, url, secret in rows
            ]

    async def succeeded(self, delivery_id: str, attempts: int, status: int) -> None:
        now = _now()
        await self._settle(
            delivery_id,
            state="succeeded",
            attempts=attempts,
            next_attempt_at=None,
            last_status=status,
            last_error=None,
            delivered_at=now,
        )

    async def retry_later(
        self,
        delivery_id: str,
        attempts: int,
        at: datetime,
        status: int | None,
        error: str,
    ) -> None:
        await self._settle(
            delivery_id,
            state="pending",
            attempts=attempts,
            next_attempt_at=at,
            last_status=status,
            last_error=error[:MAX_ERROR],
        )

    async def failed(self, delivery_id: str, attempts: int, status: int | None, error: str) -> None:
        """No more attempts: the last one's answer stays in the log."""
        await self._settle(
            delivery_id,
            state="failed",
            attempts=attempts,
            next_attempt_at=None,
            last_status=status,
            last_error=error[:MAX_ERROR],
        )

    async def _settle(self, delivery_id: str, **values: Any) -> None:
        async with self.db.writing() as session:
            # Only while pending: an endpoint disabled meanwhile has failed it for good.
            await session.execute(
                update(WebhookDeliveryRecord)
                .where(
                    WebhookDeliveryRecord.id == delivery_id,
                    WebhookDeliveryRecord.state == "pending",
                )
                .values(**values)
            )

    async def deliveries(self, endpoint_id: str, limit: int = 50) -> list[Delivery]:
        """An endpoint's delivery log, newest first."""
        async with self.db.sessions() as session:
            records = await session.scalars(
                select(WebhookDeliveryRecord)
                .where(WebhookDeliveryRecord.endpoint_id == endpoint_id)
                .order_by(WebhookDeliveryRecord.created_at.desc(), WebhookDeliveryRecord.id)
                .limit(limit)
            )
            return [_delivery(r) for r in records]

    async def delivery(self, delivery_id: str) -> Delivery | None:
        async with self.db.sessions() as session:
            record = await session.get(WebhookDeliveryRecord, delivery_id)
        return None if record is None else _delivery(record)

    async def list(self) -> list[Endpoint]:
        """Every endpoint, disabled ones too, oldest first. (Last in the class: its name
        would shadow the builtin in the annotations below it.)"""
        async with self.db.sessions() as session:
            records = await session.scalars(
                select(WebhookEndpointRecord).order_by(
                    WebhookEndpointRecord.created_at, WebhookEndpointRecord.id
                )
            )
            return [_endpoint(r) for r in records]
