from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.catalog.store import Catalog, ShopperStore
from app.config import Settings
from app.domain import EventType, Shopper
from app.retrieval.collaborative import CoOccurrence
from app.retrieval.index import ExactIndex, build_or_load_index
from app.retrieval.mmr import mmr
from app.retrieval.profile import HistoryWeights, history_weights, shopper_vector
from app.retrieval.selector import CandidateFilters, CandidateSelector
from app.retrieval.signals import InteractionSignals
from tests.conftest import NOW, event, product
from tests.fakes import WordEmbedder


def ids(selection) -> list[str]:
    return [c.product.id for c in selection.candidates]


def test_exact_index_finds_known_neighbours() -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors[3] = np.array([0.8, 0.6, 0, 0], dtype=np.float32)
    index = ExactIndex(vectors)
    rows, scores = index.search(np.array([1, 0, 0, 0], dtype=np.float32), 2)
    assert rows.tolist() == [0, 3]
    assert scores.tolist() == pytest.approx([1.0, 0.8])
    allowed = np.array([False, True, True, True])
    rows, _ = index.search(np.array([1, 0, 0, 0], dtype=np.float32), 10, allowed)
    assert rows[0] == 3 and 0 not in rows.tolist() and len(rows) == 3


def test_interests_steer_semantic_retrieval(selector: CandidateSelector) -> None:
    shopper = Shopper(id="x", interests=("camping",))
    selection = selector.select(shopper, 2)
    assert set(ids(selection)) == {"K1", "K2"}
    assert all(c.source == "semantic" for c in selection.candidates)
    assert [c.number for c in selection.candidates] == [1, 2]


def test_history_beats_stale_interests(selector: CandidateSelector) -> None:
    shopper = Shopper(
        id="x",
        interests=("yoga",),
        history=(event("R1", EventType.VIEW, 0), event("R1", EventType.ADD_TO_CART, 0)),
    )
    assert ids(selector.select(shopper, 1, CandidateFilters(exclude_purchased=False)))[0] in {
        "R1",
        "R2",
    }


def test_purchases_weigh_more_and_recent_events_more(tiny_catalog: Catalog) -> None:
    shopper = Shopper(
        id="x",
        history=(
            event("C1", EventType.VIEW, 0),
            event("C2", EventType.PURCHASE, 0),
            event("C3", EventType.VIEW, 60),
        ),
    )
    weights = dict(
        zip(
            *[
                a.tolist()
                for a in (lambda h: (h.rows, h.weights))(
                    history_weights(shopper, tiny_catalog, half_life_days=30)
                )
            ],
            strict=True,
        )
    )
    c1, c2, c3 = (tiny_catalog.row(p) for p in ("C1", "C2", "C3"))
    assert weights[c2] == pytest.approx(5 * weights[c1])
    assert weights[c3] == pytest.approx(weights[c1] / 4)  # two half-lives old


def long_coffee_history_then_a_camping_session() -> Shopper:
    """Weeks of coffee, then, just now, three camping views in ten minutes."""
    coffee = [event(pid, EventType.VIEW, days) for days in range(2, 30, 3) for pid in ("C1", "C2")]
    minutes = 1 / (24 * 60)
    camping = [
        event("K1", EventType.VIEW, 10 * minutes),
        event("K2", EventType.VIEW, 5 * minutes),
        event("K1", EventType.VIEW, 0),
    ]
    return Shopper(id="switcher", history=(*coffee, *camping))


def weights_by_id(catalog: Catalog, history: HistoryWeights) -> dict[str, float]:
    return {
        catalog.products[int(row)].id: float(weight)
        for row, weight in zip(history.rows, history.weights, strict=True)
    }


