"""Themed sets: a hero or a spotlight shows one story, the theme the shopper is most into,
among what retrieval found; a homepage's themed sections take different themes. On the tiny
catalog (Coffee, Tea, Running, Camping, Fitness) with the word embedder.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import PROJECT_ROOT, Settings
from app.domain import EventType, Shopper
from app.pipeline import BannerRequest, Pipeline, PreparedRequest
from app.prompting.templates import TemplateRegistry
from app.retrieval.embedder import product_text
from app.retrieval.index import ExactIndex
from app.retrieval.selector import CandidateFilters
from app.retrieval.themes import theme_weights
from tests.conftest import TINY_PRODUCTS, event, product
from tests.fakes import GOOD, HashedWordEmbedder, ScriptedEngine, make_pipeline


@pytest.fixture
def pipeline(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> Pipeline:
    return make_pipeline(ScriptedEngine([GOOD] * 20), tiny_catalog, tiny_shoppers, test_settings)


def hero(pipeline: Pipeline, shopper: str | Shopper, **filters: Any) -> PreparedRequest:
    request = (
        BannerRequest(shopper=shopper, shopper_id=shopper.id)
        if isinstance(shopper, Shopper)
        else BannerRequest(shopper_id=shopper)
    )
    if filters:
        request = BannerRequest(
            shopper_id=request.shopper_id,
            shopper=request.shopper,
            filters=CandidateFilters(**filters),
        )
    return pipeline.prepare(request)


def categories(prepared: PreparedRequest) -> set[str]:
    return {c.product.category for c in prepared.selection.candidates}


def test_a_hero_shows_the_one_theme_the_shopper_is_most_into(pipeline: Pipeline) -> None:
    fan = hero(pipeline, "coffee_fan")
    assert categories(fan) == {"Coffee"}
    theme = fan.selection.theme
    assert theme is not None and theme.kind == "category" and theme.name == "Coffee"
    assert theme.why == "what they looked at lately" and theme.instead_of is None
    assert "Banner theme: Coffee (what they looked at lately)" in fan.prompt.messages[-1][1]  # type: ignore[union-attr]
    # The runner bought one of the two running shoes: one left is not a theme, so the next.
    runner = hero(pipeline, "runner").selection.theme
    assert runner is not None and (runner.name, runner.instead_of) == ("Camping", "Running")
    # A grid is a mixed set: it shows what retrieval found, unthemed.
    grid = pipeline.prepare(BannerRequest(shopper_id="coffee_fan", template="grid_heading"))
    assert grid.selection.theme is None and len(categories(grid)) > 1


def test_a_theme_with_too_few_to_show_gives_way_to_the_next_and_says_so(
    pipeline: Pipeline,
) -> None:
    # A tea lover: the shop has one tea, and one is a product, not a theme.
    tea = Shopper(
        id="tea_lover",
        interests=("green tea",),
        history=tuple(event("T1", EventType.VIEW, days) for days in (1, 2, 3)),
    )
    prepared = hero(pipeline, tea)
    theme = prepared.selection.theme
    assert theme is not None and theme.name != "Tea" and theme.instead_of == "Tea"
    assert categories(prepared) == {theme.name}
    (banner,) = asyncio.run(pipeline.complete(prepared))
    assert banner.theme == theme  # the CMS and the studio see it


def test_a_shopper_with_no_history_gets_their_segments_favourite(pipeline: Pipeline) -> None:
    newcomer = Shopper(id="new-sporty", segment="sporty")
    prepared = hero(pipeline, newcomer)
    theme = prepared.selection.theme
    assert theme is not None and theme.why == "popular with sporty shoppers"
    # Sporty shoppers bought the tent and the running shoe; everyone touched the headlamp.
    assert theme.name in {"Camping", "Running"} and categories(prepared) == {theme.name}
    stated = hero(pipeline, Shopper(id="yogi", interests=("yoga",)))
    assert stated.selection.theme.why.startswith("close to their stated interests: yoga")  # type: ignore[union-attr]


def test_a_homepage_gives_its_themed_sections_different_themes(pipeline: Pipeline) -> None:
    sections = ["hero_banner", "category_spotlight", "grid_heading"]
    page = asyncio.run(pipeline.homepage(BannerRequest(shopper_id="coffee_fan"), sections))
    hero_theme, spotlight_theme = (s.banner.theme for s in page.sections[:2])
    assert hero_theme is not None and spotlight_theme is not None
    assert hero_theme.name == "Coffee" and spotlight_theme.name != "Coffee"
    assert page.sections[2].banner.theme is None  # the grid: a mixed set
    shown = [p.id for s in page.sections for p in s.banner.products]
    assert len(shown) == len(set(shown))


def test_a_catalog_of_one_product_per_category_is_themed_by_cluster(
    tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    own = Catalog(tuple(p.model_copy(update={"category": f"Only {p.id}"}) for p in TINY_PRODUCTS))
    pipeline = make_pipeline(ScriptedEngine([]), own, tiny_shoppers, test_settings)
    prepared = hero(pipeline, "coffee_fan")
    theme = prepared.selection.theme
    assert theme is not None and theme.kind == "cluster" and theme.name.startswith("like ")
    seed = theme.name.removeprefix("like ")
    assert seed in {c.product.title for c in prepared.selection.candidates}
    assert len(prepared.selection.candidates) >= 2


def test_nothing_to_show_is_no_theme(pipeline: Pipeline) -> None:
    prepared = hero(pipeline, "coffee_fan", min_price=10_000)
    assert prepared.selection.candidates == [] and prepared.selection.theme is None
    assert prepared.prompt is None


def test_category_weights_sum_relevance_and_break_ties_by_rank(pipeline: Pipeline) -> None:
    pool = pipeline.selector.select(pipeline.shoppers.get("coffee_fan"), 8).candidates
    weights = theme_weights(pool)
    assert weights[0][:2] == ("category", "Coffee")
    assert [w for *_, w in weights] == sorted((w for *_, w in weights), reverse=True)
    assert theme_weights([]) == []


# --- brands as themes --------------------------------------------------------------------

# Trailco makes running shoes and camping gear; Testco makes everything else.
BRANDED = tuple(
    p.model_copy(update={"brand": "Trailco"}) if p.id in {"R1", "K1", "K2"} else p
    for p in TINY_PRODUCTS
)


def test_a_brand_the_shopper_is_into_across_categories_is_the_theme(
    tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    pipeline = make_pipeline(ScriptedEngine([]), Catalog(BRANDED), tiny_shoppers, test_settings)
    fan = Shopper(
        id="trailco_fan",
        history=tuple(
            event(pid, EventType.VIEW, days) for pid, days in (("R1", 1), ("K1", 2), ("K2", 3))
        ),
    )
    prepared = hero(pipeline, fan)
    theme = prepared.selection.theme
    assert theme is not None and (theme.kind, theme.name) == ("brand", "Trailco")
    assert theme.why == "what they looked at lately"
    shown = prepared.selection.candidates
    assert {c.product.brand for c in shown} == {"Trailco"}
    assert {c.product.category for c in shown} == {"Running", "Camping"}
    assert "Banner theme: Trailco" in prepared.prompt.messages[-1][1]  # type: ignore[union-attr]


def test_a_brand_on_most_of_what_retrieval_found_is_no_theme(pipeline: Pipeline) -> None:
    # The tiny catalog is all Testco: a shop of one brand. Its brand weighs the whole pool and
    # would always win; it tells no story, so the theme is a category.
    pool = pipeline.selector.select(pipeline.shoppers.get("coffee_fan"), 24).candidates
    assert {c.product.brand for c in pool} == {"Testco"}
    assert {kind for kind, *_ in theme_weights(pool)} == {"category"}
    theme = hero(pipeline, "coffee_fan").selection.theme
    assert theme is not None and theme.kind == "category"
    # A brand sold in one category only ties with it at most, and the category wins the tie.
    coffee = [c for c in pool if c.product.category == "Coffee"]
    mine = [
        c.model_copy(update={"product": c.product.model_copy(update={"brand": "Beanco"})})
        for c in coffee
    ]
    assert [kind for kind, *_ in theme_weights(mine)] == ["category"]


# --- bad input ---------------------------------------------------------------------------


def test_a_shopper_into_twenty_categories_evenly_still_gets_one_story_per_banner(
    test_settings: Settings,
) -> None:
    words = [f"kind{n:02d}" for n in range(20)]
    catalog = Catalog(
        tuple(
            product(f"P{n:02d}{i}", f"{word} item {i}", f"Category {word}", 20.0 + i)
            for n, word in enumerate(words)
            for i in range(3)
        )
    )
    # One view in each category, a day apart: no category leads.
    everything = Shopper(
        id="everything",
        history=tuple(event(f"P{n:02d}0", EventType.VIEW, n + 1) for n in range(20)),
    )
    shoppers = ShopperStore([everything])
    embedder = HashedWordEmbedder()
    pipeline = Pipeline.assemble(
        test_settings,
        catalog=catalog,
        shoppers=shoppers,
        embedder=embedder,
        index=ExactIndex(embedder.encode([product_text(p) for p in catalog.products])),
        engine=ScriptedEngine([GOOD] * 4),
        templates=TemplateRegistry.from_folder(PROJECT_ROOT / "prompts"),
    )
    prepared = hero(pipeline, "everything")
    theme = prepared.selection.theme
    assert theme is not None and theme.kind == "category"
    assert categories(prepared) == {theme.name} and len(prepared.selection.candidates) >= 2
    assert theme.name in {p.category for p in catalog.products}
    assert theme.why in {"what they looked at lately", "what they looked at before"}
    # The same shopper, the same theme: ties are broken by rank, never by chance.
    assert hero(pipeline, "everything").selection.theme == theme
    page = asyncio.run(
        pipeline.homepage(
            BannerRequest(shopper_id="everything"), ["hero_banner", "category_spotlight"]
        )
    )
    names = [s.banner.theme.name for s in page.sections if s.banner.theme]
    assert len(names) == 2 and len(set(names)) == 2
    for section in page.sections:
        shown = {catalog.get(p.id).category for p in section.banner.products}  # type: ignore[union-attr]
        assert len(shown) == 1


def test_a_shopper_with_a_single_viewed_product_gets_its_category(pipeline: Pipeline) -> None:
    once = Shopper(id="once", history=(event("K1", EventType.VIEW, 1),))
    prepared = hero(pipeline, once)
    theme = prepared.selection.theme
    assert theme is not None and (theme.kind, theme.name) == ("category", "Camping")
    assert theme.why == "what they looked at lately" and theme.instead_of is None
    assert categories(prepared) == {"Camping"}


# --- stated interests drive cold start -----------------------------------------------------


class TableEmbedder:
    """Known vectors for known texts (the rest: by a word each), to reproduce what MiniLM
    does with "interior design": closer to a field jacket's text than to any decor product's,
    and closest of all to the category name "Home Decor"."""

    name = "test-table"
    dim = 3
    TABLE = {
        "interior design": (1.0, 0.0, 0.0),
        "Home Decor": (1.0, 0.0, 0.0),
        "Menswear": (0.0, 1.0, 0.0),
        "C-104": (0.0, 1.0, 0.0),
    }

    def encode(self, texts: Any, *, progress: bool = False) -> Any:
        import numpy as np

        rows = []
        for text in texts:
            if text in self.TABLE:
                row = self.TABLE[text]
            elif "Jacket" in text:
                row = (0.5, 0.866, 0.0)
            else:  # decor products: far from the words "interior design"
                row = (0.3, 0.0, 0.954)
            rows.append(row)
        return np.asarray(rows, dtype=np.float32)

    def encode_query(self, text: str) -> Any:
        return self.encode([text])[0]


def _interest_pipeline(test_settings: Settings, category: str, **settings: Any) -> Pipeline:
    products = [
        *(product(f"J{i}", f"Field Jacket {i}", category, 90.0 + i) for i in range(4)),
        *(product(f"D{i}", f"Linen Cushion {i}", "Home Decor", 20.0 + i) for i in range(4)),
    ]
    catalog = Catalog(products)
    embedder = TableEmbedder()
    return Pipeline.assemble(
        test_settings.model_copy(update=settings),
        catalog=catalog,
        shoppers=ShopperStore([]),
        embedder=embedder,
        index=ExactIndex(embedder.encode([product_text(p) for p in products])),
        engine=ScriptedEngine([GOOD] * 4),
        templates=TemplateRegistry.from_folder(PROJECT_ROOT / "prompts"),
    )


def test_a_cold_shoppers_interests_reach_the_category_they_name(test_settings: Settings) -> None:
    cold = Shopper(id="new", interests=("interior design",))
    by_name = hero(_interest_pipeline(test_settings, "Menswear"), cold).selection.theme
    assert by_name is not None and by_name.name == "Home Decor"
    # Product texts alone (the weight 0) send the words to the jackets: the failure fixed.
    texts_only = _interest_pipeline(test_settings, "Menswear", interest_category_weight=0.0)
    theme = hero(texts_only, cold).selection.theme
    assert theme is not None and theme.name == "Menswear"


def test_category_codes_are_not_matched_against_interests(test_settings: Settings) -> None:
    """A catalog whose categories are codes ("C-104"): the code says nothing; the interests
    are matched against product texts alone, and nothing fails."""
    coded = _interest_pipeline(test_settings, "C-104")
    _, names = coded.selector._category_names
    assert not names[0].any()  # "C-104" sorts first: no vector
    theme = hero(coded, Shopper(id="new", interests=("interior design",))).selection.theme
    assert theme is not None and theme.name == "Home Decor"  # "Home Decor" still says it


def test_interests_in_another_language_or_many_of_them_still_get_a_theme(
    pipeline: Pipeline,
) -> None:
    for interests in (("Kaffee", "décoration intérieure"), tuple(f"hobby {i}" for i in range(20))):
        prepared = hero(pipeline, Shopper(id="new", interests=interests))
        assert prepared.selection.candidates and prepared.selection.theme is not None


def test_a_shopper_known_only_by_interests_gets_a_category_not_a_brand(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A brand across categories is a theme for someone into it, which a history shows; a
    shopper we know only by stated interests gets a category, though the brand weighs most."""
    from app.retrieval import themes

    def brand_first(candidates: Any) -> list[tuple[str, str, float]]:
        return [("brand", "Testco", 9.0), ("category", "Coffee", 1.0)]

    monkeypatch.setattr(themes, "theme_weights", brand_first)
    cold = hero(pipeline, Shopper(id="new", interests=("coffee",))).selection.theme
    assert cold is not None and (cold.kind, cold.name) == ("category", "Coffee")
    warm = hero(pipeline, "coffee_fan").selection.theme
    assert warm is not None and (warm.kind, warm.name) == ("brand", "Testco")
