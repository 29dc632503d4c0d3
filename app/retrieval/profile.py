"""A shopper's position in embedding space, from what they did and what they said they like."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from app.catalog.store import Catalog
from app.domain import Shopper
from app.retrieval.signals import EVENT_WEIGHT

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class HistoryWeights:
    """Catalog rows the shopper touched, with recency x event-type weights (summed per row)."""

    rows: np.ndarray
    weights: np.ndarray


def history_weights(
    shopper: Shopper,
    catalog: Catalog,
    half_life_days: float,
    session_gap_min: float = 30.0,
    session_share: float = 0.0,
) -> HistoryWeights:
    """Recency x event-type weights per product the shopper touched.

    ``session_share`` > 0: the shopper's latest session (their last events with no gap longer
    than ``session_gap_min`` between two) carries that share of the total weight, the older
    history the rest, however long it is: three views of tents just now outweigh a year of
    coffee. A history that is one session is weighted as it is.
    """
    events = sorted((e for e in shopper.history if e.product_id in catalog), key=lambda e: e.ts)
    if not events:
        return HistoryWeights(np.zeros(0, dtype=np.int64), np.zeros(0))
    # Recency is measured from the shopper's latest event, and so is the session, not from the
    # clock: the same history always gives the same profile (cached and pre-generated banners
    # are keyed by the history, not by the time they were asked for).
    latest = events[-1].ts
    ages_days = [(latest - e.ts).total_seconds() / SECONDS_PER_DAY for e in events]
    weights = [
        EVENT_WEIGHT[e.type] * 0.5 ** (age / half_life_days)
        for e, age in zip(events, ages_days, strict=True)
    ]
    start = len(events) - 1  # where the latest session starts
    gap = timedelta(minutes=session_gap_min)
    while start > 0 and events[start].ts - events[start - 1].ts <= gap:
        start -= 1
    if session_share > 0 and start > 0:
        older, session = sum(weights[:start]), sum(weights[start:])
        weights = [w * (1.0 - session_share) / older for w in weights[:start]] + [
            w * session_share / session for w in weights[start:]
        ]
    totals: dict[int, float] = {}
    for event, weight in zip(events, weights, strict=True):
        row = catalog.row(event.product_id)
        totals[row] = totals.get(row, 0.0) + weight
    return HistoryWeights(
        np.fromiter(totals.keys(), dtype=np.int64), np.fromiter(totals.values(), dtype=np.float64)
    )


def _unit(vector: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(vector))
    return None if norm == 0.0 else (vector / norm).astype(np.float32)


def shopper_vector(
    history: HistoryWeights,
    item_vectors: np.ndarray,
    interests_vector: np.ndarray | None,
    history_weight: float,
) -> np.ndarray | None:
    """Recency-weighted mean of touched items, blended with the stated interests.

    None when there is nothing to go on (cold start).
    """
    from_history = None
    if history.rows.size:
        from_history = _unit(history.weights @ item_vectors[history.rows])
    if from_history is None:
        return interests_vector
    if interests_vector is None:
        return from_history
    return _unit(history_weight * from_history + (1.0 - history_weight) * interests_vector)


def interests_text(shopper: Shopper) -> str:
    return "; ".join(shopper.interests)
