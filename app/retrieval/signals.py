"""Behavioural signals mined from shoppers' histories: popularity and a collaborative model.

Text embeddings alone retrieve badly on real behaviour; what shoppers view and buy together is
the stronger signal for anyone with a history, and popularity is the prior for cold start.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from scipy import sparse

from app.catalog.store import Catalog
from app.config import Settings
from app.domain import EventType, Shopper
from app.retrieval.collaborative import ALSParams, CoOccurrence, Fit, chosen

# How much each event says about a shopper's taste.
EVENT_WEIGHT: dict[EventType, float] = {
    EventType.VIEW: 1.0,
    EventType.ADD_TO_CART: 3.0,
    EventType.PURCHASE: 5.0,
}


def _scaled(counts: np.ndarray) -> np.ndarray:
    """log-scaled to [0, 1], so a few blockbusters do not flatten everything else."""
    logged: np.ndarray = np.log1p(counts)
    top = float(logged.max()) if logged.size else 0.0
    return logged / top if top > 0 else logged


class InteractionSignals:
    def __init__(
        self,
        catalog: Catalog,
        shoppers: Iterable[Shopper],
        fit: Fit = CoOccurrence,
    ) -> None:
        n = len(catalog)
        counts = np.zeros(n, dtype=np.float64)
        by_segment: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(n, dtype=np.float64))
        rows: list[int] = []
        cols: list[int] = []
        for user, shopper in enumerate(shoppers):
            for event in shopper.history:
                if event.product_id not in catalog:
                    continue
                row = catalog.row(event.product_id)
                weight = EVENT_WEIGHT[event.type]
                counts[row] += weight
                by_segment[shopper.segment][row] += weight
                rows.append(user)
                cols.append(row)
        users = (max(rows) + 1) if rows else 0
        # Shopper x item incidence: 1 if they touched it at all.
        incidence = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(users, n), dtype=np.float64
        )
        incidence.sum_duplicates()
        incidence.data[:] = 1.0
        self.model = fit(incidence)
        self.popularity = _scaled(counts)
        self.segment_popularity = {segment: _scaled(c) for segment, c in by_segment.items()}

    @classmethod
    def from_settings(
        cls, catalog: Catalog, shoppers: Iterable[Shopper], settings: Settings
    ) -> InteractionSignals:
        fit = chosen(
            settings.collaborative_model,
            settings.ease_l2,
            settings.ease_max_items,
            ALSParams.of(settings),
        )
        return cls(catalog, shoppers, fit)

    def collaborative(self, history_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Score of every item from the collaborative model, scaled to [0, 1] (0: no
        evidence for it, or evidence against it)."""
        n = len(self.popularity)
        if history_rows.size == 0:
            return np.zeros(n)
        profile = np.zeros(n)
        np.add.at(profile, history_rows, weights)
        scores = np.clip(self.model.scores(profile).astype(np.float64), 0.0, None)
        top = scores.max()
        return scores / top if top > 0 else scores

    def prior(self, segment: str) -> np.ndarray:
        """Popularity for a shopper: their segment's taste blended with everyone's."""
        own = self.segment_popularity.get(segment)
        return self.popularity if own is None else 0.5 * own + 0.5 * self.popularity
