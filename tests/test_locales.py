"""Locales: prices and numbers as the shopper's locale writes them, and the copy's language.

Babel's CLDR data is the reference for formats; what is tested here is how Marquee uses it:
which language a banner is written in, and that the guards read numbers the locale's way.
"""

from __future__ import annotations

import asyncio

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import Candidate, CandidateScores, Shopper
from app.generation.schemas import SCHEMAS, output_model
from app.guards import Guards
from app.locales import copy_locale, format_price, language_name, numbers_in
from app.pipeline import BannerRequest
from app.prompting.templates import rubric_rules
from tests.fakes import GOOD, ScriptedEngine, make_pipeline


def test_prices_are_written_the_shoppers_way() -> None:
    assert format_price(1234.5, "EUR", "de-DE") == "1.234,50\xa0€"
    assert format_price(1234.5, "USD", "en-US") == "$1,234.50"
    assert format_price(1234.5, "EUR", "fr-FR") == "1\u202f234,50\xa0€"
    assert format_price(5, "USD", "xx-XX") == "$5.00"  # an unknown locale: the default's


@pytest.mark.parametrize(
    ("text", "locale", "numbers"),
    [
        ("Nur 1.234,50 € heute", "de-DE", {"1234.5"}),
        ("Only $1,234.50 today", "en-US", {"1234.5"}),
        ("Seulement 1\u202f234,50 €", "fr-FR", {"1234.5"}),
        ("Seulement 1 234,50 €", "fr-FR", {"1234.5"}),  # typed with a plain space
        ("2,3 und 4", "de-DE", {"2.3", "4"}),
        ("2,3 and 4", "en-US", {"2", "3", "4"}),  # a list, not twenty-three
        ("1.234,50", "en-US", {"1.234", "50"}),  # the wrong locale reads other numbers
    ],
)
def test_numbers_are_read_with_the_locales_separators(
    text: str, locale: str, numbers: set[str]
) -> None:
    assert numbers_in(text, locale) == numbers


def test_the_copy_is_in_the_shoppers_language_only_if_the_model_writes_it() -> None:
    english_only = copy_locale("de-DE", ["en"])
    assert (english_only.written, english_only.fallback) == ("en-US", True)
    assert english_only.language == "English"
    both = copy_locale("de-DE", ["en", "de"])
    assert (both.written, both.fallback, both.language) == ("de-DE", False, "German")
    british = copy_locale("en-GB", ["en"])
    assert (british.written, british.fallback) == ("en-GB", False)
    assert language_name("fr") == "French"


def _candidates(catalog: Catalog) -> list[Candidate]:
    grinder = catalog.products[catalog.row("C1")].model_copy(update={"price": 1234.5})
    kettle = catalog.products[catalog.row("C2")]
    return [
        Candidate(number=i + 1, product=p, scores=CandidateScores(), source="semantic")
        for i, p in enumerate([grinder, kettle])
    ]


def test_the_guards_read_the_copys_numbers_in_its_locale(tiny_catalog: Catalog) -> None:
    schema = output_model("banner", 2, True)
    text = schema.model_validate(dict(GOOD, headline="Die Mühle für 1.234,50 €")).model_dump_json()
    candidates = _candidates(tiny_catalog)
    german = Guards([]).check(
        text,
        schema,
        SCHEMAS["banner"],
        candidates,
        [],
        locale="de-DE",
        rules=rubric_rules(None, None, "de-DE"),  # what a German template's copy is held to
    )
    assert german.ok, german.problems
    english = Guards([]).check(text, schema, SCHEMAS["banner"], candidates, [], locale="en-US")
    assert any(p.startswith("invented_number") for p in english.problems)


def test_banned_terms_may_be_added_per_language(tiny_catalog: Catalog) -> None:
    guards = Guards(["miracle"], {"de": ["gratis"]})
    schema = output_model("banner", 2, False)
    spec = SCHEMAS["banner"]
    candidates = _candidates(tiny_catalog)

    def problems(headline: str, locale: str) -> list[str]:
        text = schema.model_validate(dict(GOOD, headline=headline)).model_dump_json()
        return guards.check(text, schema, spec, candidates, [], locale=locale).problems

    assert "banned_term: headline: 'gratis'" in problems("Kaffee gratis dazu", "de-DE")
    # Not a banned term in English (German words in English copy are garbled: the rubric's).
    assert not any(p.startswith("banned_term") for p in problems("Kaffee gratis dazu", "en-US"))
    assert "banned_term: headline: 'miracle'" in problems("Ein miracle Kaffee", "de-DE")


def test_a_german_shopper_gets_their_prices_and_an_english_banner_that_says_so(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    shopper = Shopper(id="anna", locale="de-DE", interests=("coffee",))
    engine = ScriptedEngine([GOOD, GOOD])
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, test_settings)
    prepared = pipeline.prepare(BannerRequest(shopper=shopper))
    user = prepared.prompt.messages[-1][1]  # type: ignore[union-attr]
    assert "Write the copy in" not in user  # the model writes English only: no such request
    (banner,) = asyncio.run(pipeline.complete(prepared))
    assert (banner.locale, banner.locale_fallback) == ("en-US", True)

    german_model = test_settings.model_copy(update={"llm_languages": ["en", "de"]})
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, german_model)
    prepared = pipeline.prepare(BannerRequest(shopper=shopper, template="category_spotlight"))
    assert "Write the copy in German." in prepared.prompt.messages[-1][1]  # type: ignore[union-attr]
    (banner,) = asyncio.run(pipeline.complete(prepared))
    assert (banner.locale, banner.locale_fallback) == ("de-DE", False)


def test_the_hero_prompt_shows_prices_in_the_shoppers_format(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    from app.prompting.context import build_context

    shopper = Shopper(id="anna", locale="de-DE")
    pipeline = make_pipeline(ScriptedEngine([]), tiny_catalog, tiny_shoppers, test_settings)
    selection = pipeline.candidates(shopper, pipeline.templates.get("hero_banner"))
    context = build_context(
        shopper=shopper,
        recent_titles=[],
        candidates=selection.candidates,
        brand={},
        placement="home_hero",
        spec=SCHEMAS["banner"],
        locale=copy_locale("de-DE", ["en"]),
    )
    prices = [c["price"] for c in context["candidates"]]
    assert prices and all(p.endswith("\xa0$") and "," in p for p in prices), prices
    assert context["language"] == "English"
