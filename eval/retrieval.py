"""Retrieval quality: do the candidates contain what shoppers went on to pick?

Marquee's selector (in several settings) against baselines that anyone would try first: random,
global popularity, the shopper's segment popularity, plain item co-occurrence, EASE (a
closed-form linear item-item model, the strongest simple collaborative baseline) and implicit
ALS (matrix factorisation, the usual one past EASE's catalog size). Every
recommender leaves out what the shopper already interacted with, the same way (the usual
offline protocol: re-showing a viewed item is not a discovery, and it would crowd the list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from tqdm import tqdm

from app.catalog.store import Catalog
from app.config import Settings
from app.domain import Shopper
from app.retrieval.collaborative import ALS, EASE, ALSParams
from app.retrieval.embedder import Embedder
from app.retrieval.index import VectorIndex, build_or_load_index, top_k
from app.retrieval.profile import history_weights
from app.retrieval.selector import CandidateFilters, CandidateSelector
from app.retrieval.signals import InteractionSignals
from eval import metrics
from eval.datasets import EvalDataset

KS = (5, 10, 20)
# Relevance alone: business rules (stock) would hide held-out items for reasons unrelated to
# ranking quality.
EVAL_FILTERS = CandidateFilters(in_stock_only=False, exclude_purchased=True)
MAX_EXCLUDED = 1000  # CandidateFilters' own cap


def seen(shopper: Shopper) -> list[str]:
    """Products the shopper already interacted with, newest first."""
    ordered = sorted(shopper.history, key=lambda e: e.ts, reverse=True)
    return list(dict.fromkeys(e.product_id for e in ordered))


# Marquee settings compared in the full suite: name -> settings overrides. Each changes one
# thing of the defaults (app/config.py), and the last is the blend before they were tuned.
VARIANTS: dict[str, dict[str, Any]] = {
    "marquee": {},
    "marquee co-occurrence": {"collaborative_model": "cooccurrence"},
    "marquee ALS": {"collaborative_model": "als"},
    "marquee no session": {"session_share": 0.0},
    "marquee λ=1.0 (no MMR)": {"mmr_lambda": 1.0},
    "marquee λ=0.5": {"mmr_lambda": 0.5},
    "marquee no collaborative": {"collaborative_weight": 0.0},
    "marquee semantic only": {"collaborative_weight": 0.0, "popularity_weight": 0.0},
    "marquee untuned (0.6/0.3/0.1, co-occurrence, no session)": {
        "semantic_weight": 0.6,
        "collaborative_weight": 0.3,
        "popularity_weight": 0.1,
        "collaborative_model": "cooccurrence",
        "session_share": 0.0,
    },
}

Ranker = Callable[[Shopper, int], list[str]]


@dataclass
class RetrievalRow:
    """One recommender on one dataset: means over shoppers, and NDCG@10's interval."""

    dataset: str
    recommender: str
    shoppers: int
    recall: dict[int, float]
    ndcg: dict[int, float]
    mrr: float
    ndcg10_ci: tuple[float, float]
    coverage10: float
    diversity10: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "shoppers": self.shoppers,
            **{f"recall@{k}": v for k, v in self.recall.items()},
            **{f"ndcg@{k}": v for k, v in self.ndcg.items()},
            "mrr": self.mrr,
            "ndcg@10_ci": list(self.ndcg10_ci),
            "coverage@10": self.coverage10,
            "diversity@10": self.diversity10,
        }


def dataset_index(dataset: EvalDataset, embedder: Embedder, settings: Settings) -> VectorIndex:
    folder = settings.cache_dir / "eval" / "index" / dataset.name
    index, _ = build_or_load_index(dataset.catalog, embedder, folder, progress=True)
    return index


def _excluding(scores: np.ndarray, catalog: Catalog, shopper: Shopper, k: int) -> list[str]:
    masked = scores.astype(np.float64).copy()
    masked[catalog.rows(seen(shopper))] = -np.inf
    return [catalog.products[int(row)].id for row in top_k(masked, k)]


