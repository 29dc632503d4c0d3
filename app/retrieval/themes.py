"""Themes: the one story a hero banner or a spotlight tells.

Retrieval's candidates are varied on purpose (MMR), which is right for a grid and wrong for a
banner that has one line to say: handed headphones, a travel bag and cookware, a model writes
about nothing in particular. A themed selection first picks what the shopper is most into
right now among what retrieval found (the categories of its best candidates, weighed by their
relevance, which blends the shopper vector, the collaborative signal and popularity), then
ranks and diversifies inside that theme alone. A theme with too few products to show gives
way to the next, and the banner says so; where no category has enough (a catalog whose
categories are too fine), the theme is a cluster: the best candidate and the products most
like it, by the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.domain import Candidate, Shopper, Theme
from app.retrieval.selector import CandidateFilters, CandidateSelector, Selection

# The theme is chosen among retrieval's best POOL_FACTOR * k candidates: enough to see what the
# shopper is into, few enough that a theme is something retrieval put near the top.
POOL_FACTOR = 4
# A theme shows two products at least (one is a product, not a theme), or the template's
# minimum when that is more.
MIN_THEME_PRODUCTS = 2


def category_weights(candidates: Sequence[Candidate]) -> list[tuple[str, float]]:
    """The categories of a ranked pool, by the summed relevance of their candidates (ties
    by how early their best candidate ranks): what the shopper is most into, first."""
    weights: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for position, candidate in enumerate(candidates):
        category = candidate.product.category
        weights[category] = weights.get(category, 0.0) + max(candidate.scores.relevance, 1e-6)
        first_seen.setdefault(category, position)
    return sorted(weights.items(), key=lambda item: (-item[1], first_seen[item[0]]))


class ThemePicker:
    def __init__(self, selector: CandidateSelector) -> None:
        self.selector = selector

    def select(
        self,
        shopper: Shopper,
        k: int,
        min_products: int,
        filters: CandidateFilters,
        avoid: Sequence[str] = (),
    ) -> Selection:
        """``k`` candidates of one theme. ``avoid``: themes other sections of the page took
        (used only when the shopper is into nothing else)."""
        pool = self.selector.select(shopper, POOL_FACTOR * k, filters)
        ranked = [category for category, _ in category_weights(pool.candidates)]
        if not ranked:  # nothing to show at all: the template gets too few, as unthemed
            return pool
        preferred = [c for c in ranked if c not in avoid] + [c for c in ranked if c in avoid]
        wanted = preferred[0]
        enough = max(min_products, MIN_THEME_PRODUCTS)
        for category in preferred:
            only = filters.model_copy(update={"include_categories": (category,)})
            chosen = self.selector.select(shopper, k, only)
            if len(chosen.candidates) >= enough:
                chosen.theme = Theme(
                    kind="category",
                    name=category,
                    why=self._why(shopper, category),
                    instead_of=None if category == wanted else wanted,
                )
                return chosen
        return self._cluster(shopper, k, filters, pool, wanted)

    def _cluster(
        self,
        shopper: Shopper,
        k: int,
        filters: CandidateFilters,
        pool: Selection,
        wanted: str,
    ) -> Selection:
        """The best candidate and the pool's products most like it (cosine of their vectors):
        a theme where categories group nothing."""
        catalog, vectors = self.selector.catalog, self.selector.index.vectors
        seed = pool.candidates[0].product
        rows = np.array([catalog.row(c.product.id) for c in pool.candidates])
        closeness = vectors[rows] @ vectors[catalog.row(seed.id)]
        nearest = [pool.candidates[int(i)].product.id for i in np.argsort(-closeness)[:k]]
        chosen = self.selector.select(
            shopper, k, filters.model_copy(update={"include_products": tuple(nearest)})
        )
        chosen.theme = Theme(
            kind="cluster",
            name=f"like {seed.title}",
            why=self._why(shopper, seed.category),
            instead_of=wanted if wanted != seed.category else None,
        )
        return chosen

    def _why(self, shopper: Shopper, category: str) -> str:
        """Why this shopper gets the theme, in words for the CMS and the studio."""
        seen = [p.category for p in self.selector.recently_seen(shopper)]
        if category in seen[:5]:
            return "what they looked at lately"
        if category in seen:
            return "what they looked at before"
        if shopper.interests:
            return "close to their stated interests: " + ", ".join(shopper.interests[:3])
        return f"popular with {shopper.segment} shoppers"
