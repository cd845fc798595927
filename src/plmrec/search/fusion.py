"""Reciprocal rank fusion (Cormack et al. 2009) of two rankings, weighted:
score(item) = w / (k + rank_a) + (1 - w) / (k + rank_b), ranks from 1; an item absent from a list
adds nothing from it. Ties go to the lower item row, so the fused order is deterministic."""

from __future__ import annotations

import numpy as np


def fuse(first: np.ndarray, second: np.ndarray, *, weight: float = 0.5, k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """One query: candidate rows best-first (-1 = no candidate) of two rankers -> (fused rows, scores)."""
    scores: dict[int, float] = {}
    for rows, share in ((first, weight), (second, 1.0 - weight)):
        for rank, row in enumerate(rows, start=1):
            if row >= 0 and share > 0:
                scores[int(row)] = scores.get(int(row), 0.0) + share / (k + rank)
    if not scores:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    rows = np.fromiter(scores, dtype=np.int64)
    values = np.fromiter(scores.values(), dtype=np.float64)
    order = np.lexsort((rows, -values))
    return rows[order], values[order]


def fused_ranks(
    first: np.ndarray, second: np.ndarray, targets: np.ndarray, *, weight: float = 0.5, k: int = 60
) -> np.ndarray:
    """Per query, the target's 1-based rank in the fused list (inf when neither ranker retrieved it)."""
    ranks = np.full(len(targets), np.inf)
    for q, target in enumerate(targets):
        rows, _ = fuse(first[q], second[q], weight=weight, k=k)
        hit = np.flatnonzero(rows == target)
        if hit.size:
            ranks[q] = hit[0] + 1
    return ranks
