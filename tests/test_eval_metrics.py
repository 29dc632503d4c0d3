"""Every eval metric on hand-made inputs whose values are known."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import EventType, Interaction, Shopper
from eval import copy_quality, metrics
from eval.datasets import hold_out_latest
from eval.runner import check_thresholds, lookup
from tests.fakes import GOOD, ScriptedEngine, make_pipeline


def test_recall_ndcg_and_reciprocal_rank_of_a_known_ranking() -> None:
    ranked = ["a", "b", "c", "d", "e"]
    relevant = {"b", "e", "z"}
    assert metrics.recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    # Hits at ranks 2 and 5; the ideal puts 3 hits at ranks 1-3.
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics.ndcg_at_k(ranked, relevant, 5) == pytest.approx(dcg / ideal)
    assert metrics.ndcg_at_k(["b"], {"b"}, 10) == 1.0
    assert metrics.reciprocal_rank(ranked, relevant) == 0.5
    assert metrics.reciprocal_rank(ranked, {"q"}) == 0.0
    with pytest.raises(ValueError):
        metrics.recall_at_k(ranked, set(), 5)


def test_coverage_and_intra_list_diversity() -> None:
    assert metrics.coverage([["a", "b"], ["b", "c"]], 10) == 0.3
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    orthogonal = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.intra_list_diversity(same) == pytest.approx(0.0)
    assert metrics.intra_list_diversity(orthogonal) == pytest.approx(1.0)
    assert metrics.intra_list_diversity(orthogonal[:1]) == 0.0


def test_distinct_n_of_known_strings() -> None:
    texts = ["the cat sat", "the cat ran"]
    assert metrics.distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # "the cat" repeats
    assert metrics.distinct_n([""], 2) == 0.0


def test_self_bleu() -> None:
    """On sacrebleu's scale (0-100): identical copy is 100, copy sharing no word is 0, and a
    shared phrase lands in between; the order of the texts does not matter."""
    assert metrics.self_bleu(["same words here today", "same words here today"]) == pytest.approx(
        100.0
    )
    assert metrics.self_bleu(["tents for camping trips", "espresso beans roasted dark"]) == 0.0
    some = ["gear up for a weekend outside", "gear up for your coffee mornings", "bright lamps"]
    assert 0.0 < metrics.self_bleu(some) < 50.0
    assert metrics.self_bleu(some) == pytest.approx(metrics.self_bleu(some[::-1]))
    assert metrics.self_bleu(["alone"]) == 0.0


def test_a_planted_invented_price_is_caught() -> None:
    facts = "Ridgeline Tent 2-Person 189.00 Summitcraft Headlamp 300 lumens 34.50"
    assert metrics.invented_figures("A 2-person tent and a 300 lumen lamp", facts) == []
    assert metrics.invented_figures("Now only $149.99!", facts) == ["149.99"]
    assert metrics.invented_figures("Save 20% today", facts) == ["20"]
    assert metrics.invented_figures("From 189", facts) == []  # 189 == 189.00


@pytest.mark.parametrize(
    ("text", "degenerate"),
    [
        ("Gear up for the weekend", False),
        ("great great great tents", True),
        ("shop now shop now shop now", True),
        ("Wooooow tents", True),
        ("", True),
    ],
)
def test_degeneration(text: str, degenerate: bool) -> None:
    assert metrics.is_degenerate(text) is degenerate


def test_personalization_lift() -> None:
    copy = np.array([[1.0, 0.0], [0.0, 1.0]])
    interests = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.personalization_lift(copy, interests) == [1.0, 1.0]
    assert metrics.personalization_lift(copy, interests[::-1]) == [-1.0, -1.0]


def test_bootstrap_interval_and_paired_verdicts() -> None:
    low, high = metrics.bootstrap_ci([1.0] * 50)
    assert low == high == 1.0
    low, high = metrics.bootstrap_ci([0.0, 1.0] * 100)
    assert low < 0.5 < high and high - low < 0.2
    a, b = [0.0] * 40, [1.0] * 40
    diff, low, high = metrics.paired_difference(a, b)
    assert diff == 1.0 and metrics.verdict(low, high) == "B better"
    assert metrics.verdict(low, high, higher_is_better=False) == "A better"
    noisy = [0.0, 1.0] * 20
    _, low, high = metrics.paired_difference(noisy, noisy[::-1])
    assert metrics.verdict(low, high) == "no clear difference"


def test_hold_out_keeps_only_the_past_and_nothing_about_the_target() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def e(pid: str, day: int, kind: EventType = EventType.VIEW) -> Interaction:
        return Interaction(product_id=pid, type=kind, ts=t0 + timedelta(days=day))

    shopper = Shopper(
        id="s1",
        history=(e("A", 1), e("X", 2), e("B", 3), e("X", 4, EventType.PURCHASE)),
    )
    short = Shopper(id="s2", history=(e("A", 1),))
    train, held = hold_out_latest([shopper, short])
    assert held == {"s1": {"X"}}
    assert [ev.product_id for ev in train.get("s1").history] == ["A", "B"]  # no trace of X
    assert len(train.get("s2").history) == 1  # too short: kept whole, not evaluated


def test_thresholds_compare_with_numbers_and_other_metrics(tmp_path: Path) -> None:
    rules = tmp_path / "t.yaml"
    rules.write_text(
        "s:\n"
        "  - {metric: copy.rate, op: '>=', value: 1.0}\n"
        "  - {metric: 'r.m.ndcg@10', op: '>', than: 'r.p.ndcg@10'}\n"
        "  - {metric: missing.one, op: '<=', value: 0}\n"
    )
    summary = {"copy": {"rate": 1.0}, "r": {"m": {"ndcg@10": 0.2}, "p": {"ndcg@10": 0.3}}}
    checks = check_thresholds(summary, "s", rules)
    assert [c["passed"] for c in checks] == [True, False, False]
    assert "no metric" in checks[2]["error"]
    assert lookup(summary, "r.m.ndcg@10") == 0.2


async def test_the_copy_eval_measures_one_story_per_banner(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, test_settings: Settings
) -> None:
    """Borrowed phrases, categories shown, and relevance against a random draw, per banner
    and per template, on the tiny catalog (the guard's refusal is off here, so the borrowed
    copy is served and counted)."""
    settings = test_settings.model_copy(update={"borrowed_run": 0})
    lifted = dict(GOOD, headline="Gear up for a weekend of coffee")
    pipeline = make_pipeline(
        ScriptedEngine([lifted, GOOD, GOOD]), tiny_catalog, tiny_shoppers, settings
    )
    shoppers = [tiny_shoppers.get(i) for i in ("coffee_fan", "coffee_two", "runner")]
    samples = await copy_quality.generate(
        pipeline, shoppers, "hero_banner", None, "hero_banner", []
    )
    assert [s.borrowed for s in samples] == [["headline: gear up for a"], [], []]
    for sample in samples:
        shown = {tiny_catalog.get(p.id).category for p in sample.banner.products}  # type: ignore[union-attr]
        assert sample.categories == len(shown) >= 1
        assert -1 <= sample.relevance <= 1 and -1 <= sample.relevance_random <= 1
    again = copy_quality._relevance(pipeline, samples[0].banner, "hero_banner:coffee_fan")
    assert again[:2] == (samples[0].relevance, samples[0].relevance_random)  # the same draw
    # Each hero shows its theme alone; the coffee copy is off topic over the runner's.
    assert [s.multi_theme for s in samples] == [False, False, False]
    assert [s.off_topic for s in samples] == [False, False, True]
    runner = samples[2]
    assert runner.relevance <= runner.relevance_catalog

    summary = copy_quality.summarise(samples, [0.0] * 3)
    story = summary["per_template"]["hero_banner"]
    assert story["banners"] == 3 and story["borrowed_phrase"]["mean"] == pytest.approx(1 / 3)
    assert story["off_topic"]["mean"] == pytest.approx(1 / 3)
    assert story["multi_theme"]["mean"] == 0.0
    lifts = [s.relevance - s.relevance_random for s in samples]
    assert story["relevance_lift"]["mean"] == pytest.approx(sum(lifts) / 3)
    least = summary["least_relevant"]
    assert [w["relevance"] - w["random"] for w in least] == pytest.approx(sorted(lifts), abs=2e-3)
