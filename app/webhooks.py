"""Webhooks, as Standard Webhooks (https://www.standardwebhooks.com) describes them: events go
into an outbox in the database, and a dispatcher sends them, signed, with retries.

``WebhookEvents`` is the ``app.events.Events`` the service and the jobs emit through: ``emit``
writes one delivery row per subscribed endpoint and returns; a database that fails it is
logged, never raised, so emitting never fails the work that emits.

``WebhookDispatcher`` sends what is due: ``POST <url>`` with the body
``{"type", "timestamp", "data"}`` and the headers ``webhook-id`` (the delivery's id, the same
on every attempt: receivers deduplicate by it), ``webhook-timestamp`` (this attempt's, in Unix
seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` over
``<id>.<timestamp>.<body>`` with the endpoint's secret). A 2xx answer is a success; anything
else, a timeout or a connection error is retried on ``RETRY_SCHEDULE``, then the delivery
fails. Redirects are never followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

from app.egress import ForbiddenTarget, pin_public
from app.events import EventType
from app.logs import get_logger
from app.store.webhooks import SECRET_PREFIX, Outgoing, WebhookStore

log = get_logger(__name__)

# After a failed attempt, the wait before the next one (Standard Webhooks' recommendation):
# eight attempts in all over about 28 hours, then the delivery fails.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
TEST_EVENT = "webhook.test"  # POST /v1/webhooks/{id}/test: sent whatever the subscription
# A secret given by a client: whsec_ and the base64 of 24 to 64 random bytes.
SECRET_PATTERN = rf"^{SECRET_PREFIX}[A-Za-z0-9+/]{{32,88}}={{0,2}}$"
SECRET_MIN_BYTES, SECRET_MAX_BYTES = 24, 64


def _now() -> datetime:
    return datetime.now(UTC)


def secret_problem(secret: str) -> str | None:
    """Why a client's secret cannot sign (None: it can)."""
    if not re.fullmatch(SECRET_PATTERN, secret):
        return (
            f"{SECRET_PREFIX} followed by the base64 of {SECRET_MIN_BYTES}-{SECRET_MAX_BYTES} bytes"
        )
    encoded = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return "not valid base64"
    if not SECRET_MIN_BYTES <= len(raw) <= SECRET_MAX_BYTES:
        return f"decodes to {len(raw)} bytes; {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} are needed"
    return None


def body_of(event_type: str, created_at: datetime, data: dict[str, Any]) -> str:
    """The JSON a receiver gets: the event type, when it happened (ISO 8601, UTC), its data."""
    timestamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data})


