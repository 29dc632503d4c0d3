"""API keys over HTTP (/v1/keys, admin only) and the first admin key at start-up.

Every test that starts the app runs on SQLite and on PostgreSQL (``database_url``). The key
store's clock is moved by hand where expiry matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, get_args

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from pydantic import SecretStr

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.pipeline import Pipeline
from app.server.app import create_app
from app.server.auth import CHALLENGE
from app.server.keys.schemas import Scope
from app.store.db import Database
from app.store.repositories import SCOPES, ApiKeyStore, LastAdminKey, hash_key
from tests.fakes import GOOD, ScriptedEngine, make_pipeline
from tests.test_api import _keys

Client = TestClient[Litestar]
# A bootstrap key as an operator would put it in the environment.
GIVEN = "mq_boot01_" + "Bootstrap-Secret-" * 3


@pytest.fixture
def settings(database_url: str, test_settings: Settings) -> Settings:
    return test_settings.model_copy(update={"database_url": database_url})


def loader(catalog: Catalog, shoppers: ShopperStore) -> Callable[[Settings], Pipeline]:
    engine = ScriptedEngine([GOOD] * 20)
    return lambda s: make_pipeline(engine, catalog, shoppers, s)


@pytest.fixture
def keys_api(
    settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> Iterator[tuple[Client, dict[str, str]]]:
    keys = asyncio.run(_keys(settings.database))
    with TestClient(create_app(settings, loader(tiny_catalog, tiny_shoppers))) as client:
        yield client, keys


def call(client: Client, method: str, path: str, key: str | None, body: Any = None) -> Any:
    headers = {"X-API-Key": key} if key else {}
    return client.request(method, path, json=body, headers=headers)


def key_id(key: str) -> str:
    return key.split("_")[1]


def move_clock(client: Client, by: timedelta) -> None:
    """Move the app's key store clock (expiry, and the studio session's age, run on it)."""
    store: ApiKeyStore = client.app.state.services.keys
    now = store.clock() + by
    store.clock = lambda: now


def listed(client: Client, admin: str) -> dict[str, dict[str, Any]]:
    response = call(client, "GET", "/v1/keys", admin)
    assert response.status_code == 200, response.text
    return {row["id"]: row for row in response.json()}


# --- the slice ---------------------------------------------------------------------------------


def test_the_wire_scopes_are_the_stores() -> None:
    assert get_args(Scope) == SCOPES


def test_listing_shows_every_key_but_never_a_key_or_its_hash(keys_api) -> None:
    client, keys = keys_api
    response = call(client, "GET", "/v1/keys", keys["admin"])
    assert response.status_code == 200
    rows = response.json()
    assert {row["name"]: row["scopes"] for row in rows} == {
        "test-cms": ["cms"],
        "test-marketer": ["marketer"],
        "test-admin": ["admin"],
    }
    assert set(rows[0]) == {
        "id",
        "name",
        "scopes",
        "created_at",
        "expires_at",
        "last_used_at",
        "status",
    }
    assert all(row["status"] == "active" for row in rows)
    for key in keys.values():
        secret = key.split("_", 2)[2]
        assert secret not in response.text and hash_key(key) not in response.text


@pytest.mark.parametrize("scope", ["cms", "marketer"])
def test_only_admin_keys_manage_keys(keys_api, scope: str) -> None:
    client, keys = keys_api
    target = key_id(keys["cms"])
    attempts = [
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", {"name": "sneaky", "scopes": ["admin"]}),
        ("DELETE", f"/v1/keys/{target}", None),
        ("POST", f"/v1/keys/{target}/rotate", None),
    ]
    for method, path, body in attempts:
        response = call(client, method, path, keys[scope], body)
        assert response.status_code == 403, (method, path)
        assert response.json()["type"] == "urn:marquee:problem:forbidden"
    assert len(listed(client, keys["admin"])) == 3  # nothing was made or revoked
    assert all(row["status"] == "active" for row in listed(client, keys["admin"]).values())


def test_a_new_key_is_shown_once_and_works_with_its_scopes(keys_api) -> None:
    client, keys = keys_api
    made = call(
        client,
        "POST",
        "/v1/keys",
        keys["admin"],
        {"name": "cms-prod", "scopes": ["cms", "cms"], "expires_in_days": 30},
    )
    assert made.status_code == 201, made.text
    assert made.headers["Cache-Control"] == "no-store"
    body = made.json()
    key = body["key"]
    assert re.fullmatch(r"mq_[A-Za-z0-9]+_[A-Za-z0-9_-]{32,}", key)
    assert body["id"] == key_id(key) and body["name"] == "cms-prod" and body["scopes"] == ["cms"]
    assert body["status"] == "active"
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    assert abs(lifetime - timedelta(days=30)) < timedelta(seconds=5)
    # It authenticates, with its scopes and no more.
    banner = call(client, "POST", "/v1/banners", key, {"shopper_id": "runner"})
    assert banner.status_code in (200, 503), banner.text  # 503: the models may still load
    assert banner.status_code != 401
    assert call(client, "GET", "/v1/keys", key).status_code == 403
    # Listed from now on, never shown again.
    again = call(client, "GET", "/v1/keys", keys["admin"])
    assert body["id"] in again.text and key.split("_", 2)[2] not in again.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "", "scopes": ["cms"]}, "name"),
        ({"name": "has space", "scopes": ["cms"]}, "name"),
        ({"name": "-leading", "scopes": ["cms"]}, "name"),
        ({"name": "x" * 81, "scopes": ["cms"]}, "name"),
        ({"name": "ok"}, "scopes"),
        ({"name": "ok", "scopes": []}, "scopes"),
        ({"name": "ok", "scopes": ["root"]}, "scopes"),
        ({"name": "ok", "scopes": "admin"}, "scopes"),
        ({"name": "ok", "scopes": ["cms"], "expires_in_days": 0}, "expires_in_days"),
        ({"name": "ok", "scopes": ["cms"], "expires_in_days": 36501}, "expires_in_days"),
        ({"name": "ok", "scopes": ["cms"], "expires_in_days": "soon"}, "expires_in_days"),
        ({"name": "ok", "scopes": ["cms"], "owner": "me"}, "owner"),
    ],
)
def test_a_bad_key_request_is_a_problem_naming_the_field(keys_api, body: Any, field: str) -> None:
    client, keys = keys_api
    response = call(client, "POST", "/v1/keys", keys["admin"], body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"] == "urn:marquee:problem:invalid-request"
    assert [e["field"].split(".")[0] for e in problem["errors"]] == [field]
    assert len(listed(client, keys["admin"])) == 3


def test_revoke_stops_a_key_at_once_and_unknown_ids_are_404(keys_api) -> None:
    client, keys = keys_api
    cms = key_id(keys["cms"])
    assert call(client, "DELETE", f"/v1/keys/{cms}", keys["admin"]).status_code == 204
    refused = call(client, "POST", "/v1/banners", keys["cms"], {"shopper_id": "runner"})
    assert refused.status_code == 401
    assert listed(client, keys["admin"])[cms]["status"] == "revoked"
    assert call(client, "DELETE", f"/v1/keys/{cms}", keys["admin"]).status_code == 204  # again
    missing = call(client, "DELETE", "/v1/keys/nosuchkey", keys["admin"])
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:marquee:problem:not-found"
    bad = call(client, "DELETE", "/v1/keys/not-an-id!", keys["admin"])
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "key_id"


def test_rotate_gives_a_new_key_once_and_revokes_the_old(keys_api) -> None:
    client, keys = keys_api
    old = key_id(keys["marketer"])
    rotated = call(client, "POST", f"/v1/keys/{old}/rotate?expires_in_days=7", keys["admin"])
    assert rotated.status_code == 201, rotated.text
    assert rotated.headers["Cache-Control"] == "no-store"
    new = rotated.json()
    assert new["name"] == "test-marketer" and new["scopes"] == ["marketer"]
    assert new["id"] != old and new["expires_at"] is not None
    rows = listed(client, keys["admin"])
    assert rows[old]["status"] == "revoked" and rows[new["id"]]["status"] == "active"
    assert call(client, "GET", "/v1/templates", keys["marketer"]).status_code == 401
    assert call(client, "GET", "/v1/templates", new["key"]).status_code != 401
    # A revoked (so also a rotated) or unknown key cannot be rotated.
    for gone in (old, "nosuchkey"):
        response = call(client, "POST", f"/v1/keys/{gone}/rotate", keys["admin"])
        assert response.status_code == 404, gone
    days = call(client, "POST", f"/v1/keys/{new['id']}/rotate?expires_in_days=0", keys["admin"])
    assert days.status_code == 400 and days.json()["errors"][0]["field"] == "expires_in_days"


def test_the_last_active_admin_key_cannot_be_revoked(keys_api) -> None:
    client, keys = keys_api
    admin = key_id(keys["admin"])
    refused = call(client, "DELETE", f"/v1/keys/{admin}", keys["admin"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"] == "urn:marquee:problem:conflict"
    assert "last active admin key" in refused.json()["detail"]
    assert listed(client, keys["admin"])[admin]["status"] == "active"
    # An admin key that has expired does not count as another admin.
    soon = call(
        client, "POST", "/v1/keys", keys["admin"], {"name": "ops", "scopes": ["admin"]}
    ).json()
    short = {"name": "short", "scopes": ["admin"], "expires_in_days": 1}
    call(client, "POST", "/v1/keys", keys["admin"], short)
    # With a second working admin key, revoking one's own key is allowed.
    assert call(client, "DELETE", f"/v1/keys/{admin}", keys["admin"]).status_code == 204
    assert call(client, "GET", "/v1/keys", keys["admin"]).status_code == 401
    move_clock(client, timedelta(days=2))  # "short" has expired: "ops" is the last one
    last = call(client, "DELETE", f"/v1/keys/{soon['id']}", soon["key"])
    assert last.status_code == 409
    assert call(client, "GET", "/v1/keys", soon["key"]).status_code == 200


async def test_two_admins_revoking_each_other_at_once_leave_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Database.upgraded(database_url) as db:
        store = ApiKeyStore(db)
        one = key_id(await store.create("one", ["admin"]))
        two = key_id(await store.create("two", ["admin"]))
        # Each revoke, once it has counted the admins, waits (briefly) for the other to count
        # too: without a lock around count-and-revoke both would count two and both revoke.
        counted: list[int] = []
        both = asyncio.Event()
        count = store._active_admins

        async def count_then_wait(session: Any) -> int:
            found = await count(session)
            counted.append(found)
            if len(counted) == 2:
                both.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(both.wait(), 0.5)
            return found

        monkeypatch.setattr(store, "_active_admins", count_then_wait)

        async def revoke(target: str) -> bool:
            try:
                return await store.revoke(target, keep_an_admin=True)
            except LastAdminKey:
                return False

        done = await asyncio.gather(revoke(one), revoke(two))
        assert sorted(done) == [False, True] and counted == [2, 1]
        assert sum(info.status() == "active" for info in await store.list()) == 1


def test_keys_are_managed_while_the_models_still_load(
    settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    keys = asyncio.run(_keys(settings.database))
    release = threading.Event()
    slow = loader(tiny_catalog, tiny_shoppers)

    def waiting(s: Settings) -> Pipeline:
        release.wait(10)
        return slow(s)

    with TestClient(create_app(settings, waiting)) as client:
        try:
            assert client.get("/readyz").status_code == 503
            assert call(client, "GET", "/v1/keys", keys["admin"]).status_code == 200
            body = {"name": "early", "scopes": ["cms"]}
            assert call(client, "POST", "/v1/keys", keys["admin"], body).status_code == 201
        finally:
            release.set()


@pytest.mark.parametrize("case", ["missing", "unknown", "revoked", "expired"])
def test_every_401_carries_the_same_challenge(keys_api, case: str) -> None:
    client, keys = keys_api
    key: str | None = {"missing": None, "unknown": "mq_nope_" + "x" * 32}.get(case, keys["cms"])
    if case == "revoked":
        call(client, "DELETE", f"/v1/keys/{key_id(keys['cms'])}", keys["admin"])
    if case == "expired":
        made = call(
            client,
            "POST",
            "/v1/keys",
            keys["admin"],
            {"name": "brief", "scopes": ["admin"], "expires_in_days": 1},
        )
        key = made.json()["key"]
        move_clock(client, timedelta(days=1, seconds=1))
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/banners")):
        response = call(client, method, path, key, {"shopper_id": "runner"})
        assert response.status_code == 401, (case, path)
        assert response.headers["WWW-Authenticate"] == CHALLENGE == 'X-API-Key realm="marquee"'


# --- the first admin key at start-up -----------------------------------------------------------


def start(settings: Settings, catalog: Catalog, shoppers: ShopperStore) -> Client:
    return TestClient(create_app(settings, loader(catalog, shoppers)))


def count_keys(settings: Settings) -> int:
    return asyncio.run(ApiKeyStore.using(settings.database, lambda store: store.count()))


def test_a_production_start_makes_and_prints_no_key(
    settings: Settings,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    production = settings.model_copy(update={"env": "production"})
    with caplog.at_level(logging.INFO), start(production, tiny_catalog, tiny_shoppers) as client:
        assert client.get("/healthz").status_code == 200  # it starts all the same
    out, err = capfd.readouterr()
    everything = out + err + caplog.text
    assert "mq_" not in everything and "API key (admin" not in everything
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "marquee keys create" in w]) == 1, warnings
    assert count_keys(production) == 0


def test_a_bootstrap_key_is_taken_in_once_and_works(
    settings: Settings,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    given = settings.model_copy(
        update={"env": "production", "bootstrap_admin_key": SecretStr(GIVEN)}
    )
    assert GIVEN not in repr(given) and GIVEN not in str(given)
    with caplog.at_level(logging.INFO):
        for _ in range(2):  # a restart keeps the one key
            with start(given, tiny_catalog, tiny_shoppers) as client:
                rows = listed(client, GIVEN)
                assert [(r["name"], r["scopes"]) for r in rows.values()] == [
                    ("bootstrap", ["admin"])
                ]
    out, err = capfd.readouterr()
    assert GIVEN.split("_", 2)[2] not in out + err + caplog.text
    assert "marquee keys create" not in caplog.text  # a key exists: nothing to warn about


def test_a_malformed_bootstrap_key_stops_the_start_without_showing_it(
    settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    weak = "mq_boot_short-secret"
    bad = settings.model_copy(update={"bootstrap_admin_key": SecretStr(weak)})
    with pytest.raises(BaseException) as failed, start(bad, tiny_catalog, tiny_shoppers):
        pass
    # The start-up error comes out of the test client inside exception groups.
    error: BaseException = failed.value
    while isinstance(error, BaseExceptionGroup):
        (error,) = error.exceptions
    assert isinstance(error, ValueError) and "MARQUEE_BOOTSTRAP_ADMIN_KEY" in str(error)
    assert "short-secret" not in str(error)
    assert count_keys(bad) == 0


def test_a_dev_start_prints_one_admin_key_once(
    settings: Settings,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert settings.env == "dev"  # the default
    with start(settings, tiny_catalog, tiny_shoppers) as client:
        out, err = capfd.readouterr()
        # On stderr, for the person at the terminal: stdout is the JSON log stream.
        printed = re.findall(r"mq_[A-Za-z0-9]+_[A-Za-z0-9_-]+", err)
        assert "dev API key (admin scope, shown once)" in err and printed
        assert "mq_" not in out
        assert [row["name"] for row in listed(client, printed[0]).values()] == ["dev"]
    with start(settings, tiny_catalog, tiny_shoppers):
        again, again_err = capfd.readouterr()
    assert "mq_" not in again + again_err and count_keys(settings) == 1
