"""The HTTP API around a scripted engine: auth, problem details, caching, limits, health.

The real service with a managed vLLM is tested end to end in tests/integration/test_service.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import EngineError
from app.server.app import create_app
from app.store.repositories import ApiKeyStore
from tests.fakes import GOOD, ScriptedEngine, SlowEngine, make_pipeline, wait_ready


async def _keys(url: str) -> dict[str, str]:
    return {
        scope: await ApiKeyStore.create_in(url, f"test-{scope}", [scope])
        for scope in ("cms", "marketer", "admin")
    }


@pytest.fixture
def api(
    database_url: str,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> Iterator[tuple[TestClient, dict[str, str], ScriptedEngine]]:  # type: ignore[type-arg]
    settings = test_settings.model_copy(
        update={
            "database_url": database_url,
            "homepage_sections": ["hero_banner", "grid_heading"],
            "max_in_flight_requests": 4,
        }
    )
    keys = asyncio.run(_keys(settings.database))
    engine = ScriptedEngine([GOOD] * 50)
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    with TestClient(app) as client:
        wait_ready(client)
        yield client, keys, engine


def post(client: TestClient[Litestar], key: str | None, body: object, path: str = "/v1/banners"):
    headers = {"X-API-Key": key} if key else {}
    return client.post(
        path, content=json.dumps(body), headers={**headers, "Content-Type": "application/json"}
    )


def test_banner_round_trip_and_fetch_by_id(api) -> None:
    client, keys, _ = api
    response = post(client, keys["cms"], {"shopper_id": "coffee_fan", "count": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cached"] is False and len(body["banners"]) == 2
    assert response.headers["ETag"] and "max-age" in response.headers["Cache-Control"]
    assert response.headers["X-Request-ID"]
    banner = body["banners"][0]
    fetched = client.get(f"/v1/banners/{banner['id']}", headers={"X-API-Key": keys["cms"]})
    assert fetched.status_code == 200 and fetched.json()["headline"] == banner["headline"]
    again = client.get(
        f"/v1/banners/{banner['id']}",
        headers={"X-API-Key": keys["cms"], "If-None-Match": fetched.headers["ETag"]},
    )
    assert again.status_code == 304


def _cache_hits(client: TestClient[Litestar]) -> float:
    """The counter as /metrics shows it (metrics live as long as the process: read deltas)."""
    found = re.search(r"^marquee_cache_hits_total (\S+)$", client.get("/metrics").text, re.M)
    assert found is not None
    return float(found.group(1))


def test_identical_requests_are_served_from_the_store(api) -> None:
    client, keys, engine = api
    hits = _cache_hits(client)
    first = post(client, keys["cms"], {"shopper_id": "runner"}).json()
    calls = len(engine.requests)
    second = post(client, keys["cms"], {"shopper_id": "runner"}).json()
    assert second["cached"] is True and len(engine.requests) == calls
    assert [b["id"] for b in second["banners"]] == [b["id"] for b in first["banners"]]
    assert _cache_hits(client) == hits + 1
    assert "marquee_banners_total" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("key", "status"), [(None, 401), ("mq_nope_nothing", 401), ("marketer", 403)]
)
def test_keys_and_scopes(api, key: str | None, status: int) -> None:
    client, keys, _ = api
    response = post(client, keys.get(key or "", key), {"shopper_id": "runner"})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status


def test_admin_may_do_what_cms_may(api) -> None:
    client, keys, _ = api
    assert post(client, keys["admin"], {"shopper_id": "runner"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"shopper_id": "runner", "count": 99}, "count"),
        ({"shopper_id": "bad id with spaces"}, "shopper_id"),
        ({"placement": "home_hero"}, "shopper_id"),
        ({"shopper_id": "runner", "filters": {"min_price": 10, "max_price": 1}}, "filters"),
        ({"shopper_id": "runner", "surprise": 1}, "surprise"),
        # Thirty stated interests: more than a profile holds (MAX_INTERESTS), named as such.
        (
            {
                "shopper_id": "p1",
                "profile": {"id": "p1", "interests": [f"i{n}" for n in range(30)]},
            },
            "interests",
        ),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(api, body: object, field: str) -> None:
    client, keys, _ = api
    response = post(client, keys["cms"], body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["title"] == "Invalid request"
    assert field in json.dumps(problem["errors"]) or field in problem["detail"]


def test_broken_json_and_oversized_bodies(api) -> None:
    client, keys, _ = api
    broken = client.post(
        "/v1/banners",
        content=b"{not json",
        headers={"X-API-Key": keys["cms"], "Content-Type": "application/json"},
    )
    assert broken.status_code == 400
    huge = post(
        client, keys["cms"], {"shopper_id": "runner", "profile": {"interests": ["x" * 70] * 2000}}
    )
    assert huge.status_code == 413
    assert huge.headers["content-type"].startswith("application/problem+json")


def test_unknown_template_is_404_with_the_valid_names(api) -> None:
    client, keys, _ = api
    response = post(client, keys["cms"], {"shopper_id": "runner", "template": "nope"})
    assert response.status_code == 404
    assert "hero_banner" in response.json()["templates"]
    missing = client.get("/v1/banners/bnr_missing", headers={"X-API-Key": keys["cms"]})
    assert missing.status_code == 404


def test_engine_down_gives_fallback_or_503_in_strict_mode(api) -> None:
    client, keys, engine = api
    engine.answers = [EngineError("connection refused")] * 4
    lenient = post(client, keys["cms"], {"shopper_id": "camper"})
    assert lenient.status_code == 200 and lenient.json()["banners"][0]["fallback"] is True
    strict = post(client, keys["cms"], {"shopper_id": "camper", "strict": True})
    assert strict.status_code == 503 and strict.headers["Retry-After"]
    assert strict.json()["type"] == "urn:marquee:problem:engine-unavailable"


def test_homepage_sections_are_disjoint(api) -> None:
    client, keys, engine = api
    engine.answers = [GOOD, dict(GOOD, layout="grid", products=[1, 2])]
    response = post(client, keys["cms"], {"shopper_id": "coffee_fan"}, "/v1/homepages")
    assert response.status_code == 200, response.text
    sections = response.json()["homepage"]["sections"]
    assert [s["template"] for s in sections] == ["hero_banner", "grid_heading"]
    shown = [p["id"] for s in sections for p in s["banner"]["products"]]
    assert len(shown) == len(set(shown))
    unknown = post(client, keys["cms"], {"shopper_id": "x", "sections": ["nope"]}, "/v1/homepages")
    assert unknown.status_code == 404


def test_health_readiness_and_docs(api) -> None:
    client, _, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["pipeline"] and ready["engine"]
    # The hardware profile's choices, as the loaders follow them.
    from app.runtime import hardware_choices

    chosen = hardware_choices(client.app.state.services.settings)
    assert ready["hardware"]["embedder"]["dtype"] == chosen["embedder"].dtype
    assert set(ready["hardware"]) == {"embedder", "llm", "vllm"}
    schema = client.get("/docs/openapi.json").json()
    assert "/v1/banners" in schema["paths"]


def test_not_ready_while_the_pipeline_cannot_load(tmp_path: Path, test_settings: Settings) -> None:
    settings = test_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    )
    keys = asyncio.run(_keys(settings.database))

    def fail(_: Settings):
        raise EngineError("vLLM exited during start-up")

    with TestClient(create_app(settings, fail)) as client:
        deadline = time.monotonic() + 5
        while "error" not in client.get("/readyz").json() and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "vLLM exited" in ready.json()["error"]
        response = post(client, keys["cms"], {"shopper_id": "runner"})
        assert response.status_code == 503 and "vLLM exited" in response.json()["detail"]
        assert response.json()["type"] == "urn:marquee:problem:not-ready"


async def test_concurrent_requests_are_all_answered_and_stored(
    database_url: str,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> None:
    """SQLite has one writer (requests must queue for it), PostgreSQL many: either way every
    request is answered and stored, never a 500."""
    from litestar.testing import AsyncTestClient

    settings = test_settings.model_copy(
        update={
            "database_url": database_url,
            "max_in_flight_requests": 64,
        }
    )
    key = await ApiKeyStore.create_in(settings.database, "cms", ["cms"])
    engine = ScriptedEngine([GOOD] * 200)
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    async with AsyncTestClient(app) as client:
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        responses = await asyncio.gather(
            *(
                client.post(
                    "/v1/banners",
                    json={"profile": {"id": f"p{i}", "interests": ["tea"]}},
                    headers={"X-API-Key": key},
                )
                for i in range(24)
            )
        )
        assert [r.status_code for r in responses] == [200] * 24
        for response in responses:
            banner_id = response.json()["banners"][0]["id"]
            stored = await client.get(f"/v1/banners/{banner_id}", headers={"X-API-Key": key})
            assert stored.status_code == 200


def test_catalog_pages_search_and_lookup(api) -> None:
    client, keys, _ = api
    headers = {"X-API-Key": keys["cms"]}
    page = client.get("/v1/products?limit=3&offset=2", headers=headers).json()
    assert page["total"] == 10 and page["offset"] == 2
    assert [p["id"] for p in page["products"]] == ["C3", "C4", "T1"]
    coffee = client.get("/v1/products?category=coffee", headers=headers).json()
    assert coffee["total"] == 4
    hits = client.get("/v1/products/search?q=camping%20headlamp&limit=2", headers=headers)
    assert hits.status_code == 200
    assert [h["product"]["id"] for h in hits.json()["results"]] == ["K2", "K1"]
    cheap = client.get("/v1/products/search?q=camping&max_price=100", headers=headers).json()
    assert all(h["product"]["price"] <= 100 for h in cheap["results"])
    assert "C4" not in [
        h["product"]["id"]
        for h in client.get(
            "/v1/products/search?q=coffee%20grinder%20beans", headers=headers
        ).json()["results"]
    ]
    assert client.get("/v1/products/K1", headers=headers).json()["title"] == "Camping Tent"
    assert client.get("/v1/products/NOPE", headers=headers).status_code == 404
    for bad in (
        "/v1/products/search?q=",
        "/v1/products?limit=5000",
        "/v1/products/search?q=x&limit=0",
    ):
        response = client.get(bad, headers=headers)
        assert response.status_code == 400, bad
        assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/products").status_code == 401


# Bodies that are not UTF-8: raw bytes, inside a string, in a key.
NOT_UTF8 = (b"\xff\xfe", b'{"shopper_id": "ab\xff"}', b'{"\xc3": 1}')
PATH_VALUES = {
    "name": "hero_banner",
    "label": "production",
    "placement": "home_hero",
    "banner_id": "bnr_x",
    "shopper_id": "runner",
    "product_id": "C1",
    "version": "1",
    "key_id": "abc123",
    "campaign_id": "spring_sale",
}


def _body_routes(app: Litestar) -> list[tuple[str, str]]:
    """Every (method, path) whose handler reads a request body, path parameters filled in."""
    found = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            params = handler.parsed_fn_signature.parameters
            reads_body = "data" in params or (
                "request" in params and handler.handler_name in {"import_file"}
            )
            if not reads_body or route.path.startswith("/studio"):
                continue
            path = re.sub(r"\{(\w+):\w+\}", lambda m: PATH_VALUES[m.group(1)], route.path)
            found += [(method, path) for method in handler.http_methods]
    return found


def test_a_body_that_is_not_utf8_is_a_400_problem_everywhere(api) -> None:
    client, keys, _ = api
    routes = _body_routes(client.app)
    # banners, homepages, feedback; products, shoppers, events; versions, import, labels,
    # previews, experiments; campaigns; jobs; keys; review decisions and settings; webhooks
    assert len(routes) == 17 and ("POST", "/v1/templates/hero_banner/import") in routes, routes
    for method, path in routes:
        for body in NOT_UTF8:
            response = client.request(
                method,
                path,
                content=body,
                headers={"X-API-Key": keys["admin"], "Content-Type": "application/json"},
            )
            assert response.status_code == 400, (method, path, body, response.text)
            problem = response.json()
            assert problem["type"] == "urn:marquee:problem:invalid-request", (method, path)


def test_busy_not_ready_and_engine_down_are_told_apart_by_type(api, tmp_path: Path) -> None:
    client, keys, engine = api
    limit = client.app.state.services.limit
    limit.current = limit.limit  # every slot taken
    try:
        busy = post(client, keys["cms"], {"shopper_id": "runner", "count": 3})
    finally:
        limit.current = 0
    assert busy.status_code == 503 and busy.headers["Retry-After"]
    engine.answers = [EngineError("connection refused")] * 4
    down = post(client, keys["cms"], {"shopper_id": "camper", "strict": True})
    types = {busy.json()["type"], down.json()["type"]}
    assert types == {"urn:marquee:problem:busy", "urn:marquee:problem:engine-unavailable"}


def test_a_cached_answer_needs_no_generation_slot(api) -> None:
    client, keys, _ = api
    first = post(client, keys["cms"], {"shopper_id": "coffee_two"})
    assert first.status_code == 200
    limit = client.app.state.services.limit
    limit.current = limit.limit
    try:
        again = post(client, keys["cms"], {"shopper_id": "coffee_two"})
        fresh = post(client, keys["cms"], {"shopper_id": "coffee_fan", "count": 2})
    finally:
        limit.current = 0
    assert again.status_code == 200 and again.json()["cached"] is True
    assert fresh.status_code == 503


def test_bad_path_parameters_are_400_naming_the_parameter(api) -> None:
    client, keys, _ = api
    headers = {"X-API-Key": keys["admin"]}
    for path, field in [
        ("/v1/banners/" + "x" * 65, "banner_id"),
        ("/v1/products/a%20b", "product_id"),
        ("/v1/shoppers/%FF", "shopper_id"),
        ("/v1/templates/Hero-Banner", "name"),
        ("/v1/experiments/NOPE!", "placement"),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["errors"][0]["field"] == field


@pytest.fixture
def limited(
    tmp_path: Path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> Iterator[tuple[TestClient, dict[str, str]]]:  # type: ignore[type-arg]
    settings = test_settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'limits.db'}",
            "rate_limit_generations_per_minute": 3,
            "rate_limit_requests_per_minute": 5,
            "rate_limit_reads_per_minute": 2,
            "banner_cache_ttl_s": 0,
        }
    )
    keys = asyncio.run(_keys(settings.database))
    engine = ScriptedEngine([GOOD] * 50)
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    with TestClient(app) as client:
        wait_ready(client)
        yield client, keys


def test_each_key_has_its_own_budgets_for_generations_and_requests(limited) -> None:
    client, keys = limited
    made = [post(client, keys["cms"], {"shopper_id": "runner"}) for _ in range(4)]
    assert [r.status_code for r in made] == [200, 200, 200, 429]
    refused = made[-1]
    assert refused.json()["type"] == "urn:marquee:problem:rate-limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert made[0].headers["RateLimit-Limit"] == "3"
    # Reads have a budget of their own: the spent generation budget does not touch it.
    reads = [client.get("/v1/products", headers={"X-API-Key": keys["cms"]}) for _ in range(6)]
    assert [r.status_code for r in reads] == [200] * 5 + [429]
    # The read path has a third: spent requests do not touch it (the banners made above were
    # kept as the shopper's, for reads).
    served = [
        client.get("/v1/placements/home_hero/banners/runner", headers={"X-API-Key": keys["cms"]})
        for _ in range(3)
    ]
    assert [r.status_code for r in served] == [200, 200, 429]
    # Another key is not slowed by the first one's spending.
    assert post(client, keys["admin"], {"shopper_id": "runner"}).status_code == 200
    # Probes are never limited.
    assert all(client.get("/healthz").status_code == 200 for _ in range(10))


async def test_identical_requests_in_flight_share_one_generation(
    tmp_path: Path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    from litestar.testing import AsyncTestClient

    settings = test_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}
    )
    key = await ApiKeyStore.create_in(settings.database, "cms", ["cms"])
    engine = SlowEngine([GOOD] * 20)
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    async with AsyncTestClient(app) as client:
        for _ in range(200):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)

        def ask(shopper: str, strict: bool = False) -> Any:
            body = {"shopper_id": shopper, "strict": strict}
            return client.post("/v1/banners", json=body, headers={"X-API-Key": key})

        same = await asyncio.gather(*(ask("runner", strict=i % 2 == 0) for i in range(4)))
        assert [r.status_code for r in same] == [200] * 4
        assert len({r.json()["banners"][0]["id"] for r in same}) == 1
        assert sorted(r.json()["cached"] for r in same) == [False, True, True, True]
        assert len(engine.requests) == 1  # one generation for the four
        others = await asyncio.gather(ask("camper"), ask("coffee_fan"))
        assert [r.status_code for r in others] == [200, 200] and len(engine.requests) == 3
