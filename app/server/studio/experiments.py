"""Experiment read-outs: rates with Wilson intervals, whether a variant beats control, and a
bandit's share of traffic.

A marketer looks at an experiment whenever they like, and stops it when it shows a winner. A
fixed-horizon z-test read at every look overstates wins: under no real difference, checking
it 20 times along the way calls a winner about a quarter of the time instead of 5 %
(tests/test_experiments.py measures it). The verdict here comes from an always-valid
p-value instead, the mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
Pekelis and Walsh ("Always Valid Inference", Operations Research 2022; the test behind
Optimizely's stats engine): its chance of ever calling a winner when there is none stays
under alpha however often and whenever it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054
# The mixture's spread over the true difference of the two rates (absolute, so 0.05 means
# effects of a few points are what experiments are expected to find). Any fixed value keeps
# the guarantee; it sets which effects are found soonest.
EFFECT_SD = 0.05


@dataclass(frozen=True)
class Rate:
    successes: int
    trials: int
    value: float
    low: float
    high: float


def wilson(successes: int, trials: int, z: float = Z_95) -> Rate:
    """The Wilson score interval: honest for small counts and rates near 0, unlike p ± 2σ."""
    if trials <= 0:
        return Rate(successes, trials, 0.0, 0.0, 1.0)
    successes = min(successes, trials)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Rate(successes, trials, p, max(0.0, centre - half), min(1.0, centre + half))


def _difference_variance(a: Rate, b: Rate) -> float:
    """The variance of b - a under no difference (pooled), 0 when it cannot be told."""
    if a.trials == 0 or b.trials == 0:
        return 0.0
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    return pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials)


def two_proportion_p_value(a: Rate, b: Rate) -> float:
    """Two-sided p-value that rates ``a`` and ``b`` differ (pooled z-test): valid at one
    sample size fixed in advance, not at every look."""
    variance = _difference_variance(a, b)
    if variance == 0:
        return 1.0
    z = abs(a.value - b.value) / math.sqrt(variance)
    return math.erfc(z / math.sqrt(2))


def always_valid_p_value(a: Rate, b: Rate, effect_sd: float = EFFECT_SD) -> float:
    """mSPRT p-value that ``a`` and ``b`` differ, valid at any look: 1 / Λ (capped at 1), where
    Λ is the likelihood ratio of the observed difference d (variance V) under a normal
    mixture of differences N(0, τ²) against no difference:
    Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))."""
    variance = _difference_variance(a, b)
    if variance == 0:
        return 1.0
    spread = effect_sd * effect_sd
    difference = b.value - a.value
    log_ratio = 0.5 * math.log(variance / (variance + spread)) + (
        spread * difference * difference / (2 * variance * (variance + spread))
    )
    return min(1.0, math.exp(-log_ratio))


def verdict(control: Rate, variant: Rate, alpha: float = 0.05) -> str:
    """'variant wins', 'control wins' or 'no clear difference yet', by the always-valid
    p-value: safe to read at every look."""
    if always_valid_p_value(control, variant) >= alpha:
        return "no clear difference yet"
    return "variant wins" if variant.value > control.value else "control wins"


def probability_better(control: Rate, variant: Rate, draws: int = 20_000) -> float:
    """P(the variant's click rate beats control's) under Beta(1 + clicks, 1 + non-clicks)
    posteriors: the bandit's read of an experiment, beside the verdict's p-value. Drawn from a
    generator seeded by the counts, so every replica (and every read) gets the same number."""
    rng = np.random.default_rng(
        [control.successes, control.trials, variant.successes, variant.trials]
    )
    better = rng.beta(
        1 + variant.successes, 1 + variant.trials - variant.successes, draws
    ) > rng.beta(1 + control.successes, 1 + control.trials - control.successes, draws)
    return float(better.mean())


def thompson_share(control: Rate, variant: Rate, min_share: float, draws: int = 20_000) -> float:
    """The variant's share of shoppers for the next period: the chance that it is the better
    arm (Thompson sampling as probability matching), kept within [min_share, 1 - min_share]
    so neither arm stops learning."""
    return min(max(probability_better(control, variant, draws), min_share), 1.0 - min_share)
