"""The collaborative models' cost: training time, memory and scoring time by catalog size.

    .venv/bin/python -m bench.collaborative [--items 1000,5000,10000,100000]

For each size, a synthetic shopper x item incidence (5 shoppers per item, 20 items each, items
drawn with a long-tailed popularity) is fitted with EASE (up to 10,000 items: its n x n inverse
is 80 GB at 100,000), ALS and co-occurrence, side by side:
wall time, peak memory the fit allocated (tracemalloc follows numpy's buffers), the model's
size, and the time to score one shopper of 20 items. Then the retrain the service runs after a
burst of events: the demo catalog's signals rebuilt with 5,000 more events, for each model.
Writes bench/results/collaborative.md and .json.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
from scipy import sparse

from app.config import Settings, get_settings
from app.domain import EventType, Interaction
from app.retrieval.collaborative import ALS, EASE, ALSParams, CollaborativeModel, CoOccurrence
from app.retrieval.signals import InteractionSignals
from bench.common import pct, write_results

ITEMS_PER_SHOPPER = 20
SHOPPERS_PER_ITEM = 5
BURST = 5_000


def incidence(items: int, seed: int = 11) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    users = SHOPPERS_PER_ITEM * items
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8  # a long tail, like a real catalog
    popularity /= popularity.sum()
    cols = rng.choice(items, size=(users, ITEMS_PER_SHOPPER), p=popularity).ravel()
    rows = np.repeat(np.arange(users), ITEMS_PER_SHOPPER)
    matrix = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(users, items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


EASE_MAX = 10_000


def model_bytes(model: CollaborativeModel) -> int:
    return sum(int(array.nbytes) for array in model.arrays().values())


def measured(fit: Callable[[], CollaborativeModel]) -> tuple[CollaborativeModel, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    model = fit()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return model, seconds, peak


def scoring_ms(model: CollaborativeModel, items: int, repeats: int = 50) -> float:
    rng = np.random.default_rng(5)
    samples = []
    for _ in range(repeats):
        rows = rng.choice(items, ITEMS_PER_SHOPPER, replace=False)
        weights = rng.random(ITEMS_PER_SHOPPER)
        started = time.perf_counter()
        model.scores(rows, weights)
        samples.append((time.perf_counter() - started) * 1000)
    return pct(samples, 50)


def retrain_after_burst(settings: Settings) -> list[list[object]]:
    """The demo catalog's signals rebuilt after 5,000 new events, as the service does."""
    from app.runtime import load_data

    catalog, shoppers = load_data(settings)
    rng = np.random.default_rng(3)
    everyone = shoppers.all()
    now = datetime.now(UTC)
    extra = [
        Interaction(
            product_id=catalog.products[int(rng.integers(len(catalog)))].id,
            type=EventType.VIEW,
            ts=now + timedelta(seconds=i),
        )
        for i in range(BURST)
    ]
    per_shopper = np.array_split(np.arange(BURST), len(everyone))
    burst = [
        s.model_copy(update={"history": (*s.history, *(extra[i] for i in part))})
        for s, part in zip(everyone, per_shopper, strict=True)
    ]
    rows: list[list[object]] = []
    for kind in ("cooccurrence", "ease", "als"):
        chosen = settings.model_copy(update={"collaborative_model": kind})
        times = []
        for _ in range(5):
            started = time.perf_counter()
            InteractionSignals.from_settings(catalog, burst, chosen)
            times.append(time.perf_counter() - started)
        rows.append([kind, len(catalog), len(burst), BURST, pct(times, 50) * 1000])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="1000,5000,10000,100000")
    args = parser.parse_args()
    settings = get_settings()
    rows: list[list[object]] = []
    for items in (int(n) for n in args.items.split(",")):
        matrix = incidence(items)
        fits: list[tuple[str, Callable[[], CollaborativeModel]]] = [
            ("als", partial(ALS, matrix, ALSParams.of(settings))),
            ("cooccurrence", partial(CoOccurrence, matrix)),
        ]
        if items <= EASE_MAX:
            fits.insert(0, ("ease", partial(EASE, matrix, settings.ease_l2)))
        for name, fit in fits:
            model, seconds, peak = measured(fit)
            rows.append(
                [
                    name,
                    items,
                    matrix.shape[0],
                    seconds,
                    peak / 2**20,
                    model_bytes(model) / 2**20,
                    scoring_ms(model, items),
                ]
            )
            print(rows[-1], flush=True)
    retrain = retrain_after_burst(settings)
    als = ALSParams.of(settings)
    notes = [
        f"synthetic incidence: {SHOPPERS_PER_ITEM} shoppers per item, {ITEMS_PER_SHOPPER} items "
        f"each (long-tailed popularity); EASE with L2 {settings.ease_l2:g} (not run past "
        f"{EASE_MAX:,} items); ALS with {als.factors} factors, {als.iterations} iterations",
        "peak MB: what the fit allocated at its peak (tracemalloc: numpy's buffers, not "
        "implicit's C++ scratch); EASE inverts an n x n float64 Gram and keeps an n x n float32 "
        "matrix, so its memory grows with n², its time with n³; ALS keeps n x factors floats "
        "(and the shoppers' factors while fitting)",
        "score ms: one shopper of 20 items, p50 of 50",
        *(
            f"retrain after a burst ({model}): {products} products, {shoppers} shoppers, "
            f"{events:,} new events: {ms:.0f} ms (p50 of 5), off the event loop in the service"
            for model, products, shoppers, events, ms in retrain
        ),
    ]
    path = write_results(
        "collaborative",
        "Collaborative models: training and scoring cost by catalog size",
        ["model", "items", "shoppers", "fit s", "peak MB", "model MB", "score ms"],
        rows,
        notes,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
