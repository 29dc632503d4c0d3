"""Best-of-n: of a banner's samples that passed the guards, the one to serve, and why.

Every sample that reaches this point is safe: the guards refused the rest. What is left is
choosing the best copy the way a marketer would read it: about this shopper, about the
products it shows, not what the shopper was shown last time, filling its fields well, with no
soft findings. Each part is a number in [0, 1] kept on the banner (``Banner.choice``), so the
studio preview can show why a sample won. The embedder is the one retrieval already loaded:
scoring four samples is one small batch through it.

Copy that is no closer to the products it shows than to the catalog at large is about nothing
in particular ("The Ultimate Shopping Experience"): it gets the soft finding ``off_topic``, so
it loses to any sample that is about its products. A lone sample (best-of-1) is served with
the finding on it. Every banner that passed the guards keeps its scores, so the CMS, the eval
and the studio read them per banner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.domain import CopyScore
from app.generation.schemas import BannerCopy, SchemaSpec
from app.guards import GuardResult
from app.retrieval.embedder import Embedder


@dataclass(frozen=True)
class ChoiceWeights:
    """How much each part counts. Relevance and personalization lead (what the copy is
    about): relevance counts by how much closer the copy is to its products than to the
    catalog at large, which is what makes it about them. Novelty and length break ties
    between samples that are equally on topic. A soft finding costs more than any plausible
    difference in the parts, so a clean sample wins over one that leans on the prompt's
    phrasing or is off topic."""

    personal: float = 0.3
    relevance: float = 0.4  # of relevance beyond the baseline (below)
    novelty: float = 0.2
    length: float = 0.1
    soft_penalty: float = 0.15  # per finding


# A field filled to less than this share of its cap reads as a stub ("Shop now"), above the
# second share it is close to the grammar's cut.
GOOD_FILL = (0.3, 0.85)


@dataclass(frozen=True)
class Sample:
    """A sample that passed the guards: its position in the round and the guards' verdict."""

    number: int
    verdict: GuardResult
    shown_rows: Sequence[int]  # the catalog rows of the products it shows

    @property
    def copy(self) -> BannerCopy:
        assert self.verdict.copy is not None, "only copy that passed is chosen among"
        return self.verdict.copy


class Copy(Protocol):
    """Model output or a finished banner: both have these."""

    headline: str
    subheadline: str


def copy_text(copy: Copy) -> str:
    """What the copy says, for embedding: headline and subheadline (a CTA is "Shop now")."""
    return f"{copy.headline}. {copy.subheadline}"


def length_fit(copy: BannerCopy, spec: SchemaSpec) -> float:
    """1 when headline and subheadline each fill between 30 % and 85 % of their caps,
    falling linearly to 0 at empty and at the cap; the mean of the two."""
    low, high = GOOD_FILL
    fits = []
    for text, cap in ((copy.headline, spec.headline_max), (copy.subheadline, spec.subheadline_max)):
        share = len(text) / cap
        if share < low:
            fits.append(share / low)
        elif share <= high:
            fits.append(1.0)
        else:
            fits.append(max(0.0, (1.0 - share) / (1.0 - high)))
    return float(np.mean(fits))


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: np.ndarray = rows / np.where(norms == 0, 1.0, norms)
    return unit


def copy_relevance(copy_vector: np.ndarray, item_vectors: np.ndarray, rows: Sequence[int]) -> float:
    """How much the copy is about the products it shows: the cosine of its vector to the
    mean of theirs (the rows of ``item_vectors``)."""
    return float(_unit(copy_vector) @ _unit(item_vectors[list(rows)].mean(axis=0)))


def catalog_relevance(copy_vector: np.ndarray, catalog_vector: np.ndarray) -> float:
    """How close the copy is to the catalog at large (``CandidateSelector.catalog_vector``):
    the baseline its relevance must beat, or it is off topic."""
    return float(_unit(copy_vector) @ catalog_vector)


