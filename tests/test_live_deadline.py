"""POST /v1/banners with ``max_wait_ms``: a fresh pre-generated banner at once, else the live
one if it is made in time, else fallback copy while the live one is finished and stored for
the next read."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import GenerationRequest, GenerationResult
from app.server.app import create_app
from app.store.repositories import ApiKeyStore
from tests.fakes import GOOD, ScriptedEngine, make_pipeline, wait_ready


class GatedEngine(ScriptedEngine):
    """Answers GOOD once ``gate`` is open (a thread event: the app runs on another thread)."""

    def __init__(self) -> None:
        super().__init__([])
        self.gate = threading.Event()

    async def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().generate_many(requests)


@pytest.fixture
def app_and_keys(
    tmp_path: Any, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> Iterator[tuple[TestClient[Litestar], dict[str, str], GatedEngine]]:
    settings = test_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"}
    )
    keys = {
        scope: asyncio.run(ApiKeyStore.create_in(settings.database, f"t-{scope}", [scope]))
        for scope in ("cms", "admin")
    }
    engine = GatedEngine()
    app = create_app(
        settings,
        lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s),
        jobs_in_process=True,
    )
    with TestClient(app) as client:
        wait_ready(client)
        yield client, keys, engine


def post(client: TestClient[Litestar], key: str, body: dict[str, Any], path: str = "/v1/banners"):
    return client.post(
        path,
        content=json.dumps(body),
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )


def until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_past_the_deadline_fallback_copy_then_the_live_banner_is_stored_for_the_next_read(
    app_and_keys: tuple[TestClient[Litestar], dict[str, str], GatedEngine],
) -> None:
    client, keys, engine = app_and_keys
    body = {"shopper_id": "coffee_fan", "max_wait_ms": 50}
    first = post(client, keys["cms"], body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["source"] == "fallback" and answer["generating"] is True
    assert first.headers["Cache-Control"] == "no-store"
    (fallback,) = answer["banners"]
    assert fallback["fallback"] is True
    assert any(flag.startswith("deadline") for flag in fallback["flags"])
    assert fallback["products"], "fallback copy still shows catalog products"

    engine.gate.set()  # the model answers: the live banner is finished and stored

    def stored() -> dict[str, Any] | None:
        read = client.get(
            "/v1/placements/home_hero/banners/coffee_fan", headers={"X-API-Key": keys["cms"]}
        )
        return read.json() if read.status_code == 200 else None

    own = until(stored, "the live banner stored for reads")
    assert own["source"] == "shopper" and own["banner"]["fallback"] is False
    assert own["banner"]["headline"] == GOOD["headline"]
    calls = len(engine.requests)
    again = post(client, keys["cms"], body)
    assert again.status_code == 200 and again.json()["source"] == "pregenerated"
    assert again.json()["banners"][0]["id"] == own["banner"]["id"]
    assert len(engine.requests) == calls, "a fresh stored banner is served without the model"


def test_in_time_the_live_banner_is_answered(
    app_and_keys: tuple[TestClient[Litestar], dict[str, str], GatedEngine],
) -> None:
    client, keys, engine = app_and_keys
    engine.gate.set()
    response = post(client, keys["cms"], {"shopper_id": "coffee_fan", "max_wait_ms": 60_000})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["source"] == "live" and answer["generating"] is False
    assert answer["banners"][0]["headline"] == GOOD["headline"]


def test_a_stale_stored_banner_is_not_taken_for_a_fresh_one(
    app_and_keys: tuple[TestClient[Litestar], dict[str, str], GatedEngine],
) -> None:
    client, keys, engine = app_and_keys
    engine.gate.set()
    made = post(client, keys["cms"], {"shopper_id": "coffee_fan", "max_wait_ms": 60_000})
    assert made.status_code == 200
    until(
        lambda: (
            client.get(
                "/v1/placements/home_hero/banners/coffee_fan?fallback=false",
                headers={"X-API-Key": keys["cms"]},
            ).status_code
            == 200
        ),
        "the stored banner",
    )
    # The shopper's profile changes: their stored banner is stale, so a new one is made.
    profile = {"segment": "regular", "interests": ["tea"]}
    changed = client.put(
        "/v1/shoppers/coffee_fan",
        content=json.dumps(profile),
        headers={"X-API-Key": keys["cms"], "Content-Type": "application/json"},
    )
    assert changed.status_code in (200, 201), changed.text
    calls = len(engine.requests)
    answer = post(client, keys["cms"], {"shopper_id": "coffee_fan", "max_wait_ms": 60_000})
    assert answer.json()["source"] == "live"
    assert len(engine.requests) > calls


def test_strict_past_the_deadline_is_a_503_with_retry_after(
    app_and_keys: tuple[TestClient[Litestar], dict[str, str], GatedEngine],
) -> None:
    client, keys, _ = app_and_keys
    response = post(
        client, keys["cms"], {"shopper_id": "coffee_fan", "max_wait_ms": 20, "strict": True}
    )
    assert response.status_code == 503
    assert response.json()["type"].endswith("engine-unavailable")
    assert response.headers["Retry-After"]


@pytest.mark.parametrize("wait", [-1, 120_001, "soon"])
def test_max_wait_ms_out_of_range_is_a_400_naming_it(
    app_and_keys: tuple[TestClient[Litestar], dict[str, str], GatedEngine], wait: object
) -> None:
    client, keys, _ = app_and_keys
    response = post(client, keys["cms"], {"shopper_id": "coffee_fan", "max_wait_ms": wait})
    assert response.status_code == 400
    assert "max_wait_ms" in json.dumps(response.json()["errors"])
