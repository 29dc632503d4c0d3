"""The pipeline's own logic (retries, fallback, ids) around a scripted engine.

The real model runs in tests/integration; here the engine's answers are chosen so each path
is exercised on purpose.
"""

from __future__ import annotations

import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.generation.engine import EngineError
from app.pipeline import BannerRequest, Pipeline
from app.retrieval.selector import CandidateFilters
from tests.fakes import GOOD, INVENTED, ScriptedEngine, make_pipeline


@pytest.fixture
def build(tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings):
    def _build(answers: list[object]) -> tuple[Pipeline, ScriptedEngine]:
        engine = ScriptedEngine(answers)
        return make_pipeline(engine, tiny_catalog, tiny_shoppers, test_settings), engine

    return _build


async def test_good_copy_becomes_a_banner_with_resolved_products(build) -> None:
    pipeline, engine = build([GOOD])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert not banner.fallback and banner.retries == 0 and banner.flags == []
    offered = pipeline.candidates(
        pipeline.shoppers.get("coffee_fan"), pipeline.templates.get("hero_banner")
    ).candidates
    assert [p.id for p in banner.products] == [offered[0].product.id, offered[1].product.id]
    assert banner.products[0].url.startswith("https://")
    assert banner.template == "hero_banner" and banner.template_version == 1
    assert banner.engine == "scripted" and banner.model == "scripted-model"
    assert banner.timings.total_ms >= banner.timings.retrieval_ms
    # The prompt the engine saw lists the same candidates, numbered.
    user_prompt = engine.requests[0].messages[-1][1]
    assert f"1. {offered[0].product.title}" in user_prompt


async def test_refused_copy_is_retried_with_another_seed(build) -> None:
    pipeline, engine = build([INVENTED, GOOD])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert not banner.fallback and banner.retries == 1
    assert banner.headline == GOOD["headline"]
    assert any("invented_offer" in flag for flag in banner.flags)
    assert engine.requests[0].seed != engine.requests[1].seed


async def test_after_the_retries_a_flagged_fallback(build, test_settings: Settings) -> None:
    pipeline, engine = build([INVENTED] * 10)
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert banner.fallback
    assert len(engine.requests) == test_settings.max_retries + 1
    assert banner.retries == test_settings.max_retries
    assert "Clearance" not in banner.headline and banner.products


async def test_engine_failure_gives_fallback_not_an_exception(build) -> None:
    pipeline, engine = build([EngineError("server down")])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="runner"))
    assert banner.fallback and len(engine.requests) == 1, "a dead engine is not retried"
    assert banner.flags == ["engine_error: server down"]


async def test_no_engine_still_answers_with_fallback(
    tiny_catalog,
    tiny_shoppers,
    test_settings,
) -> None:
    pipeline = make_pipeline(ScriptedEngine([]), tiny_catalog, tiny_shoppers, test_settings)
    pipeline.use_engine(None)
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="runner"))
    assert banner.fallback and banner.engine == "none"


async def test_variants_ids_and_determinism(build) -> None:
    pipeline, engine = build([GOOD, INVENTED, GOOD])
    banners = await pipeline.generate(BannerRequest(shopper_id="coffee_fan", count=2))
    assert [b.variant for b in banners] == [0, 1]
    assert banners[0].id != banners[1].id
    assert [b.retries for b in banners] == [0, 1]
    again, _ = build([GOOD, GOOD])
    repeat = await again.generate(BannerRequest(shopper_id="coffee_fan", count=2))
    assert [b.id for b in repeat] == [b.id for b in banners], "ids are a pure function of inputs"
    assert [r.seed for r in engine.requests[:2]] == [r.seed for r in again.engine.requests[:2]]


