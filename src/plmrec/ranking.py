"""Top-K ranking metrics with binary relevance.

Conventions (also in the README):
- `ranked` is a list best-first; it may be shorter than K (the missing ranks are misses) and may hold
  -1 for "no candidate". Duplicates count once, at their first rank.
- A query with no relevant item has no defined recall, AP or NDCG: the per-query functions return NaN
  and `ranking_metrics` leaves it out (and reports how many queries it used).
- P@K divides by K, R@K by the number of relevant items, AP@K by min(|relevant|, K); NDCG@K uses
  1/log2(rank + 1) gains and the ideal ranking of min(|relevant|, K) hits.
- Ties in scores are the ranker's business: ExactIndex breaks them by item order, deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

RANKING_METRICS = ("precision", "recall", "f1", "map", "ndcg")  # what a recommender is scored on, at each K


def _hits(ranked: Sequence, relevant: set, k: int) -> list[bool]:
    seen, out = set(), []
    for item in list(ranked)[:k]:
        hit = item in relevant and item not in seen
        seen.add(item)
        out.append(hit)
    return out


def precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    relevant = set(relevant)
    if not relevant:
        return math.nan
    return sum(_hits(ranked, relevant, k)) / k


def recall_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    relevant = set(relevant)
    if not relevant:
        return math.nan
    return sum(_hits(ranked, relevant, k)) / len(relevant)


def average_precision_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    relevant = set(relevant)
    if not relevant:
        return math.nan
    total, found = 0.0, 0
    for rank, hit in enumerate(_hits(ranked, relevant, k), start=1):
        if hit:
            found += 1
            total += found / rank
    return total / min(len(relevant), k)


def ndcg_at_k(ranked: Sequence, relevant: Iterable, k: int) -> float:
    relevant = set(relevant)
    if not relevant:
        return math.nan
    dcg = sum(1.0 / math.log2(rank + 1) for rank, hit in enumerate(_hits(ranked, relevant, k), start=1) if hit)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


METRICS = {"precision": precision_at_k, "recall": recall_at_k, "map": average_precision_at_k, "ndcg": ndcg_at_k}


def ranking_metrics(
    ranked_lists: Sequence[Sequence],
    relevant_sets: Sequence[Iterable],
    ks: Sequence[int],
    *,
    names: Sequence[str] = ("precision", "recall", "map", "ndcg"),
) -> dict[str, float]:
    """Means over the queries that have at least one relevant item, keyed `<metric>@<k>`, plus
    `queries` (used) and `queries_without_relevant` (left out)."""
    if len(ranked_lists) != len(relevant_sets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(relevant_sets)} relevant sets")
    relevant_sets = [set(r) for r in relevant_sets]
    used = [i for i, r in enumerate(relevant_sets) if r]
    out: dict[str, float] = {}
    for name in names:
        fn = METRICS[name]
        for k in ks:
            values = [fn(ranked_lists[i], relevant_sets[i], k) for i in used]
            out[f"{name}@{k}"] = float(np.mean(values)) if values else math.nan
    out["queries"] = len(used)
    out["queries_without_relevant"] = len(relevant_sets) - len(used)
    return out
