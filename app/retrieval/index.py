"""Vector index over the catalog, persisted with what it was built from.

The persisted index records the embedding model and a hash of every embedded text: a catalog
or model change makes it stale, and a stale index is rebuilt, never silently used.

Two kinds behind one interface (``MARQUEE_INDEX``): ``exact`` (one matmul; the default under
``hnsw_min_products``) and ``hnsw`` (FAISS's HNSW graph over the same vectors, for catalogs
where a matmul per query costs too much). Filters stay exact either way: the graph search
only visits allowed rows, and when a filter leaves few rows those are scored exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from app.catalog.store import Catalog
from app.retrieval.embedder import Embedder, product_text

log = logging.getLogger(__name__)


IndexKind = Literal["exact", "hnsw"]


class VectorIndex(Protocol):
    """Row ``i`` is ``catalog.products[i]``; ``vectors`` are the rows' unit vectors (MMR and
    the blend read them too)."""

    kind: IndexKind
    vectors: np.ndarray

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine (rows, scores), best first, among ``allowed`` rows."""
        ...

    def with_vectors(self, vectors: np.ndarray, kept: int) -> VectorIndex:
        """An index of the same kind over ``vectors``, whose first ``kept`` rows are this
        index's rows unchanged (a catalog write that only appended reuses what was built)."""
        ...


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest finite scores, best first (argpartition: O(n), not a sort)."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


class ExactIndex:
    """Brute-force cosine search: one matmul. ~3.5 ms per query at 100k x 384 on 2 cores."""

    kind: IndexKind = "exact"

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self.vectors @ query.astype(np.float32)
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        rows = top_k(scores, k)
        return rows, scores[rows]

    def with_vectors(self, vectors: np.ndarray, kept: int) -> ExactIndex:
        return ExactIndex(vectors)


@dataclass(frozen=True)
class HNSWParams:
    """``m`` links per node and ``ef_construction`` trade build time and memory for recall;
    ``ef_search`` (at least ``ef_per_k`` times k) trades query time for recall."""

    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    ef_per_k: int = 2

    def built(self) -> dict[str, int]:
        """What the saved graph depends on (``ef_search`` is a query-time choice)."""
        return {"m": self.m, "ef_construction": self.ef_construction}


class _GraphStorage:
    """The vectors a FAISS flat storage holds, as numpy sees them; holding this holds the graph
    (a view must not outlive the memory it reads)."""

    def __init__(self, graph: Any, dim: int) -> None:
        import faiss

        self.graph = graph
        count = int(graph.ntotal)
        address = 0
        if count:
            storage: Any = faiss.downcast_index(graph.storage)  # an IndexFlat: get_xb
            address = int(faiss.rev_swig_ptr(storage.get_xb(), count * dim).ctypes.data)
        self.__array_interface__ = {
            "shape": (count, dim),
            "typestr": "<f4",
            "data": (address, True),  # read-only: the graph owns these rows
            "version": 3,
        }


def graph_vectors(graph: Any, dim: int) -> np.ndarray:
    """The rows a FAISS ``IndexHNSWFlat`` stores, without a copy; the array keeps the graph
    alive."""
    if not graph.ntotal:
        return np.zeros((0, dim), dtype=np.float32)
    return np.asarray(_GraphStorage(graph, dim))


