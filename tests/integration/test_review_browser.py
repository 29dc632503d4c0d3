"""The studio's review page in a real headless Chromium (the studio browser test's fixtures).

Review is switched on for the hero placement and a job makes its banners, all pending. A
marketer signs in, sees each pending banner drawn as a banner, rejects one with a reason and
approves all the others at once; the read path then serves the approved ones and never the
rejected one.

The service is the real app under uvicorn (a thread of this process) with the scripted engine
and the tiny catalog, and its jobs run in process: what is tested here is the page, the
browser's forms (CSRF, redirects) and the decisions' effect, not the model (the studio's own
browser test runs the real one). Screenshots go to MARQUEE_SCREENSHOTS_DIR when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, expect

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.runtime import load_data
from app.server.app import create_app
from tests.fakes import GOOD, ScriptedEngine, make_pipeline
from tests.integration.test_studio_browser import browser, shots  # noqa: F401 (fixtures)
from tests.test_api import _keys

pytestmark = pytest.mark.integration

HERO = "home_hero"
SHOPPERS = ("coffee_fan", "coffee_two", "runner", "camper", "newcomer")
ALL_MADE = len(SHOPPERS) + 2 + 1  # every shopper, the two segments, everyone else


@dataclass
class Served:
    base_url: str
    keys: dict[str, str]

    def call(self, method: str, path: str, key: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.base_url}{path}",
            json=body,
            headers={"X-API-Key": self.keys[key]},
            timeout=30,
        )


@pytest.fixture
def reviewing(
    tmp_path: Path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> Iterator[Served]:
    """The app on a free port, its hero placement under review, a job's banners pending."""
    products = tmp_path / "products.jsonl"
    products.write_text("".join(p.model_dump_json() + "\n" for p in tiny_catalog.products))
    people = tmp_path / "shoppers.jsonl"
    people.write_text("".join(s.model_dump_json() + "\n" for s in tiny_shoppers.all()))
    settings = test_settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'review.db'}",
            "products_path": products,
            "shoppers_path": people,
        }
    )
    # Playwright's loop runs in this thread (the browser fixture is set up first): another.
    with ThreadPoolExecutor(1) as aside:
        keys = aside.submit(asyncio.run, _keys(settings.database)).result()
    engine = ScriptedEngine([GOOD] * 100)
    app = create_app(
        settings,
        lambda s: make_pipeline(engine, *load_data(s), s),
        jobs_in_process=True,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}", keys)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not _ready(served.base_url):
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.05)
        on = {"required": True}
        switched = served.call("PUT", f"/v1/placements/{HERO}/review", "marketer", on)
        assert switched.status_code == 200, switched.text
        started = served.call("POST", "/v1/jobs", "admin", {"placement": HERO})
        assert started.status_code == 202, started.text
        while (job := served.call("GET", f"/v1/jobs/{started.json()['id']}", "admin").json())[
            "state"
        ] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline + 30, job
            time.sleep(0.05)
        assert job["state"] == "succeeded" and job["done"] == ALL_MADE, job
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _ready(base_url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{base_url}/readyz").status_code == 200
    return False


def test_a_marketer_rejects_one_banner_and_approves_the_rest(
    reviewing: Served,
    browser: Browser,  # noqa: F811
    shots: Path,  # noqa: F811
) -> None:
    served = reviewing
    read = f"/v1/placements/{HERO}/banners"
    assert served.call("GET", f"{read}/coffee_fan", "cms").status_code == 404  # all pending

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(f"{served.base_url}/studio/review")
    expect(page).to_have_url(re.compile(r"/studio/login\?next=/studio/review$"))
    page.fill("#key", served.keys["marketer"])
    page.click("#sign-in")
    expect(page).to_have_url(re.compile(r"/studio/review$"))

    items = page.locator("article.review-item")
    expect(items).to_have_count(ALL_MADE)
    fan = page.locator('article.review-item[data-audience="shopper"][data-subject="coffee_fan"]')
    expect(fan.locator(".banner .headline")).to_have_text(str(GOOD["headline"]))
    expect(fan.locator(".banner .subheadline")).to_have_text(str(GOOD["subheadline"]))
    expect(fan.locator(".banner .cta")).to_have_text(str(GOOD["cta"]))
    expect(fan.locator(".banner .tile")).to_have_count(2)
    expect(fan.locator(".banner .tile .img").first).to_be_visible()
    expect(fan.locator(".banner .tile").first).to_contain_text("USD")
    expect(fan.locator(".review-state")).to_have_text("pending")
    expect(fan).to_contain_text("hero_banner v1 (production)")
    expect(page.locator("#placements")).to_contain_text("required")
    expect(page.locator("#nav-review")).to_be_visible()
    page.screenshot(path=str(shots / "review-queue.png"), full_page=True)

    # A rejection needs a reason: the browser will not send the form without one.
    fan.locator("button.reject").click()
    expect(items).to_have_count(ALL_MADE)
    fan.locator("input.reason").fill("Too pushy for a first visit")
    fan.locator("button.reject").click()
    expect(page.locator("#notice")).to_contain_text(
        "Rejected the banner for shopper coffee_fan in home_hero."
    )
    expect(items).to_have_count(ALL_MADE - 1)  # it left the pending queue
    expect(fan).to_have_count(0)

    page.click("#approve-all-button")
    expect(page.locator("#notice")).to_contain_text(f"Approved {ALL_MADE - 1} banner(s).")
    expect(page.locator("#empty")).to_be_visible()

    page.select_option("#filter-state", "rejected")
    page.click("#filter")
    expect(items).to_have_count(1)
    expect(fan.locator(".review-state")).to_have_text("rejected")
    expect(fan).to_contain_text("Too pushy for a first visit")
    expect(fan.locator(".chip.stale")).to_contain_text("rejected: Too pushy for a first visit")
    page.screenshot(path=str(shots / "review-rejected.png"), full_page=True)

    # The read path: the rejected banner is never served (the segment's is), the rest are.
    answer = served.call("GET", f"{read}/coffee_fan", "cms")
    assert answer.status_code == 200 and answer.json()["source"] == "segment", answer.text
    for shopper_id in SHOPPERS[1:]:
        answer = served.call("GET", f"{read}/{shopper_id}", "cms")
        assert answer.json()["source"] == "shopper", answer.text
    queue = served.call("GET", "/v1/review?state=all&limit=200", "marketer").json()
    decided = {(i["audience"], i["subject"]): i for i in queue["items"]}
    assert decided[("shopper", "coffee_fan")]["review"] == "rejected"
    assert decided[("shopper", "coffee_fan")]["reviewed_by"] == "test-marketer"
    assert {i["review"] for k, i in decided.items() if k != ("shopper", "coffee_fan")} == {
        "approved"
    }
    audit = served.call("GET", "/v1/audit?template=hero_banner", "cms").json()
    actions = [a["action"] for a in audit if a["action"].startswith("review.")]
    assert actions.count("review.approve") == ALL_MADE - 1 and "review.reject" in actions
