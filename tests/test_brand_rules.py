"""The brand rules (name, voice, rules, banned terms) as the versioned document ``brand`` in the
template store: seeded from prompts/brand.yaml with MARQUEE_BANNED_TERMS written in, linted,
saved, diffed, previewed and published like a template, through the real app on SQLite and
PostgreSQL; what the published version bans, the guards refuse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar import Litestar
from litestar.testing import TestClient

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.domain import BannerInputs
from app.pregeneration.freshness import Current, stale_reasons
from app.prompting.sandbox import TemplateError
from app.prompting.templates import (
    BRAND,
    PRODUCTION,
    parse_brand,
    parse_template,
    seeded_brand_text,
)
from app.store.db import Database
from app.store.templates import TemplateStore
from tests.fakes import GOOD, wait_ready
from tests.test_api import _keys
from tests.test_studio import HERO, call, sign_in, start

Client = TestClient[Litestar]
BRAND_FILE_TEXT = (PROJECT_ROOT / "prompts" / "brand.yaml").read_text()


@pytest.fixture
def brand_api(
    database_url: str, test_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> Iterator[tuple[Client, dict[str, str], Settings]]:
    settings = test_settings.model_copy(update={"database_url": database_url})
    keys = asyncio.run(_keys(settings.database))
    with start(settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        yield client, keys, settings


def stored(client: Client, keys: dict[str, str], version: int) -> dict[str, Any]:
    answer = call(client, "GET", f"/v1/templates/brand/versions/{version}", keys["cms"])
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def save_brand(client: Client, keys: dict[str, str], source: str, base: int) -> Any:
    body = {"source": source, "message": "brand edit"}
    return call(
        client,
        "POST",
        "/v1/templates/brand/versions",
        keys["marketer"],
        body,
        **{"If-Match": f'"{base}"'},
    )


def banning(source: str, *terms: str) -> str:
    """``source`` with ``terms`` added to its banned terms (the YAML list stays as written)."""
    assert "banned_terms:\n" in source
    added = "".join(f"- {term}\n" for term in terms)
    return source.replace("banned_terms:\n", "banned_terms:\n" + added, 1)


def hero_for(client: Client, keys: dict[str, str], shopper: str = "coffee_fan") -> dict[str, Any]:
    answer = call(client, "POST", "/v1/banners", keys["cms"], {"shopper_id": shopper})
    assert answer.status_code in (200, 201), answer.text
    banner: dict[str, Any] = answer.json()["banners"][0]
    return banner


def test_the_brand_rules_are_seeded_with_the_services_banned_terms(brand_api) -> None:
    client, keys, settings = brand_api
    first = stored(client, keys, 1)
    assert first["labels"] == [PRODUCTION] and first["author"] == "seed"
    assert first["source"].startswith(BRAND_FILE_TEXT)  # the file, as the marketer wrote it
    brand = parse_brand(first["source"])
    assert brand["name"] == "Kestrel"
    assert brand["banned_terms"] == settings.banned_terms  # written in, so the studio edits them
    listed = {t["name"]: t for t in call(client, "GET", "/v1/templates", keys["cms"]).json()}
    assert listed[BRAND]["placement"] is None and "banned terms" in listed[BRAND]["description"]
    assert hero_for(client, keys)["brand_version"] == 1


def test_a_published_ban_refuses_copy_and_a_rollback_lifts_it(brand_api) -> None:
    """The scripted model always writes GOOD ("Brew better mornings")."""
    client, keys, _ = brand_api
    before = hero_for(client, keys)
    assert not before["fallback"] and before["headline"] == GOOD["headline"]

    saved = save_brand(client, keys, banning(stored(client, keys, 1)["source"], "mornings"), 1)
    assert saved.status_code == 201, saved.text
    assert hero_for(client, keys, "runner")["fallback"] is False  # saved is not published

    published = call(
        client,
        "PUT",
        "/v1/templates/brand/labels/production",
        keys["marketer"],
        {"version": 2},
    )
    assert published.status_code == 200, published.text
    refused = hero_for(client, keys)
    assert refused["fallback"] is True and refused["brand_version"] == 2
    assert any("banned_term" in flag and "mornings" in flag for flag in refused["flags"])

    call(client, "PUT", "/v1/templates/brand/labels/production", keys["marketer"], {"version": 1})
    again = hero_for(client, keys)
    assert not again["fallback"] and again["brand_version"] == 1
    actions = [
        e["action"] for e in call(client, "GET", "/v1/audit?template=brand", keys["cms"]).json()
    ]
    assert actions[:3] == ["move_label", "move_label", "save"]


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (lambda s: s + "voice: [unclosed\n", None, "not valid YAML"),
        (lambda s: s.replace("name: Kestrel", "name: Kestrel\ntagline: hi"), 3, "tagline"),
        (lambda s: s.replace("name: Kestrel", "name: ''"), 2, "name"),
        (lambda s: "- a list\n", 1, "not a mapping of fields"),
        # The hero's example headline is "Gear up for a weekend outside": banning "gear"
        # would teach the model the very word the guards then refuse.
        (lambda s: banning(s, "gear"), None, "hero_banner' example 1"),
    ],
)
def test_brand_rules_that_fail_lint_store_nothing(brand_api, change, line, says) -> None:
    client, keys, _ = brand_api
    source = change(stored(client, keys, 1)["source"])
    answer = save_brand(client, keys, source, 1)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["type"].endswith("lint-failed")
    assert any(says in e["message"] for e in problem["errors"]), problem["errors"]
    if line is not None:
        assert problem["errors"][0]["line"] == line
    if says.startswith("hero"):  # the problem is shown on the line that bans the term
        assert source.splitlines()[problem["errors"][0]["line"] - 1] == "- gear"
    detail = call(client, "GET", "/v1/templates/brand", keys["cms"]).json()
    assert [v["version"] for v in detail["versions"]] == [1]


def test_a_template_cannot_take_the_brand_rules_name() -> None:
    with pytest.raises(TemplateError, match="brand rules"):
        parse_template(HERO.replace("name: hero_banner", "name: brand"), "brand.j2")


def test_preview_diff_and_export_of_the_brand_rules(brand_api) -> None:
    client, keys, _ = brand_api
    source = stored(client, keys, 1)["source"].replace("name: Kestrel", "name: Kestrel Outdoors")
    preview = call(
        client,
        "POST",
        "/v1/templates/brand/preview",
        keys["marketer"],
        {"shopper_id": "coffee_fan", "source": source},
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["template"] == "hero_banner"  # the home_hero placement's template
    prompt = "\n".join(m["content"] for m in preview.json()["messages"])
    assert "for Kestrel Outdoors for this shopper" in prompt  # the hero template, new rules
    # Nothing changed for shoppers: the preview saved and published nothing.
    assert call(client, "GET", "/v1/templates/brand", keys["cms"]).json()["labels"] == {
        PRODUCTION: 1
    }

    assert save_brand(client, keys, source, 1).status_code == 201
    diff = call(
        client, "GET", "/v1/templates/brand/diff?from_version=1&to_version=2", keys["cms"]
    ).json()["diff"]
    assert "-name: Kestrel\n" in diff and "+name: Kestrel Outdoors\n" in diff
    exported = call(client, "GET", "/v1/templates/brand/versions/2/file", keys["cms"])
    assert exported.text == source
    assert 'filename="brand.yaml"' in exported.headers["Content-Disposition"]


def test_the_studio_page_edits_the_brand_rules(brand_api) -> None:
    client, keys, _ = brand_api
    token = sign_in(client, keys["marketer"])
    page = client.get("/studio/templates/brand")
    assert page.status_code == 200 and "banned_terms:" in page.text
    source = banning(stored(client, keys, 1)["source"], "lowest price")
    form = {"source": source, "message": "ban lowest price", "base_version": "1"}
    saved = client.post(
        "/studio/templates/brand",
        data={**form, "action": "save", "_csrf_token": token},
        follow_redirects=False,
    )
    assert saved.status_code in (302, 303), saved.text
    assert "lowest price" in parse_brand(stored(client, keys, 2)["source"])["banned_terms"]
    bad = client.post(
        "/studio/templates/brand",
        data={**form, "source": "name: [", "action": "save", "_csrf_token": token},
    )
    assert bad.status_code == 422 and "not valid YAML" in bad.text


async def test_a_restart_keeps_the_studios_brand_rules(database_url: str, tmp_path: Path) -> None:
    """Seeding again (every start does) never replaces the stored rules; a database seeded
    before the rules were stored gets them, with the terms as the service has them."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "hero_banner.j2").write_text(HERO)
    db = Database(database_url)
    await db.upgrade()
    store = TemplateStore(db)
    assert await store.seed(folder) == [BRAND, "hero_banner"]
    assert parse_brand((await store.get(BRAND, 1)).source)["banned_terms"] is None  # type: ignore[union-attr]
    assert (await store.registry({})).brand == parse_brand("")
    edited = banning("name: Shop\nbanned_terms:\n", "bargain")
    await store.save(
        BRAND, edited, author="m", message="m", draft=False, expected_latest=1, label=PRODUCTION
    )
    (folder / "brand.yaml").write_text(BRAND_FILE_TEXT)
    assert await store.seed(folder, ["miracle"], {}) == []
    registry = await store.registry({})
    assert registry.brand["banned_terms"] == ["bargain"] and registry.brand_version == 2
    await db.dispose()


