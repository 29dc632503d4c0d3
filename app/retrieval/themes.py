"""Themes: the one story a hero banner or a spotlight tells.

Retrieval's candidates are varied on purpose (MMR), which is right for a grid and wrong for a
banner that has one line to say: handed headphones, a travel bag and cookware, a model writes
about nothing in particular. A themed selection first picks what the shopper is most into
right now among what retrieval found (the categories and brands of its best candidates,
weighed by their relevance, which blends the shopper vector, the collaborative signal and
popularity), then ranks and diversifies inside that theme alone. A theme with too few products
to show gives way to the next, and the banner says so; where no category or brand has enough (a
catalog whose categories are too fine), the theme is a cluster: the best candidate and the
products most like it, by the embedding.

A category wins a tie with a brand: a brand sold in one category weighs what its category
weighs at most, so a brand is the theme only where the shopper is into it across categories.
A brand that is most of what retrieval found (a shop of one brand, a house brand on
everything) tells no story and is no theme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from app.domain import (
    LOOKED_AT_BEFORE,
    LOOKED_AT_LATELY,
    Candidate,
    Shopper,
    Theme,
    close_to_interests,
)
from app.retrieval.selector import CandidateFilters, CandidateSelector, Selection

# The theme is chosen among retrieval's best POOL_FACTOR * k candidates: enough to see what the
# shopper is into, few enough that a theme is something retrieval put near the top.
POOL_FACTOR = 4
# A theme shows two products at least (one is a product, not a theme), or the template's
# minimum when that is more.
MIN_THEME_PRODUCTS = 2
# A brand with more than this share of the pool's candidates is not a theme.
MAX_BRAND_SHARE = 0.5

ThemeKind = Literal["category", "brand"]


def theme_weights(candidates: Sequence[Candidate]) -> list[tuple[ThemeKind, str, float]]:
    """The themes of a ranked pool (its categories, and its brands sold in more than one of
    them), by the summed relevance of their candidates: what the shopper is most into, first.
    Ties go to categories, then to the theme whose best candidate ranks earlier."""
    weights: dict[tuple[ThemeKind, str], float] = {}
    first_seen: dict[tuple[ThemeKind, str], int] = {}
    counts: dict[str, int] = {}
    brand_categories: dict[str, set[str]] = {}
    for position, candidate in enumerate(candidates):
        product, weight = candidate.product, max(candidate.scores.relevance, 1e-6)
        for key in (("category", product.category), ("brand", product.brand)):
            weights[key] = weights.get(key, 0.0) + weight
            first_seen.setdefault(key, position)
        counts[product.brand] = counts.get(product.brand, 0) + 1
        brand_categories.setdefault(product.brand, set()).add(product.category)
    themes = [
        (kind, name, weight)
        for (kind, name), weight in weights.items()
        if kind == "category"
        or (len(brand_categories[name]) > 1 and counts[name] <= MAX_BRAND_SHARE * len(candidates))
    ]
    return sorted(
        themes,
        key=lambda t: (-t[2], t[0] != "category", first_seen[(t[0], t[1])]),
    )


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
        # A brand is a theme for someone into it, which only a history shows: a shopper we know
        # only by stated interests gets categories ("beach holidays" is Swim, not the shop's
        # "General" division, which its clothing set gives as every product's brand).
        ranked = [
            (kind, name)
            for kind, name, _ in theme_weights(pool.candidates)
            if kind == "category" or shopper.history
        ]
        if not ranked:  # nothing to show at all: the template gets too few, as unthemed
            return pool
        preferred = [t for t in ranked if t[1] not in avoid] + [t for t in ranked if t[1] in avoid]
        wanted = preferred[0][1]
        enough = max(min_products, MIN_THEME_PRODUCTS)
        for kind, name in preferred:
            field = "include_categories" if kind == "category" else "include_brands"
            chosen = self.selector.select(shopper, k, filters.model_copy(update={field: (name,)}))
            if len(chosen.candidates) >= enough:
                chosen.theme = Theme(
                    kind=kind,
                    name=name,
                    why=self._why(shopper, kind, name),
                    instead_of=None if name == wanted else wanted,
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
            why=self._why(shopper, "category", seed.category),
            instead_of=wanted if wanted != seed.category else None,
        )
        return chosen

    def _why(self, shopper: Shopper, kind: ThemeKind, name: str) -> str:
        """Why this shopper gets the theme, in words for the CMS and the studio."""
        seen = [
            p.category if kind == "category" else p.brand
            for p in self.selector.recently_seen(shopper)
        ]
        return theme_why(name, seen, shopper)


def theme_why(name: str, seen: Sequence[str], shopper: Shopper) -> str:
    """Why ``shopper`` gets the theme ``name``: ``seen`` holds the category (or brand) of each
    product they saw, newest first. The one rule; the training set's prompts say it too."""
    if name in seen[:5]:
        return LOOKED_AT_LATELY
    if name in seen:
        return LOOKED_AT_BEFORE
    if shopper.interests:
        return close_to_interests(shopper.interests)
    return f"popular with {shopper.segment} shoppers"