OFF_TOPIC = "off_topic"
# A headline that is only a category's name counts as three soft findings: it says nothing, and
# the full suite holds it to 3 % of served banners, so it must lose to a sample with two other
# weaknesses (a subheadline without a verb that names nothing shown) as well as to a clean one.
# At two, with eight samples a banner, 9.7 % of the full suite's banners were bare: a headline
# that is the theme's name scores high on relevance and ties with such a sample.
BARE_HEADING_UNITS = 3.0


def _penalty_units(finding: str) -> float:
    return BARE_HEADING_UNITS if finding.startswith("bare_heading:") else 1.0


def off_topic_in(findings: Sequence[str]) -> bool:
    """Whether a sample's soft findings say it is off topic."""
    return any(finding.startswith(f"{OFF_TOPIC}:") for finding in findings)


def off_topic(relevance: float, baseline: float) -> str | None:
    """The soft finding of copy no closer to its products than to the catalog at large."""
    if relevance > baseline:
        return None
    return (
        f"{OFF_TOPIC}: no closer to its products ({relevance:.2f}) "
        f"than to the catalog at large ({baseline:.2f})"
    )


class CopyChooser:
    def __init__(self, embedder: Embedder, weights: ChoiceWeights | None = None) -> None:
        self.embedder = embedder
        self.weights = weights or ChoiceWeights()

    def rank(
        self,
        samples: Sequence[Sample],
        *,
        spec: SchemaSpec,
        item_vectors: np.ndarray,
        catalog_vector: np.ndarray,
        shopper_vector: np.ndarray | None,
        recent_copy: Sequence[str] = (),
        theme: str | None = None,
    ) -> list[CopyScore]:
        """Every sample's scores, best first; the first is marked chosen. Ties go to the
        earlier sample, so the same samples always give the same choice.

        ``item_vectors``: the catalog's embeddings (rows as in ``Sample.shown_rows``).
        ``catalog_vector``: the catalog at large (``CandidateSelector.catalog_vector``).
        ``shopper_vector``: None for a shopper retrieval knows nothing about (every sample then
        scores 0 there: it decides nothing).
        ``recent_copy``: what the shopper's latest banners said (``copy_text`` of each).
        ``theme``: a themed set's theme name, which each sample is scored against (reported,
        not weighed: relevance to the products already says it)."""
        if not samples:
            return []
        texts = [copy_text(s.copy) for s in samples]
        themes = [theme] if theme else []
        vectors = _unit(np.asarray(self.embedder.encode([*texts, *themes, *recent_copy])))
        copies = vectors[: len(texts)]
        theme_vector = vectors[len(texts)] if themes else None
        recent = vectors[len(texts) + len(themes) :]
        weights = self.weights
        scores = []
        for sample, vector in zip(samples, copies, strict=True):
            personal = 0.0 if shopper_vector is None else float(vector @ _unit(shopper_vector))
            relevance = copy_relevance(vector, item_vectors, sample.shown_rows)
            baseline = catalog_relevance(vector, catalog_vector)
            soft = list(sample.verdict.notes)
            if (finding := off_topic(relevance, baseline)) is not None:
                soft.append(finding)
            novelty = 1.0 - float(np.max(recent @ vector)) if len(recent) else 1.0
            length = length_fit(sample.copy, spec)
            parts = {
                "personal": max(0.0, personal),
                "relevance": max(0.0, relevance),
                "novelty": min(1.0, max(0.0, novelty)),
                "length": length,
            }
            # Relevance counts as far as it beats the catalog at large: copy that would fit
            # any products ("The ultimate shopping experience") is close to these too.
            total = (
                weights.personal * parts["personal"]
                + weights.relevance * max(0.0, relevance - baseline)
                + weights.novelty * parts["novelty"]
                + weights.length * parts["length"]
                - weights.soft_penalty * sum(_penalty_units(finding) for finding in soft)
            )
            scores.append(
                CopyScore(
                    sample=sample.number,
                    chosen=False,
                    total=round(total, 4),
                    soft=soft,
                    baseline=round(baseline, 4),
                    theme=None if theme_vector is None else round(float(vector @ theme_vector), 4),
                    **{name: round(value, 4) for name, value in parts.items()},
                )
            )
        scores.sort(key=lambda score: (-score.total, score.sample))
        scores[0] = scores[0].model_copy(update={"chosen": True})
        return scores
