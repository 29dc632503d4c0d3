"""A signal's scores for one shopper over the catalog, in [0, 1] (0: no evidence for a product).

The selector asks two things of each signal: its best allowed products (the pool) and the
scores of the products in the pool (the blend). Dense scores answer both from one array; a
signal computed once for every shopper (popularity) keeps its order too, so its best allowed
products are a walk down that order; a factor model with a graph answers by searching it.
None of them needs a pass over a million products per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from app.retrieval.index import top_k

if TYPE_CHECKING:
    from app.retrieval.index import HNSWIndex


class Scores(Protocol):
    def any(self) -> bool:
        """Whether any product has evidence for it."""
        ...

    def best(self, k: int, allowed: np.ndarray) -> np.ndarray:
        """Up to ``k`` allowed rows with a positive score, best first."""
        ...

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The scores of ``rows``."""
        ...


class NoScores:
    """No evidence at all (a shopper without a history; popularity in "because you viewed")."""

    def any(self) -> bool:
        return False

    def best(self, k: int, allowed: np.ndarray) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def at(self, rows: np.ndarray) -> np.ndarray:
        return np.zeros(len(rows))


class DenseScores:
    """A score per row."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def any(self) -> bool:
        return bool(self.values.any())

    def best(self, k: int, allowed: np.ndarray) -> np.ndarray:
        return top_k(np.where(allowed & (self.values > 0), self.values, -np.inf), k)

    def at(self, rows: np.ndarray) -> np.ndarray:
        picked: np.ndarray = self.values[rows]
        return picked


class RankedScores(DenseScores):
    """Dense scores kept with their order, for a signal shared by many shoppers."""

    # Rows looked at per step down the order: a filter that keeps most of the catalog finds
    # k allowed rows in the first step.
    STEP = 4_096

    def __init__(self, values: np.ndarray) -> None:
        super().__init__(values)
        positive = np.flatnonzero(values > 0)
        self.order = positive[np.argsort(-values[positive], kind="stable")]

    def best(self, k: int, allowed: np.ndarray) -> np.ndarray:
        found: list[np.ndarray] = []
        count = 0
        step = max(self.STEP, 4 * k)
        for start in range(0, len(self.order), step):
            rows = self.order[start : start + step]
            kept = rows[allowed[rows]]
            found.append(kept)
            count += len(kept)
            if count >= k:
                break
        return np.concatenate(found)[:k] if found else np.zeros(0, dtype=np.int64)


class SearchedScores:
    """Inner products of a shopper's vector with item vectors (ALS's factors past
    ``graph_min_items``): the best come from searching ``graph``, which holds the vectors of
    ``graph_rows`` (the rest score 0), the pool's from their rows. Scaled by the best score in
    the catalog; negatives are 0, as in dense scores."""

    def __init__(
        self, graph: HNSWIndex, graph_rows: np.ndarray, vectors: np.ndarray, shopper: np.ndarray
    ) -> None:
        self.graph = graph
        self.graph_rows = graph_rows
        self.vectors = vectors
        self.shopper = shopper.astype(np.float32)
        _, top = graph.search(self.shopper, 1)
        self.scale = float(top[0]) if len(top) and top[0] > 0 else 0.0

    def any(self) -> bool:
        return self.scale > 0

    def best(self, k: int, allowed: np.ndarray) -> np.ndarray:
        if not self.any():
            return np.zeros(0, dtype=np.int64)
        found, scores = self.graph.search(self.shopper, k, allowed[self.graph_rows])
        rows: np.ndarray = self.graph_rows[found[scores > 0]]
        return rows

    def at(self, rows: np.ndarray) -> np.ndarray:
        if not self.any():
            return np.zeros(len(rows))
        scores = (self.vectors[rows] @ self.shopper).astype(np.float64) / self.scale
        # (The search is approximate: a row it missed may score above its best.)
        clipped: np.ndarray = np.clip(scores, 0.0, 1.0)
        return clipped
