"""`marquee eval tune`'s logic: the grid, a validation split that never sees the test split, the
choice, and the settings file the service reads back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from app.catalog.store import Catalog
from app.config import Settings, get_settings
from app.domain import EventType, Interaction, Shopper
from eval import tuning
from eval.datasets import EvalDataset, hold_out_latest
from tests.conftest import NOW, TINY_PRODUCTS
from tests.fakes import WordEmbedder

CLUSTERS = (("C1", "C2", "C3", "T1"), ("K1", "K2", "R1", "R2"))


def clustered_dataset(shoppers: int) -> EvalDataset:
    """Shoppers who stay in one cluster of products, five events each, a day apart."""
    people = []
    for number in range(shoppers):
        cluster = CLUSTERS[number % 2]
        order = [cluster[(number + step) % len(cluster)] for step in range(5)]
        history = tuple(
            Interaction(product_id=pid, type=EventType.VIEW, ts=NOW - timedelta(days=5 - day))
            for day, pid in enumerate(order)
        )
        people.append(Shopper(id=f"s{number:03d}", history=history))
    train, held_out = hold_out_latest(people)
    return EvalDataset("clusters", "clustered shoppers", Catalog(TINY_PRODUCTS), train, held_out)


def settings_read_afresh() -> Settings:
    """What the service and the commands read now (``get_settings`` caches it)."""
    get_settings.cache_clear()
    try:
        return get_settings()
    finally:
        get_settings.cache_clear()


def test_the_grid_lists_todays_defaults_first() -> None:
    points = tuning.grid_points(tuning.GRID)
    assert len(points) == 2 * len(tuning.BLENDS) * 2 * 2
    defaults = Settings()
    assert points[0] == {name: getattr(defaults, name) for name in points[0]}
    assert set(points[0]) == set(tuning.TUNED_FIELDS)
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)  # no repeats


def test_validation_never_sees_the_test_split() -> None:
    dataset = clustered_dataset(40)
    validation = tuning.validation_split(dataset)
    assert len(validation.held_out) >= tuning.MIN_VALIDATION_SHOPPERS
    for shopper_id, tested in dataset.held_out.items():
        training = {e.product_id: e.ts for e in dataset.train.get(shopper_id).history}
        kept = validation.train.get(shopper_id).history
        assert all(training.get(e.product_id) == e.ts for e in kept)  # a part of training
        assert len(kept) == len(training) - 1  # its latest event is the validation target
        assert validation.held_out[shopper_id] <= set(training)
        assert validation.held_out[shopper_id] != tested


def test_a_dataset_too_small_to_split_is_a_clear_error() -> None:
    with pytest.raises(tuning.TuneError, match=r"too small to tune on: \d+ shoppers .* 30"):
        tuning.validation_split(clustered_dataset(12))


def test_tune_picks_the_best_validation_point_and_writes_settings_the_service_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cache_dir=tmp_path / "cache", search_k=20)
    grid = {"collaborative_model": ("cooccurrence", "ease"), "mmr_lambda": (1.0,)}
    seen: list[tuple[int, int]] = []
    tuned = tuning.tune(
        clustered_dataset(60),
        WordEmbedder(),
        settings,
        grid,
        on_point=lambda done, total, _: seen.append((done, total)),
    )
    assert seen == [(1, 2), (2, 2)]
    scores = [ndcg for _, ndcg in tuned.validation]
    assert scores == sorted(scores, reverse=True)
    best_point = tuned.validation[0][0]
    assert all(tuned.best[name] == value for name, value in best_point.items())
    assert set(tuned.best) == set(tuning.TUNED_FIELDS)
    assert set(tuned.test) == {"default", "tuned"}
    assert all(0.0 <= row["ndcg@10"] <= 1.0 for row in tuned.test.values())

    settings_file, report = tuning.write(tuned, tmp_path / "tune")
    assert report.is_file()
    monkeypatch.setenv("MARQUEE_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("MARQUEE_SEMANTIC_WEIGHT", "0.55")  # the environment wins over the file
    read = settings_read_afresh()
    assert read.collaborative_model == tuned.best["collaborative_model"]
    assert read.mmr_lambda == tuned.best["mmr_lambda"] == 1.0
    assert read.collaborative_weight == tuned.best["collaborative_weight"]
    assert read.semantic_weight == 0.55


def test_a_settings_file_that_is_not_there_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARQUEE_SETTINGS_FILE", str(tmp_path / "nope.env"))
    with pytest.raises(ValueError, match="MARQUEE_SETTINGS_FILE: no such file"):
        settings_read_afresh()


def test_a_bad_value_in_the_settings_file_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("MARQUEE_MMR_LAMBDA=2.5\n")
    monkeypatch.setenv("MARQUEE_SETTINGS_FILE", str(bad))
    with pytest.raises(ValueError, match="mmr_lambda"):
        settings_read_afresh()
