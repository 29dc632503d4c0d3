"""The collaborative models: EASE's closed form against the regression it solves, the choice
by catalog size, and the signal the selector blends."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.retrieval.collaborative import EASE, CoOccurrence, chosen
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


def test_auto_picks_ease_up_to_its_limit_and_co_occurrence_beyond() -> None:
    incidence = random_incidence(20, 5)
    assert isinstance(chosen("auto", 10.0, ease_max_items=5)(incidence), EASE)
    assert isinstance(chosen("auto", 10.0, ease_max_items=4)(incidence), CoOccurrence)
    assert isinstance(chosen("ease", 10.0, ease_max_items=1)(incidence), EASE)
    assert isinstance(chosen("cooccurrence", 10.0, ease_max_items=99)(incidence), CoOccurrence)


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