def test_the_latest_session_carries_its_share_of_the_history(tiny_catalog: Catalog) -> None:
    shopper = long_coffee_history_then_a_camping_session()
    plain = weights_by_id(tiny_catalog, history_weights(shopper, tiny_catalog, 30))
    shared = weights_by_id(
        tiny_catalog, history_weights(shopper, tiny_catalog, 30, session_share=0.6)
    )
    session = shared["K1"] + shared["K2"]
    assert session == pytest.approx(0.6 * sum(shared.values()))
    assert plain["K1"] + plain["K2"] < 0.3 * sum(plain.values())  # without it, coffee wins
    # Within each part, the recency x event-type proportions stay as they were.
    assert shared["K1"] / shared["K2"] == pytest.approx(plain["K1"] / plain["K2"])
    assert shared["C1"] / shared["C2"] == pytest.approx(plain["C1"] / plain["C2"])
    # A gap longer than the session's ends it: with a 1-minute gap only the last view is in it.
    short = weights_by_id(
        tiny_catalog,
        history_weights(shopper, tiny_catalog, 30, session_gap_min=1, session_share=0.6),
    )
    assert short["K1"] > short["K2"]
    assert short["K1"] == pytest.approx(0.6 * sum(short.values()), rel=0.05)


def test_a_history_that_is_one_session_is_weighted_as_it_is(tiny_catalog: Catalog) -> None:
    minutes = 1 / (24 * 60)
    shopper = Shopper(
        id="x",
        history=(event("C1", EventType.VIEW, 2 * minutes), event("C2", EventType.PURCHASE, 0)),
    )
    assert weights_by_id(
        tiny_catalog, history_weights(shopper, tiny_catalog, 30, session_share=0.6)
    ) == weights_by_id(tiny_catalog, history_weights(shopper, tiny_catalog, 30))


def test_after_a_long_history_the_current_session_leads_the_candidates(
    selector: CandidateSelector, test_settings: Settings
) -> None:
    shopper = long_coffee_history_then_a_camping_session()
    before = selector.select(shopper, 3).candidates
    assert before[0].product.category == "Coffee"  # the share off: the long history wins
    selector.settings = test_settings.model_copy(update={"session_share": 0.6})
    after = selector.select(shopper, 3).candidates
    assert after[0].product.category == "Camping"


def test_shopper_vector_blends_history_and_interests() -> None:
    items = np.eye(3, dtype=np.float32)
    history = HistoryWeights(np.array([0]), np.array([1.0]))
    interests = np.array([0, 1, 0], dtype=np.float32)
    vector = shopper_vector(history, items, interests, history_weight=0.75)
    assert vector is not None
    assert vector[0] == pytest.approx(0.75 / np.hypot(0.75, 0.25))
    assert shopper_vector(HistoryWeights(np.zeros(0, int), np.zeros(0)), items, None, 0.5) is None


def test_filters_remove_what_they_say(selector: CandidateSelector) -> None:
    shopper = Shopper(
        id="x", interests=("coffee grinder beans",), history=(event("C3", EventType.PURCHASE, 1),)
    )
    selection = selector.select(shopper, 10)
    chosen = ids(selection)
    assert "C4" not in chosen, "out of stock"
    assert "C3" not in chosen, "already purchased"
    assert selection.trace.removed == {"out_of_stock": 1, "already_purchased": 1}

    priced = selector.select(shopper, 10, CandidateFilters(min_price=50, max_price=130))
    assert all(50 <= c.product.price <= 130 for c in priced.candidates)
    only = selector.select(shopper, 10, CandidateFilters(include_categories=("camping",)))
    assert {c.product.category for c in only.candidates} == {"Camping"}
    without = selector.select(shopper, 10, CandidateFilters(exclude_categories=("Coffee",)))
    assert "Coffee" not in {c.product.category for c in without.candidates}
    keep_all = selector.select(
        shopper, 10, CandidateFilters(in_stock_only=False, exclude_purchased=False)
    )
    assert {"C3", "C4"} <= set(ids(keep_all))


def test_filters_reject_an_inverted_price_range() -> None:
    with pytest.raises(ValueError, match="min_price is above max_price"):
        CandidateFilters(min_price=100, max_price=10)


