"""The experiment read-out's statistics, against statsmodels and scipy, and the reason for the
sequential test: a fixed-horizon test read at every look calls winners that are not there.
Then the bandit: its share against scipy, its periods, and a simulation with known rates."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import integrate, stats

from app.prompting.templates import Split
from app.server.studio.experiments import (
    EFFECT_SD,
    always_valid_p_value,
    thompson_share,
    two_proportion_p_value,
    verdict,
    wilson,
)


@pytest.mark.parametrize(("a", "n_a", "b", "n_b"), [(30, 200, 45, 210), (5, 1000, 9, 800)])
def test_the_fixed_horizon_z_test_is_statsmodels_own(a: int, n_a: int, b: int, n_b: int) -> None:
    from statsmodels.stats.proportion import proportion_confint, proportions_ztest

    _, expected = proportions_ztest([a, b], [n_a, n_b])
    assert two_proportion_p_value(wilson(a, n_a), wilson(b, n_b)) == pytest.approx(expected)
    low, high = proportion_confint(a, n_a, alpha=0.05, method="wilson")
    rate = wilson(a, n_a)
    assert (rate.low, rate.high) == pytest.approx((low, high))


def test_the_always_valid_p_value_is_the_mixture_likelihood_ratio() -> None:
    """1 / Λ, with Λ integrated numerically: the normal likelihood of the observed difference
    averaged over N(0, τ²) true differences, against its likelihood at no difference."""
    control, variant = wilson(40, 400), wilson(62, 390)
    pooled = (40 + 62) / (400 + 390)
    variance = pooled * (1 - pooled) * (1 / 400 + 1 / 390)
    observed = variant.value - control.value
    sd = math.sqrt(variance)

    def mixed(theta: float) -> float:
        return float(stats.norm.pdf(observed, theta, sd) * stats.norm.pdf(theta, 0, EFFECT_SD))

    numerator, _ = integrate.quad(mixed, -1, 1, points=[0.0, observed])
    ratio = numerator / stats.norm.pdf(observed, 0, sd)
    assert always_valid_p_value(control, variant) == pytest.approx(1 / ratio, rel=1e-6)
    assert always_valid_p_value(control, control) == 1.0  # no difference: no evidence
    assert always_valid_p_value(wilson(0, 0), variant) == 1.0  # no data yet


def _looks(rng: np.random.Generator, rate_a: float, rate_b: float, runs: int) -> np.ndarray:
    """Cumulative successes per arm at 20 looks of 250 impressions each: (runs, 20, 2)."""
    per_look = np.stack(
        [rng.binomial(250, rate_a, (runs, 20)), rng.binomial(250, rate_b, (runs, 20))], axis=-1
    )
    return np.cumsum(per_look, axis=1)


def _ever_called(successes: np.ndarray, test: str) -> float:
    """The share of runs in which a winner was called at any of the looks."""
    called = 0
    for run in successes:
        for look, (a, b) in enumerate(run, 1):
            trials = 250 * look
            if test == "fixed":
                p = two_proportion_p_value(wilson(a, trials), wilson(b, trials))
            else:
                p = always_valid_p_value(wilson(a, trials), wilson(b, trials))
            if p < 0.05:
                called += 1
                break
    return called / len(successes)


def test_reading_at_every_look_a_fixed_test_calls_false_winners_the_sequential_does_not() -> None:
    """An A/A experiment (both arms at 10 %), read 20 times: the z-test calls a winner far
    more often than its 5 %, the always-valid test stays under it."""
    aa = _looks(np.random.default_rng(11), 0.10, 0.10, runs=600)
    fixed, sequential = _ever_called(aa, "fixed"), _ever_called(aa, "sequential")
    assert fixed > 0.12  # about 0.25 in theory for 20 looks
    assert sequential <= 0.05


def test_the_sequential_test_still_finds_a_real_difference() -> None:
    """10 % against 13 %: by the last look (5,000 impressions an arm) it is called in most runs,
    and the winner it calls is the right one."""
    ab = _looks(np.random.default_rng(12), 0.10, 0.13, runs=200)
    assert _ever_called(ab, "sequential") >= 0.8
    final = ab[:, -1, :]
    calls = [verdict(wilson(a, 5000), wilson(b, 5000)) for a, b in final]
    assert "control wins" not in calls and calls.count("variant wins") >= 0.8 * len(calls)


def test_the_bandit_share_is_the_chance_the_variant_is_better() -> None:
    """P(variant's rate > control's) under Beta(1 + clicks, 1 + misses) posteriors, against
    scipy's integral of the same; within [min_share, 1 - min_share]."""
    control, variant = wilson(30, 400), wilson(38, 410)
    exact, _ = integrate.quad(
        lambda x: stats.beta.pdf(x, 1 + 38, 1 + 410 - 38) * stats.beta.cdf(x, 1 + 30, 1 + 370),
        0,
        1,
        points=[30 / 400, 38 / 410],
    )
    assert thompson_share(control, variant, 0.05) == pytest.approx(exact, abs=0.01)
    assert thompson_share(wilson(0, 0), wilson(0, 0), 0.1) == pytest.approx(0.5, abs=0.01)
    assert thompson_share(wilson(10, 1000), wilson(90, 1000), 0.1) == 0.9  # capped
    assert thompson_share(wilson(90, 1000), wilson(10, 1000), 0.1) == 0.1  # floored
    # The same counts give the same share on every replica.
    assert thompson_share(control, variant, 0.05) == thompson_share(control, variant, 0.05)


