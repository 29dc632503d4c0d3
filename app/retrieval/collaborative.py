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

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from scipy import sparse

from app.retrieval.index import HNSWIndex, HNSWParams

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

CollaborativeKind = Literal["auto", "ease", "als", "cooccurrence"]


class CollaborativeModel(Protocol):
    name: str

    def scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """A score per item for a shopper whose history is ``rows`` (distinct items) with
        ``weights``; higher is more likely next. Scale-free: callers normalise."""
        ...

    def arrays(self) -> dict[str, np.ndarray]:
        """What the fitted model is, to be saved (``ModelChoice.restored`` reads it back)."""
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

    def arrays(self) -> dict[str, np.ndarray]:
        m = self.matrix
        return {
            "data": m.data,
            "indices": m.indices,
            "indptr": m.indptr,
            "shape": np.array(m.shape),
        }

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray]) -> CoOccurrence:
        model = cls.__new__(cls)
        shape = tuple(int(n) for n in arrays["shape"])
        model.matrix = sparse.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=shape
        )
        return model

    def scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # The matrix is symmetric: the touched items' rows are all the work (a sparse row
        # slice, not a pass over every stored pair).
        return np.asarray(weights @ self.matrix[rows]).ravel()


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

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights}

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray]) -> EASE:
        model = cls.__new__(cls)
        model.weights = arrays["weights"]
        return model

    def scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # A history touches a few items: only their rows of B count (k x n, not n x n work).
        scored: np.ndarray = weights.astype(np.float32) @ self.weights[rows]
        return scored


@dataclass(frozen=True)
class ALSParams:
    """``factors`` per item; ``l2`` the penalty on the factors; ``alpha`` the confidence an
    interaction carries (c = alpha x weight, against 1 for everything not touched)."""

    factors: int = 64
    l2: float = 5.0
    alpha: float = 5.0
    iterations: int = 15
    graph_min_items: int = 50_000  # from here on, the items' factors are searched in a graph

    @classmethod
    def of(cls, settings: Settings) -> ALSParams:
        return cls(
            settings.als_factors,
            settings.als_l2,
            settings.als_alpha,
            settings.als_iterations,
            settings.hnsw_min_products,
        )


