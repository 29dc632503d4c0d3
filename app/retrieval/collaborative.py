"""The collaborative signal: what shoppers with a similar history went on to touch.

Three models behind one interface, each scoring every item from a shopper's weighted history:

- ``EASE`` (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a
  closed-form item-item linear model, ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹``. It
  learns which items predict which, discounting what is merely popular, and on MovieLens it
  beats co-occurrence clearly (eval/). Its cost is a dense n×n inverse: n² floats of memory
  and n³ work (bench/collaborative.py), so ``auto`` uses it up to ``ease_max_items``.
- ``ALS``: implicit-feedback matrix factorisation (Hu, Koren & Volinsky, ICDM 2008), fitted by
  the ``implicit`` package: items and shoppers as ``factors``-long vectors. Memory and work grow
  with n (n x factors), not n², so it carries a learned model past EASE's limit.
- ``CoOccurrence``: cosine-normalised item co-occurrence, sparse, for any catalog size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from app.config import Settings

CollaborativeKind = Literal["auto", "ease", "als", "cooccurrence"]


class CollaborativeModel(Protocol):
    name: str

    def scores(self, profile: np.ndarray) -> np.ndarray:
        """A score per item for a shopper whose history is ``profile`` (a weight per item);
        higher is more likely next. Scale-free: callers normalise."""
        ...


class CoOccurrence:
    name = "cooccurrence"

    def __init__(self, incidence: sparse.csr_matrix) -> None:
        co = (incidence.T @ incidence).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        # c_ij / sqrt(n_i n_j): popular items do not co-occur with everything.
        item_counts = np.asarray(incidence.sum(axis=0)).ravel()
        inverse_norm = sparse.diags(1.0 / np.sqrt(np.maximum(item_counts, 1.0)))
        self.matrix: sparse.csr_matrix = (inverse_norm @ co @ inverse_norm).tocsr()

    def scores(self, profile: np.ndarray) -> np.ndarray:
        # The matrix is symmetric: the touched items' rows are all the work (a sparse row
        # slice, not a pass over every stored pair).
        touched = np.flatnonzero(profile)
        return np.asarray(profile[touched] @ self.matrix[touched]).ravel()


class EASE:
    name = "ease"

    def __init__(self, incidence: sparse.csr_matrix, l2: float) -> None:
        # n x n matrices dominate the memory: one Gram, its inverse, then B in place of it.
        gram = (incidence.T @ incidence).toarray()  # float64, as the incidence is
        gram[np.diag_indices_from(gram)] += l2
        weights = np.linalg.inv(gram)
        del gram
        weights /= -np.diag(weights)  # column j divided by -P_jj
        weights[np.diag_indices_from(weights)] = 0.0  # an item does not predict itself
        self.weights: np.ndarray = weights.astype(np.float32)

    def scores(self, profile: np.ndarray) -> np.ndarray:
        # A history touches a few items: only their rows of B count (k x n, not n x n work).
        touched = np.flatnonzero(profile)
        scored: np.ndarray = profile[touched].astype(np.float32) @ self.weights[touched]
        return scored


@dataclass(frozen=True)
class ALSParams:
    """``factors`` per item; ``l2`` the penalty on the factors; ``alpha`` the confidence an
    interaction carries (c = alpha x weight, against 1 for everything not touched)."""

    factors: int = 64
    l2: float = 5.0
    alpha: float = 5.0
    iterations: int = 15

    @classmethod
    def of(cls, settings: Settings) -> ALSParams:
        return cls(
            settings.als_factors, settings.als_l2, settings.als_alpha, settings.als_iterations
        )


class ALS:
    name = "als"

    def __init__(
        self,
        incidence: sparse.csr_matrix,
        params: ALSParams = ALSParams(),
        *,
        item_factors: np.ndarray | None = None,
    ) -> None:
        """Fits the model on ``incidence`` (shoppers x items), or takes fitted
        ``item_factors`` (a saved model)."""
        self.params = params
        if item_factors is None:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits

            # implicit runs its own threads; BLAS's pool under them only contends (its advice,
            # which it warns about when the model is made).
            with threadpool_limits(1, "blas"):
                model = AlternatingLeastSquares(
                    factors=params.factors,
                    regularization=params.l2,
                    alpha=params.alpha,
                    iterations=params.iterations,
                    random_state=0,
                )
                model.fit(sparse.csr_matrix(incidence, dtype=np.float32), show_progress=False)
            item_factors = np.asarray(model.item_factors)
        self.item_factors: np.ndarray = np.ascontiguousarray(item_factors, dtype=np.float32)
        gram = self.item_factors.T.astype(np.float64) @ self.item_factors
        self._gram: np.ndarray = gram + params.l2 * np.eye(len(gram))

    def shopper_factors(self, profile: np.ndarray) -> np.ndarray:
        """The shopper's vector, solved exactly for their history (the fitted item vectors held
        fixed, as in one ALS half-step): (YᵀY + Yᵀ(C - I)Y + l2·I) x = YᵀC p, where C holds
        each touched item's confidence and p is 1 on touched items. A history's weights
        (recency, event type) set the confidences, scaled so that their mean is ``alpha``,
        the confidence of one interaction in training."""
        touched = np.flatnonzero(profile)
        weights = profile[touched].astype(np.float64)
        confidence = self.params.alpha * weights * (len(weights) / weights.sum())
        touched_factors = self.item_factors[touched].astype(np.float64)
        lhs = self._gram + (touched_factors.T * (confidence - 1.0)) @ touched_factors
        rhs = touched_factors.T @ confidence
        solved: np.ndarray = np.linalg.solve(lhs, rhs)
        return solved

    def scores(self, profile: np.ndarray) -> np.ndarray:
        if not profile.any():
            return np.zeros(len(self.item_factors), dtype=np.float32)
        scored: np.ndarray = self.item_factors @ self.shopper_factors(profile).astype(np.float32)
        return scored


# Fits a model to the shopper x item incidence matrix (1: the shopper touched the item).
Fit = Callable[[sparse.csr_matrix], CollaborativeModel]


def chosen(
    kind: CollaborativeKind, l2: float, ease_max_items: int, als: ALSParams = ALSParams()
) -> Fit:
    """The model ``kind`` names (``auto``: EASE when the catalog has at most ``ease_max_items``
    items, ALS beyond)."""

    def fit(incidence: sparse.csr_matrix) -> CollaborativeModel:
        items = incidence.shape[1]
        if kind == "ease" or (kind == "auto" and items <= ease_max_items):
            return EASE(incidence, l2)
        if kind in ("als", "auto"):
            return ALS(incidence, als)
        return CoOccurrence(incidence)

    return fit