def test_mmr_trades_relevance_for_variety() -> None:
    vectors = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    relevance = np.array([1.0, 0.95, 0.6])
    assert mmr(relevance, vectors, 2, lam=1.0)[0] == [0, 1]
    assert mmr(relevance, vectors, 2, lam=0.5)[0] == [0, 2]
    assert mmr(relevance, vectors, 5, lam=0.5)[0] == [0, 2, 1]
    assert mmr(np.zeros(0), np.zeros((0, 2)), 3, lam=0.5) == ([], [])


def test_mmr_setting_diversifies_candidates(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, word_embedder: WordEmbedder, test_settings
) -> None:
    from app.retrieval.embedder import product_text

    vectors = word_embedder.encode([product_text(p) for p in tiny_catalog.products])
    shopper = Shopper(id="x", interests=("coffee grinder",))

    def top3(lam: float) -> set[str]:
        settings = test_settings.model_copy(update={"mmr_lambda": lam, "collaborative_weight": 0.0})
        chosen = CandidateSelector(
            tiny_catalog,
            ExactIndex(vectors),
            word_embedder,
            InteractionSignals(tiny_catalog, tiny_shoppers),
            settings,
        )
        return {c.product.category for c in chosen.select(shopper, 3).candidates}

    assert top3(1.0) == {"Coffee"}
    assert len(top3(0.3)) > 1


def test_collaborative_signal_brings_in_co_viewed_items(selector: CandidateSelector) -> None:
    # Coffee shoppers also looked at the headlamp; text alone would never pick it for coffee.
    shopper = Shopper(
        id="x", history=(event("C1", EventType.VIEW, 0), event("C2", EventType.VIEW, 0))
    )
    selection = selector.select(shopper, 4)
    headlamp = next(c for c in selection.candidates if c.product.id == "K2")
    assert headlamp.scores.collaborative == pytest.approx(1.0)
    assert headlamp.source == "collaborative"


def test_cooccurrence_is_symmetric_and_ignores_self(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore
) -> None:
    model = InteractionSignals(tiny_catalog, tiny_shoppers).model
    assert isinstance(model, CoOccurrence)  # the default
    co = model.matrix.toarray()
    assert np.allclose(co, co.T)
    assert np.all(np.diag(co) == 0)
    k2, c1, y1 = (tiny_catalog.row(p) for p in ("K2", "C1", "Y1"))
    assert co[k2, c1] > 0 and co[y1].sum() == 0


def test_cold_start_gets_popular_items_of_its_segment(selector: CandidateSelector) -> None:
    selection = selector.select(Shopper(id="new", segment="sporty"), 3)
    assert selection.trace.cold_start
    assert selection.trace.signals == {"semantic": 0.0, "collaborative": 0.0, "popularity": 1.0}
    assert all(c.source == "popular" for c in selection.candidates)
    # Sporty shoppers bought the tent and the running shoe; everyone touched the headlamp.
    assert set(ids(selection)) == {"R2", "K1", "K2"}
    regular = selector.select(Shopper(id="new2", segment="regular"), 2)
    assert set(ids(regular)) == {"C3", "K2"}, "another segment, other favourites"
    anyone = selector.select(Shopper(id="new3", segment="never-seen"), 10)
    assert "Y1" not in ids(anyone), "never touched by anyone"


def test_unknown_shopper_id_is_cold_start_not_an_error(tiny_shoppers: ShopperStore) -> None:
    stranger = tiny_shoppers.get("who-is-this")
    assert stranger.is_cold_start and stranger.id == "who-is-this"
    assert not tiny_shoppers.known("who-is-this")


def test_no_allowed_products_gives_no_candidates(selector: CandidateSelector) -> None:
    selection = selector.select(Shopper(id="x"), 5, CandidateFilters(min_price=10_000))
    assert selection.candidates == [] and selection.trace.allowed == 0


