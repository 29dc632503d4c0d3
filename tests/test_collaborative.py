"""The collaborative models: EASE's closed form against the regression it solves, ALS's shopper
fold-in against the `implicit` package's own, the choice by catalog size, and the signal the
selector blends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.retrieval.collaborative import (
    ALS,
    EASE,
    ALSParams,
    CoOccurrence,
    ModelChoice,
    SavedModel,
)
from app.retrieval.signals import InteractionSignals

ONE_ITEM, ONE_WEIGHT = np.array([0]), np.ones(1)  # a history of item 0 alone


def random_incidence(users: int, items: int, seed: int = 3) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.3).astype(np.float64)
    return sparse.csr_matrix(dense)


def test_ease_is_the_ridge_regression_of_each_item_on_all_the_others() -> None:
    """Column j of B is min ||X_j - X_{-j} b||² + λ||b||²: EASE's closed form must agree with
    solving that regression directly, item by item, and never use an item to predict itself."""
    incidence = random_incidence(40, 7)
    l2 = 3.0
    model = EASE(incidence, l2)
    x = incidence.toarray()
    for j in range(x.shape[1]):
        others = [i for i in range(x.shape[1]) if i != j]
        a = x[:, others]
        direct = np.linalg.solve(a.T @ a + l2 * np.eye(len(others)), a.T @ x[:, j])
        assert model.weights[j, j] == 0.0
        np.testing.assert_allclose(model.weights[others, j], direct, rtol=1e-4, atol=1e-6)


def test_ease_scores_what_was_bought_together_above_what_was_not() -> None:
    # Items 0 and 1 always go together; 2 and 3 together; nobody mixes the pairs.
    rows = [[1, 1, 0, 0]] * 10 + [[0, 0, 1, 1]] * 10
    model = EASE(sparse.csr_matrix(np.array(rows, dtype=np.float64)), l2=1.0)
    scores = model.scores(ONE_ITEM, ONE_WEIGHT)
    assert scores[1] > 0 and scores[1] > scores[2] and scores[1] > scores[3]
    assert scores[0] == 0.0  # an item never recommends itself


def test_als_folds_a_shopper_in_as_implicit_itself_does() -> None:
    """A shopper's vector solved against the fitted item vectors must be implicit's own
    ``recalculate_user`` (an exact solve) for a plain history; the item vectors are implicit's
    fit, untouched."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    incidence = sparse.csr_matrix(random_incidence(60, 25, seed=5) * 1.0)
    params = ALSParams(factors=6, l2=0.5, alpha=4.0, iterations=4)
    model = ALS(incidence, params)
    with threadpool_limits(1, "blas"):
        reference = AlternatingLeastSquares(
            factors=6, regularization=0.5, alpha=4.0, iterations=4, random_state=0
        )
        reference.fit(sparse.csr_matrix(incidence, dtype=np.float32), show_progress=False)
    np.testing.assert_allclose(model.item_factors, reference.item_factors, rtol=1e-5)
    history = incidence[7]
    rows, weights = history.indices, np.ones(len(history.indices))
    expected = reference.recalculate_user(0, sparse.csr_matrix(history, dtype=np.float32))
    np.testing.assert_allclose(model.shopper_factors(rows, weights), expected, rtol=1e-3, atol=1e-4)
    # A history's weights are relative: scaling them all changes nothing.
    np.testing.assert_allclose(
        model.scores(rows, weights), model.scores(rows, 3.0 * weights), rtol=1e-5
    )


def test_als_scores_what_was_bought_together_above_what_was_not() -> None:
    # Item 6 is in the catalog, but nobody touched it: its factors are exactly 0.
    rows = [[1, 1, 1, 0, 0, 0, 0]] * 30 + [[0, 0, 0, 1, 1, 1, 0]] * 30
    incidence = sparse.csr_matrix(np.array(rows, dtype=np.float64))
    model = ALS(incidence, ALSParams(factors=4, l2=0.1, alpha=5.0, iterations=10))
    scores = model.scores(ONE_ITEM, ONE_WEIGHT)
    assert min(scores[1], scores[2]) > max(scores[3:])
    assert not model.item_factors[6].any() and scores[6] == 0.0
    # No history: no evidence for anything.
    assert not model.scores(np.zeros(0, dtype=np.int64), np.zeros(0)).any()