def marquee_rankers(
    dataset: EvalDataset,
    index: VectorIndex,
    embedder: Embedder,
    settings: Settings,
    variants: dict[str, dict[str, Any]],
) -> dict[str, Ranker]:
    """Marquee's selector, once per variant (settings overrides)."""
    catalog = dataset.catalog
    found: dict[str, Ranker] = {}
    for name, overrides in variants.items():
        variant = settings.model_copy(update=overrides)
        selector = CandidateSelector(
            catalog,
            index,
            embedder,
            InteractionSignals.from_settings(catalog, dataset.train, variant),
            variant,
        )

        def marquee(shopper: Shopper, k: int, selector: CandidateSelector = selector) -> list[str]:
            filters = EVAL_FILTERS.model_copy(
                update={"exclude_products": tuple(seen(shopper)[:MAX_EXCLUDED])}
            )
            return [c.product.id for c in selector.select(shopper, k, filters).candidates]

        found[name] = marquee
    return found


def baseline_rankers(dataset: EvalDataset, settings: Settings) -> dict[str, Ranker]:
    catalog = dataset.catalog
    signals = InteractionSignals(catalog, dataset.train)  # co-occurrence
    rng = np.random.default_rng(7)
    # A tiny popularity tie-break keeps zero-scored items in a sensible order.
    tie_break = signals.popularity * 1e-6
    every_row = np.arange(len(catalog))

    def random(shopper: Shopper, k: int) -> list[str]:
        return _excluding(rng.random(len(catalog)), catalog, shopper, k)

    def popularity(shopper: Shopper, k: int) -> list[str]:
        return _excluding(signals.popularity, catalog, shopper, k)

    def segment(shopper: Shopper, k: int) -> list[str]:
        return _excluding(signals.prior(shopper.segment).values, catalog, shopper, k)

    def collaborative(model: InteractionSignals) -> Ranker:
        def rank(shopper: Shopper, k: int) -> list[str]:
            history = history_weights(shopper, catalog, settings.half_life_days)
            scores = model.collaborative(history.rows, history.weights).at(every_row)
            return _excluding(scores + tie_break, catalog, shopper, k)

        return rank

    # EASE and ALS with the service's settings, on a catalog of any size here (baselines, not
    # the service's choice by size).
    ease = InteractionSignals(catalog, dataset.train, partial(EASE, l2=settings.ease_l2))
    als = InteractionSignals(catalog, dataset.train, partial(ALS, params=ALSParams.of(settings)))

    return {
        "random": random,
        "popularity": popularity,
        "segment popularity": segment,
        "co-occurrence": collaborative(signals),
        "EASE": collaborative(ease),
        "ALS": collaborative(als),
    }


def evaluate(
    dataset: EvalDataset,
    embedder: Embedder,
    settings: Settings,
    variants: dict[str, dict[str, Any]],
    *,
    baselines: bool = True,
) -> list[RetrievalRow]:
    """A row per Marquee variant, then (``baselines``) per baseline recommender."""
    index = dataset_index(dataset, embedder, settings)
    rows = []
    shoppers = dataset.shoppers
    k_max = max(KS)
    ranking = marquee_rankers(dataset, index, embedder, settings, variants)
    if baselines:
        ranking |= baseline_rankers(dataset, settings)
    for name, rank in ranking.items():
        ranked_lists = [
            rank(s, k_max) for s in tqdm(shoppers, desc=f"{dataset.name}: {name}", leave=False)
        ]
        rows.append(_row(dataset, name, shoppers, ranked_lists, index))
    return rows


# Baselines that need no history: what a store shows someone it knows nothing about yet.
COLD_START_BASELINES = ("segment popularity", "popularity", "random")


