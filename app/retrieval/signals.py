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
from app.retrieval.collaborative import ALS, CoOccurrence, Fit, ModelChoice, SavedModel
from app.retrieval.scores import DenseScores, NoScores, RankedScores, Scores, SearchedScores

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
        # Each segment's prior, ordered once here: a request walks down it (RankedScores).
        self._popular = RankedScores(self.popularity)
        self._priors = {
            segment: RankedScores(0.5 * _scaled(c) + 0.5 * self.popularity)
            for segment, c in by_segment.items()
        }

    @classmethod
    def from_settings(
        cls,
        catalog: Catalog,
        shoppers: Iterable[Shopper],
        settings: Settings,
        saved: SavedModel | None = None,
    ) -> InteractionSignals:
        """The signals with the collaborative model the settings choose; with ``saved`` (kept
        beside the index), the model fitted there from the same data is loaded instead of
        fitted, and a new fit is saved there."""
        choice = ModelChoice.of(settings)
        return cls(catalog, shoppers, choice if saved is None else saved.fit(choice))

    def collaborative(self, history_rows: np.ndarray, weights: np.ndarray) -> Scores:
        """The collaborative model's scores for a history, scaled to [0, 1] (0: no evidence
        for a product, or evidence against it)."""
        if history_rows.size == 0:
            return NoScores()
        model = self.model
        if isinstance(model, ALS) and model.graph is not None:
            shopper = model.shopper_factors(history_rows, weights)
            return SearchedScores(model.graph, model.graph_rows, model.item_factors, shopper)
        scores = np.clip(self.model.scores(history_rows, weights).astype(np.float64), 0.0, None)
        top = scores.max()
        return DenseScores(scores / top if top > 0 else scores)

    def prior(self, segment: str) -> RankedScores:
        """Popularity for a shopper: their segment's taste blended with everyone's."""
        return self._priors.get(segment, self._popular)
