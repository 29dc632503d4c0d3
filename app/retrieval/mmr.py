"""Maximal Marginal Relevance: trade relevance against similarity to what is already picked."""

from __future__ import annotations

import numpy as np


def mmr(
    relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float
) -> tuple[list[int], list[float]]:
    """Pick ``k`` positions of ``relevance`` greedily; returns (positions, mmr scores).

    score(i) = lam * relevance[i] - (1 - lam) * max_{j picked} cos(v_i, v_j).
    ``lam = 1`` is plain ranking by relevance; lower values favour variety.
    """
    count = len(relevance)
    k = min(k, count)
    if k <= 0:
        return [], []
    similarity = vectors @ vectors.T
    picked: list[int] = []
    scores: list[float] = []
    closest = np.full(count, -np.inf)  # max similarity to anything picked so far
    available = np.ones(count, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        score = lam * relevance - (1.0 - lam) * penalty
        score = np.where(available, score, -np.inf)
        best = int(np.argmax(score))
        picked.append(best)
        scores.append(float(score[best]))
        available[best] = False
        closest = np.maximum(closest, similarity[best])
    return picked, scores
