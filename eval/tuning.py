"""``marquee eval tune``: the retrieval blend's settings chosen on a validation split.

The test split (each shopper's latest interaction) is never looked at while choosing: the
validation split holds out the latest interaction of the *training* histories instead, and
every point of the grid is scored there by NDCG@10. The best point is then reported on the
test split next to the defaults, and written as ``MARQUEE_*`` lines to a settings file the
service reads (``MARQUEE_SETTINGS_FILE``, app/config.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.retrieval.embedder import Embedder
from eval import retrieval
from eval.datasets import EvalDataset, hold_out_latest

# Too few held-out shoppers and the choice is noise (one hit moves NDCG@10 by 1/n).
MIN_VALIDATION_SHOPPERS = 30
# Today's defaults first (app/config.py): a tie keeps them. ``auto`` is EASE up to
# ease_max_items products, so on these datasets it is EASE.
BLENDS = (  # semantic, collaborative, popularity
    (0.4, 0.6, 0.0),
    (0.6, 0.3, 0.1),
    (0.3, 0.6, 0.1),
    (0.2, 0.8, 0.0),
)
GRID: dict[str, tuple[Any, ...]] = {
    "collaborative_model": ("auto", "cooccurrence"),
    "blend": BLENDS,
    "session_share": (0.3, 0.0),
    "mmr_lambda": (0.7, 1.0),
}
TUNED_FIELDS = (
    "collaborative_model",
    "semantic_weight",
    "collaborative_weight",
    "popularity_weight",
    "session_share",
    "mmr_lambda",
)


class TuneError(ValueError):
    """A dataset that cannot be tuned on (too small to split)."""


def validation_split(dataset: EvalDataset) -> EvalDataset:
    """The dataset's training histories with their own latest interaction held out."""
    train, held_out = hold_out_latest(dataset.train.all())
    if len(held_out) < MIN_VALIDATION_SHOPPERS:
        raise TuneError(
            f"dataset '{dataset.name}' is too small to tune on: {len(held_out)} shoppers have "
            f"enough history to hold one interaction out for validation, "
            f"{MIN_VALIDATION_SHOPPERS} are needed"
        )
    description = f"{dataset.description}; validation: latest training interaction held out"
    # The same name: the same catalog, so the same cached index.
    return EvalDataset(dataset.name, description, dataset.catalog, train, held_out)


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination, as settings overrides (a ``blend`` is the three weights)."""
    names = list(grid)
    points = []
    for values in itertools.product(*(grid[name] for name in names)):
        point = dict(zip(names, values, strict=True))
        blend = point.pop("blend", None)
        if blend is not None:
            semantic, collaborative, popularity = blend
            point |= {
                "semantic_weight": semantic,
                "collaborative_weight": collaborative,
                "popularity_weight": popularity,
            }
        points.append(point)
    return points


@dataclass
class Tuned:
    dataset: str
    best: dict[str, Any]  # the chosen settings (every tuned field)
    validation: list[tuple[dict[str, Any], float]]  # each point and its NDCG@10, best first
    test: dict[str, dict[str, Any]]  # "default" and "tuned" on the test split

    def settings_lines(self) -> list[str]:
        return [f"MARQUEE_{name.upper()}={value}" for name, value in self.best.items()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "best": self.best,
            "validation": [{"settings": p, "ndcg@10": v} for p, v in self.validation],
            "test": self.test,
        }


def tune(
    dataset: EvalDataset,
    embedder: Embedder,
    settings: Settings,
    grid: dict[str, tuple[Any, ...]] = GRID,
    on_point: Callable[[int, int, float], None] | None = None,
) -> Tuned:
    """Score every grid point on the validation split, then the best and the defaults on the
    test split. ``on_point(done, total, ndcg)`` follows the progress."""
    validation = validation_split(dataset)
    points = grid_points(grid)
    scored: list[tuple[dict[str, Any], float]] = []
    for done, point in enumerate(points, 1):
        [row] = retrieval.evaluate(
            validation, embedder, settings, {"point": point}, baselines=False
        )
        scored.append((point, row.ndcg[10]))
        if on_point is not None:
            on_point(done, len(points), row.ndcg[10])
    # The first best wins a tie: the grid lists today's defaults first.
    ranked = sorted(scored, key=lambda item: -item[1])
    chosen = settings.model_copy(update=ranked[0][0])
    best = {name: getattr(chosen, name) for name in TUNED_FIELDS}
    rows = retrieval.evaluate(
        dataset, embedder, settings, {"default": {}, "tuned": best}, baselines=False
    )
    return Tuned(dataset.name, best, ranked, {row.recommender: row.as_dict() for row in rows})


def write(tuned: Tuned, folder: Path) -> tuple[Path, Path]:
    """``tuned.env`` (the settings, for MARQUEE_SETTINGS_FILE) and ``tune.json`` (all of it)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings_file = folder / "tuned.env"
    header = f"# Retrieval settings tuned on '{tuned.dataset}' by `marquee eval tune`."
    settings_file.write_text("\n".join([header, *tuned.settings_lines()]) + "\n")
    report = folder / "tune.json"
    report.write_text(json.dumps(tuned.as_dict(), indent=2))
    return settings_file, report
