"""End to end: the real service with a real managed vLLM, called over HTTP like a CMS would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT
from app.generation.vllm_server import free_port
from app.pipeline import Pipeline
from tests.integration.conftest import RunningService
from tests.integration.test_real_models import assert_grounded

pytestmark = pytest.mark.integration


def test_banners_over_http_are_valid_grounded_and_stored(
    service: RunningService, pipeline: Pipeline
) -> None:
    from app.domain import Banner

    for shopper in ("u004", "u010", "someone-new"):
        response = service.post("/v1/banners", {"shopper_id": shopper, "count": 2})
        assert response.status_code == 200, response.text
        banners = [Banner.model_validate(b) for b in response.json()["banners"]]
        assert len(banners) == 2
        for banner in banners:
            assert banner.engine == "vllm"
            assert_grounded(pipeline, banner, shopper)
        stored = service.get(f"/v1/banners/{banners[0].id}")
        assert stored.status_code == 200 and stored.json()["id"] == banners[0].id
    again = service.post("/v1/banners", {"shopper_id": "u004", "count": 2})
    assert again.json()["cached"] is True


def test_homepage_over_http(service: RunningService, pipeline: Pipeline) -> None:
    from app.domain import Banner

    response = service.post("/v1/homepages", {"shopper_id": "u002"})
    assert response.status_code == 200, response.text
    sections = response.json()["homepage"]["sections"]
    assert [s["template"] for s in sections] == [
        "hero_banner",
        "grid_heading",
        "category_spotlight",
    ]
    shown = [p["id"] for s in sections for p in s["banner"]["products"]]
    assert len(shown) == len(set(shown)), "no product in two sections"
    for section in sections:
        banner = Banner.model_validate(section["banner"])
        assert banner.products
        for product in banner.products:
            assert pipeline.catalog.get(product.id) is not None


def test_bad_inputs_and_keys_over_http(service: RunningService) -> None:
    missing_key = service.post("/v1/banners", {"shopper_id": "u004"}, key=None)
    assert missing_key.status_code == 401
    wrong_scope = service.post("/v1/banners", {"shopper_id": "u004"}, key="marketer")
    assert wrong_scope.status_code == 403
    bad = service.post("/v1/banners", {"shopper_id": "u004", "count": 0})
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "count" in bad.text
    unknown = service.post("/v1/banners", {"shopper_id": "u004", "template": "nope"})
    assert unknown.status_code == 404 and "hero_banner" in unknown.json()["templates"]


def test_semantic_product_search_over_http(service: RunningService) -> None:
    response = service.get("/v1/products/search?q=pour-over%20coffee%20kettle&limit=5")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert results[0]["product"]["category"] == "Coffee & Tea"
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_operations_endpoints(service: RunningService) -> None:
    assert service.get("/healthz", key=None).json() == {"status": "ok"}
    ready = service.get("/readyz", key=None).json()
    assert ready["ready"] is True and ready["pipeline"] is True and ready["engine"] is True
    metrics = service.get("/metrics", key=None).text
    assert "marquee_stage_seconds_bucket" in metrics and "marquee_output_tokens_total" in metrics


def test_catalog_and_shopper_writes_over_http(service: RunningService) -> None:
    # Out of stock, so no other test's banners can show a product their pipeline lacks.
    poles = {
        "id": "e2e-poles",
        "title": "Carbon Trekking Poles",
        "description": "Collapsible carbon fibre trekking poles with cork grips for long hikes.",
        "brand": "Ridgeline",
        "category": "Outdoor",
        "tags": ["hiking", "trekking"],
        "price": 89.0,
        "in_stock": False,
        "url": "https://shop.example.com/p/e2e-poles",
    }
    made = service.send("PUT", "/v1/products", {"products": [poles]}, key="admin")
    assert made.status_code == 200, made.text
    assert made.json()["created"] == ["e2e-poles"] and made.json()["embedded"] == 1
    found = service.get("/v1/products/search?q=trekking%20poles%20for%20hiking&in_stock_only=false")
    assert found.json()["results"][0]["product"]["id"] == "e2e-poles"
    assert service.send("PUT", "/v1/products", {"products": [poles]}).status_code == 403

    profile = service.send("PUT", "/v1/shoppers/e2e-walker", {"interests": ["hiking boots"]})
    assert profile.status_code == 200, profile.text
    coffee = service.get("/v1/products/search?q=coffee%20grinder&limit=2").json()["results"]
    events = [
        {"shopper_id": "e2e-walker", "product_id": hit["product"]["id"], "type": "purchase"}
        for hit in coffee
    ]
    accepted = service.post("/v1/events", {"events": events})
    assert accepted.status_code == 202, accepted.text
    walker = service.get("/v1/shoppers/e2e-walker").json()
    assert walker["events"] == 2 and walker["interests"] == ["hiking boots"]
    response = service.post("/v1/banners", {"shopper_id": "e2e-walker", "template": "grid_heading"})
    assert response.status_code == 200, response.text
    shown = {p["id"] for p in response.json()["banners"][0]["products"]}
    assert shown and not shown & {hit["product"]["id"] for hit in coffee}  # bought: not shown again
    bad = service.post("/v1/events", {"events": [dict(events[0], product_id="nope")]})
    assert bad.status_code == 400 and "events[0].product_id" in bad.text

    assert service.send("DELETE", "/v1/products/e2e-poles", None, key="admin").status_code == 204
    assert service.get("/v1/products/e2e-poles").status_code == 404
    found = service.get("/v1/products/search?q=trekking%20poles%20for%20hiking&in_stock_only=false")
    assert "e2e-poles" not in {hit["product"]["id"] for hit in found.json()["results"]}


def _vllm_processes(port: int) -> list[int]:
    """Pids whose command line is a vLLM server on ``port``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in args and str(port).encode() in args:
            found.append(int(entry.name))
    return found


