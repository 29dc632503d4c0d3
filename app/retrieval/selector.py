"""Candidate selection: vector search + collaborative blend + filters + MMR, with cold start."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.catalog.store import Catalog
from app.config import Settings
from app.domain import Candidate, CandidateScores, Product, Shopper, Theme
from app.retrieval.embedder import Embedder
from app.retrieval.index import VectorIndex
from app.retrieval.mmr import mmr
from app.retrieval.profile import (
    HistoryWeights,
    history_weights,
    interests_text,
    shopper_vector,
)
from app.retrieval.scores import NoScores, Scores
from app.retrieval.signals import InteractionSignals

# A category name with a word in it ("Home Decor"), not a code ("C-104").
_WORDED = re.compile(r"[^\W\d_]{3,}")


class CandidateFilters(BaseModel):
    """Business rules applied to every candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    in_stock_only: bool = True
    exclude_purchased: bool = True
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    include_brands: tuple[str, ...] = Field(default=(), max_length=50)
    # Only these products (None: any; empty: none, so the selection is empty).
    include_products: tuple[str, ...] | None = Field(default=None, max_length=1000)
    exclude_products: tuple[str, ...] = Field(default=(), max_length=1000)
    # Only products added to the catalog at or after this time (new arrivals).
    added_since: AwareDatetime | None = None
    min_price: float | None = Field(default=None, ge=0)
    max_price: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _price_range(self) -> CandidateFilters:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise ValueError("min_price is above max_price")
        return self


@dataclass
class SelectionTrace:
    """What retrieval did, for `marquee candidates` and for debugging a banner."""

    cold_start: bool
    signals: dict[str, float]  # the blend weights actually used
    pool_size: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # filter -> products it removed
    allowed: int = 0


@dataclass
class Selection:
    candidates: list[Candidate]
    trace: SelectionTrace
    # "Because you viewed": the product the candidates are neighbours of (None otherwise).
    anchor: Product | None = None
    # A themed set: the one story the candidates tell (None: a mixed set).
    theme: Theme | None = None


@dataclass(frozen=True)
class InterestBoost:
    """Stated interests matched against category names (``interest_affinity``): a
    product's semantic score becomes ``(1 - weight) * its text's cosine + weight * its
    category's affinity``, and the closest categories' best products join the pool."""

    weight: float
    affinity: np.ndarray  # per category (as indexed by category_of), in [0, 1]
    category_of: np.ndarray  # per product row: its category's index

    # The categories whose best products join the pool: enough for a shopper with two
    # interests, few enough that the pool stays what retrieval found.
    CATEGORIES = 2

    def blend(self, semantic: np.ndarray, rows: np.ndarray) -> np.ndarray:
        pull = self.affinity[self.category_of[rows]]
        blended: np.ndarray = (1.0 - self.weight) * semantic + self.weight * pull
        return blended

    def closest(self, allowed: np.ndarray) -> list[int]:
        """The categories (as indexes) most like the interests among those with an allowed
        product, closest first."""
        present = np.unique(self.category_of[allowed])
        ranked = present[np.argsort(-self.affinity[present], kind="stable")]
        return [int(c) for c in ranked[: self.CATEGORIES] if self.affinity[c] > 0]


