"""Per-locale template variants: ``hero_banner_de`` (``variant_of: hero_banner``, ``locale:
de-DE``) is what German shoppers get in the hero's place, in German; everyone else gets the
hero, in English when the model writes only English (``locale_fallback``). The registry's
choice, the pipeline's banners, and the studio's lint and publish through the real app.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.domain import Banner
from app.generation.engine import GenerationRequest
from app.pipeline import BannerRequest, Pipeline
from app.prompting.sandbox import TemplateError
from app.prompting.templates import PRODUCTION, Split, TemplateRegistry, parse_template
from tests.fakes import GOOD, ScriptedEngine, make_pipeline, wait_ready
from tests.test_api import _keys
from tests.test_studio import HERO, call, start

Client = TestClient[Litestar]

GERMAN = (
    HERO.replace(
        "name: hero_banner\n", "name: hero_banner_de\nvariant_of: hero_banner\nlocale: de-DE\n"
    )
    .replace("Write the homepage hero banner for", "Schreibe das Homepage-Banner von")
    .replace(
        'headline: "Gear up for a weekend outside"', 'headline: "Bereit für ein Wochenende draußen"'
    )
)


def variant(source: str, name: str, locale: str) -> str:
    return source.replace("name: hero_banner_de\n", f"name: {name}\n").replace(
        "locale: de-DE\n", f"locale: {locale}\n"
    )


def registry(*sources: str, **options: Any) -> TemplateRegistry:
    base = TemplateRegistry.from_folder(PROJECT_ROOT / "prompts")
    extra = [parse_template(s, f"test{i}.j2") for i, s in enumerate(sources)]
    hero = base.get("hero_banner")
    return TemplateRegistry(
        [base.get(name) for name in base.names] + extra,
        base.brand,
        labelled={"hero_banner": {"variant": hero}},
        **options,
    )


def test_a_shopper_gets_the_variant_of_their_locale_then_of_their_language() -> None:
    templates = registry(GERMAN, variant(GERMAN, "hero_banner_fr", "fr"))
    assert templates.choose("hero_banner", "s", locale="de-DE")[0].name == "hero_banner_de"
    # de-AT has no variant of its own: the German one. French: the one for the language.
    assert templates.choose("hero_banner", "s", locale="de-AT")[0].name == "hero_banner_de"
    assert templates.choose("hero_banner", "s", locale="fr-CA")[0].name == "hero_banner_fr"
    assert templates.choose("hero_banner", "s", locale="en-US")[0].name == "hero_banner"
    assert templates.choose("hero_banner", "s")[0].name == "hero_banner"
    # An explicit label is that label of the template asked for; a placement is never served
    # its variant by default.
    assert templates.choose("hero_banner", "s", "variant", "de-DE")[0].name == "hero_banner"
    assert templates.default_for("home_hero").name == "hero_banner"


def test_a_shopper_with_a_variant_is_outside_the_placements_experiment() -> None:
    split = Split("hero_banner", PRODUCTION, "variant", 1.0)  # everyone to the variant arm
    templates = registry(GERMAN, splits={"home_hero": split})
    assert templates.choose("hero_banner", "s", locale="en-US")[1] == "variant"
    assert templates.choose("hero_banner", "s", locale="de-DE") == (
        templates.get("hero_banner_de"),
        PRODUCTION,
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s.replace("locale: de-DE\n", ""), "both variant_of and locale"),
        (lambda s: s.replace("locale: de-DE", "locale: xx"), "not one CLDR knows"),
        (lambda s: s.replace("locale: de-DE", "locale: german"), "locale"),
        (lambda s: s.replace("variant_of: hero_banner", "variant_of: hero_banner_de"), "itself"),
    ],
)
def test_a_variant_header_names_a_template_and_a_known_locale(change, says) -> None:
    with pytest.raises(TemplateError, match=says):
        parse_template(change(GERMAN), "hero_banner_de.j2")


def test_a_german_shopper_gets_german_copy_from_the_variant(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    engine = ScriptedEngine([GOOD] * 10)
    pipeline: Pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, test_settings)
    pipeline.use_templates(registry(GERMAN))

    def hero(locale: str | None) -> tuple[Banner, GenerationRequest]:
        request = BannerRequest(shopper_id="coffee_fan", locale=locale)
        return asyncio.run(pipeline.generate(request))[0], engine.requests[-1]

    german, asked = hero("de-DE")
    assert german.template == "hero_banner_de" and german.template_label == PRODUCTION
    assert german.locale == "de-DE" and not german.locale_fallback
    assert "Schreibe das Homepage-Banner von" in asked.messages[-1][1]
    assert "Bereit für ein Wochenende" in asked.messages[2][1]  # the variant's own example
    austrian, _ = hero("de-AT")
    assert austrian.template == "hero_banner_de" and austrian.locale == "de-AT"
    french, asked = hero("fr-FR")  # no variant, a model that writes English only
    assert french.template == "hero_banner" and french.locale_fallback
    assert french.locale == "en-US" and "Schreibe" not in asked.messages[-1][1]
    own, _ = hero(None)  # the stored shopper's own locale
    assert own.template == "hero_banner" and not own.locale_fallback


@pytest.fixture
def studio(
    database_url: str, test_settings: Settings, tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> Iterator[tuple[Client, dict[str, str]]]:
    settings = test_settings.model_copy(update={"database_url": database_url})
    keys = asyncio.run(_keys(settings.database))
    with start(settings, tiny_catalog, tiny_shoppers) as client:
        wait_ready(client)
        yield client, keys


def save(client: Client, keys: dict[str, str], name: str, source: str) -> Any:
    body = {"source": source, "message": "German hero"}
    return call(client, "POST", f"/v1/templates/{name}/versions", keys["marketer"], body)


def test_a_marketer_adds_a_variant_and_german_shoppers_get_it(studio) -> None:
    client, keys = studio
    saved = save(client, keys, "hero_banner_de", GERMAN)
    assert saved.status_code == 201, saved.text
    ask = {"shopper_id": "coffee_fan", "locale": "de-DE"}
    before = call(client, "POST", "/v1/banners", keys["cms"], ask).json()["banners"][0]
    assert before["template"] == "hero_banner"  # saved, not yet published
    published = call(
        client,
        "PUT",
        "/v1/templates/hero_banner_de/labels/production",
        keys["marketer"],
        {"version": 1},
    )
    assert published.status_code == 200, published.text
    after = call(client, "POST", "/v1/banners", keys["cms"], ask).json()["banners"][0]
    assert after["template"] == "hero_banner_de" and after["locale"] == "de-DE"
    english = call(client, "POST", "/v1/banners", keys["cms"], {"shopper_id": "coffee_fan"})
    assert english.json()["banners"][0]["template"] == "hero_banner"


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (
            lambda s: s.replace("variant_of: hero_banner", "variant_of: nothing_here"),
            3,
            "no template",
        ),
        (lambda s: s.replace("placement: home_hero", "placement: home_grid"), 9, "placement"),
        (lambda s: s.replace("schema: banner", "schema: spotlight"), 7, "schema"),
    ],
)
def test_a_variant_that_cannot_take_its_templates_place_is_not_saved(
    studio, change, line, says
) -> None:
    client, keys = studio
    answer = save(client, keys, "hero_banner_de", change(GERMAN))
    assert answer.status_code == 422, answer.text
    errors = answer.json()["errors"]
    assert any(says in e["message"] and e["line"] == line for e in errors), errors
    missing = call(client, "GET", "/v1/templates/hero_banner_de", keys["cms"])
    assert missing.status_code == 404