def evaluate_cold_start(
    dataset: EvalDataset, embedder: Embedder, settings: Settings
) -> list[RetrievalRow]:
    """The cold-start slice: the held-out shoppers who stated interests, their history taken
    away (what a first visit gives), against the same held-out picks. Marquee (interests by
    meaning, blended with the segment's favourites) against segment popularity. Empty when no
    shopper stated interests (MovieLens has none)."""
    cold = [s.model_copy(update={"history": ()}) for s in dataset.shoppers if s.interests]
    if not cold:
        return []
    index = dataset_index(dataset, embedder, settings)
    ranking = marquee_rankers(dataset, index, embedder, settings, {"marquee": {}})
    baselines = baseline_rankers(dataset, settings)
    ranking |= {name: baselines[name] for name in COLD_START_BASELINES}
    targets = [dataset.held_out[s.id] for s in cold]
    slice_name = f"{dataset.name} cold start"
    return [
        _scored(
            slice_name,
            name,
            targets,
            [rank(s, max(KS)) for s in tqdm(cold, desc=f"{slice_name}: {name}", leave=False)],
            index,
            dataset.catalog,
        )
        for name, rank in ranking.items()
    ]


def evaluate_search(
    dataset: EvalDataset, embedder: Embedder, settings: Settings
) -> list[RetrievalRow]:
    """Semantic search (the /v1/products/search path): held-out text -> the item it is about."""
    index = dataset_index(dataset, embedder, settings)
    catalog = dataset.catalog
    selector = CandidateSelector(
        catalog, index, embedder, InteractionSignals(catalog, []), settings
    )
    filters = CandidateFilters(in_stock_only=False, exclude_purchased=False)
    k_max = max(KS)
    queries = list(dataset.queries.items())
    targets = [{product_id} for _, product_id in queries]
    lengths = np.array([len(p.description) for p in catalog.products], dtype=np.float64)
    rng = np.random.default_rng(7)
    ranked_by: dict[str, list[list[str]]] = {
        "marquee search": [
            [p.id for p, _ in selector.search(text, k_max, filters)]
            for text, _ in tqdm(queries, desc=f"{dataset.name}: search", leave=False)
        ],
        # The most reviewed items: what a "bestsellers" block would show for any query.
        "popularity": [
            [catalog.products[int(r)].id for r in top_k(lengths, k_max)] for _ in queries
        ],
        "random": [
            [catalog.products[int(r)].id for r in rng.permutation(len(catalog))[:k_max]]
            for _ in queries
        ],
    }
    return [
        _scored(dataset.name, name, targets, ranked, index, catalog)
        for name, ranked in ranked_by.items()
    ]


def _row(
    dataset: EvalDataset,
    name: str,
    shoppers: list[Shopper],
    ranked_lists: list[list[str]],
    index: VectorIndex,
) -> RetrievalRow:
    targets = [dataset.held_out[s.id] for s in shoppers]
    return _scored(dataset.name, name, targets, ranked_lists, index, dataset.catalog)


def _scored(
    dataset: str,
    name: str,
    targets: list[set[str]],
    ranked_lists: list[list[str]],
    index: VectorIndex,
    catalog: Catalog,
) -> RetrievalRow:
    ndcg10 = [metrics.ndcg_at_k(r, t, 10) for r, t in zip(ranked_lists, targets, strict=True)]
    diversity = [
        metrics.intra_list_diversity(index.vectors[catalog.rows(r[:10])]) for r in ranked_lists
    ]
    return RetrievalRow(
        dataset=dataset,
        recommender=name,
        shoppers=len(targets),
        recall={
            k: float(
                np.mean(
                    [
                        metrics.recall_at_k(r, t, k)
                        for r, t in zip(ranked_lists, targets, strict=True)
                    ]
                )
            )
            for k in KS
        },
        ndcg={
            k: float(
                np.mean(
                    [metrics.ndcg_at_k(r, t, k) for r, t in zip(ranked_lists, targets, strict=True)]
                )
            )
            for k in KS
        },
        mrr=float(
            np.mean(
                [metrics.reciprocal_rank(r, t) for r, t in zip(ranked_lists, targets, strict=True)]
            )
        ),
        ndcg10_ci=metrics.bootstrap_ci(ndcg10),
        coverage10=metrics.coverage((r[:10] for r in ranked_lists), len(catalog)),
        diversity10=float(np.mean(diversity)) if diversity else 0.0,
    )