def test_index_is_persisted_and_rebuilt_when_stale(tmp_path: Path, tiny_catalog: Catalog) -> None:
    embedder = WordEmbedder()
    folder = tmp_path / "index"
    first, rebuilt = build_or_load_index(tiny_catalog, embedder, folder)
    assert rebuilt and (folder / "meta.json").exists()
    again, rebuilt = build_or_load_index(tiny_catalog, embedder, folder)
    assert not rebuilt and np.array_equal(first.vectors, again.vectors)

    changed = Catalog(
        [*tiny_catalog.products[:-1], product("Y1", "Yoga Mat Deluxe", "Fitness", 45.0)]
    )
    _, rebuilt = build_or_load_index(changed, embedder, folder)
    assert rebuilt, "a changed product text makes the index stale"

    class OtherModel(WordEmbedder):
        name = "another-model"

    _, rebuilt = build_or_load_index(changed, OtherModel(), folder)
    assert rebuilt, "another embedding model makes the index stale"
    (folder / "vectors.npy").write_bytes(b"garbage")
    _, rebuilt = build_or_load_index(changed, OtherModel(), folder)
    assert rebuilt, "an unreadable index is rebuilt, not trusted"
    assert NOW  # the fixtures' clock is fixed


def test_excluded_products_are_never_offered(selector: CandidateSelector) -> None:
    shopper = Shopper(id="x", interests=("coffee",))
    selection = selector.select(shopper, 10, CandidateFilters(exclude_products=("C1", "C2")))
    assert not {"C1", "C2"} & set(ids(selection))
    assert selection.trace.removed["excluded_product"] == 2


# --- "because you viewed": neighbours of one product ----------------------------------------


def test_the_anchor_is_the_latest_product_still_sold(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, selector: CandidateSelector
) -> None:
    fan = tiny_shoppers.get("coffee_fan")  # C1 10 days ago, C3 9, K2 8
    assert selector.anchor_for(fan).id == "K2"  # type: ignore[union-attr]
    assert selector.anchor_for(tiny_shoppers.get("newcomer")) is None
    withdrawn = Catalog(tiny_catalog.products, withdrawn=["K2"])
    others = CandidateSelector(
        withdrawn,
        selector.index,
        selector.embedder,
        InteractionSignals(withdrawn, tiny_shoppers),
        selector.settings,
    )
    assert others.anchor_for(fan).id == "C3"  # type: ignore[union-attr]
    # Out of stock is still named: the section shows its neighbours, not it.
    stocked_out = Shopper(id="s", history=(event("C4", EventType.VIEW, 1),))
    assert selector.anchor_for(stocked_out).id == "C4"  # type: ignore[union-attr]


def test_neighbours_of_the_anchor_come_by_meaning_and_by_who_took_it(
    tiny_catalog: Catalog, selector: CandidateSelector
) -> None:
    shopper = Shopper(id="s", history=(event("K2", EventType.VIEW, 1),))
    headlamp = tiny_catalog.get("K2")
    assert headlamp is not None
    selection = selector.similar(shopper, headlamp, 4)
    chosen = ids(selection)
    assert selection.anchor == headlamp
    assert "K2" not in chosen and selection.trace.removed["anchor"] == 1
    assert chosen[0] == "K1"  # the other camping product: closest in meaning, taken with it
    # Shoppers who took the headlamp took coffee kit too (tiny_shoppers): the model brings it.
    by_who_took_it = [c for c in selection.candidates if c.source == "collaborative"]
    assert by_who_took_it and all(c.scores.collaborative > 0 for c in by_who_took_it)
    # Popularity takes no part: every anchor would otherwise lean to the same best-sellers.
    assert selection.trace.signals["popularity"] == 0.0
    assert all(c.scores.popularity == 0.0 for c in selection.candidates)


def test_neighbours_still_obey_the_filters(
    tiny_catalog: Catalog, tiny_shoppers: ShopperStore, selector: CandidateSelector
) -> None:
    fan = tiny_shoppers.get("coffee_fan")  # bought C3
    grinder = tiny_catalog.get("C1")
    assert grinder is not None
    chosen = ids(selector.similar(fan, grinder, 6, CandidateFilters(exclude_categories=("Tea",))))
    assert "C1" not in chosen and "C3" not in chosen  # the anchor; bought already
    assert "C4" not in chosen  # out of stock
    assert "T1" not in chosen  # filtered out
    assert chosen[0] == "C2"