def signed_headers(secret: str, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    seconds = int(at.timestamp())
    moment = datetime.fromtimestamp(seconds, UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": Webhook(secret).sign(msg_id, moment, body),
        "content-type": "application/json",
    }


class WebhookEvents:
    """The outbox as an ``Events``: emitting stores one delivery per subscribed endpoint.
    ``notify``: told when something was queued (the dispatcher wakes instead of polling)."""

    def __init__(self, store: WebhookStore, notify: Callable[[], None] | None = None) -> None:
        self.store = store
        self.notify = notify

    async def emit(self, type: EventType, data: dict[str, Any]) -> None:
        try:
            queued = await self.store.enqueue(type, data)
        except Exception as error:  # the database, or data it cannot store: never the caller's
            log.error("webhook_event_lost", event_type=type, error=f"{type_name(error)}: {error}")
            return
        if queued and self.notify is not None:
            self.notify()


def type_name(error: BaseException) -> str:
    return type(error).__name__


class WebhookDispatcher:
    """Sends due deliveries, ``workers`` at a time, each attempt within ``timeout_s``.
    ``schedule``: the waits between attempts (tests pass short ones)."""

    def __init__(
        self,
        store: WebhookStore,
        *,
        timeout_s: float = 10.0,
        workers: int = 8,
        schedule: Sequence[timedelta] = RETRY_SCHEDULE,
        idle_s: float = 1.0,
        clock: Callable[[], datetime] = _now,
        allow_private: bool = False,
    ) -> None:
        self.store = store
        # False: every delivery goes to a public address only (app/egress.py).
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.workers = workers
        self.schedule = tuple(schedule)
        self.idle_s = idle_s
        self.clock = clock
        # A claimed delivery is another dispatcher's again after this: well past one attempt.
        self.lease = timedelta(seconds=2 * timeout_s + 30)
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Something was queued: look now rather than after the idle wait."""
        self._wake.set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
                # Deliveries go where endpoints say, never through a proxy from the environment.
                trust_env=False,
                headers={"user-agent": "marquee-webhooks"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def deliver_due(self) -> int:
        """One pass: claim what is due (up to ``workers``), send it all, record the answers.
        Returns how many deliveries were attempted."""
        claimed = await self.store.due(self.clock(), self.workers, self.lease)
        await asyncio.gather(*(self._deliver(out) for out in claimed))
        return len(claimed)

    async def run(self) -> None:
        """Send for as long as the app lives: up to ``workers`` attempts in flight, new ones
        claimed as slots free up; idle, it looks again after ``idle_s`` (or when notified)."""
        sending: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                claimed: list[Outgoing] = []
                free = self.workers - len(sending)
                if free > 0:
                    try:
                        claimed = await self.store.due(self.clock(), free, self.lease)
                    except Exception as error:  # the database: try again after a pause
                        log.warning("webhook_claim_failed", error=f"{type_name(error)}: {error}")
                for out in claimed:
                    task = asyncio.create_task(self._deliver(out))
                    sending.add(task)
                    task.add_done_callback(sending.discard)
                if claimed and len(sending) < self.workers:
                    continue  # there may be more due
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
                waits |= sending
                _, pending = await asyncio.wait(
                    waits, timeout=self.idle_s, return_when=asyncio.FIRST_COMPLETED
                )
                for waiting in pending - sending:
                    waiting.cancel()
        finally:
            for task in sending:
                task.cancel()  # its claim runs out, and it is sent again
            await asyncio.gather(*sending, return_exceptions=True)
            await self.close()

    async def _send(self, out: Outgoing, at: datetime) -> tuple[int | None, str | None]:
        """One attempt: the status (None: no answer) and what went wrong (None: a 2xx)."""
        delivery = out.delivery
        body = body_of(delivery.event_type, delivery.created_at, delivery.payload)
        try:
            headers = signed_headers(out.secret, delivery.id, at, body)
            async with asyncio.timeout(self.timeout_s):
                url: httpx.URL | str = out.url
                extensions: dict[str, Any] = {}
                if not self.allow_private:
                    pinned = await pin_public(out.url)
                    url, extensions = pinned.url, dict(pinned.extensions)
                    headers |= pinned.headers
                async with self._http().stream(
                    "POST", url, content=body.encode(), headers=headers, extensions=extensions
                ) as response:
                    status = response.status_code  # the body is never read
        except ForbiddenTarget as refused:
            return None, f"refused: {refused} (MARQUEE_WEBHOOK_ALLOW_PRIVATE)"
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as error:
            return None, (f"{type_name(error)}: {error}" if str(error) else type_name(error))
        except Exception as error:  # a secret that cannot sign, a URL httpx refuses ...
            return None, f"{type_name(error)}: {error}"
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    async def _deliver(self, out: Outgoing) -> None:
        delivery = out.delivery
        attempt = delivery.attempts + 1
        now = self.clock()
        status, error = await self._send(out, now)
        fields = {"delivery": delivery.id, "endpoint": delivery.endpoint_id, "attempt": attempt}
        try:
            if error is None and status is not None:
                await self.store.succeeded(delivery.id, attempt, status)
                log.info("webhook_delivered", status=status, **fields)
            elif attempt > len(self.schedule):
                await self.store.failed(delivery.id, attempt, status, error or "")
                log.warning("webhook_failed", error=error, **fields)
            else:
                wait = self.schedule[attempt - 1]
                await self.store.retry_later(delivery.id, attempt, now + wait, status, error or "")
                log.info("webhook_retry", error=error, wait_s=wait.total_seconds(), **fields)
        except Exception as failure:  # not recorded: its claim runs out and it is sent again
            log.error("webhook_record_failed", error=f"{type_name(failure)}: {failure}", **fields)
