"""Webhooks: the outbox, the signed deliveries and their retries, the /v1/webhooks slice, and
events from a job and a publish reaching a registered endpoint end to end.

Deliveries go to a real HTTP receiver (``http.server`` on a free port, in a thread) that records
what it gets and answers as told: 200, 500, or too late. Retries use short schedules; nothing
waits on the wall clock for an outcome: tests poll until a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from standardwebhooks import Webhook

from app.config import Settings
from app.generation.vllm_server import free_port
from app.server.app import create_app
from app.store.db import Database, WebhookEndpointRecord
from app.store.sealing import Sealer, SecretUnavailable, new_key
from app.store.webhooks import Delivery, WebhookStore
from app.webhooks import RETRY_SCHEDULE, WebhookDispatcher, WebhookEvents
from tests.fakes import GOOD, ScriptedEngine, file_loader, wait_ready
from tests.test_api import _keys

Client = TestClient[Litestar]
DEADLINE_S = 20.0
QUICK = (timedelta(milliseconds=10), timedelta(milliseconds=10))  # three attempts in all


# --- the receiver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def verified(self, secret: str) -> Any:
        """The parsed body, once its signature verifies with ``secret`` (raises otherwise)."""
        return Webhook(secret).verify(self.body, self.headers)


class Receiver:
    """Records every POST; answers the next queued mode ("200", "500", "slow"), else 200."""

    def __init__(self, slow_s: float = 1.0) -> None:
        self.requests: list[Received] = []
        self.modes: deque[str] = deque()
        self.default = "200"
        self.slow_s = slow_s
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, body))
                    mode = receiver.modes.popleft() if receiver.modes else receiver.default
                if mode == "slow":
                    time.sleep(receiver.slow_s)
                status = 500 if mode == "500" else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, *modes: str) -> None:
        with self.lock:
            self.modes.extend(modes)

    def got(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None) -> list[Received]:
        deadline = time.monotonic() + DEADLINE_S
        while len(self.got(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.got(path))} requests, not {count}")
            time.sleep(0.02)
        return self.got(path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


# --- the store and the dispatcher --------------------------------------------------------------


@asynccontextmanager
async def store_at(url: str, *keys: str) -> AsyncIterator[WebhookStore]:
    """The webhooks' store on ``url``, sealing secrets with ``keys`` (none: plain)."""
    async with Database.upgraded(url) as db:
        yield WebhookStore(db, Sealer(keys))


async def stored_secret(store: WebhookStore, endpoint_id: str) -> str:
    """The secret column as the database holds it."""
    async with store.db.sessions() as session:
        record = await session.get(WebhookEndpointRecord, endpoint_id)
        assert record is not None
        return record.secret


async def deliver_one(store: WebhookStore, endpoint_id: str) -> Delivery:
    """Queue a ping for one endpoint and run dispatcher passes until it settled (one attempt)."""
    queued = await store.enqueue_for(endpoint_id, "webhook.test", {"ping": True})
    dispatcher = WebhookDispatcher(store, allow_private=True, schedule=())
    try:
        return await settle(dispatcher, store, queued.id)
    finally:
        await dispatcher.close()


