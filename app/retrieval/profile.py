"""A shopper's position in embedding space, from what they did and what they said they like."""

from __future__ import annotations

from dataclasses import dataclass

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


def history_weights(shopper: Shopper, catalog: Catalog, half_life_days: float) -> HistoryWeights:
    events = [e for e in shopper.history if e.product_id in catalog]
    if not events:
        return HistoryWeights(np.zeros(0, dtype=np.int64), np.zeros(0))
    # Recency is measured from the shopper's latest event; the exponential makes the choice of
    # reference time cancel out after normalisation anyway, and it keeps results reproducible.
    latest = max(e.ts for e in events)
    totals: dict[int, float] = {}
    for event in events:
        age_days = (latest - event.ts).total_seconds() / SECONDS_PER_DAY
        weight = EVENT_WEIGHT[event.type] * 0.5 ** (age_days / half_life_days)
        row = catalog.row(event.product_id)
        totals[row] = totals.get(row, 0.0) + weight
    rows = np.fromiter(totals.keys(), dtype=np.int64)
    weights = np.fromiter(totals.values(), dtype=np.float64)
    return HistoryWeights(rows, weights)


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