def _wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_a_crashed_vllm_is_started_again(service: RunningService) -> None:
    port = int(service.vllm_url.rsplit(":", 1)[1])
    (leader,) = _vllm_processes(port)
    before = service.get("/readyz", key=None).json()["engine_restarts"]
    os.killpg(leader, signal.SIGKILL)  # the whole server at once, as the OOM killer would

    # While it is down: strict callers get a 503 to retry, others flagged fallback copy.
    strict = service.post("/v1/banners", {"shopper_id": "u010", "strict": True})
    assert strict.status_code == 503 and strict.headers["Retry-After"], strict.text
    assert strict.headers["content-type"].startswith("application/problem+json")
    assert _wait_for(lambda: service.get("/readyz", key=None).status_code == 503, 30)

    assert _wait_for(lambda: service.get("/readyz", key=None).status_code == 200, 300), (
        "vLLM was not started again"
    )
    ready = service.get("/readyz", key=None).json()
    assert ready["engine_restarts"] == before + 1
    assert leader not in _vllm_processes(port)
    response = service.post("/v1/banners", {"shopper_id": "u010", "count": 1})
    assert response.status_code == 200, response.text
    (banner,) = response.json()["banners"]
    assert not [flag for flag in banner["flags"] if flag.startswith("engine_error")]
    metrics = service.get("/metrics", key=None).text
    assert f"marquee_engine_restarts_total {before + 1}.0" in metrics


def test_shutdown_while_vllm_is_starting_leaves_no_orphan(tmp_path: Path) -> None:
    vllm_port = free_port()
    env = {
        **os.environ,
        "MARQUEE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db'}",
        "MARQUEE_VLLM_PORT": str(vllm_port),
        "MARQUEE_ENGINE": "vllm",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _vllm_processes(vllm_port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _vllm_processes(vllm_port), "the service never started vLLM"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    deadline = time.monotonic() + 30
    while _vllm_processes(vllm_port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _vllm_processes(vllm_port) == [], "vLLM outlived a service stopped during start-up"
