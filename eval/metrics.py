"""The metrics, as plain functions over plain values, each unit-tested on known inputs.

The claims check here is deliberately written apart from the pipeline's guards: it audits what
the guards let through, so a guard bug cannot hide itself.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from sacrebleu.metrics.bleu import BLEU

_WORD = re.compile(r"[a-z0-9']+")
# Anything a shopper would read as a figure: 20%, $19.99, 3x, 2-for-1, 50 off.
_FIGURE = re.compile(r"\d+(?:[.,]\d+)*")


# --- ranking ---------------------------------------------------------------------------------


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant items found in the first ``k``."""
    if not relevant:
        raise ValueError("recall needs at least one relevant item")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Binary-relevance NDCG: hits discounted by log2(rank + 1), over the ideal ranking."""
    if not relevant:
        raise ValueError("NDCG needs at least one relevant item")
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def reciprocal_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    """1 / rank of the first relevant item; 0 when none was ranked."""
    for i, item in enumerate(ranked):
        if item in relevant:
            return 1.0 / (i + 1)
    return 0.0


def coverage(lists: Iterable[Sequence[str]], catalog_size: int) -> float:
    """Share of the catalog recommended to anyone."""
    seen = {item for items in lists for item in items}
    return len(seen) / catalog_size if catalog_size else 0.0


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance between the items of one list (unit vectors)."""
    n = len(vectors)
    if n < 2:
        return 0.0
    similarity = vectors @ vectors.T
    pairs = similarity[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - pairs))


# --- copy ------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams over all n-grams, across every text (1.0: nothing repeats)."""
    grams = [gram for text in texts for gram in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU (Zhu et al. 2018): the mean BLEU of each text against all the others as its
    references; high means everyone got the same copy. sacrebleu's sentence BLEU (0–100, its
    13a tokenizer, effective order for short texts), so a figure is comparable with published
    ones and with any other sacrebleu run."""
    if len(texts) < 2:
        return 0.0
    scorer = BLEU(effective_order=True)
    scores = [
        scorer.sentence_score(text, [*texts[:i], *texts[i + 1 :]]).score
        for i, text in enumerate(texts)
    ]
    return float(np.mean(scores))


def invented_figures(copy: str, facts: str) -> list[str]:
    """Figures in the copy (numbers, prices, percentages) that the facts never state."""
    stated = {_canonical(f) for f in _FIGURE.findall(facts)}
    return [figure for figure in _FIGURE.findall(copy) if _canonical(figure) not in stated]


def _canonical(figure: str) -> str:
    plain = figure.replace(",", "")
    try:
        return format(float(plain), "g")
    except ValueError:
        return plain


def is_degenerate(text: str) -> bool:
    """Empty, a word three times running, a repeated phrase, or a run of one character."""
    tokens = words(text)
    if not tokens:
        return True
    if any(a == b == c for a, b, c in zip(tokens, tokens[1:], tokens[2:], strict=False)):
        return True
    if any(count > 1 for count in Counter(ngrams(tokens, 3)).values()):
        return True
    return re.search(r"(.)\1{4,}", text) is not None


def personalization_lift(copy_vectors: np.ndarray, interest_vectors: np.ndarray) -> list[float]:
    """Per shopper: similarity of their copy to their own interests minus the mean similarity
    to the other shoppers' interests. > 0 means the copy is about them, not about anyone."""
    similarity = copy_vectors @ interest_vectors.T
    n = len(similarity)
    if n < 2:
        return []
    own = np.diag(similarity)
    others = (similarity.sum(axis=1) - own) / (n - 1)
    return [float(v) for v in own - others]


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = lambda v: float(np.mean(v)),
    *,
    rounds: int = 2000,
    confidence: float = 0.95,
    seed: int = 7,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values``."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(data), size=(rounds, len(data)))
    stats = np.array([statistic(data[row]) for row in samples])
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, rounds: int = 2000, seed: int = 7
) -> tuple[float, float, float]:
    """Mean of b - a over paired observations (same shoppers), with a bootstrap 95 % interval."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    differences = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    low, high = bootstrap_ci(differences, rounds=rounds, seed=seed)
    return float(differences.mean()) if len(differences) else float("nan"), low, high


def unpaired_difference(
    a: Sequence[float], b: Sequence[float], *, rounds: int = 2000, seed: int = 7
) -> tuple[float, float, float]:
    """Mean of b minus mean of a over independent samples, with a bootstrap 95 % interval
    (each side resampled on its own)."""
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(first) or not len(second):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means_a = first[rng.integers(0, len(first), size=(rounds, len(first)))].mean(axis=1)
    means_b = second[rng.integers(0, len(second), size=(rounds, len(second)))].mean(axis=1)
    low, high = np.percentile(means_b - means_a, [2.5, 97.5])
    return float(second.mean() - first.mean()), float(low), float(high)


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """B vs A from the interval of (B - A): a winner only when the interval excludes 0."""
    if math.isnan(low) or (low <= 0 <= high):
        return "no clear difference"
    b_higher = low > 0
    return "B better" if b_higher == higher_is_better else "A better"
