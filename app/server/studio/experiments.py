"""Experiment read-outs: rates with Wilson intervals, and whether a variant beats control."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054


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


def two_proportion_p_value(a: Rate, b: Rate) -> float:
    """Two-sided p-value that rates ``a`` and ``b`` differ (pooled z-test)."""
    if a.trials == 0 or b.trials == 0:
        return 1.0
    pooled = (a.successes + b.successes) / (a.trials + b.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if se == 0:
        return 1.0
    z = abs(a.value - b.value) / se
    return math.erfc(z / math.sqrt(2))


def verdict(control: Rate, variant: Rate, alpha: float = 0.05) -> str:
    """'variant wins', 'control wins' or 'no clear difference yet'."""
    if two_proportion_p_value(control, variant) >= alpha:
        return "no clear difference yet"
    return "variant wins" if variant.value > control.value else "control wins"
