"""A signal's scores: the best allowed rows and the pool's scores must be the same whichever
way they are kept (dense, ordered once, or searched in a graph)."""

from __future__ import annotations

import numpy as np
import pytest

from app.retrieval.index import HNSWIndex
from app.retrieval.scores import DenseScores, NoScores, RankedScores, SearchedScores


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.01, 0.0])
def test_ranked_scores_find_the_best_allowed_rows_as_dense_ones_do(keep: float) -> None:
    rng = np.random.default_rng(3)
    values = rng.random(20_000)
    values[rng.random(20_000) < 0.3] = 0.0  # no evidence for these: never among the best
    allowed = rng.random(20_000) < keep
    ranked, dense = RankedScores(values), DenseScores(values)
    # A 1 % filter keeps ~200 rows: the walk goes past its first steps to find 120 of them.
    best = ranked.best(120, allowed)
    np.testing.assert_array_equal(best, dense.best(120, allowed))
    assert np.all(allowed[best]) and np.all(values[best] > 0)
    np.testing.assert_array_equal(ranked.at(best), values[best])


def test_ranked_scores_return_what_there_is_when_fewer_rows_qualify() -> None:
    values = np.array([0.0, 0.2, 0.0, 0.9, 0.5])
    ranked = RankedScores(values)
    assert ranked.best(10, np.ones(5, dtype=bool)).tolist() == [3, 4, 1]
    assert ranked.best(10, np.array([1, 1, 1, 0, 0], dtype=bool)).tolist() == [1]
    assert not NoScores().any() and NoScores().best(5, np.ones(5, dtype=bool)).size == 0


def test_searched_scores_agree_with_scoring_every_row() -> None:
    rng = np.random.default_rng(5)
    factors = rng.standard_normal((3_000, 16)).astype(np.float32)
    shopper = rng.standard_normal(16)
    factors[::10] = 0.0  # items nobody touched: out of the graph, scored 0
    graph_rows = np.flatnonzero(factors.any(axis=1))
    graph = HNSWIndex(factors[graph_rows])
    searched = SearchedScores(graph, graph_rows, factors, shopper)
    raw = factors @ shopper.astype(np.float32)
    dense = DenseScores(np.clip(raw, 0, None) / raw.max())
    allowed = rng.random(3_000) < 0.5
    best = searched.best(50, allowed)
    expected = dense.best(50, allowed)
    assert np.all(allowed[best])
    assert len(set(best.tolist()) & set(expected.tolist())) >= 45  # recall of the graph walk
    pool = np.arange(0, 3_000, 7)
    np.testing.assert_allclose(searched.at(pool), dense.values[pool], rtol=1e-4, atol=1e-6)
    assert searched.any()
    assert not set(best.tolist()) & set(range(0, 3_000, 10))
    against = SearchedScores(graph, graph_rows, factors, np.zeros(16))  # no evidence at all
    assert not against.any() and against.best(5, allowed).size == 0
