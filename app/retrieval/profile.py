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
    start = len(events) - 1
    gap = timedelta(minutes=session_gap_min)
    while start > 0 and events[start].ts - events[start - 1].ts <= gap:
        start -= 1
    parts = [events] if session_share <= 0 or start == 0 else [events[:start], events[start:]]
    shares = [1.0] if len(parts) == 1 else [1.0 - session_share, session_share]
    totals: dict[int, float] = {}
    for part, share in zip(parts, shares, strict=True):
        weights: dict[int, float] = {}
        for event in part:
            age_days = (latest - event.ts).total_seconds() / SECONDS_PER_DAY
            weight = EVENT_WEIGHT[event.type] * 0.5 ** (age_days / half_life_days)
            row = catalog.row(event.product_id)
            weights[row] = weights.get(row, 0.0) + weight
        scale = share / sum(weights.values()) if len(parts) > 1 else 1.0
        for row, weight in weights.items():
            totals[row] = totals.get(row, 0.0) + weight * scale
    rows = np.fromiter(totals.keys(), dtype=np.int64)
    weights_array = np.fromiter(totals.values(), dtype=np.float64)
    return HistoryWeights(rows, weights_array)


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