def test_auto_picks_ease_up_to_its_limit_and_als_beyond() -> None:
    incidence = random_incidence(20, 5)
    als = ALSParams(factors=2, iterations=2)
    assert isinstance(ModelChoice("auto", 10.0, ease_max_items=5, als=als)(incidence), EASE)
    assert isinstance(ModelChoice("auto", 10.0, ease_max_items=4, als=als)(incidence), ALS)
    assert isinstance(ModelChoice("ease", 10.0, ease_max_items=1)(incidence), EASE)
    assert isinstance(ModelChoice("als", 10.0, ease_max_items=99, als=als)(incidence), ALS)
    assert isinstance(ModelChoice("cooccurrence", 10.0, 99)(incidence), CoOccurrence)


def test_co_occurrence_scores_are_the_matrix_product_of_the_history() -> None:
    """Scoring reads only the touched items' rows; it must equal the whole product."""
    incidence = random_incidence(50, 12, seed=9)
    model = CoOccurrence(incidence)
    profile = np.zeros(12)
    profile[[2, 5, 11]] = [0.5, 2.0, 1.0]
    scores = model.scores(np.array([2, 5, 11]), np.array([0.5, 2.0, 1.0]))
    np.testing.assert_allclose(scores, model.matrix.T @ profile, rtol=1e-12)


def test_the_signal_is_scaled_to_one_and_evidence_against_an_item_is_zero(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    settings = Settings(collaborative_model="ease", ease_l2=1.0)
    signals = InteractionSignals.from_settings(tiny_catalog, tiny_shoppers.all(), settings)
    assert isinstance(signals.model, EASE)
    history = np.array([tiny_catalog.row("K2")])
    raw = signals.model.scores(history, np.ones(1))
    scaled = signals.collaborative(history, np.ones(1)).at(np.arange(len(tiny_catalog)))
    assert scaled.max() == pytest.approx(1.0) and scaled.min() >= 0.0
    assert np.all(scaled[raw <= 0] == 0.0)
    assert np.argmax(scaled) == np.argmax(raw)
    assert not signals.collaborative(np.zeros(0, dtype=np.int64), np.zeros(0)).any()


def test_a_bad_collaborative_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="collaborative_model"):
        Settings(collaborative_model="svd")
    with pytest.raises(ValueError, match="ease_l2"):
        Settings(ease_l2=0)
    with pytest.raises(ValueError, match="als_factors"):
        Settings(als_factors=1)


SMALL_ALS = ALSParams(factors=4, l2=0.5, alpha=4.0, iterations=3)


@pytest.mark.parametrize("kind", ["ease", "als", "cooccurrence"])
def test_a_saved_model_scores_as_the_one_fitted(kind: str, tmp_path: Path) -> None:
    incidence = random_incidence(60, 20, seed=4)
    choice = ModelChoice(kind, ease_l2=5.0, als=SMALL_ALS)  # type: ignore[arg-type]
    saved = SavedModel(tmp_path)
    fitted = saved.fitted(choice, incidence)
    assert not saved.reused and saved.path.is_file()
    again = SavedModel(tmp_path)
    loaded = again.fitted(choice, incidence)
    assert again.reused and loaded.name == kind == fitted.name
    rows, weights = np.array([1, 4, 9]), np.array([1.0, 0.5, 2.0])
    np.testing.assert_allclose(
        loaded.scores(rows, weights), fitted.scores(rows, weights), rtol=1e-6
    )


def test_new_data_or_new_settings_fit_the_model_again(tmp_path: Path) -> None:
    incidence = random_incidence(60, 20, seed=4)
    choice = ModelChoice("ease", ease_l2=5.0)
    saved = SavedModel(tmp_path)
    saved.fitted(choice, incidence)
    burst = incidence.tolil()
    burst[0, 19] = 1.0  # one more interaction
    refit = saved.fitted(choice, sparse.csr_matrix(burst))
    assert not saved.reused
    expected = EASE(sparse.csr_matrix(burst), 5.0)
    last = np.array([19])
    np.testing.assert_allclose(refit.scores(last, ONE_WEIGHT), expected.scores(last, ONE_WEIGHT))
    saved.fitted(choice, sparse.csr_matrix(burst))
    assert saved.reused  # the refit was saved in its place
    saved.fitted(ModelChoice("ease", ease_l2=6.0), sparse.csr_matrix(burst))
    assert not saved.reused
    # auto on a catalog past EASE's limit is ALS: another model, not the saved EASE.
    past_limit = saved.fitted(ModelChoice("auto", 6.0, ease_max_items=10, als=SMALL_ALS), burst)
    assert isinstance(past_limit, ALS) and not saved.reused