async def test_a_variation_changes_the_seeds_and_the_id_and_nothing_else(build) -> None:
    """A job passes its id: a banner made again by the next job (after a rejection, or past
    its age) is sampled afresh, while one job made twice (resumed) makes the same."""
    pipeline, engine = build([GOOD] * 4)
    plain = BannerRequest(shopper_id="coffee_fan")
    (first,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan", variation="job_a"))
    (again,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan", variation="job_a"))
    (other,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan", variation="job_b"))
    (unvaried,) = await pipeline.generate(plain)
    seeds = [r.seed for r in engine.requests]
    assert seeds[0] == seeds[1] and first.id == again.id
    assert len({seeds[0], seeds[2], seeds[3]}) == 3
    assert len({first.id, other.id, unvaried.id}) == 3
    # Without one, seeds and ids are what they always were (pure functions of the inputs).
    fresh, fresh_engine = build([GOOD])
    (same,) = await fresh.generate(plain)
    assert same.id == unvaried.id and fresh_engine.requests[0].seed == seeds[3]
    assert [first.products, other.products] == [unvaried.products] * 2


async def test_variant_count_is_bounded(build) -> None:
    pipeline, engine = build([])
    for count in (0, pipeline.settings.max_variants + 1):
        with pytest.raises(ValueError, match="count must be between 1 and"):
            await pipeline.generate(BannerRequest(shopper_id="runner", count=count))
    assert engine.requests == []


async def test_unknown_template_is_a_caller_error(build) -> None:
    pipeline, _ = build([])
    with pytest.raises(KeyError, match="unknown template 'nope'"):
        await pipeline.generate(BannerRequest(shopper_id="runner", template="nope"))


async def test_nothing_passes_the_filters(build) -> None:
    pipeline, engine = build([])
    (banner,) = await pipeline.generate(
        BannerRequest(shopper_id="runner", filters=CandidateFilters(min_price=99_999))
    )
    assert banner.fallback and banner.products == [] and engine.requests == []


async def test_spotlight_focuses_one_category(build) -> None:
    spotlight = dict(GOOD, layout="split", products=[1])
    pipeline, engine = build([spotlight])
    (banner,) = await pipeline.generate(
        BannerRequest(shopper_id="runner", template="category_spotlight")
    )
    offered = engine.requests[0].messages[-1][1].split("<products>")[1]
    # The runner bought one of the two running shoes: one left is no spotlight, so the next
    # theme they are into, all of one category, and the banner says what it stood in for.
    assert banner.theme is not None and banner.theme.instead_of == "Running"
    assert "Camping" in offered and not {"Running", "Coffee"} & set(offered.split())
    assert not banner.fallback


async def test_inline_profile_wins_over_the_id(build) -> None:
    from app.domain import Shopper

    pipeline, engine = build([GOOD])
    await pipeline.generate(
        BannerRequest(shopper_id="runner", shopper=Shopper(id="inline", interests=("camping",)))
    )
    assert "Camping Tent" in engine.requests[0].messages[-1][1]


async def test_homepage_sections_never_repeat_a_product(build) -> None:
    grid = dict(GOOD, layout="grid", products=[1, 2])
    pipeline, engine = build([GOOD, grid])
    page = await pipeline.homepage(
        BannerRequest(shopper_id="coffee_fan"), ["hero_banner", "grid_heading"]
    )
    assert [s.template for s in page.sections] == ["hero_banner", "grid_heading"]
    assert [s.position for s in page.sections] == [0, 1]
    assert not any(s.banner.fallback for s in page.sections)
    shown = [p.id for s in page.sections for p in s.banner.products]
    assert len(shown) == 4 and len(set(shown)) == 4
    # Each section was offered its own candidates, so even a fallback cannot repeat one.
    offered = {
        r.schema.__name__: {line for line in r.messages[-1][1].splitlines() if line[:1].isdigit()}
        for r in engine.requests
    }
    hero, grid_lines = offered.values()
    assert not {line.split(". ", 1)[1] for line in hero} & {
        line.split(". ", 1)[1] for line in grid_lines
    }
    assert page.id.startswith("hp_") and page.shopper_id == "coffee_fan"


async def test_homepage_section_count_is_bounded(build) -> None:
    pipeline, _ = build([])
    with pytest.raises(ValueError, match="1 to 8 sections"):
        await pipeline.homepage(BannerRequest(shopper_id="x"), [])


async def test_a_generation_timeout_ends_in_the_fallback_and_zero_means_no_deadline(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    from tests.fakes import SlowEngine  # answers after 0.3 s

    def pipeline(timeout_s: float) -> Pipeline:
        settings = test_settings.model_copy(update={"generation_timeout_s": timeout_s})
        return make_pipeline(SlowEngine([GOOD]), tiny_catalog, tiny_shoppers, settings)

    (late,) = await pipeline(0.05).generate(BannerRequest(shopper_id="coffee_fan"))
    assert late.fallback and any("timed out" in flag for flag in late.flags)
    # 0 (a job's workers): the request waits as long as the engine takes.
    (waited,) = await pipeline(0.0).generate(BannerRequest(shopper_id="coffee_fan"))
    assert not waited.fallback and waited.flags == []


def test_a_job_worker_generates_without_a_deadline_of_its_own(test_settings: Settings) -> None:
    from app.pregeneration.worker import worker_settings

    assert test_settings.generation_timeout_s > 0
    local = worker_settings(test_settings, [])
    assert local.generation_timeout_s == 0 and local.engine == test_settings.engine
    remote = worker_settings(test_settings, ["http://gpu-a:8001"])
    assert remote.generation_timeout_s == 0
    assert (remote.engine, remote.vllm_mode, remote.vllm_urls) == (
        "vllm",
        "external",
        ["http://gpu-a:8001"],
    )


async def test_because_you_viewed_names_its_anchor_in_the_prompt_and_the_banner(build) -> None:
    pipeline, engine = build([])  # GOOD copy every time
    request = BannerRequest(shopper_id="coffee_fan", template="because_you_viewed")
    (banner,) = await pipeline.generate(request)
    assert banner.anchor is not None and banner.anchor.id == "K2"  # their latest event
    assert banner.anchor.title == "Camping Headlamp" and banner.anchor.url.startswith("https://")
    shown = [p.id for p in banner.products]
    assert shown and "K2" not in shown
    asked = engine.requests[0].messages[-1][1]
    assert "Looked at: Camping Headlamp (Camping)" in asked
    # The few-shot example shows its own anchor the same way.
    assert any(
        "Looked at: Northpeak Trail Runner" in text for _, text in engine.requests[0].messages
    )
    # With nothing viewed there is no anchor: the section is a plain row of picks.
    (plain,) = await pipeline.generate(
        BannerRequest(shopper_id="newcomer", template="because_you_viewed")
    )
    assert plain.anchor is None
    assert "Looked at:" not in engine.requests[-1].messages[-1][1]
