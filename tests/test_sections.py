"""Section kinds beyond the hero: the brand showcase picks one brand's range for the shopper.

On a small catalog of three brands (the tiny catalog's products, re-branded), with the word
embedder, so which brand a shopper is closest to is known by construction.
"""

from __future__ import annotations

import asyncio

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.pipeline import BannerRequest, Pipeline
from tests.conftest import TINY_PRODUCTS
from tests.fakes import GOOD, ScriptedEngine, make_pipeline

BRANDS = {"C": "Brewfield", "T": "Brewfield", "R": "Trailworks", "K": "Trailworks", "Y": "Zen"}


@pytest.fixture
def branded(tiny_shoppers: ShopperStore, test_settings: Settings) -> Pipeline:
    catalog = Catalog(tuple(p.model_copy(update={"brand": BRANDS[p.id[0]]}) for p in TINY_PRODUCTS))
    return make_pipeline(ScriptedEngine([GOOD] * 10), catalog, tiny_shoppers, test_settings)


def brands(pipeline: Pipeline, shopper_id: str, **filters: object) -> set[str]:
    request = BannerRequest(shopper_id=shopper_id, template="brand_showcase")
    if filters:
        request = BannerRequest(
            shopper_id=shopper_id,
            template="brand_showcase",
            filters=request.filters.model_copy(update=filters),
        )
    prepared = pipeline.prepare(request)
    return {c.product.brand for c in prepared.selection.candidates}


def test_a_brand_showcase_shows_one_brand_the_shopper_is_into(branded: Pipeline) -> None:
    assert brands(branded, "coffee_fan") == {"Brewfield"}
    assert brands(branded, "runner") == {"Trailworks"}
    prepared = branded.prepare(BannerRequest(shopper_id="runner", template="brand_showcase"))
    assert prepared.selection.trace.removed["brand_not_included"] > 0
    assert "Write a showcase of the brand Trailworks" in prepared.prompt.messages[-1][1]  # type: ignore[union-attr]


def test_a_brand_with_too_few_products_left_gives_way_to_the_next(branded: Pipeline) -> None:
    # The runner's brand has four products; with three of them excluded one is left, fewer
    # than a range: the next brand they are into is shown instead.
    left = brands(branded, "runner", exclude_products=("R1", "R2", "K1"))
    assert len(left) == 1 and left != {"Trailworks"}
    # One product of each brand allowed (the runner bought R2): no range anywhere, so the
    # showcase is the usual mixed selection.
    mixed = brands(branded, "runner", include_categories=("Running", "Fitness", "Tea"))
    assert mixed == {"Trailworks", "Zen", "Brewfield"}


def test_a_homepage_with_a_brand_showcase_repeats_no_product(branded: Pipeline) -> None:
    sections = ["hero_banner", "brand_showcase", "grid_heading"]
    page = asyncio.run(branded.homepage(BannerRequest(shopper_id="coffee_fan"), sections))
    shown = [p.id for s in page.sections for p in s.banner.products]
    assert len(shown) == len(set(shown))
    assert [s.template for s in page.sections] == sections
