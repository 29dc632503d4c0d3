"""The studio page in a real headless Chromium, against the real service and its vLLM.

A marketer signs in, breaks the template and sees the lint error at its line, fixes it,
previews real banners for a shopper, saves, publishes, and the API then serves the new version.
Screenshots go to MARQUEE_SCREENSHOTS_DIR when set (`make screenshots`), else to a temp dir.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.conftest import RunningService

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("MARQUEE_CHROMIUM", "/usr/bin/chromium"))
# Without the networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (Debian's chromium package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MARQUEE_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(page: Page, service: RunningService, key: str) -> None:
    page.fill("#key", key)
    page.click("#sign-in")


def test_a_marketer_edits_previews_and_publishes(
    service: RunningService, browser: Browser, shots: Path
) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(180_000)  # a preview generates with the real model on 2 cores

    page.goto(f"{service.base_url}/studio/")
    expect(page).to_have_url(re.compile(r"/studio/login\?next=/studio/?$"))
    sign_in(page, service, service.keys["cms"])  # a CMS key may not edit templates
    expect(page.locator("#login-error")).to_contain_text("no marketer scope")
    sign_in(page, service, service.keys["marketer"])
    expect(page.locator("#templates")).to_contain_text("hero_banner")
    expect(page.locator("#templates")).to_contain_text("production → v1")
    page.screenshot(path=str(shots / "studio-templates.png"), full_page=True)

    page.click("text=hero_banner")
    original = page.input_value("#source")
    bad_line = len(original.splitlines()) + 1
    page.fill("#source", original.rstrip("\n") + "\n{{ shoper.name }}\n")
    page.click("#save")
    expect(page.locator("#error")).to_contain_text("Not saved")
    expect(page.locator(f'.ln.bad[data-line="{bad_line}"]')).to_be_visible()
    expect(page.locator("#problems")).to_contain_text(f"line {bad_line}: unknown variable 'shoper'")
    page.screenshot(path=str(shots / "studio-lint-error.png"), full_page=True)

    fixed = original.rstrip("\n") + "\nKeep the headline under six words.\n"
    page.fill("#source", fixed)
    page.select_option("#shopper", "u004")
    page.fill("#generate", "1")
    page.click("#preview")
    banner = page.locator("#preview-result .banner").first
    expect(banner.locator(".headline")).not_to_be_empty()
    expect(banner.locator(".tile").first).to_be_visible()
    expect(page.locator("#preview-result")).to_contain_text("Keep the headline under six words.")
    page.screenshot(path=str(shots / "studio-preview.png"), full_page=True)

    page.fill("#message", "shorter headlines")
    page.click("#save")
    expect(page.locator("#notice")).to_contain_text("Saved version 2")
    page.click('button.publish[data-version="2"]')
    expect(page.locator("#notice")).to_contain_text("'production' now serves version 2 (was 1)")
    page.click('#versions tr[data-version="2"] >> text=diff')
    expect(page.locator("#diff .add")).to_contain_text("+Keep the headline under six words.")
    page.screenshot(path=str(shots / "studio-published.png"), full_page=True)

    served = service.post("/v1/banners", {"shopper_id": "u010", "template": "hero_banner"})
    assert served.status_code == 200, served.text
    banner_json = served.json()["banners"][0]
    assert (banner_json["template_version"], banner_json["template_label"]) == (2, "production")
    audit = service.get("/v1/audit?template=hero_banner").json()
    assert [(a["action"], a["actor"]) for a in audit[:2]] == [
        ("move_label", "e2e-marketer"),
        ("save", "e2e-marketer"),
    ]