async def settle(dispatcher: WebhookDispatcher, store: WebhookStore, delivery_id: str) -> Delivery:
    """Run dispatcher passes until the delivery succeeded or failed."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        await dispatcher.deliver_due()
        delivery = await store.delivery(delivery_id)
        assert delivery is not None
        if delivery.state != "pending":
            return delivery
        assert time.monotonic() < deadline, f"still pending: {delivery}"
        await asyncio.sleep(0.02)


async def only_delivery(store: WebhookStore, endpoint_id: str) -> Delivery:
    [delivery] = await store.deliveries(endpoint_id)
    return delivery


def test_the_schedule_is_standard_webhooks() -> None:
    assert [int(wait.total_seconds()) for wait in RETRY_SCHEDULE] == [
        5,
        5 * 60,
        30 * 60,
        2 * 3600,
        5 * 3600,
        10 * 3600,
        10 * 3600,
    ]


async def test_a_delivery_is_signed_and_verifies(database_url: str, receiver: Receiver) -> None:
    async with store_at(database_url) as store:
        endpoint = await store.create(receiver.url(), ["job.finished"], created_by="test")
        await WebhookEvents(store).emit("job.finished", {"job": "job_1", "state": "succeeded"})
        dispatcher = WebhookDispatcher(store, allow_private=True)
        try:
            assert await dispatcher.deliver_due() == 1
        finally:
            await dispatcher.close()
        [request] = receiver.got()
        delivery = await only_delivery(store, endpoint.id)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == delivery.id and delivery.id.startswith("msg_")
    assert request.headers["webhook-signature"].startswith("v1,")
    body = request.verified(endpoint.secret)
    assert body["type"] == "job.finished"
    assert body["data"] == {"job": "job_1", "state": "succeeded"}
    assert body["timestamp"].endswith("Z")
    with pytest.raises(Exception, match="signature"):  # another secret does not verify it
        Webhook("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()).verify(
            request.body, request.headers
        )
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("succeeded", 1, 200)
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None


async def test_one_delivery_per_subscribed_endpoint(database_url: str, receiver: Receiver) -> None:
    async with store_at(database_url) as store:
        jobs = await store.create(receiver.url("/jobs"), ["job.finished"], created_by="t")
        both = await store.create(
            receiver.url("/both"), ["banner.ready", "job.finished"], created_by="t"
        )
        banners = await store.create(receiver.url("/banners"), ["banner.ready"], created_by="t")
        gone = await store.create(receiver.url("/gone"), ["job.finished"], created_by="t")
        await store.disable(gone.id)
        assert await store.enqueue("job.finished", {"job": "j"}) == 2
        assert await store.enqueue("template.published", {"template": "t"}) == 0
        dispatcher = WebhookDispatcher(store, allow_private=True)
        try:
            assert await dispatcher.deliver_due() == 2
            assert await dispatcher.deliver_due() == 0
        finally:
            await dispatcher.close()
        assert sorted(r.path for r in receiver.got()) == ["/both", "/jobs"]
        for endpoint, count in ((jobs, 1), (both, 1), (banners, 0), (gone, 0)):
            assert len(await store.deliveries(endpoint.id)) == count, endpoint.url


async def test_a_500_is_retried_and_the_second_attempt_delivers(
    database_url: str, receiver: Receiver
) -> None:
    receiver.answer("500")
    async with store_at(database_url) as store:
        endpoint = await store.create(receiver.url(), ["banner.ready"], created_by="t")
        await store.enqueue("banner.ready", {"banners": []})
        dispatcher = WebhookDispatcher(store, allow_private=True, schedule=QUICK)
        try:
            first = await only_delivery(store, endpoint.id)
            delivery = await settle(dispatcher, store, first.id)
        finally:
            await dispatcher.close()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("succeeded", 2, 200)
    assert delivery.last_error is None
    attempts = receiver.got()
    assert [r.headers["webhook-id"] for r in attempts] == [delivery.id, delivery.id]
    for attempt in attempts:  # each attempt is signed afresh, and verifies
        assert attempt.verified(endpoint.secret)["type"] == "banner.ready"


async def test_a_receiver_that_times_out_is_retried_then_the_delivery_fails(
    database_url: str, receiver: Receiver
) -> None:
    receiver.default = "slow"  # answers after 1 s; the dispatcher waits 0.2 s
    async with store_at(database_url) as store:
        endpoint = await store.create(receiver.url(), ["job.finished"], created_by="t")
        await store.enqueue("job.finished", {"job": "j"})
        dispatcher = WebhookDispatcher(store, allow_private=True, schedule=QUICK, timeout_s=0.2)
        try:
            delivery = await settle(dispatcher, store, (await only_delivery(store, endpoint.id)).id)
        finally:
            await dispatcher.close()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, None)
    assert delivery.last_error == "no answer within 0.2 s"
    assert delivery.next_attempt_at is None and delivery.delivered_at is None
    assert len(receiver.got()) == 3


async def test_an_endpoint_nobody_listens_on_fails_after_the_schedule(database_url: str) -> None:
    async with store_at(database_url) as store:
        url = f"http://127.0.0.1:{free_port()}/hook"
        endpoint = await store.create(url, ["job.finished"], created_by="t")
        await store.enqueue("job.finished", {"job": "j"})
        dispatcher = WebhookDispatcher(store, allow_private=True, schedule=QUICK[:1])
        try:
            delivery = await settle(dispatcher, store, (await only_delivery(store, endpoint.id)).id)
        finally:
            await dispatcher.close()
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert delivery.last_error is not None and "ConnectError" in delivery.last_error


async def test_a_private_address_is_never_sent_to_unless_allowed(
    database_url: str, receiver: Receiver
) -> None:
    async with store_at(database_url) as store:
        endpoint = await store.create(receiver.url(), ["job.finished"], created_by="t")
        await store.enqueue("job.finished", {"job": "j"})
        dispatcher = WebhookDispatcher(store, schedule=QUICK[:1])  # the default: public only
        try:
            delivery = await settle(dispatcher, store, (await only_delivery(store, endpoint.id)).id)
        finally:
            await dispatcher.close()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 2, None)
    assert delivery.last_error is not None
    assert "refused: 127.0.0.1 is a loopback address" in delivery.last_error
    assert receiver.got() == []  # not one request reached it


# --- secrets sealed at rest --------------------------------------------------------------------


async def test_a_sealed_secret_is_not_in_the_database_and_still_signs(
    database_url: str, receiver: Receiver
) -> None:
    async with store_at(database_url, new_key()) as store:
        endpoint = await store.create(receiver.url(), ["job.finished"], created_by="t")
        stored = await stored_secret(store, endpoint.id)
        assert stored.startswith("fernet:")
        assert endpoint.secret not in stored
        assert endpoint.secret.removeprefix("whsec_") not in stored
        assert not hasattr(await store.get(endpoint.id), "secret")  # read back: never
        delivery = await deliver_one(store, endpoint.id)
    assert (delivery.state, delivery.last_status) == ("succeeded", 200)
    assert receiver.got()[0].verified(endpoint.secret)["type"] == "webhook.test"


async def test_a_secret_no_key_opens_fails_its_own_deliveries_only(
    database_url: str, receiver: Receiver
) -> None:
    async with store_at(database_url) as plain_store:
        plain = await plain_store.create(receiver.url("/plain"), ["job.finished"], created_by="t")
    async with store_at(database_url, new_key()) as first_store:
        sealed = await first_store.create(receiver.url("/sealed"), ["job.finished"], created_by="t")
    async with store_at(database_url, new_key()) as store:  # the first key is lost
        refused = await deliver_one(store, sealed.id)
        delivered = await deliver_one(store, plain.id)  # stored before keys: read as it is
    assert (refused.state, refused.last_status) == ("failed", None)
    assert refused.last_error == (
        "SecretUnavailable: sealed with a key MARQUEE_WEBHOOK_SECRET_KEYS does not hold"
    )
    assert delivered.state == "succeeded"
    [request] = receiver.got()
    assert request.path == "/plain"
    assert request.verified(plain.secret)["type"] == "webhook.test"


async def test_seal_secrets_seals_plain_ones_and_rotates_to_the_first_key(
    database_url: str, receiver: Receiver
) -> None:
    old, new = new_key(), new_key()
    async with store_at(database_url) as store:
        plain = await store.create(receiver.url("/plain"), ["job.finished"], created_by="t")
    async with store_at(database_url, old) as store:
        sealed = await store.create(receiver.url("/sealed"), ["job.finished"], created_by="t")
    async with store_at(database_url, new, old) as store:
        assert await store.seal_secrets() == (2, 1)
    async with store_at(database_url, new) as store:  # the old key dropped: both still sign
        for endpoint in (plain, sealed):
            assert (await stored_secret(store, endpoint.id)).startswith("fernet:")
            assert (await deliver_one(store, endpoint.id)).state == "succeeded"
    by_path = {request.path: request for request in receiver.got()}
    assert by_path["/plain"].verified(plain.secret)["data"] == {"ping": True}
    assert by_path["/sealed"].verified(sealed.secret)["data"] == {"ping": True}


async def test_seal_secrets_changes_nothing_when_a_secret_cannot_be_opened(
    database_url: str,
) -> None:
    async with store_at(database_url) as store:
        plain = await store.create("http://x.example/a", ["job.finished"], created_by="t")
        with pytest.raises(SecretUnavailable, match="no key to seal with"):
            await store.seal_secrets()
    async with store_at(database_url, new_key()) as store:
        sealed = await store.create("http://x.example/b", ["job.finished"], created_by="t")
        before = [await stored_secret(store, e.id) for e in (plain, sealed)]
    async with store_at(database_url, new_key()) as store:
        with pytest.raises(SecretUnavailable, match="does not hold"):
            await store.seal_secrets()
        assert [await stored_secret(store, e.id) for e in (plain, sealed)] == before


def test_a_key_setting_that_is_not_a_fernet_key_names_it() -> None:
    with pytest.raises(ValueError, match="key 2 is not a Fernet key"):
        Settings(webhook_secret_keys=f"{new_key()}, not-a-key")
    two = Settings(webhook_secret_keys=f" {new_key()} ,{new_key()}")
    assert two.webhook_sealer().sealing
    assert not Settings().webhook_sealer().sealing


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///{folder}/never-migrated.db",  # no tables: every write fails
        "postgresql+asyncpg://marquee@127.0.0.1:{port}/marquee",  # nobody listens
    ],
)
async def test_emitting_while_the_database_is_down_does_not_raise(
    url: str, tmp_path: Path, caplog
) -> None:
    db = Database(url.format(folder=tmp_path, port=free_port()))
    try:
        await WebhookEvents(WebhookStore(db)).emit("job.finished", {"job": "j"})
    finally:
        await db.dispose()
    assert "webhook_event_lost" in caplog.text


async def test_a_claim_is_leased_and_expires_if_its_dispatcher_never_reports(
    database_url: str,
) -> None:
    async with store_at(database_url) as store, store_at(database_url) as other:
        await store.create("http://127.0.0.1:9/x", ["job.finished"], created_by="t")
        await store.enqueue("job.finished", {"job": "j"})
        lease = timedelta(seconds=60)
        now = datetime.now(UTC)
        [claimed] = await store.due(now, 10, lease)
        assert await other.due(now, 10, lease) == []  # taken: nobody else sends it
        assert await other.due(now + lease / 2, 10, lease) == []
        [again] = await other.due(now + lease + timedelta(seconds=1), 10, lease)  # it died
        assert again.delivery.id == claimed.delivery.id


async def test_two_dispatchers_never_send_the_same_delivery_twice(
    database_url: str, receiver: Receiver
) -> None:
    """Two processes (a database engine each) sending from one outbox at once."""
    receiver.default = "slow"
    receiver.slow_s = 0.02
    async with store_at(database_url) as one, store_at(database_url) as two:
        endpoint = await one.create(receiver.url(), ["banner.ready"], created_by="t")
        for n in range(24):
            await one.enqueue("banner.ready", {"n": n})
        first = WebhookDispatcher(one, workers=3, allow_private=True)
        second = WebhookDispatcher(two, workers=3, allow_private=True)
        deadline = time.monotonic() + DEADLINE_S
        try:
            while any(d.state == "pending" for d in await one.deliveries(endpoint.id, 100)):
                assert time.monotonic() < deadline
                await asyncio.gather(first.deliver_due(), second.deliver_due())
        finally:
            await first.close()
            await second.close()
        log = await one.deliveries(endpoint.id, 100)
    sent = Counter(r.headers["webhook-id"] for r in receiver.got())
    assert len(sent) == 24 and set(sent.values()) == {1}, sent
    assert {(d.state, d.attempts) for d in log} == {("succeeded", 1)}
    assert sorted(json.loads(r.body)["data"]["n"] for r in receiver.got()) == list(range(24))


async def test_the_running_dispatcher_wakes_when_an_event_is_queued(
    database_url: str, receiver: Receiver
) -> None:
    async with store_at(database_url) as store:
        await store.create(receiver.url(), ["job.finished"], created_by="t")
        # It would not look again for 30 s.
        dispatcher = WebhookDispatcher(store, allow_private=True, idle_s=30.0)
        running = asyncio.create_task(dispatcher.run())
        try:
            await asyncio.sleep(0.05)  # idle now
            await WebhookEvents(store, dispatcher.notify).emit("job.finished", {"job": "j"})
            deadline = time.monotonic() + DEADLINE_S
            while not receiver.got():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
    assert json.loads(receiver.got()[0].body)["type"] == "job.finished"


# --- the API -----------------------------------------------------------------------------------


@pytest.fixture
def settings(data_files_settings: Settings) -> Settings:
    """Settings whose data files hold the tiny catalog and shoppers (a job plans from them);
    the receivers here listen on 127.0.0.1, so private addresses are allowed."""
    return data_files_settings.model_copy(update={"webhook_allow_private": True})


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[Client, dict[str, str]]]:
    keys = asyncio.run(_keys(settings.database))
    app = create_app(settings, file_loader(ScriptedEngine([GOOD] * 200)), jobs_in_process=True)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, keys


def call(client: Client, method: str, path: str, key: str | None, body: Any = None) -> Any:
    headers = {"X-API-Key": key} if key else {}
    if body is None:
        return client.request(method, path, headers=headers)
    return client.request(
        method,
        path,
        content=json.dumps(body),
        headers={**headers, "Content-Type": "application/json"},
    )


def register(client: Client, admin: str, url: str, events: list[str], **extra: Any) -> Any:
    response = call(client, "POST", "/v1/webhooks", admin, {"url": url, "events": events, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def log_until(
    client: Client, admin: str, webhook_id: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = call(client, "GET", f"/v1/webhooks/{webhook_id}/deliveries", admin)
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        if done(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


def test_register_shows_the_secret_once(api) -> None:
    client, keys = api
    response = call(
        client,
        "POST",
        "/v1/webhooks",
        keys["admin"],
        {"url": "https://hooks.example.com/marquee", "events": ["job.finished", "job.finished"]},
    )
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    made = response.json()
    assert made["id"].startswith("whk_") and made["secret"].startswith("whsec_")
    assert made["events"] == ["job.finished"] and made["status"] == "active"
    assert made["created_by"] == "test-admin"
    listed = call(client, "GET", "/v1/webhooks", keys["admin"])
    fetched = call(client, "GET", f"/v1/webhooks/{made['id']}", keys["admin"])
    for answer in (listed, fetched):
        assert answer.status_code == 200
        assert made["secret"] not in answer.text and "secret" not in answer.text
    assert [row["id"] for row in listed.json()] == [made["id"]]
    assert fetched.json() == {k: v for k, v in made.items() if k != "secret"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.8/hook",
        "http://[::1]/hook",
        "http://[::ffff:192.168.1.1]/hook",
    ],
)
def test_a_private_address_is_refused_at_registration(
    data_files_settings: Settings, url: str
) -> None:
    keys = asyncio.run(_keys(data_files_settings.database))
    app = create_app(data_files_settings, file_loader(ScriptedEngine([])), jobs_in_process=True)
    with TestClient(app) as client:
        response = call(
            client, "POST", "/v1/webhooks", keys["admin"], {"url": url, "events": ["job.finished"]}
        )
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["field"] == "url"
        assert "MARQUEE_WEBHOOK_ALLOW_PRIVATE" in response.json()["detail"]
        assert call(client, "GET", "/v1/webhooks", keys["admin"]).json() == []


def test_a_secret_of_ones_own_is_kept(api) -> None:
    client, keys = api
    own = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    made = register(client, keys["admin"], "http://127.0.0.1:9/x", ["banner.ready"], secret=own)
    assert made["secret"] == own


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://hooks.example.com/x", "events": ["job.finished"]}, "url"),
        ({"url": "javascript:alert(1)", "events": ["job.finished"]}, "url"),
        ({"url": "http://", "events": ["job.finished"]}, "url"),
        ({"url": "https://x.example/" + "a" * 2000, "events": ["job.finished"]}, "url"),
        ({"url": "https://hooks.example.com/x", "events": ["job.started"]}, "events"),
        ({"url": "https://hooks.example.com/x", "events": []}, "events"),
        (
            {"url": "https://hooks.example.com/x", "events": ["job.finished"], "secret": "x"},
            "secret",
        ),
        (
            {"url": "https://hooks.example.com/x", "events": ["job.finished"]}
            | {"secret": "whsec_" + "A" * 33},  # not base64
            "secret",
        ),
        ({"url": "https://hooks.example.com/x", "events": ["job.finished"], "extra": 1}, "extra"),
    ],
)
def test_bad_registrations_are_400_naming_the_field(api, body: Any, field: str) -> None:
    client, keys = api
    response = call(client, "POST", "/v1/webhooks", keys["admin"], body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"] == "urn:marquee:problem:invalid-request"
    assert any(field in error["field"] for error in problem["errors"]), problem
    assert call(client, "GET", "/v1/webhooks", keys["admin"]).json() == []


def test_unknown_endpoints_are_404_and_only_admins_manage_webhooks(api) -> None:
    client, keys = api
    for method, path in [
        ("GET", "/v1/webhooks/whk_nope"),
        ("DELETE", "/v1/webhooks/whk_nope"),
        ("GET", "/v1/webhooks/whk_nope/deliveries"),
        ("POST", "/v1/webhooks/whk_nope/test"),
    ]:
        response = call(client, method, path, keys["admin"])
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["type"] == "urn:marquee:problem:not-found"
    for scope in ("cms", "marketer"):
        assert call(client, "GET", "/v1/webhooks", keys[scope]).status_code == 403
        body = {"url": "https://hooks.example.com/x", "events": ["job.finished"]}
        assert call(client, "POST", "/v1/webhooks", keys[scope], body).status_code == 403
    assert call(client, "GET", "/v1/webhooks", None).status_code == 401


def test_a_test_ping_is_delivered_and_logged(api, receiver: Receiver) -> None:
    client, keys = api
    made = register(client, keys["admin"], receiver.url(), ["review.decided"])
    response = call(client, "POST", f"/v1/webhooks/{made['id']}/test", keys["admin"])
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["type"] == "webhook.test" and queued["state"] == "pending"
    [request] = receiver.wait_for(1)
    body = request.verified(made["secret"])
    assert body["type"] == "webhook.test" and body["data"]["webhook"] == made["id"]
    [row] = log_until(client, keys["admin"], made["id"], lambda r: r[0]["state"] != "pending")
    assert row["id"] == queued["id"] == request.headers["webhook-id"]
    assert (row["state"], row["attempts"], row["last_status"]) == ("succeeded", 1, 200)
    assert row["delivered_at"] is not None and row["last_error"] is None


def test_the_log_shows_failed_attempts(api, receiver: Receiver) -> None:
    client, keys = api
    receiver.answer("500")
    made = register(client, keys["admin"], receiver.url(), ["job.finished"])
    call(client, "POST", f"/v1/webhooks/{made['id']}/test", keys["admin"])
    [row] = log_until(client, keys["admin"], made["id"], lambda r: r[0]["attempts"] == 1)
    assert (row["state"], row["last_status"], row["last_error"]) == ("pending", 500, "HTTP 500")
    assert row["next_attempt_at"] is not None  # 5 s later, by the standard schedule


def test_disabling_stops_new_deliveries_and_keeps_the_log(
    api, receiver: Receiver, settings: Settings
) -> None:
    client, keys = api
    made = register(client, keys["admin"], receiver.url(), ["job.finished"])
    call(client, "POST", f"/v1/webhooks/{made['id']}/test", keys["admin"])
    receiver.wait_for(1)
    assert call(client, "DELETE", f"/v1/webhooks/{made['id']}", keys["admin"]).status_code == 204
    assert call(client, "DELETE", f"/v1/webhooks/{made['id']}", keys["admin"]).status_code == 204
    shown = call(client, "GET", f"/v1/webhooks/{made['id']}", keys["admin"]).json()
    assert shown["status"] == "disabled" and shown["disabled_at"] is not None

    async def emit_elsewhere() -> int:  # another process (a CLI job) emitting
        async with store_at(settings.database) as store:
            return await store.enqueue("job.finished", {"job": "j"})

    assert asyncio.run(emit_elsewhere()) == 0
    ping = call(client, "POST", f"/v1/webhooks/{made['id']}/test", keys["admin"])
    assert ping.status_code == 409
    log = call(client, "GET", f"/v1/webhooks/{made['id']}/deliveries", keys["admin"]).json()
    assert [row["type"] for row in log] == ["webhook.test"]  # kept
    assert len(receiver.got()) == 1


def test_a_job_run_in_process_emits_job_finished(api, receiver: Receiver) -> None:
    client, keys = api
    made = register(client, keys["admin"], receiver.url("/jobs"), ["job.finished"])
    register(client, keys["admin"], receiver.url("/banners"), ["banner.ready"])
    response = call(client, "POST", "/v1/jobs", keys["admin"], {"placement": "home_hero"})
    assert response.status_code == 202, response.text
    job = response.json()
    [request] = receiver.wait_for(1, "/jobs")
    body = request.verified(made["secret"])
    assert body["type"] == "job.finished"
    assert body["data"]["job"] == job["id"] and body["data"]["state"] == "succeeded"
    assert body["data"]["placement"] == "home_hero" and body["data"]["done"] > 0
    banners = receiver.wait_for(1, "/banners")
    assert json.loads(banners[0].body)["data"]["job"] == job["id"]


def test_publishing_a_template_emits_template_published(api, receiver: Receiver) -> None:
    client, keys = api
    made = register(client, keys["admin"], receiver.url(), ["template.published"])
    source = call(client, "GET", "/v1/templates/hero_banner/versions/1", keys["admin"])
    edited = source.json()["source"].rstrip("\n") + "\nKeep it short.\n"
    saved = call(
        client,
        "POST",
        "/v1/templates/hero_banner/versions",
        keys["admin"],
        {"source": edited, "message": "shorter", "base_version": 1},
    )
    assert saved.status_code == 201, saved.text
    version = saved.json()["version"]
    moved = call(
        client,
        "PUT",
        "/v1/templates/hero_banner/labels/production",
        keys["admin"],
        {"version": version},
    )
    assert moved.status_code == 200, moved.text
    [request] = receiver.wait_for(1)
    assert request.verified(made["secret"])["data"] == {
        "template": "hero_banner",
        "version": version,
        "label": "production",
        "actor": "test-admin",
    }
