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
    picked = (
        ranked_lists[np.asarray(used, dtype=np.int64)]
        if isinstance(ranked_lists, np.ndarray)
        else [ranked_lists[i] for i in used]
    )
    sizes = np.array([len(relevant_sets[i]) for i in used], dtype=np.int64)
    hits = _hit_matrix(picked, [relevant_sets[i] for i in used], sizes=sizes, k=max(ks, default=0))
    out: dict[str, float] = {}
    for name in names:
        for k in ks:
            if hits is None:  # ids that are not integers: the per-query definitions
                values = [METRICS[name](ranked_lists[i], relevant_sets[i], k) for i in used]
            else:
                values = _per_query(name, hits[:, :k], n_relevant=sizes, k=k)
            out[f"{name}@{k}"] = float(np.mean(values)) if len(values) else math.nan
    out["queries"] = len(used)
    out["queries_without_relevant"] = len(relevant_sets) - len(used)
    return out


def _hit_matrix(
    ranked_lists: Sequence[Sequence], relevant_sets: list[set], *, sizes: np.ndarray, k: int
) -> np.ndarray | None:
    """queries x k booleans: rank j of query i is a relevant item not ranked earlier (the `_hits` rule for
    every query at once; `sizes`: each query's number of relevant items); None when the ids are not
    integers."""
    n = len(ranked_lists)
    try:
        ranked = _as_matrix(ranked_lists, k)
        if ranked is None:
            return None
        rel_rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
        rel_items = np.fromiter((x for r in relevant_sets for x in r), dtype=np.int64, count=len(rel_rows))
    except (TypeError, ValueError, OverflowError):
        return None
    if ranked.shape[1] < k:
        ranked = np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)
    widest = int(sizes.max(initial=0))
    if n * k * widest <= 2**25:  # few relevant items per query: compare each rank with each of them
        padded = np.full((n, widest), np.iinfo(np.int64).min, dtype=np.int64)
        padded[rel_rows, np.arange(len(rel_rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)] = rel_items
        hits = (ranked[:, :, None] == padded[:, None, :]).any(axis=2)
    else:
        low = min(int(ranked.min(initial=0)), int(rel_items.min(initial=0)))
        width = max(int(ranked.max(initial=0)), int(rel_items.max(initial=0))) - low + 1
        keys = np.arange(n, dtype=np.int64)[:, None] * width + (ranked - low)  # (query, item) as one number
        hits = np.isin(keys, rel_rows * width + (rel_items - low))
    ordered = np.sort(ranked, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():  # duplicates count once
        hits &= _first_ranks(ranked)
    return hits


def _first_ranks(ranked: np.ndarray) -> np.ndarray:
    """True where an id appears in its row for the first time."""
    n, k = ranked.shape
    low = int(ranked.min(initial=0))
    width = int(ranked.max(initial=0)) - low + 1
    flat = (np.arange(n, dtype=np.int64)[:, None] * width + (ranked - low)).ravel()
    first = np.zeros(flat.size, dtype=bool)
    first[np.unique(flat, return_index=True)[1]] = True
    return first.reshape(n, k)


def _as_matrix(ranked_lists, k: int) -> np.ndarray | None:
    """The lists' first k ids as a queries x (<= k) int64 matrix, short lists padded with -1 (no
    candidate); None when an id is not an integer."""
    try:
        matrix = np.asarray(ranked_lists)
    except ValueError:  # lists of different lengths
        matrix = None
    if matrix is not None and matrix.ndim == 2 and np.issubdtype(matrix.dtype, np.integer):
        return matrix[:, :k].astype(np.int64)
    if matrix is not None and matrix.ndim == 2 and matrix.size:
        return None  # strings, floats: not item columns
    out = np.full((len(ranked_lists), k), -1, dtype=np.int64)
    for i, row in enumerate(ranked_lists):
        head = np.asarray(list(row)[:k])
        if head.size and not np.issubdtype(head.dtype, np.integer):
            return None
        out[i, : head.size] = head
    return out


def _per_query(name: str, hits: np.ndarray, *, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """One metric per query from its hit matrix (queries x k), summed rank by rank as the per-query
    functions sum, so both give the same floats."""
    found = hits.sum(axis=1)
    if name == "precision":
        return found / k
    if name == "recall":
        return found / n_relevant
    ranks = np.arange(1, k + 1)
    if name == "map":
        terms = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
        return np.cumsum(terms, axis=1)[:, -1] / np.minimum(n_relevant, k)
    discounts = np.array([1.0 / math.log2(rank + 1) for rank in ranks])  # math.log2: the same constants
    dcg = np.cumsum(np.where(hits, discounts, 0.0), axis=1)[:, -1]
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k) - 1]
    return dcg / ideal
