from __future__ import annotations

import json

import pytest

from app.domain import Candidate, CandidateScores
from app.generation.schemas import SCHEMAS, output_model
from app.guards import Guards, fallback_copy, numbers_in
from app.prompting.templates import RenderedPrompt
from tests.conftest import product

SPEC = SCHEMAS["banner"]
SCHEMA = output_model("banner", 3)
EXAMPLE = {
    "headline": "Gear up for a weekend outside",
    "subheadline": "A light tent and a bright headlamp for the stars.",
    "cta": "Shop camping",
    "layout": "hero",
    "tone": "warm",
    "products": [1],
}
CANDIDATES = [
    Candidate(
        number=1,
        product=product("D1", "Copperleaf Dutch Oven, 5.5 qt", "Kitchen", 189.99),
        scores=CandidateScores(),
        source="semantic",
    ),
    Candidate(
        number=2,
        product=product(
            "K1",
            "Mise Chef's Knife, 8-inch",
            "Kitchen",
            49.0,
            description="A 15-degree edge, on sale this week.",
        ),
        scores=CandidateScores(),
        source="semantic",
    ),
    Candidate(
        number=3,
        product=product("B1", "Acacia Cutting Board", "Kitchen", 1299.5),
        scores=CandidateScores(),
        source="semantic",
    ),
]
PROMPT = RenderedPrompt(
    "t",
    1,
    (
        ("system", "You write short homepage banners."),
        (
            "user",
            "<products>\n1. Copperleaf Dutch Oven\n</products>\n"
            "Write a short catchy headline about these products.",
        ),
    ),
)


def banner(**fields: object) -> str:
    copy: dict[str, object] = {
        "headline": "Slow Sunday braises",
        "subheadline": "A heavy pot and a sharp knife.",
        "cta": "Shop cookware",
        "layout": "hero",
        "tone": "warm",
        "products": [1, 2],
    }
    copy.update(fields)
    return json.dumps(copy)


def check(text: str, banned: tuple[str, ...] = ("guaranteed",)):
    return Guards(banned).check(text, SCHEMA, SPEC, CANDIDATES, [EXAMPLE], PROMPT)


def test_clean_copy_passes_and_resolves_products() -> None:
    result = check(banner())
    assert result.ok, result.problems
    assert [c.product.id for c in result.products] == ["D1", "K1"]


def test_unparseable_or_off_schema_output_is_refused() -> None:
    assert check('{"headline": "cut off').problems[0].startswith("invalid_output")
    assert not check(banner(layout="poster")).ok
    assert not check(banner(products=[7])).ok, "a number outside 1..K is not a product"


def test_repeated_product_numbers_count_once() -> None:
    result = check(banner(products=[2, 2, 1]))
    assert result.ok and [c.number for c in result.products] == [2, 1]


@pytest.mark.parametrize(
    ("field", "text", "problem"),
    [
        ("headline", "Save 20% on cookware", "invented_number: headline: '20'"),
        ("subheadline", "The Dutch oven, now $149.", "invented_number: subheadline: '149'"),
        ("badge", "2 for 1", "invented_number: badge: '2'"),
        ("cta", "Free shipping today", "invented_offer: cta: 'Free shipping'"),
        ("headline", "Clearance on knives", "invented_offer: headline: 'Clearance'"),
    ],
)
def test_invented_claims_are_caught(field: str, text: str, problem: str) -> None:
    problems = check(banner(**{field: text})).problems
    assert any(p.startswith(problem) for p in problems), problems


def test_numbers_stated_by_the_catalog_are_allowed() -> None:
    ok = check(
        banner(
            headline="The 5.5 qt Dutch oven",
            subheadline="An 8-inch knife at $49.00.",
            badge="$1,299.50",
        )
    )
    assert ok.ok, ok.problems
    # "on sale" is in the knife's description, so the claim is grounded.
    assert check(banner(subheadline="Our chef's knife is on sale.")).ok


def test_numbers_are_compared_by_value() -> None:
    assert numbers_in("Only $1,299.50 or 1299.5!") == {"1299.5"}
    assert numbers_in("49.00") == numbers_in("49") == {"49"}


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"headline": "Cook cook cook all day"}, "degenerate: headline: word repeated"),
        ({"subheadline": "a pot for you a pot for you a pot"}, "degenerate: subheadline: phrase"),
        ({"subheadline": "Slow Sunday braises!"}, "degenerate: subheadline repeats the headline"),
        ({"headline": "Sooooooo good"}, "degenerate: headline: character run"),
        ({"headline": "x" * 59 + "y"}, "cut_at_limit: headline"),
        ({"cta": "Shop the whole collection"[:24]}, "cut_at_limit: cta"),
        ({"headline": "..."}, "empty: headline"),
        ({"headline": "Gear up for a weekend outside!"}, "copied_example: headline"),
        ({"subheadline": "Write a short catchy headline"}, "prompt_echo: subheadline"),
        ({"cta": "See the JSON"}, "prompt_leak: cta"),
        ({"headline": "Candidates: 1, 2"}, "prompt_leak: headline"),
        (
            {"subheadline": "Results guaranteed in a week."},
            "banned_term: subheadline: 'guaranteed'",
        ),
    ],
)
def test_each_guard_refuses_its_defect(fields: dict[str, str], problem: str) -> None:
    problems = check(banner(**fields)).problems
    assert any(p.startswith(problem) for p in problems), problems


def test_banned_terms_match_whole_words_case_insensitively() -> None:
    assert not check(banner(headline="GUARANTEED comfort")).ok
    assert check(banner(headline="Unguaranteedly fine"), banned=("guaranteed",)).ok
    assert check(banner(headline="Results guaranteed"), banned=()).ok


def test_fallback_is_built_from_catalog_facts_and_passes_the_guards() -> None:
    copy, chosen = fallback_copy(CANDIDATES, SPEC, personal=True)
    assert copy["headline"] == "Picked for you: Kitchen"
    assert [c.number for c in chosen] == copy["products"] == [1, 2, 3]
    assert all(
        len(copy[f]) <= limit
        for f, limit in (("headline", SPEC.headline_max), ("subheadline", SPEC.subheadline_max))
    )
    result = check(json.dumps(copy))
    assert result.ok, result.problems
    generic, _ = fallback_copy(CANDIDATES, SPEC, personal=False)
    assert generic["headline"] == "Popular in Kitchen"
    assert fallback_copy(CANDIDATES, SPEC, True) == (copy, chosen), "deterministic"


def test_fallback_fits_every_schema() -> None:
    for name, spec in SCHEMAS.items():
        copy, _ = fallback_copy(CANDIDATES, spec, personal=True)
        output_model(name, 3).model_validate(copy)
