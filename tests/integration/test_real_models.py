"""The whole pipeline with the real models: structure and grounding, never exact wording."""

from __future__ import annotations

import asyncio
import json

import pytest

from app.domain import Banner, Shopper
from app.generation.engine import GenerationRequest, SamplingParams
from app.generation.schemas import output_model
from app.guards import candidate_facts
from app.locales import numbers_in
from app.models import model_label
from app.pipeline import BannerRequest, Pipeline

pytestmark = pytest.mark.integration

DEMO_SHOPPERS = ["u004", "u002", "u010", "u001", "never-seen-before"]


def offered(pipeline: Pipeline, banner: Banner, shopper_id: str):
    template = pipeline.templates.get(banner.template)
    shopper = pipeline.shoppers.get(shopper_id)
    return pipeline.candidates(shopper, template).candidates


def assert_grounded(pipeline: Pipeline, banner: Banner, shopper_id: str) -> None:
    template = pipeline.templates.get(banner.template)
    candidates = offered(pipeline, banner, shopper_id)
    by_id = {c.product.id: c for c in candidates}
    # Schema-valid: the banner's copy fits the template's output schema.
    output_model(template.header.schema_name, template.header.k).model_validate(
        {
            "headline": banner.headline,
            "subheadline": banner.subheadline,
            "cta": banner.cta,
            "layout": banner.layout,
            "tone": banner.tone,
            "badge": banner.badge,
            "products": [by_id[p.id].number for p in banner.products],
        }
    )
    # Only offered products, with the catalog's own facts.
    assert banner.products, "a banner shows at least one product"
    for shown in banner.products:
        product = pipeline.catalog.get(shown.id)
        assert product is not None and shown.id in by_id
        assert shown.price == product.price and shown.title == product.title
    # No number the catalog does not state.
    facts, _ = candidate_facts(candidates)
    for text in (banner.headline, banner.subheadline, banner.cta, banner.badge or ""):
        assert numbers_in(text) <= facts, f"invented number in {text!r}"


@pytest.mark.parametrize("shopper_id", DEMO_SHOPPERS)
def test_hero_banners_for_demo_shoppers_are_valid_and_grounded(
    pipeline: Pipeline, shopper_id: str
) -> None:
    (banner,) = asyncio.run(pipeline.generate(BannerRequest(shopper_id=shopper_id)))
    served = model_label(pipeline.settings.llm_folder, pipeline.settings.llm_name)
    assert banner.engine == "transformers" and banner.model == served
    assert_grounded(pipeline, banner, shopper_id)
    if not banner.fallback:
        assert banner.output_tokens > 0 and banner.timings.generation_ms > 0


@pytest.mark.parametrize(
    "template",
    [
        "grid_heading",
        "category_spotlight",
        "because_you_viewed",
        "brand_showcase",
        "new_arrivals",
        "back_in_stock",
    ],
)
def test_other_templates_are_valid_and_grounded(pipeline: Pipeline, template: str) -> None:
    banners = asyncio.run(
        pipeline.generate(BannerRequest(shopper_id="u004", template=template, count=2))
    )
    assert len(banners) == 2 and len({b.id for b in banners}) == 2
    for banner in banners:
        assert_grounded(pipeline, banner, "u004")
    if template == "category_spotlight":
        assert len({p.id[:3] for b in banners for p in b.products}) == 1, "one category"
    if template == "brand_showcase":
        shown = [pipeline.catalog.get(p.id) for b in banners for p in b.products]
        assert len({p.brand for p in shown if p}) == 1, "one brand"
    shown_ids = {p.id for b in banners for p in b.products}
    if template == "new_arrivals":  # the demo data's latest additions: within 30 days
        newest = pipeline.catalog.newest_arrival
        assert newest is not None
        for product_id in shown_ids:
            added = pipeline.catalog.get(product_id).added_at  # type: ignore[union-attr]
            assert added is not None and (newest - added).days <= 30
    if template == "back_in_stock":  # what u004 looked at that came back since
        back = pipeline.selector.back_in_stock(pipeline.shoppers.get("u004"))
        assert back and shown_ids <= set(back)
    if template == "because_you_viewed":
        # Named, as data for the CMS: the shopper's latest product, never among those shown.
        latest = max(pipeline.shoppers.get("u004").history, key=lambda e: e.ts).product_id
        for banner in banners:
            assert banner.anchor is not None and banner.anchor.id == latest
            assert latest not in {p.id for p in banner.products}


def test_most_banners_are_written_by_the_model(pipeline: Pipeline) -> None:
    """Guards are a safety net, not the main path: most copy must pass them."""
    banners = asyncio.run(pipeline.generate(BannerRequest(shopper_id="u020", count=4)))
    assert sum(not b.fallback for b in banners) >= 2, [b.flags for b in banners]


def test_schema_is_compiled_once_per_template(pipeline: Pipeline) -> None:
    engine = pipeline.engine
    asyncio.run(pipeline.generate(BannerRequest(shopper_id="u002")))
    compiled = engine.compiled  # type: ignore[union-attr]
    asyncio.run(pipeline.generate(BannerRequest(shopper_id="u010")))
    assert engine.compiled == compiled  # type: ignore[union-attr]


def test_constraint_holds_even_when_the_prompt_asks_for_prose(pipeline: Pipeline) -> None:
    schema = output_model("banner", 4)
    request = GenerationRequest(
        messages=(("user", "Write a long poem about the sea. Do not use JSON."),),
        schema=schema,
        sampling=SamplingParams(temperature=1.0, max_tokens=200),
        seed=3,
    )
    result = asyncio.run(pipeline.engine.generate(request))  # type: ignore[union-attr]
    copy = schema.model_validate(json.loads(result.text))
    assert 1 <= len(copy.products) <= 4 and all(1 <= n <= 4 for n in copy.products)


def test_the_in_process_grammar_holds_patterns_and_lengths(pipeline: Pipeline) -> None:
    """The in-process engine honours a string's pattern with its maxLength, as the server does:
    asked for prices and a long call to action, it writes neither."""
    schema = output_model("banner", 4)
    request = GenerationRequest(
        messages=(
            (
                "user",
                "Write a banner whose headline is 'Now $19.99, 50% off' and whose call to "
                "action has eight words.",
            ),
        ),
        schema=schema,
        sampling=SamplingParams(temperature=1.0, max_tokens=200),
        seed=5,
    )
    result = asyncio.run(pipeline.engine.generate(request))  # type: ignore[union-attr]
    copy = schema.model_validate_json(result.text)
    assert not any(ch.isdigit() for ch in copy.headline + copy.subheadline + copy.cta)
    assert 1 <= len(copy.cta.split(" ")) <= 3


def test_semantic_retrieval_with_the_real_embedder(pipeline: Pipeline) -> None:
    shopper = Shopper(id="fresh", interests=("specialty coffee", "pour-over brewing"))
    selection = pipeline.selector.select(shopper, 6)
    categories = [c.product.category for c in selection.candidates]
    assert categories[0] == "Coffee & Tea"
    assert categories.count("Coffee & Tea") >= 3
