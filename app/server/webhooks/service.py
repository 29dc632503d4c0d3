"""The webhooks slice's service: endpoints registered, listed and disabled over HTTP, their
delivery logs, and a test ping.

It needs only the database, so it exists from start-up. An endpoint's signing secret leaves
here once, in the answer that registered it. Sending is the dispatcher's (app/webhooks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx

from app.egress import literal_problem
from app.server.errors import Problem, invalid
from app.server.webhooks.schemas import WebhookCreate
from app.store.webhooks import Delivery, Endpoint, WebhookStore
from app.webhooks import TEST_EVENT


@dataclass(frozen=True)
class WebhookView:
    """An endpoint as the API shows it: never its secret."""

    id: str
    url: str
    events: list[str]
    description: str
    created_by: str
    created_at: datetime
    disabled_at: datetime | None
    status: str  # active or disabled

    @classmethod
    def of(cls, endpoint: Endpoint) -> WebhookView:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=list(endpoint.events),
            description=endpoint.description,
            created_by=endpoint.created_by,
            created_at=endpoint.created_at,
            disabled_at=endpoint.disabled_at,
            status="active" if endpoint.active else "disabled",
        )


@dataclass(frozen=True)
class NewWebhook(WebhookView):
    secret: str  # shown this once: verify each delivery's webhook-signature with it


@dataclass(frozen=True)
class DeliveryView:
    """One event sent (or to be sent) to one endpoint; ``id`` is its webhook-id header."""

    id: str
    type: str
    state: str  # pending, succeeded or failed
    attempts: int
    last_status: int | None  # the HTTP status of the last attempt (none: no answer)
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None  # while pending
    delivered_at: datetime | None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        return cls(
            id=delivery.id,
            type=delivery.event_type,
            state=delivery.state,
            attempts=delivery.attempts,
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            next_attempt_at=delivery.next_attempt_at,
            delivered_at=delivery.delivered_at,
        )


def _not_found(webhook_id: str) -> Problem:
    return Problem("not-found", f"no webhook endpoint '{webhook_id}'")


class WebhookService:
    """``notify``: told when a delivery was queued here (the dispatcher sends it at once)."""

    def __init__(
        self,
        store: WebhookStore,
        notify: Callable[[], None] | None = None,
        *,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        self.notify = notify
        self.allow_private = allow_private

    async def create(self, data: WebhookCreate, actor: str) -> NewWebhook:
        # A host seen to be private is refused now; a name is checked at each delivery.
        problem = None if self.allow_private else literal_problem(httpx.URL(data.url).host)
        if problem:
            raise invalid(
                "url",
                f"{problem}: webhooks go to public addresses "
                "(MARQUEE_WEBHOOK_ALLOW_PRIVATE=true allows this network)",
            )
        endpoint = await self.store.create(
            data.url,
            data.events,
            created_by=actor,
            secret=data.secret,
            description=data.description,
        )
        return NewWebhook(**vars(WebhookView.of(endpoint)), secret=endpoint.secret)

    async def get(self, webhook_id: str) -> WebhookView:
        endpoint = await self.store.get(webhook_id)
        if endpoint is None:
            raise _not_found(webhook_id)
        return WebhookView.of(endpoint)

    async def disable(self, webhook_id: str) -> None:
        """Nothing more is sent to it (again: harmless); its log is kept."""
        if await self.store.disable(webhook_id) is None:
            raise _not_found(webhook_id)

    async def deliveries(self, webhook_id: str, limit: int) -> list[DeliveryView]:
        if await self.store.get(webhook_id) is None:
            raise _not_found(webhook_id)
        return [DeliveryView.of(d) for d in await self.store.deliveries(webhook_id, limit)]

    async def ping(self, webhook_id: str, actor: str) -> DeliveryView:
        """Queue a ``webhook.test`` event for this endpoint alone, whatever it subscribed to."""
        endpoint = await self.store.get(webhook_id)
        if endpoint is None:
            raise _not_found(webhook_id)
        if not endpoint.active:
            raise Problem("conflict", f"webhook endpoint '{webhook_id}' is disabled")
        try:
            delivery = await self.store.enqueue_for(
                webhook_id, TEST_EVENT, {"webhook": webhook_id, "requested_by": actor}
            )
        except LookupError:  # disabled in between
            raise Problem("conflict", f"webhook endpoint '{webhook_id}' is disabled") from None
        if self.notify is not None:
            self.notify()
        return DeliveryView.of(delivery)

    async def list(self) -> list[WebhookView]:  # last: the name shadows the builtin below it
        return [WebhookView.of(endpoint) for endpoint in await self.store.list()]