def test_an_unreadable_saved_model_is_fitted_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    incidence = random_incidence(30, 8, seed=2)
    saved = SavedModel(tmp_path)
    saved.path.write_bytes(b"not a model")
    with caplog.at_level("WARNING"):
        model = saved.fitted(ModelChoice("ease", ease_l2=5.0), incidence)
    assert isinstance(model, EASE) and "unreadable" in caplog.text
    assert SavedModel(tmp_path).fitted(ModelChoice("ease", ease_l2=5.0), incidence) is not None


def test_the_service_keeps_the_model_beside_the_index(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, tmp_path: Path
) -> None:
    """A start with the same histories loads what the last one fitted; new events refit it."""
    settings = Settings(collaborative_model="ease", ease_l2=1.0)
    first = SavedModel(tmp_path)
    InteractionSignals.from_settings(tiny_catalog, tiny_shoppers.all(), settings, first)
    restart = SavedModel(tmp_path)
    InteractionSignals.from_settings(tiny_catalog, tiny_shoppers.all(), settings, restart)
    assert not first.reused and restart.reused
    shoppers = tiny_shoppers.all()
    shoppers[0] = shoppers[0].model_copy(update={"history": shoppers[1].history})
    after_events = SavedModel(tmp_path)
    InteractionSignals.from_settings(tiny_catalog, shoppers, settings, after_events)
    assert not after_events.reused


def test_past_its_graph_limit_als_is_searched_and_saved_with_its_graph(tmp_path: Path) -> None:
    incidence = random_incidence(200, 60, seed=8)
    dense_params = ALSParams(factors=8, l2=0.5, alpha=4.0, iterations=4)
    graph_params = ALSParams(factors=8, l2=0.5, alpha=4.0, iterations=4, graph_min_items=60)
    dense, searched = ALS(incidence, dense_params), ALS(incidence, graph_params)
    assert dense.graph is None and searched.graph is not None
    np.testing.assert_allclose(searched.item_factors, dense.item_factors)
    saved = SavedModel(tmp_path)
    saved.fitted(ModelChoice("als", als=graph_params), incidence)
    loaded = SavedModel(tmp_path).fitted(ModelChoice("als", als=graph_params), incidence)
    assert isinstance(loaded, ALS) and loaded.graph is not None
    np.testing.assert_allclose(loaded.item_factors, dense.item_factors)
    rows, weights = np.array([3, 7, 11]), np.array([1.0, 2.0, 0.5])
    np.testing.assert_allclose(loaded.scores(rows, weights), dense.scores(rows, weights), rtol=1e-5)


def test_the_selector_picks_the_same_with_als_searched_or_scored(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    """On a small catalog the graph walk is exact: searching the factors must not change
    what is selected."""
    from app.retrieval.index import ExactIndex
    from app.retrieval.scores import DenseScores, SearchedScores
    from app.retrieval.selector import CandidateSelector
    from tests.fakes import WordEmbedder

    embedder = WordEmbedder()
    index = ExactIndex(embedder.encode([p.title for p in tiny_catalog.products]))
    picks = []
    for graph_min_items in (10**6, 1):
        settings = Settings(
            collaborative_model="als", als_factors=4, hnsw_min_products=graph_min_items
        )
        signals = InteractionSignals.from_settings(tiny_catalog, tiny_shoppers.all(), settings)
        kind = SearchedScores if graph_min_items == 1 else DenseScores
        history = np.array([tiny_catalog.row("C1")])
        assert isinstance(signals.collaborative(history, np.ones(1)), kind)
        selector = CandidateSelector(tiny_catalog, index, embedder, signals, settings)
        selection = selector.select(tiny_shoppers.get("coffee_fan"), 4)
        picks.append(
            [(c.product.id, round(c.scores.collaborative, 4)) for c in selection.candidates]
        )
    assert picks[0] == picks[1]
