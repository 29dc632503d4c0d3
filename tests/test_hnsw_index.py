"""The HNSW index (MARQUEE_INDEX=hnsw): the exact index's answers, its filters held exactly,
its graph saved, reloaded, rebuilt when stale or corrupt, and grown in place by appends."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from app.catalog.store import Catalog
from app.config import Settings
from app.retrieval.index import (
    ExactIndex,
    HNSWIndex,
    HNSWParams,
    VectorIndex,
    build_or_load_index,
    reindex,
    save_index,
)
from tests.conftest import product
from tests.test_catalog_writes import CountingEmbedder


def clustered(n: int, dim: int = 48, clusters: int = 40, seed: int = 3) -> np.ndarray:
    """Unit vectors around a few centres, as embeddings of a catalog's categories are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    unit: np.ndarray = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return unit


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return len(set(found.tolist()) & set(truth.tolist())) / len(truth)


VECTORS = clustered(3000)
QUERIES = clustered(40, seed=11)


def test_hnsw_finds_what_the_exact_index_finds() -> None:
    exact, hnsw = ExactIndex(VECTORS), HNSWIndex(VECTORS)
    recalls = []
    for query in QUERIES:
        rows, scores = hnsw.search(query, 10)
        truth, _ = exact.search(query, 10)
        assert list(scores) == sorted(scores, reverse=True), "best first"
        assert scores == pytest.approx(VECTORS[rows] @ query, abs=1e-5), "cosine scores"
        recalls.append(recall(rows, truth))
    assert np.mean(recalls) >= 0.95


@pytest.mark.parametrize("share", [0.5, 0.05])
def test_filters_hold_exactly_in_the_graph_and_below_the_threshold(
    share: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the catalog allowed: the graph search visits allowed rows only. Five per cent: few
    enough rows to score exactly (the threshold is lowered so both paths run on 3,000 rows)."""
    monkeypatch.setattr(HNSWIndex, "EXACT_BELOW", 1000)  # 5 % of 3,000 rows: 150
    allowed = np.random.default_rng(5).random(len(VECTORS)) < share
    exact, hnsw = ExactIndex(VECTORS), HNSWIndex(VECTORS)
    recalls = []
    for query in QUERIES:
        rows, _ = hnsw.search(query, 10, allowed)
        assert len(rows) == 10 and allowed[rows].all(), "never a filtered-out product"
        recalls.append(recall(rows, exact.search(query, 10, allowed)[0]))
    assert np.mean(recalls) >= (0.9 if share == 0.5 else 1.0)


def test_a_filter_that_allows_nothing_finds_nothing() -> None:
    rows, scores = HNSWIndex(VECTORS).search(QUERIES[0], 10, np.zeros(len(VECTORS), dtype=bool))
    assert len(rows) == len(scores) == 0


def test_appended_rows_join_a_copy_of_the_graph_and_a_changed_row_rebuilds() -> None:
    first = HNSWIndex(VECTORS[:2000])
    grown = first.with_vectors(VECTORS, kept=2000)
    assert first.graph.ntotal == 2000, "requests meanwhile still search the old graph"
    assert grown.graph.ntotal == 3000
    rows, _ = grown.search(VECTORS[2500], 1)
    assert rows[0] == 2500, "an appended product is found"
    changed = VECTORS.copy()
    changed[10] = VECTORS[2999]
    rebuilt = first.with_vectors(changed, kept=10)
    assert rebuilt.graph is not first.graph and rebuilt.graph.ntotal == 3000
    assert rebuilt.search(VECTORS[2999], 2)[0].tolist() in ([10, 2999], [2999, 10])


def test_graph_is_saved_reloaded_and_rebuilt_when_stale_or_corrupt(
    tmp_path: Path, tiny_catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    embedder = CountingEmbedder()

    def load(hnsw: HNSWParams) -> tuple[VectorIndex, bool]:
        return build_or_load_index(tiny_catalog, embedder, tmp_path, kind="hnsw", hnsw=hnsw)

    params = HNSWParams(m=8, ef_construction=40)
    index, embedded = load(params)
    assert embedded and isinstance(index, HNSWIndex) and (tmp_path / "hnsw.faiss").exists()

    again, embedded = load(params)
    assert not embedded and embedder.embedded == len(tiny_catalog.products)
    assert "rebuilding" not in caplog.text, "a fresh graph is read, not built"
    query = index.vectors[3]
    assert again.search(query, 3)[0].tolist() == index.search(query, 3)[0].tolist()

    other = HNSWParams(m=16, ef_construction=40)
    load(other)
    assert "HNSW graph at" in caplog.text and "is stale: rebuilding it" in caplog.text
    caplog.clear()
    (tmp_path / "hnsw.faiss").write_bytes(b"not a graph")
    loaded, embedded = load(other)
    assert "unreadable" in caplog.text and not embedded, "the vectors were fine: no embedding"
    assert loaded.search(query, 1)[0].tolist() == [3]


def test_a_catalog_write_grows_the_saved_graph(tmp_path: Path, tiny_catalog: Catalog) -> None:
    embedder = CountingEmbedder()
    index, _ = build_or_load_index(tiny_catalog, embedder, tmp_path, kind="hnsw")
    updated, _ = tiny_catalog.upserted([product("K3", "Trail Headlamp", "Camping", 45.0)])
    grown, embedded = reindex(tiny_catalog, index, updated, embedder)
    assert embedded == 1 and isinstance(grown, HNSWIndex)
    assert grown.graph.ntotal == len(updated.products)
    save_index(updated, grown, embedder, tmp_path)
    loaded, embedded = build_or_load_index(updated, embedder, tmp_path, kind="hnsw")
    assert not embedded and isinstance(loaded, HNSWIndex)
    assert loaded.search(grown.vectors[-1], 1)[0].tolist() == [len(updated.products) - 1]


def test_auto_chooses_hnsw_from_the_threshold_on(test_settings: Settings) -> None:
    auto = test_settings.model_copy(update={"index": "auto", "hnsw_min_products": 50_000})
    assert auto.index_kind(49_999) == "exact" and auto.index_kind(50_000) == "hnsw"
    assert auto.model_copy(update={"index": "exact"}).index_kind(10**6) == "exact"
    assert auto.model_copy(update={"index": "hnsw"}).index_kind(1) == "hnsw"


def test_the_index_reads_its_vectors_from_the_graph_not_a_second_copy() -> None:
    import gc

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    index = HNSWIndex(vectors)
    held = index.vectors
    assert not held.flags.owndata and not held.flags.writeable
    np.testing.assert_array_equal(held, vectors)
    grown = index.with_vectors(np.vstack([vectors, vectors[:5]]), kept=400)
    assert grown.vectors.shape == (405, 16)
    del index, grown
    gc.collect()
    # The array keeps the graph it reads alive: still the same rows after the index is gone.
    np.testing.assert_array_equal(held, vectors)