class CandidateSelector:
    def __init__(
        self,
        catalog: Catalog,
        index: VectorIndex,
        embedder: Embedder,
        signals: InteractionSignals,
        settings: Settings,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.embedder = embedder
        self.signals = signals
        self.settings = settings
        products = catalog.products
        self._in_stock = np.array([p.in_stock for p in products], dtype=bool)
        self._on_sale = np.array([p.id not in catalog.withdrawn for p in products], dtype=bool)
        self._price = np.array([p.price for p in products], dtype=np.float64)
        self._category = np.array([p.category.casefold() for p in products])
        self._brand = np.array([p.brand.casefold() for p in products])
        # Seconds since the epoch; a product with no date is never "added since" anything.
        self._added = np.array(
            [p.added_at.timestamp() if p.added_at else -np.inf for p in products], dtype=np.float64
        )

    @cached_property
    def _category_names(self) -> tuple[np.ndarray, np.ndarray]:
        """Each product row's category as an index into the catalog's categories, and their
        names' vectors: computed once per catalog. A name that is a code ("C-104") says
        nothing to match an interest against: its vector is zero."""
        names = sorted({p.category for p in self.catalog.products})
        position = {name: i for i, name in enumerate(names)}
        rows = np.array([position[p.category] for p in self.catalog.products], dtype=np.int64)
        vectors = np.zeros((len(names), self.index.vectors.shape[1]), dtype=np.float32)
        worded = [i for i, name in enumerate(names) if _WORDED.search(name)]
        if worded:
            vectors[worded] = self.embedder.encode([names[i] for i in worded])
        return rows, vectors

    def interest_affinity(self, shopper: Shopper) -> np.ndarray | None:
        """How close the shopper's stated interests come to each of the catalog's categories
        (indexed as ``_category_names``), by the category's name, the best of the interests:
        "interior design" means Home Decor though MiniLM finds a field jacket's text closer
        to those two words than any decor product's. None for a shopper who stated none."""
        if not shopper.interests:
            return None
        _, names = self._category_names
        wanted = np.stack([self.embedder.encode_query(text) for text in shopper.interests])
        best: np.ndarray = np.clip(wanted @ names.T, 0.0, 1.0).max(axis=0)
        return best

    @cached_property
    def catalog_vector(self) -> np.ndarray:
        """The catalog at large: the unit mean of every product's vector. Copy must be closer
        to the products it shows than to this (app/choosing.py); computed once per catalog."""
        vectors = self.index.vectors
        if not len(vectors):
            return np.zeros(vectors.shape[1], dtype=np.float32)
        mean = vectors.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        unit: np.ndarray = mean / norm if norm else mean
        return unit

    def _allowed(
        self, shopper: Shopper, filters: CandidateFilters
    ) -> tuple[np.ndarray, dict[str, int]]:
        allowed = np.ones(len(self.catalog), dtype=bool)
        removed: dict[str, int] = {}

        def apply(name: str, keep: np.ndarray) -> None:
            nonlocal allowed
            removed[name] = int((allowed & ~keep).sum())
            allowed &= keep

        if self.catalog.withdrawn:
            apply("withdrawn", self._on_sale)
        if filters.in_stock_only:
            apply("out_of_stock", self._in_stock)
        if filters.exclude_purchased and shopper.purchased_ids:
            bought = np.zeros(len(self.catalog), dtype=bool)
            bought[self.catalog.rows(shopper.purchased_ids)] = True
            apply("already_purchased", ~bought)
        if filters.include_categories:
            wanted = [c.casefold() for c in filters.include_categories]
            apply("category_not_included", np.isin(self._category, wanted))
        if filters.include_brands:
            brands = [b.casefold() for b in filters.include_brands]
            apply("brand_not_included", np.isin(self._brand, brands))
        if filters.exclude_categories:
            unwanted = [c.casefold() for c in filters.exclude_categories]
            apply("category_excluded", ~np.isin(self._category, unwanted))
        if filters.include_products is not None:
            included = np.zeros(len(self.catalog), dtype=bool)
            included[self.catalog.rows(filters.include_products)] = True
            apply("product_not_included", included)
        if filters.added_since is not None:
            apply("added_before", self._added >= filters.added_since.timestamp())
        if filters.exclude_products:
            excluded = np.zeros(len(self.catalog), dtype=bool)
            excluded[self.catalog.rows(filters.exclude_products)] = True
            apply("excluded_product", ~excluded)
        if filters.min_price is not None:
            apply("below_min_price", self._price >= filters.min_price)
        if filters.max_price is not None:
            apply("above_max_price", self._price <= filters.max_price)
        return allowed, removed

    def search(
        self, text: str, k: int, filters: CandidateFilters | None = None
    ) -> list[tuple[Product, float]]:
        """Products closest in meaning to ``text`` (cosine), among those the filters allow."""
        allowed, _ = self._allowed(Shopper(id="search"), filters or CandidateFilters())
        rows, scores = self.index.search(self.embedder.encode_query(text), k, allowed)
        return [
            (self.catalog.products[int(row)], float(score))
            for row, score in zip(rows, scores, strict=True)
        ]

    def select(
        self, shopper: Shopper, k: int, filters: CandidateFilters | None = None
    ) -> Selection:
        filters = filters or CandidateFilters()
        allowed, removed = self._allowed(shopper, filters)
        history, query = self._profile(shopper)
        collaborative = self.signals.collaborative(history.rows, history.weights)
        prior = self.signals.prior(shopper.segment)
        return self._rank(
            query,
            collaborative,
            prior,
            self.settings.popularity_weight,
            k,
            allowed,
            removed,
            self._interest_boost(shopper, history),
        )

    def _interest_boost(self, shopper: Shopper, history: HistoryWeights) -> InterestBoost | None:
        """For a shopper with stated interests and no history: the interests' pull towards
        the categories they name, taking MARQUEE_INTEREST_CATEGORY_WEIGHT of the semantic
        score. None otherwise: a history says what the shopper is into better than category
        names (on the demo data the pull cost warm shoppers' NDCG@10 0.112 -> 0.103 while it
        raised the cold-start slice's 0.025 -> 0.031)."""
        weight = self.settings.interest_category_weight
        if weight <= 0 or history.rows.size:
            return None
        affinity = self.interest_affinity(shopper)
        if affinity is None or not affinity.any():
            return None
        return InterestBoost(weight, affinity, self._category_names[0])

    def newest(self, shopper: Shopper, k: int, filters: CandidateFilters) -> Selection:
        """The allowed products, the latest added first: new arrivals for a shopper there is
        nothing to rank them by (no history or interests; new products have little
        popularity yet, so the popular ones alone would leave most of them out)."""
        allowed, removed = self._allowed(shopper, filters)
        rows = np.flatnonzero(allowed)
        rows = rows[np.argsort(-self._added[rows], kind="stable")][:k]
        candidates = [
            Candidate(
                number=number,
                product=self.catalog.products[int(row)],
                scores=CandidateScores(),
                source="newest",
            )
            for number, row in enumerate(rows, 1)
        ]
        trace = SelectionTrace(
            cold_start=True,
            signals={"newest": 1.0},
            pool_size=len(rows),
            removed=removed,
            allowed=int(allowed.sum()),
        )
        return Selection(candidates, trace)

    def knows(self, shopper: Shopper) -> bool:
        """Whether there is anything to rank by for this shopper: history or interests."""
        return self.shopper_vector(shopper) is not None

    def shopper_vector(self, shopper: Shopper) -> np.ndarray | None:
        """Who the shopper is, in the embedding space (their recent history and stated
        interests, weighed as retrieval weighs them); None for a shopper with neither."""
        return self._profile(shopper)[1]

    def _profile(self, shopper: Shopper) -> tuple[HistoryWeights, np.ndarray | None]:
        settings = self.settings
        history = history_weights(
            shopper,
            self.catalog,
            settings.half_life_days,
            settings.session_gap_min,
            settings.session_share,
        )
        interests = interests_text(shopper)
        query = shopper_vector(
            history,
            self.index.vectors,
            self.embedder.encode_query(interests) if interests else None,
            settings.history_weight,
        )
        return history, query

    def recently_seen(self, shopper: Shopper) -> Iterator[Product]:
        """The products of the shopper's events, newest first, that are still sold: what a
        prompt or a banner may name (a withdrawn product never is; out of stock is fine)."""
        for event in sorted(shopper.history, key=lambda e: e.ts, reverse=True):
            product = self.catalog.get(event.product_id)
            if product is not None and self.catalog.on_sale(product.id):
                yield product

    def back_in_stock(self, shopper: Shopper) -> list[str]:
        """The products the shopper touched that came back into stock after their latest
        event with it (so it may well have been out when they looked), newest event first."""
        latest: dict[str, datetime] = {}
        for event in shopper.history:
            latest[event.product_id] = max(event.ts, latest.get(event.product_id, event.ts))
        back = []
        for product_id, seen in sorted(latest.items(), key=lambda item: item[1], reverse=True):
            product = self.catalog.get(product_id)
            if product is None or not product.in_stock or not self.catalog.on_sale(product_id):
                continue
            if product.restocked_at is not None and product.restocked_at > seen:
                back.append(product_id)
        return back

    def anchor_for(self, shopper: Shopper) -> Product | None:
        """What a "because you viewed" section hangs on: the latest of ``recently_seen`` (the
        section shows its neighbours, not it)."""
        return next(self.recently_seen(shopper), None)

    def similar(
        self,
        shopper: Shopper,
        anchor: Product,
        k: int,
        filters: CandidateFilters | None = None,
    ) -> Selection:
        """Neighbours of ``anchor``: by the collaborative model (shoppers who took it took
        these) and by meaning (the embedding), blended with the service's weights and spread
        by MMR like any selection. The anchor itself is never among them; popularity takes no
        part (it would pull every anchor's neighbours towards the same best-sellers)."""
        allowed, removed = self._allowed(shopper, filters or CandidateFilters())
        row = self.catalog.row(anchor.id)
        removed["anchor"] = int(allowed[row])
        allowed[row] = False
        collaborative = self.signals.collaborative(np.array([row]), np.ones(1))
        selection = self._rank(
            self.index.vectors[row], collaborative, NoScores(), 0.0, k, allowed, removed
        )
        selection.anchor = anchor
        return selection

    def _rank(
        self,
        query: np.ndarray | None,
        collaborative: Scores,
        prior: Scores,
        popularity_weight: float,
        k: int,
        allowed: np.ndarray,
        removed: dict[str, int],
        interest_boost: InterestBoost | None = None,
    ) -> Selection:
        """The blend of the signals there are, over a pool of each one's best allowed
        products, then MMR: ``k`` numbered candidates. Only the pool is scored: the cost
        does not grow with the catalog past what the index search and the filters take.
        ``interest_boost``: a cold shopper's interests matched against category names
        (``_interest_boost``): blended into the semantic score, and the best products of the
        two closest categories join the pool."""
        settings = self.settings
        has_collaborative = collaborative.any()
        # Only the signals this shopper has take part in the blend; their weights renormalise.
        weights = {
            "semantic": settings.semantic_weight if query is not None else 0.0,
            "collaborative": settings.collaborative_weight if has_collaborative else 0.0,
            "popularity": popularity_weight,
        }
        cold_start = query is None and not has_collaborative
        if cold_start or sum(weights.values()) == 0:
            weights = {"semantic": 0.0, "collaborative": 0.0, "popularity": 1.0}
        total = sum(weights.values())
        weights = {name: value / total for name, value in weights.items()}

        # The pool: the best of each signal, among allowed products only.
        pool: set[int] = set()
        if query is not None:
            rows, _ = self.index.search(query, settings.search_k, allowed)
            pool.update(rows.tolist())
            if interest_boost is not None:
                for category in interest_boost.closest(allowed):
                    inside = allowed & (interest_boost.category_of == category)
                    rows, _ = self.index.search(query, settings.search_k, inside)
                    pool.update(rows.tolist())
        for signal in (collaborative, prior) if not cold_start else (prior,):
            pool.update(signal.best(settings.search_k, allowed).tolist())
        if not pool:  # nothing scored at all (no interactions anywhere): any allowed product
            pool.update(np.flatnonzero(allowed)[: settings.search_k].tolist())
        rows_in_pool = np.array(sorted(pool), dtype=np.int64)

        # Cosine of MiniLM vectors is in [-1, 1]; negatives carry no relevance.
        semantic = np.zeros(len(rows_in_pool))
        if query is not None and len(rows_in_pool):
            semantic = np.clip(self.index.vectors[rows_in_pool] @ query, 0.0, 1.0)
            if interest_boost is not None:
                semantic = interest_boost.blend(semantic, rows_in_pool)
        collaborative_in_pool = collaborative.at(rows_in_pool)
        prior_in_pool = prior.at(rows_in_pool)
        parts = {
            "semantic": weights["semantic"] * semantic,
            "collaborative": weights["collaborative"] * collaborative_in_pool,
            "popularity": weights["popularity"] * prior_in_pool,
        }
        relevance: np.ndarray = np.sum(list(parts.values()), axis=0)
        picked, mmr_scores = mmr(
            relevance, self.index.vectors[rows_in_pool], k, settings.mmr_lambda
        )

        names = list(parts)
        candidates = []
        for number, (position, mmr_score) in enumerate(zip(picked, mmr_scores, strict=True), 1):
            row = int(rows_in_pool[position])
            source = names[int(np.argmax([parts[name][position] for name in names]))]
            candidates.append(
                Candidate(
                    number=number,
                    product=self.catalog.products[row],
                    scores=CandidateScores(
                        semantic=float(semantic[position]),
                        collaborative=float(collaborative_in_pool[position]),
                        popularity=float(prior_in_pool[position]),
                        relevance=float(relevance[position]),
                        mmr=mmr_score,
                    ),
                    source="popular" if source == "popularity" else source,
                )
            )
        trace = SelectionTrace(
            cold_start=cold_start,
            signals=weights,
            pool_size=len(rows_in_pool),
            removed=removed,
            allowed=int(allowed.sum()),
        )
        return Selection(candidates, trace)