class HNSWIndex:
    """FAISS HNSW (inner product over unit vectors: cosine) over the same vectors."""

    kind: IndexKind = "hnsw"
    # A filter that leaves few rows (at most EXACT_BELOW, and at most EXACT_SHARE of the
    # catalog) has them scored exactly: walking a graph whose allowed nodes are sparse visits
    # mostly refused ones and loses recall, while 20k rows cost ~3 ms to score.
    EXACT_BELOW = 20_000
    EXACT_SHARE = 0.1

    def __init__(
        self,
        vectors: np.ndarray,
        params: HNSWParams = HNSWParams(),
        *,
        graph: Any | None = None,
    ) -> None:
        import faiss

        self.params = params
        if graph is None:
            graph = faiss.IndexHNSWFlat(vectors.shape[1], params.m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = params.ef_construction
            if len(vectors):
                graph.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.graph: Any = graph  # faiss.IndexHNSWFlat
        # The graph stores the vectors: the index reads them there, not from a second copy
        # (1 M x 384 floats is 1.5 GB). The caller's array can go.
        self.vectors = graph_vectors(graph, vectors.shape[1])

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        k = min(k, len(self.vectors))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # The walk keeps a candidate list of ef (at least ef_per_k x k, for the pool's recall),
        # widened as a filter keeps less of the catalog: it must meet enough allowed nodes.
        ef = max(self.params.ef_search, self.params.ef_per_k * k)
        selector = None
        if allowed is not None:
            count = int(allowed.sum())
            if count <= min(self.EXACT_BELOW, self.EXACT_SHARE * len(allowed)):
                rows = np.flatnonzero(allowed)
                scores = self.vectors[rows] @ q[0]
                best = top_k(scores, k)
                return rows[best], scores[best]
            ef = int(ef / max(count / len(allowed), 0.25))
            bits = np.packbits(allowed, bitorder="little")
            # The selector reads the bitmap in place: ``bits`` lives until the search returns.
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        # (faiss's type stubs lag the library: SearchParametersHNSW is there since 1.7.3.)
        params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
        if selector is not None:
            params.sel = selector
        scores, rows = self.graph.search(q, k, params=params)
        found = rows[0] >= 0  # fewer than k reachable: FAISS pads with -1
        return rows[0][found].astype(np.int64), scores[0][found]

    def with_vectors(self, vectors: np.ndarray, kept: int) -> HNSWIndex:
        """Appended rows join a copy of this graph (requests meanwhile search this one); a
        changed or removed row means a new graph."""
        import faiss

        if kept < len(self.vectors) or kept > len(vectors):
            return HNSWIndex(vectors, self.params)
        graph = faiss.clone_index(self.graph)
        if len(vectors) > kept:
            graph.add(np.ascontiguousarray(vectors[kept:], dtype=np.float32))
        return HNSWIndex(vectors, self.params, graph=graph)


def content_hash(texts: list[str], model_name: str) -> str:
    digest = hashlib.sha256(model_name.encode())
    for text in texts:
        digest.update(b"\x00" + text.encode())
    return digest.hexdigest()


class IndexFiles:
    """The index on disk: ``vectors.npy`` plus ``meta.json`` (model, dim, hash, ids), and for
    HNSW ``hnsw.faiss`` with ``hnsw.json`` (the hash and parameters it was built with)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.vectors_path = folder / "vectors.npy"
        self.meta_path = folder / "meta.json"
        self.graph_path = folder / "hnsw.faiss"
        self.graph_meta_path = folder / "hnsw.json"

    def load_graph(
        self, vectors: np.ndarray, expected_hash: str, hnsw: HNSWParams
    ) -> object | None:
        """The saved HNSW graph of these vectors, when it was built from them with these
        parameters; None (and a log line) when it is missing, stale, corrupt or foreign."""
        import faiss

        if not self.graph_path.exists():
            return None
        try:
            meta = json.loads(self.graph_meta_path.read_text())
            if meta != {"content_hash": expected_hash, "count": len(vectors), **hnsw.built()}:
                log.info("HNSW graph at %s is stale: rebuilding it", self.folder)
                return None
            graph = faiss.read_index(str(self.graph_path))
        except (OSError, ValueError, RuntimeError) as error:
            log.warning("HNSW graph at %s unreadable (%s): rebuilding it", self.folder, error)
            return None
        if graph.ntotal != len(vectors) or graph.d != vectors.shape[1]:
            log.warning("HNSW graph at %s does not match the vectors: rebuilding it", self.folder)
            return None
        return graph

    def save_graph(self, index: HNSWIndex, content_hash: str) -> None:
        import faiss

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp_graph = self.folder / "hnsw.tmp.faiss"
        tmp_meta = self.folder / "hnsw.tmp.json"
        faiss.write_index(index.graph, str(tmp_graph))
        tmp_meta.write_text(
            json.dumps(
                {"content_hash": content_hash, "count": len(index.vectors), **index.params.built()}
            )
        )
        tmp_graph.replace(self.graph_path)
        tmp_meta.replace(self.graph_meta_path)

    def load_if_fresh(
        self, ids: list[str], expected_hash: str, model_name: str
    ) -> np.ndarray | None:
        if not (self.vectors_path.exists() and self.meta_path.exists()):
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            fresh = (
                meta.get("content_hash") == expected_hash
                and meta.get("model") == model_name
                and meta.get("ids") == ids
            )
            if not fresh:
                log.info("index at %s is stale: rebuilding", self.folder)
                return None
            vectors = np.load(self.vectors_path)
        except (OSError, ValueError) as error:
            log.warning("index at %s unreadable (%s): rebuilding", self.folder, error)
            return None
        if vectors.shape != (len(ids), int(meta.get("dim", -1))):
            return None
        return np.asarray(vectors, dtype=np.float32)

    def save(self, vectors: np.ndarray, ids: list[str], content_hash: str, model_name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Write to temporary names first so a crash never leaves a half-written index in place.
        tmp_vectors = self.folder / "vectors.tmp.npy"
        tmp_meta = self.folder / "meta.tmp.json"
        np.save(tmp_vectors, vectors)
        tmp_meta.write_text(
            json.dumps(
                {
                    "model": model_name,
                    "dim": int(vectors.shape[1]),
                    "count": len(ids),
                    "content_hash": content_hash,
                    "ids": ids,
                }
            )
        )
        tmp_vectors.replace(self.vectors_path)
        tmp_meta.replace(self.meta_path)


def build_or_load_index(
    catalog: Catalog,
    embedder: Embedder,
    folder: Path,
    *,
    kind: IndexKind = "exact",
    hnsw: HNSWParams = HNSWParams(),
    force: bool = False,
    progress: bool = False,
) -> tuple[VectorIndex, bool]:
    """The catalog's index, from disk when fresh. Returns (index, whether it was embedded
    again). An HNSW graph missing, stale or corrupt beside fresh vectors is built again from
    them (no embedding), and saved."""
    texts = [product_text(product) for product in catalog.products]
    ids = [product.id for product in catalog.products]
    expected = content_hash(texts, embedder.name)
    files = IndexFiles(folder)
    vectors = None if force else files.load_if_fresh(ids, expected, embedder.name)
    embedded = vectors is None
    if vectors is None:
        vectors = embedder.encode(texts, progress=progress)
        files.save(vectors, ids, expected, embedder.name)
    if kind == "exact":
        return ExactIndex(vectors), embedded
    graph = None if embedded else files.load_graph(vectors, expected, hnsw)
    index = HNSWIndex(vectors, hnsw, graph=graph)
    if graph is None:
        files.save_graph(index, expected)
    return index, embedded


def reindex(
    old_catalog: Catalog, old_index: VectorIndex, new_catalog: Catalog, embedder: Embedder
) -> tuple[VectorIndex, int]:
    """The index of ``new_catalog``, of the same kind, embedding only the products whose text
    is new.

    Rows whose product text is unchanged keep their vectors (a price or stock change costs no
    embedding); an HNSW graph keeps its nodes when rows were only appended. Returns (index,
    number of products embedded).
    """
    texts = [product_text(product) for product in new_catalog.products]
    vectors = np.zeros((len(texts), old_index.vectors.shape[1]), dtype=np.float32)
    stale: list[int] = []
    kept = 0  # the leading rows that are the same product, same text, at the same row
    for row, (product, text) in enumerate(zip(new_catalog.products, texts, strict=True)):
        before = old_catalog.get(product.id)
        if before is not None and product_text(before) == text:
            old_row = old_catalog.row(product.id)
            vectors[row] = old_index.vectors[old_row]
            if kept == row == old_row:  # the unchanged prefix goes on
                kept += 1
        else:
            stale.append(row)
    if stale:
        vectors[stale] = embedder.encode([texts[row] for row in stale])
    return old_index.with_vectors(vectors, kept), len(stale)


def save_index(catalog: Catalog, index: VectorIndex, embedder: Embedder, folder: Path) -> None:
    """Persist an index built in memory, so the next start loads it instead of embedding (or,
    for HNSW, building its graph)."""
    texts = [product_text(product) for product in catalog.products]
    files = IndexFiles(folder)
    expected = content_hash(texts, embedder.name)
    files.save(index.vectors, [product.id for product in catalog.products], expected, embedder.name)
    if isinstance(index, HNSWIndex):
        files.save_graph(index, expected)
