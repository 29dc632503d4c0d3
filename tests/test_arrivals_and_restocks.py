"""New arrivals and back in stock: the dates the catalog keeps (added, restocked), how the
catalog API stamps them, the two retrieval focuses, and a homepage that leaves out a section
with nothing to show. On the tiny catalog with dates given by construction (the catalog
API's stamping: tests/test_catalog_writes.py).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.catalog.loader import load_products
from app.catalog.store import Catalog, ShopperStore, stamped
from app.config import Settings
from app.domain import Audience, Product, Subject
from app.pipeline import BannerRequest, Pipeline
from app.pregeneration.worker import Nothing, SubjectMaker
from app.retrieval.selector import CandidateFilters
from app.store.pregenerated import Generated
from tests.conftest import NOW, TINY_PRODUCTS, product
from tests.fakes import GOOD, ScriptedEngine, make_pipeline

# Days before NOW each product was added: the coffee kettle, green tea, the headlamp and the
# yoga mat are this month's arrivals; the rest are a year old.
ADDED_DAYS_AGO = {"C2": 3, "T1": 5, "K2": 2, "Y1": 20}
# The trail shoe and the grinder came back into stock two days ago; the tent a month ago.
RESTOCKED_DAYS_AGO = {"R1": 0.5, "C1": 2, "K1": 30}


def dated(item: Product) -> Product:
    added = NOW - timedelta(days=ADDED_DAYS_AGO.get(item.id, 365))
    restocked = RESTOCKED_DAYS_AGO.get(item.id)
    return item.model_copy(
        update={
            "added_at": added,
            "restocked_at": None if restocked is None else NOW - timedelta(days=restocked),
        }
    )


@pytest.fixture
def dated_pipeline(tiny_shoppers: ShopperStore, test_settings: Settings) -> Pipeline:
    catalog = Catalog(tuple(dated(p) for p in TINY_PRODUCTS))
    return make_pipeline(ScriptedEngine([GOOD] * 20), catalog, tiny_shoppers, test_settings)


def shown(pipeline: Pipeline, shopper_id: str, template: str, **filters: object) -> list[str]:
    request = BannerRequest(
        shopper_id=shopper_id, template=template, filters=CandidateFilters(**filters)
    )
    return [c.product.id for c in pipeline.prepare(request).selection.candidates]


# --- the dates ----------------------------------------------------------------------------------


def test_a_write_keeps_or_stamps_the_dates_it_leaves_out() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    old = dated(product("K1", "Camping Tent", "Camping", 300.0, in_stock=False))
    fresh = product("N1", "New Lamp", "Camping", 20.0)
    assert stamped(fresh, None, now).added_at == now  # new: added now
    back = stamped(product("K1", "Camping Tent", "Camping", 290.0), old, now)
    assert back.added_at == old.added_at and back.restocked_at == now  # out -> in: now
    still = stamped(back.model_copy(update={"restocked_at": None, "price": 280.0}), back, now)
    assert still.restocked_at == now  # in -> in: kept
    gone = stamped(product("K1", "Camping Tent", "Camping", 1.0, in_stock=False), back, now)
    assert gone.restocked_at == now and not gone.in_stock  # out again: the last return stays
    given = datetime(2025, 1, 1, tzinfo=UTC)
    assert stamped(fresh.model_copy(update={"added_at": given}), None, now).added_at == given


def test_csv_and_jsonl_rows_may_leave_the_dates_out(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    path.write_text(
        "id,title,brand,category,price,url,added_at,restocked_at\n"
        "A1,Lamp,Testco,Camping,10,https://shop.example.com/a1,2026-10-01T00:00:00Z,\n"
        "A2,Tent,Testco,Camping,99,https://shop.example.com/a2,,\n"
    )
    first, second = load_products(path)
    assert first.added_at == datetime(2026, 10, 1, tzinfo=UTC) and first.restocked_at is None
    assert second.added_at is None and second.restocked_at is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "A1", "title": "Lamp", "brand": "T", "category": "C", "price": 1, '
        '"url": "https://shop.example.com/a1", "added_at": "2026-10-01T00:00:00"}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*added_at"):  # a date with no zone
        load_products(bad)


# --- back in stock ----------------------------------------------------------------------------


def test_back_in_stock_is_what_the_shopper_looked_at_that_came_back_since(
    dated_pipeline: Pipeline,
) -> None:
    back = dated_pipeline.selector.back_in_stock
    shoppers = dated_pipeline.shoppers
    # The runner viewed R1 a day ago; it came back half a day ago. (They bought R2.)
    assert back(shoppers.get("runner")) == ["R1"]
    # The coffee fan viewed C1 ten days ago; it came back two days ago.
    assert back(shoppers.get("coffee_fan")) == ["C1"]
    # The camper bought the tent after it came back (a month ago): that is not back *since*;
    # the trail shoe they viewed four days ago is.
    assert back(shoppers.get("camper")) == ["R1"]
    # Nothing coffee_two touched ever came back; a newcomer touched nothing.
    assert back(shoppers.get("coffee_two")) == back(shoppers.get("newcomer")) == []
    assert shown(dated_pipeline, "coffee_fan", "back_in_stock") == ["C1"]
    assert shown(dated_pipeline, "coffee_two", "back_in_stock") == []


def test_a_product_out_of_stock_or_withdrawn_again_is_not_back(dated_pipeline: Pipeline) -> None:
    catalog = dated_pipeline.catalog
    runner = dated_pipeline.shoppers.get("runner")
    gone = catalog.withdrawing(["R1"])
    selector = dated_pipeline.selector
    dated_pipeline.use_catalog(gone, dated_pipeline.index, selector.signals)
    assert dated_pipeline.selector.back_in_stock(runner) == []
    out, _ = catalog.upserted([catalog.get("R1").model_copy(update={"in_stock": False})])  # type: ignore[union-attr]
    dated_pipeline.use_catalog(out, dated_pipeline.index, selector.signals)
    assert dated_pipeline.selector.back_in_stock(runner) == []


# --- new arrivals -----------------------------------------------------------------------------


def test_new_arrivals_are_the_latest_additions_in_the_shoppers_categories_first(
    dated_pipeline: Pipeline,
) -> None:
    new = {"C2", "T1", "K2", "Y1"}
    # The coffee fan looked at coffee and camping: the new kettle and headlamp, not the tea.
    assert set(shown(dated_pipeline, "coffee_fan", "new_arrivals")) == {"C2", "K2"}
    # A newcomer has no categories: every new arrival, nothing older.
    assert set(shown(dated_pipeline, "newcomer", "new_arrivals")) == new
    # The runner's categories have no new arrival: all of them instead.
    assert set(shown(dated_pipeline, "runner", "new_arrivals")) == new
    prepared = dated_pipeline.prepare(BannerRequest(shopper_id="newcomer", template="new_arrivals"))
    # Six older products, one of which (C4) the stock filter took first.
    assert prepared.selection.trace.removed["added_before"] == 5


def test_the_window_follows_the_catalogs_newest_arrival(
    tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    """A shop that added nothing for a while still has its latest arrivals; a catalog with no
    added dates has none."""
    year_later = [dated(p) for p in TINY_PRODUCTS]
    later = Catalog(
        tuple(
            p.model_copy(update={"added_at": p.added_at - timedelta(days=400)})  # type: ignore[operator]
            for p in year_later
        )
    )
    pipeline = make_pipeline(ScriptedEngine([]), later, tiny_shoppers, test_settings)
    assert set(shown(pipeline, "newcomer", "new_arrivals")) == {"C2", "T1", "K2", "Y1"}
    narrow = test_settings.model_copy(update={"new_arrivals_days": 4})
    pipeline = make_pipeline(ScriptedEngine([]), later, tiny_shoppers, narrow)
    assert set(shown(pipeline, "newcomer", "new_arrivals")) == {"C2", "T1", "K2"}
    undated = make_pipeline(ScriptedEngine([]), Catalog(TINY_PRODUCTS), tiny_shoppers, narrow)
    assert shown(undated, "newcomer", "new_arrivals") == []


# --- the homepage -----------------------------------------------------------------------------


def test_a_homepage_leaves_out_a_section_with_nothing_to_show(dated_pipeline: Pipeline) -> None:
    sections = ["hero_banner", "back_in_stock", "new_arrivals"]
    request = BannerRequest(shopper_id="coffee_two")
    nothing_back = asyncio.run(dated_pipeline.homepage(request, sections))
    assert [s.template for s in nothing_back.sections] == ["hero_banner", "new_arrivals"]
    assert [(s.template, s.placement) for s in nothing_back.skipped] == [
        ("back_in_stock", "home_back_in_stock")
    ]
    assert "back_in_stock: 0 product(s)" in nothing_back.skipped[0].reason

    fan = asyncio.run(dated_pipeline.homepage(BannerRequest(shopper_id="coffee_fan"), sections))
    assert [s.template for s in fan.sections] == sections and fan.skipped == []
    ids = [p.id for s in fan.sections for p in s.banner.products]
    assert len(ids) == len(set(ids))  # no product twice
    back = next(s for s in fan.sections if s.template == "back_in_stock")
    assert [p.id for p in back.banner.products] == ["C1"]


async def test_pre_generation_makes_no_banner_where_nothing_is_back(
    dated_pipeline: Pipeline,
) -> None:
    maker = SubjectMaker(dated_pipeline)
    fan, two = (Subject(audience=Audience.SHOPPER, key=i) for i in ("coffee_fan", "coffee_two"))
    made, nothing = await maker.make("home_back_in_stock", [fan, two])
    assert isinstance(made, Generated) and [p.id for p in made.banner.products] == ["C1"]
    assert isinstance(nothing, Nothing) and nothing.subject == two


def test_the_grammar_numbers_only_the_products_offered(dated_pipeline: Pipeline) -> None:
    """One product is back for the coffee fan, where the template offers up to three: the
    schema the engine is held to has the number 1 alone, so "2" cannot even be written."""
    request = BannerRequest(shopper_id="coffee_fan", template="back_in_stock")
    prepared = dated_pipeline.prepare(request)
    numbers = prepared.output_model.model_json_schema()["properties"]["products"]["items"]
    assert numbers.get("enum", [numbers.get("const")]) == [1], numbers
    engine = dated_pipeline.engine
    assert isinstance(engine, ScriptedEngine)
    outside, inside = (dict(GOOD, layout="split", products=[n]) for n in (2, 1))
    engine.answers = [outside, inside]  # a first answer outside the grammar, then one inside
    banner = asyncio.run(dated_pipeline.complete(prepared))[0]
    assert engine.requests[-1].schema is prepared.output_model
    assert not banner.fallback and [p.id for p in banner.products] == ["C1"]
    assert any("invalid_output" in flag for flag in banner.flags), banner.flags


def test_fallback_copy_says_what_the_section_is_about(dated_pipeline: Pipeline) -> None:
    """The model's copy refused: the catalog's words, and what the section is for."""
    engine = dated_pipeline.engine
    assert isinstance(engine, ScriptedEngine)
    engine.answers = ["not json"] * 20
    for template, words in (("back_in_stock", "Back in stock"), ("new_arrivals", "New in")):
        request = BannerRequest(shopper_id="coffee_fan", template=template)
        (banner,) = asyncio.run(dated_pipeline.generate(request))
        assert banner.fallback and banner.headline.startswith(words), banner.headline
        assert banner.subheadline.endswith(("restocked for you.", "just arrived in the shop."))
