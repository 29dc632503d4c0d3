"""Cold start by stated interests: does a shopper who only told us what they like get a
banner about it?

``eval/data/interests.yaml`` lists, per catalog, interests as shoppers write them and the
categories a merchandiser accepts for each ("interior design": Home Decor). Each becomes a
cold shopper with that one interest; the theme the hero (a themed template) picks for them is
right when it is one of those categories. Retrieval and theming only: no text is generated,
so this runs in the smoke suite too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from app.config import PROJECT_ROOT
from app.domain import Shopper
from app.pipeline import BannerRequest, Pipeline
from eval import metrics

LABELLED = PROJECT_ROOT / "eval" / "data" / "interests.yaml"
TEMPLATE = "hero_banner"


@dataclass(frozen=True)
class LabelledInterest:
    interest: str
    categories: tuple[str, ...]


def load(catalog: str, path: Path = LABELLED) -> list[LabelledInterest]:
    """The labelled interests of one catalog ("demo", "clothing")."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [
        LabelledInterest(str(row["interest"]), tuple(str(c) for c in row["categories"]))
        for row in data.get(catalog, [])
    ]


def theme_accuracy(
    pipeline: Pipeline, labelled: list[LabelledInterest], template: str = TEMPLATE
) -> dict[str, Any]:
    """The share of cold shoppers (one labelled interest each) whose themed banner takes a
    category that interest names, with its bootstrap interval, and the misses to read."""
    hits: list[float] = []
    misses: list[dict[str, str]] = []
    for number, row in enumerate(labelled):
        shopper = Shopper(id=f"eval-interest-{number}", interests=(row.interest,))
        prepared = pipeline.prepare(BannerRequest(shopper=shopper, template=template))
        theme = prepared.selection.theme
        took = theme.name if theme is not None else ""
        hit = took in row.categories
        hits.append(float(hit))
        if not hit:
            misses.append(
                {"interest": row.interest, "theme": took, "wanted": ", ".join(row.categories)}
            )
    return {
        "interests": len(hits),
        "accuracy": {
            "mean": float(np.mean(hits)) if hits else 0.0,
            "ci": list(metrics.bootstrap_ci(hits)),
        },
        "misses": misses,
    }