def test_a_thompson_split_holds_each_arm_for_a_period_then_draws_again() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    first = Split("hero", "production", "b", 0.5, "thompson", 0.1, 3600.0, start)
    shoppers = [f"s{i}" for i in range(2_000)]
    arms = [first.label_for("home_hero", s) for s in shoppers]
    assert arms == [first.label_for("home_hero", s) for s in shoppers]  # stable in a period
    assert not first.due(start + timedelta(minutes=59))
    assert first.due(start + timedelta(hours=1))
    later = replace(first, since=start + timedelta(hours=1))
    moved = sum(a != later.label_for("home_hero", s) for a, s in zip(arms, shoppers, strict=True))
    assert 800 < moved < 1_200  # drawn afresh: about half change arm at a 50 % weight
    plain = replace(first, strategy="split")
    assert not plain.due(start + timedelta(days=9))
    assert [plain.label_for("home_hero", s) for s in shoppers] == [
        replace(plain, since=start + timedelta(days=3)).label_for("home_hero", s) for s in shoppers
    ]  # a marketer's split never re-draws


def test_the_bandit_sends_most_shoppers_to_the_better_arm_and_keeps_exploring() -> None:
    """Two arms with known click rates (5 % and 8 %), 30 periods of 1,000 shoppers: by the end
    the better one gets most of the traffic, and the other never less than its least share."""
    rng = np.random.default_rng(21)
    rates = {"production": 0.05, "b": 0.08}
    clicks = {"production": 0, "b": 0}
    shown = {"production": 0, "b": 0}
    split = Split("hero", "production", "b", 0.5, "thompson", 0.1, 3600.0)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    shares = []
    for period in range(30):
        split = replace(split, since=start + timedelta(hours=period))
        labels = [split.label_for("home_hero", f"p{period}s{i}") for i in range(1_000)]
        shares.append(labels.count("b") / len(labels))
        for label in labels:
            shown[label] += 1
            clicks[label] += int(rng.random() < rates[label])
        weight = thompson_share(
            wilson(clicks["production"], shown["production"]),
            wilson(clicks["b"], shown["b"]),
            split.min_share,
        )
        split = replace(split, variant_weight=weight)
    assert np.mean(shares[-10:]) > 0.8
    assert shown["b"] > 0.7 * sum(shown.values())
    assert min(1 - s for s in shares) >= 0.1 - 0.03  # the floor, give or take the draw


def test_the_chance_the_variant_is_better_matches_the_posteriors_integral() -> None:
    """P(variant CTR > control CTR) under Beta posteriors, against scipy's integral of one
    posterior's density times the other's distribution function."""
    from scipy import integrate, stats

    from app.server.studio.experiments import probability_better

    control, variant = wilson(30, 400), wilson(45, 400)
    a = stats.beta(1 + 30, 1 + 370)
    b = stats.beta(1 + 45, 1 + 355)
    exact, _ = integrate.quad(lambda x: b.pdf(x) * a.cdf(x), 0, 1, limit=200)
    assert probability_better(control, variant) == pytest.approx(exact, abs=0.01)
    assert probability_better(variant, control) == pytest.approx(1 - exact, abs=0.01)
