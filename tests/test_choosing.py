"""Best-of-n: the samples of a banner are judged together and the best that passed is served.

The scoring runs on the word embedder (each vocabulary word one axis), so which copy is
closer to a shopper or to a product is known by construction; the real model's samples are
scored in tests/integration/test_pipeline_real.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from app.catalog.store import Catalog, ShopperStore
from app.choosing import ChoiceWeights, CopyChooser, Sample, copy_text, length_fit
from app.config import PROJECT_ROOT, Settings
from app.generation.schemas import SCHEMAS, output_model
from app.guards import GuardResult, Guards
from app.pipeline import AUTO_BEST_OF, BannerRequest, Pipeline, auto_best_of
from app.prompting.templates import parse_template
from tests.fakes import GOOD, INVENTED, ScriptedEngine, WordEmbedder, make_pipeline

SPEC = SCHEMAS["banner"]
COPY = output_model("banner", 4, False)
# Three copies that pass every guard, each about something else.
ABOUT_COFFEE = dict(GOOD, headline="Fresh coffee mornings", subheadline="A grinder and beans.")
ABOUT_TENTS = dict(GOOD, headline="Nights in a tent", subheadline="A camping tent and headlamp.")
ABOUT_NOTHING = dict(GOOD, headline="Something for you", subheadline="Picked for you today.")


def sample(number: int, answer: Mapping[str, object], rows: list[int], notes=()) -> Sample:
    copy = COPY.model_validate(answer)
    return Sample(number, GuardResult(copy, notes=list(notes)), rows)


def catalog(vectors: np.ndarray) -> np.ndarray:
    """The catalog at large, as the selector computes it."""
    mean = vectors.mean(axis=0)
    unit: np.ndarray = mean / np.linalg.norm(mean)
    return unit


@pytest.fixture
def vectors(word_embedder: WordEmbedder, tiny_catalog: Catalog) -> np.ndarray:
    return word_embedder.encode([p.title for p in tiny_catalog.products])


def test_length_fit_prefers_copy_that_fills_its_fields_without_reaching_the_cap() -> None:
    full = COPY.model_validate(dict(GOOD, headline="x" * SPEC.headline_max))
    stub = COPY.model_validate(dict(GOOD, headline="Hi"))
    good = COPY.model_validate(dict(GOOD, headline="x" * (SPEC.headline_max // 2)))
    assert length_fit(good, SPEC) > length_fit(stub, SPEC)
    assert length_fit(good, SPEC) > length_fit(full, SPEC)
    # The headline's part is 0 at the cap: the mean is the subheadline's part alone.
    assert length_fit(full, SPEC) == pytest.approx(length_fit(good, SPEC) - 0.5)


def test_the_sample_about_the_shopper_and_its_products_wins(
    word_embedder: WordEmbedder, vectors: np.ndarray
) -> None:
    chooser = CopyChooser(word_embedder)
    coffee_rows, tent_rows = [0, 2], [7, 8]  # grinder + beans; tent + headlamp
    shopper = word_embedder.encode_query("coffee")
    scores = chooser.rank(
        [
            sample(0, ABOUT_TENTS, tent_rows),
            sample(1, ABOUT_NOTHING, coffee_rows),
            sample(2, ABOUT_COFFEE, coffee_rows),
        ],
        spec=SPEC,
        item_vectors=vectors,
        catalog_vector=catalog(vectors),
        shopper_vector=shopper,
    )
    assert scores[0].sample == 2 and scores[0].chosen
    assert [s.chosen for s in scores] == [True, False, False]
    by_sample = {s.sample: s for s in scores}
    assert by_sample[2].personal > 0.5 and by_sample[0].personal == 0.0
    # The tent copy is about the tent products it shows; the empty copy about nothing.
    assert by_sample[0].relevance > 0.5 and by_sample[1].relevance == 0.0
    assert all(s.novelty == 1.0 for s in scores)  # nothing seen before
    assert scores == sorted(scores, key=lambda s: -s.total)


def test_novelty_prefers_copy_unlike_the_shoppers_latest_banners(
    word_embedder: WordEmbedder, vectors: np.ndarray
) -> None:
    chooser = CopyChooser(word_embedder, ChoiceWeights(personal=0, relevance=0, length=0))
    seen = [copy_text(COPY.model_validate(ABOUT_COFFEE))]
    scores = chooser.rank(
        [sample(0, ABOUT_COFFEE, [0]), sample(1, ABOUT_TENTS, [0])],
        spec=SPEC,
        item_vectors=vectors,
        catalog_vector=catalog(vectors),
        shopper_vector=None,
        recent_copy=seen,
    )
    assert scores[0].sample == 1
    assert scores[1].novelty == pytest.approx(0.0, abs=1e-6)
    assert all(s.personal == 0.0 for s in scores)  # no shopper vector: decides nothing


def test_a_soft_finding_loses_to_clean_copy_and_equal_scores_go_to_the_earlier_sample(
    word_embedder: WordEmbedder, vectors: np.ndarray
) -> None:
    chooser = CopyChooser(word_embedder)
    shopper = word_embedder.encode_query("coffee")
    flagged = sample(0, ABOUT_COFFEE, [0, 2], notes=["shared_phrase: headline: 'a b c'"])
    clean = sample(1, ABOUT_COFFEE, [0, 2])
    again = sample(2, ABOUT_COFFEE, [0, 2])
    scores = chooser.rank(
        [flagged, again, clean],
        spec=SPEC,
        item_vectors=vectors,
        catalog_vector=catalog(vectors),
        shopper_vector=shopper,
    )
    assert [s.sample for s in scores] == [1, 2, 0]
    assert scores[2].soft == ["shared_phrase: headline: 'a b c'"]
    assert scores[0].total - scores[2].total == pytest.approx(0.15, abs=1e-3)


def test_soft_findings_of_the_guards(tiny_catalog: Catalog) -> None:
    from app.domain import Candidate, CandidateScores

    candidates = [
        Candidate(number=i + 1, product=p, scores=CandidateScores(), source="semantic")
        for i, p in enumerate(tiny_catalog.products[:4])
    ]
    guards = Guards([])
    example = {"headline": "Gear up for a weekend outside", "subheadline": "Light and bright."}

    def notes(answer: Mapping[str, object]) -> list[str]:
        verdict = guards.check(
            COPY.model_validate(answer).model_dump_json(), COPY, SPEC, candidates, [example]
        )
        assert verdict.ok, verdict.problems  # soft findings never refuse
        return verdict.notes

    assert notes(GOOD) == []
    assert notes(dict(GOOD, headline="Gear up for coffee")) == [
        "shared_phrase: headline: 'gear up for'"
    ]
    assert notes(dict(GOOD, headline="Coffee Grinder")) == [
        "bare_heading: headline: only the title 'Coffee Grinder'"
    ]
    assert notes(dict(GOOD, headline="BEST COFFEE here")) == ["shouting: headline"]


# --- in the pipeline ---------------------------------------------------------------------


@pytest.fixture
def best_of_4(tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings):
    def build(answers: list[object]) -> tuple[Pipeline, ScriptedEngine]:
        engine = ScriptedEngine(answers)
        settings = test_settings.model_copy(update={"best_of": 4})
        return make_pipeline(engine, tiny_catalog, tiny_shoppers, settings), engine

    return build


async def test_four_samples_in_one_request_and_the_best_that_passed_is_served(best_of_4) -> None:
    pipeline, engine = best_of_4([INVENTED, ABOUT_NOTHING, ABOUT_COFFEE, INVENTED])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert len(engine.requests) == 1 and engine.requests[0].n == 4
    assert not banner.fallback and banner.retries == 0 and banner.samples == 4
    assert banner.headline == ABOUT_COFFEE["headline"]
    assert [s.sample for s in banner.choice] == [2, 1] and banner.choice[0].chosen
    # The refused samples are named by attempt and sample.
    assert any(f.startswith("attempt 1.1: invented_offer") for f in banner.flags)
    assert any(f.startswith("attempt 1.4: invented_offer") for f in banner.flags)


async def test_a_retry_only_when_every_sample_was_refused(best_of_4, test_settings) -> None:
    pipeline, engine = best_of_4([INVENTED] * 4 + [INVENTED, INVENTED, GOOD, INVENTED])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert len(engine.requests) == 2 and engine.requests[0].seed != engine.requests[1].seed
    assert not banner.fallback and banner.retries == 1 and banner.samples == 8
    assert [s.sample for s in banner.choice] == [2]
    pipeline, engine = best_of_4([INVENTED] * 40)
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert banner.fallback and banner.choice == []
    assert banner.samples == 4 * (test_settings.max_retries + 1)


async def test_a_round_with_every_sample_off_topic_is_written_again(
    best_of_4, test_settings: Settings
) -> None:
    # Tent copy over the coffee fan's coffee products: each sample passes every guard and is
    # about something else.
    pipeline, engine = best_of_4([ABOUT_TENTS] * 4 + [ABOUT_TENTS, ABOUT_COFFEE, ABOUT_TENTS, GOOD])
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert len(engine.requests) == 2 and banner.retries == 1 and not banner.fallback
    assert "attempt 1: off_topic: every sample that passed" in banner.flags
    assert banner.headline in {ABOUT_COFFEE["headline"], GOOD["headline"]}
    assert not any(note.startswith("off_topic") for note in banner.choice[0].soft)
    # Written again once only; when that does no better, the better off-topic round is
    # served, never fallback copy.
    assert test_settings.max_retries >= 2
    pipeline, engine = best_of_4([ABOUT_TENTS] * 40)
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert len(engine.requests) == 2 and banner.retries == 1
    assert not banner.fallback and banner.headline == ABOUT_TENTS["headline"]
    assert banner.choice[0].chosen and any("off_topic" in s for s in banner.choice[0].soft)
    # MARQUEE_OFF_TOPIC_RETRY=false: the round is served as it is.
    pipeline, engine = best_of_4([ABOUT_TENTS] * 4 + [ABOUT_COFFEE] * 4)
    pipeline.settings = pipeline.settings.model_copy(update={"off_topic_retry": False})
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert len(engine.requests) == 1 and banner.headline == ABOUT_TENTS["headline"]


async def test_a_template_asks_for_its_own_number_of_samples(
    best_of_4, test_settings: Settings
) -> None:
    pipeline, engine = best_of_4([])
    source = (PROJECT_ROOT / "prompts" / "hero_banner.j2").read_text()
    source = source.replace("schema: banner", "schema: banner\nbest_of: 2", 1)
    template = parse_template(source, "hero_banner.j2")
    assert pipeline.best_of(template) == 2
    (banner,) = await pipeline.complete(
        pipeline.prepare(BannerRequest(shopper_id="coffee_fan"), template)
    )
    assert engine.requests[0].n == 2 and banner.samples == 2 and len(banner.choice) == 2
    # One sample (the service's or the template's): the first that passes, scored alone.
    single = pipeline.templates.get("hero_banner")
    pipeline.settings = test_settings  # best_of=1
    (banner,) = await pipeline.complete(pipeline.prepare(BannerRequest("coffee_fan"), single))
    assert engine.requests[-1].n == 1 and banner.samples == 1
    assert [(s.sample, s.chosen) for s in banner.choice] == [(0, True)]


def test_the_service_gives_the_shoppers_latest_copy_so_a_new_banner_says_something_else(
    tmp_path, tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    import asyncio
    import json

    from litestar.testing import TestClient

    from app.server.app import create_app
    from app.store.repositories import ApiKeyStore
    from tests.fakes import wait_ready

    settings = test_settings.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
            "best_of": 2,
            "banner_cache_ttl_s": 0,  # the second request is made, not read back
        }
    )
    key = asyncio.run(ApiKeyStore.create_in(settings.database, "t", ["cms"]))
    # First banner: the coffee copy. Second: the same copy again, or the tent copy.
    engine = ScriptedEngine([ABOUT_COFFEE, ABOUT_COFFEE, ABOUT_COFFEE, ABOUT_TENTS])
    app = create_app(settings, lambda s: make_pipeline(engine, tiny_catalog, tiny_shoppers, s))
    with TestClient(app) as client:
        wait_ready(client)

        def banner() -> dict[str, Any]:
            answer = client.post(
                "/v1/banners",
                content=json.dumps({"shopper_id": "coffee_fan"}),
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            )
            assert answer.status_code == 200, answer.text
            made: dict[str, Any] = answer.json()["banners"][0]
            return made

        first = banner()
        assert first["headline"] == ABOUT_COFFEE["headline"]
        assert all(score["novelty"] == 1.0 for score in first["choice"])
        second = banner()
    novelty = {score["sample"]: score["novelty"] for score in second["choice"]}
    assert novelty[0] == pytest.approx(0.0, abs=1e-6)  # said before: no novelty left
    assert novelty[1] > 0.5


@pytest.mark.parametrize(
    ("name", "dtype", "samples"),
    [
        ("transformers", "float32", 2),  # AVX2 CPUs: nothing shares the four rows' prompt
        ("transformers", "bfloat16", AUTO_BEST_OF),
        ("transformers", "float16", AUTO_BEST_OF),
        ("vllm", "float32", AUTO_BEST_OF),  # the prefix cache shares it
    ],
)
def test_auto_best_of_follows_what_the_engine_writes_cheaply(
    name: str,
    dtype: str,
    samples: int,
    tiny_catalog: Catalog,
    tiny_shoppers: ShopperStore,
    test_settings: Settings,
) -> None:
    engine = ScriptedEngine([])
    engine.name, engine.dtype = name, dtype  # type: ignore[attr-defined]
    assert auto_best_of(engine) == samples
    auto = test_settings.model_copy(update={"best_of": "auto"})
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, auto)
    hero = pipeline.templates.get("hero_banner")
    assert pipeline.best_of(hero) == samples
    assert auto_best_of(None) == AUTO_BEST_OF
    assert Settings(best_of=3).best_of == 3 and Settings().best_of == "auto"


def test_copy_no_closer_to_its_products_than_to_the_catalog_is_off_topic_and_loses(
    word_embedder: WordEmbedder, vectors: np.ndarray
) -> None:
    # Only the finding decides: every weighed part is switched off.
    chooser = CopyChooser(
        word_embedder, ChoiceWeights(personal=0, relevance=0, novelty=0, length=0)
    )
    coffee_rows = [0, 2]  # grinder + beans
    scores = chooser.rank(
        [sample(0, ABOUT_TENTS, coffee_rows), sample(1, ABOUT_COFFEE, coffee_rows)],
        spec=SPEC,
        item_vectors=vectors,
        catalog_vector=catalog(vectors),
        shopper_vector=None,
        theme="Coffee",
    )
    about, off = scores
    assert about.sample == 1 and about.soft == [] and about.relevance > about.baseline
    # Tent copy over coffee products: nearer the catalog (which sells tents) than to them.
    assert off.relevance == 0.0 < off.baseline
    assert off.soft == [
        f"off_topic: no closer to its products (0.00) than to the catalog at large "
        f"({off.baseline:.2f})"
    ]
    # The theme is scored, not weighed: the coffee copy names it, the tent copy does not.
    assert about.theme is not None and about.theme > 0 and off.theme == 0.0


async def test_a_lone_off_topic_sample_is_served_with_the_finding_on_the_banner(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    engine = ScriptedEngine([dict(ABOUT_TENTS, products=[1, 2])])
    pipeline = make_pipeline(engine, tiny_catalog, tiny_shoppers, test_settings)  # best_of=1
    (banner,) = await pipeline.generate(BannerRequest(shopper_id="coffee_fan"))
    assert not banner.fallback and {p.id[0] for p in banner.products} == {"C"}  # coffee
    (score,) = banner.choice
    assert score.chosen and any(note.startswith("off_topic: ") for note in score.soft)
    assert score.theme is not None  # the hero is themed: its copy is scored against Coffee
