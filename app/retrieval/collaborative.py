"""The collaborative signal: what shoppers with a similar history went on to touch.

Two models behind one interface, both scoring every item from a shopper's weighted history:

- ``EASE`` (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a
  closed-form item-item linear model, ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹``. It
  learns which items predict which, discounting what is merely popular, and on MovieLens it
  beats co-occurrence clearly (eval/). Its cost is a dense n×n inverse: n² floats of memory
  and n³ work (bench/collaborative.py), so ``auto`` uses it up to ``ease_max_items``.
- ``CoOccurrence``: cosine-normalised item co-occurrence, sparse, for any catalog size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
from scipy import sparse

CollaborativeKind = Literal["auto", "ease", "cooccurrence"]


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
        return np.asarray(self.matrix.T @ profile).ravel()


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


# Fits a model to the shopper x item incidence matrix (1: the shopper touched the item).
Fit = Callable[[sparse.csr_matrix], CollaborativeModel]


def chosen(kind: CollaborativeKind, l2: float, ease_max_items: int) -> Fit:
    """The model ``kind`` names (``auto``: EASE when the catalog has at most ``ease_max_items``
    items, co-occurrence beyond)."""

    def fit(incidence: sparse.csr_matrix) -> CollaborativeModel:
        if kind == "ease" or (kind == "auto" and incidence.shape[1] <= ease_max_items):
            return EASE(incidence, l2)
        return CoOccurrence(incidence)

    return fit