def test_seeded_text_keeps_what_the_file_says() -> None:
    own = "name: Shop\nbanned_terms: [cheap]\n"
    assert seeded_brand_text(own, ["miracle"], {"de": ["gratis"]}).startswith(own)
    seeded = parse_brand(seeded_brand_text(own, ["miracle"], {"de": ["gratis"]}))
    assert seeded["banned_terms"] == ["cheap"]
    assert seeded["banned_terms_by_language"] == {"de": ["gratis"]}
    assert seeded_brand_text(own, None, None) == own
    assert parse_brand(seeded_brand_text("", ["a b"], {}))["banned_terms"] == ["a b"]
    with pytest.raises(TemplateError, match="banned_terms_by_language"):
        parse_brand("banned_terms_by_language: {German: [gratis]}\n")


def test_stored_banners_go_stale_when_the_brand_rules_change(tiny_catalog: Catalog) -> None:
    inputs = BannerInputs(
        shopper_version="s",
        template_version=1,
        template_label=PRODUCTION,
        model="m",
        brand_version=1,
        facts={},
    )
    now = datetime.now(UTC)

    def reasons(banner_brand: int | None, current_brand: int | None) -> list[str]:
        current = Current("s", 1, PRODUCTION, "m", current_brand)
        made = inputs.model_copy(update={"brand_version": banner_brand})
        return stale_reasons(made, now, current, tiny_catalog, now, 0)

    assert reasons(1, 1) == []
    assert reasons(1, 2) == ["brand rules v1 -> v2"]
    # A banner made before the rules were stored is judged by the rest, not remade for this.
    assert reasons(None, 2) == [] and reasons(1, None) == []


def test_the_shipped_brand_file_parses() -> None:
    brand = yaml.safe_load(BRAND_FILE_TEXT)
    assert parse_brand(BRAND_FILE_TEXT)["voice"] == brand["voice"]