class ALS:
    name = "als"
    # The graph over the factors. Inner products of unnormalised factors are harder to walk
    # than cosines: measured at 1 M items (78k touched, bench/retrieval.py), the 120 best
    # were found at 0.88 with ef 240, 0.93 with 480 and 0.955 with 1,000 (1.4 ms a search).
    GRAPH = HNSWParams(m=32, ef_construction=80, ef_search=64, ef_per_k=8)

    def __init__(self, incidence: sparse.csr_matrix, params: ALSParams = ALSParams()) -> None:
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
        item_factors = np.array(model.item_factors, dtype=np.float32)
        # An item nobody touched has 0 as its exact ALS solution ((XᵀX + l2·I) y = 0); the
        # conjugate-gradient steps leave it near its random start instead. No evidence is 0.
        item_factors[np.asarray(incidence.getnnz(axis=0)) == 0] = 0.0
        self._use(params, item_factors)

    def _use(self, params: ALSParams, item_factors: np.ndarray, graph: Any | None = None) -> None:
        """Serve ``item_factors``, searched in ``graph`` (a saved one) or in a new graph when
        there are ``graph_min_items`` or more."""
        self.params = params
        self.item_factors: np.ndarray = np.ascontiguousarray(item_factors, dtype=np.float32)
        gram = self.item_factors.T.astype(np.float64) @ self.item_factors
        self._gram: np.ndarray = gram + params.l2 * np.eye(len(gram))
        # Past graph_min_items, the factors of the items anyone touched go into an HNSW graph
        # (inner product): a shopper's best items are then a search, not a pass over every
        # item (1 M items x 64 factors is 14 ms of memory traffic alone per request). Items
        # nobody touched score 0 and stay out of it.
        self.graph: HNSWIndex | None = None
        self.graph_rows = np.flatnonzero(self.item_factors.any(axis=1))
        if graph is not None:
            self.graph = HNSWIndex(self.item_factors[:0], self.GRAPH, graph=graph)
        elif len(self.item_factors) >= params.graph_min_items:
            self.graph = HNSWIndex(self.item_factors[self.graph_rows], self.GRAPH)

    @classmethod
    def restored(cls, arrays: dict[str, np.ndarray], params: ALSParams) -> ALS:
        import faiss

        model = cls.__new__(cls)
        graph = faiss.deserialize_index(arrays["graph"]) if "graph" in arrays else None
        model._use(params, arrays["item_factors"], graph)
        return model

    def shopper_factors(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The shopper's vector, solved exactly for their history (the fitted item vectors held
        fixed, as in one ALS half-step): (YᵀY + Yᵀ(C - I)Y + l2·I) x = YᵀC p, where C holds
        each touched item's confidence and p is 1 on touched items. A history's weights
        (recency, event type) set the confidences, scaled so that their mean is ``alpha``,
        the confidence of one interaction in training."""
        weights = weights.astype(np.float64)
        confidence = self.params.alpha * weights * (len(weights) / weights.sum())
        touched_factors = self.item_factors[rows].astype(np.float64)
        lhs = self._gram + (touched_factors.T * (confidence - 1.0)) @ touched_factors
        rhs = touched_factors.T @ confidence
        solved: np.ndarray = np.linalg.solve(lhs, rhs)
        return solved

    def scores(self, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if not rows.size:
            return np.zeros(len(self.item_factors), dtype=np.float32)
        shopper = self.shopper_factors(rows, weights).astype(np.float32)
        scored: np.ndarray = self.item_factors @ shopper
        return scored

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"item_factors": self.item_factors}
        if self.graph is not None:
            import faiss

            arrays["graph"] = faiss.serialize_index(self.graph.graph)
        return arrays


# Fits a model to the shopper x item incidence matrix (1: the shopper touched the item).
Fit = Callable[[sparse.csr_matrix], CollaborativeModel]


@dataclass(frozen=True)
class ModelChoice:
    """Which model to fit (``auto``: EASE up to ``ease_max_items`` items, ALS beyond), with its
    settings. Called on an incidence matrix, it fits it (a ``Fit``)."""

    kind: CollaborativeKind = "auto"
    ease_l2: float = 200.0
    ease_max_items: int = 5_000
    als: ALSParams = ALSParams()

    @classmethod
    def of(cls, settings: Settings) -> ModelChoice:
        return cls(
            settings.collaborative_model,
            settings.ease_l2,
            settings.ease_max_items,
            ALSParams.of(settings),
        )

    def model_for(self, items: int) -> Literal["ease", "als", "cooccurrence"]:
        if self.kind == "auto":
            return "ease" if items <= self.ease_max_items else "als"
        return self.kind

    def params(self, items: int) -> dict[str, object]:
        """What a model fitted for ``items`` items depends on, besides the data."""
        model = self.model_for(items)
        if model == "ease":
            return {"model": model, "l2": self.ease_l2}
        if model == "als":
            return {"model": model, **asdict(self.als)}
        return {"model": model}

    def __call__(self, incidence: sparse.csr_matrix) -> CollaborativeModel:
        model = self.model_for(incidence.shape[1])
        if model == "ease":
            return EASE(incidence, self.ease_l2)
        if model == "als":
            return ALS(incidence, self.als)
        return CoOccurrence(incidence)

    def restored(self, items: int, arrays: dict[str, np.ndarray]) -> CollaborativeModel:
        """The model a saved ``arrays()`` holds."""
        model = self.model_for(items)
        if model == "ease":
            return EASE.restored(arrays)
        if model == "als":
            return ALS.restored(arrays, self.als)
        return CoOccurrence.restored(arrays)


class SavedModel:
    """The fitted model on disk, beside the vector index: ``collaborative.npz`` holds its
    arrays and a fingerprint of what it was fitted from (the incidence matrix and the model's
    settings). A start or a refresh with the same fingerprint loads it instead of fitting
    (EASE at 5,000 items: 4.5 s); any other fingerprint fits again and replaces it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "collaborative.npz"
        self.reused = False  # whether the last ``fitted`` loaded the saved model

    def fit(self, choice: ModelChoice) -> Fit:
        """``choice``, loaded from here when it was fitted from the same data."""
        return partial(self.fitted, choice)

    @staticmethod
    def fingerprint(choice: ModelChoice, incidence: sparse.csr_matrix) -> str:
        canonical = sparse.csr_matrix(incidence)
        canonical.sum_duplicates()  # sorted, unique column indices per row
        digest = hashlib.sha256(
            json.dumps(
                {"shape": list(canonical.shape), **choice.params(canonical.shape[1])},
                sort_keys=True,
            ).encode()
        )
        digest.update(canonical.indptr.astype(np.int64).tobytes())
        digest.update(canonical.indices.astype(np.int64).tobytes())
        return digest.hexdigest()

    def fitted(self, choice: ModelChoice, incidence: sparse.csr_matrix) -> CollaborativeModel:
        """The saved model when it was fitted from this incidence with these settings, else a
        new fit, saved (a failed save is logged: the model in memory serves all the same)."""
        expected = self.fingerprint(choice, incidence)
        loaded = self._load(choice, incidence.shape[1], expected)
        self.reused = loaded is not None
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        model = choice(incidence)
        log.info(
            "collaborative model (%s) fitted on %d shoppers x %d items in %.1f s",
            model.name,
            *incidence.shape,
            time.perf_counter() - started,
        )
        try:
            self._save(model, expected)
        except OSError:
            log.exception("could not save the collaborative model to %s", self.path)
        return model

    def _load(self, choice: ModelChoice, items: int, expected: str) -> CollaborativeModel | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                if str(saved["fingerprint"]) != expected:
                    log.info("collaborative model at %s is stale: fitting it again", self.path)
                    return None
                arrays = {name: saved[name] for name in saved.files if name != "fingerprint"}
            return choice.restored(items, arrays)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            log.warning("collaborative model at %s unreadable (%s): fitting it", self.path, error)
            return None

    def _save(self, model: CollaborativeModel, fingerprint: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name first: a crash never leaves a half-written model in place.
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as file:
            # (numpy's stubs read ``**arrays`` as possibly its allow_pickle flag.)
            np.savez(file, fingerprint=np.array(fingerprint), **model.arrays())  # type: ignore[arg-type]
        tmp.replace(self.path)
