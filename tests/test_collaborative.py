"""The collaborative models: EASE's closed form against the regression it solves, ALS's shopper
fold-in against the `implicit` package's own, the choice by catalog size, and the signal the
selector blends."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.retrieval.collaborative import ALS, EASE, ALSParams, CoOccurrence, chosen
from app.retrieval.signals import InteractionSignals


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
    scores = model.scores(np.array([1.0, 0.0, 0.0, 0.0]))
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
    profile = np.zeros(25)
    profile[history.indices] = 1.0
    expected = reference.recalculate_user(0, sparse.csr_matrix(history, dtype=np.float32))
    np.testing.assert_allclose(model.shopper_factors(profile), expected, rtol=1e-3, atol=1e-4)
    # A history's weights are relative: scaling them all changes nothing.
    np.testing.assert_allclose(model.scores(profile), model.scores(3.0 * profile), rtol=1e-5)


def test_als_scores_what_was_bought_together_above_what_was_not() -> None:
    rows = [[1, 1, 1, 0, 0, 0]] * 30 + [[0, 0, 0, 1, 1, 1]] * 30
    incidence = sparse.csr_matrix(np.array(rows, dtype=np.float64))
    model = ALS(incidence, ALSParams(factors=4, l2=0.1, alpha=5.0, iterations=10))
    scores = model.scores(np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    assert min(scores[1], scores[2]) > max(scores[3:])
    assert not model.scores(np.zeros(6)).any()  # no history: no evidence for anything


def test_auto_picks_ease_up_to_its_limit_and_als_beyond() -> None:
    incidence = random_incidence(20, 5)
    als = ALSParams(factors=2, iterations=2)
    assert isinstance(chosen("auto", 10.0, ease_max_items=5, als=als)(incidence), EASE)
    assert isinstance(chosen("auto", 10.0, ease_max_items=4, als=als)(incidence), ALS)
    assert isinstance(chosen("ease", 10.0, ease_max_items=1)(incidence), EASE)
    assert isinstance(chosen("als", 10.0, ease_max_items=99, als=als)(incidence), ALS)
    assert isinstance(chosen("cooccurrence", 10.0, ease_max_items=99)(incidence), CoOccurrence)


def test_co_occurrence_scores_are_the_matrix_product_of_the_history() -> None:
    """Scoring reads only the touched items' rows; it must equal the whole product."""
    incidence = random_incidence(50, 12, seed=9)
    model = CoOccurrence(incidence)
    profile = np.zeros(12)
    profile[[2, 5, 11]] = [0.5, 2.0, 1.0]
    np.testing.assert_allclose(model.scores(profile), model.matrix.T @ profile, rtol=1e-12)


def test_the_signal_is_scaled_to_one_and_evidence_against_an_item_is_zero(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    settings = Settings(collaborative_model="ease", ease_l2=1.0)
    signals = InteractionSignals.from_settings(tiny_catalog, tiny_shoppers.all(), settings)
    assert isinstance(signals.model, EASE)
    history = np.array([tiny_catalog.row("K2")])
    raw = signals.model.scores(np.bincount(history, minlength=len(tiny_catalog)).astype(float))
    scaled = signals.collaborative(history, np.ones(1))
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
