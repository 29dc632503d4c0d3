"""The experiment read-out's statistics, against statsmodels and scipy, and the reason for the
sequential test: a fixed-horizon test read at every look calls winners that are not there."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from app.server.studio.experiments import (
    EFFECT_SD,
    always_valid_p_value,
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
