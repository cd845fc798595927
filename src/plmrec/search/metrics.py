"""Search metrics with one relevant item per query, from its 1-based rank (inf: not retrieved).

NDCG@K as RecBole computes it for one relevant item: 1 / log2(rank + 1) when rank <= K, else 0.
Recall@K: 1 when rank <= K. MRR: 1 / rank when rank <= depth (the candidates each ranker returns),
else 0, so every ranker is cut at the same depth. Ties count against the target (`target_ranks`)."""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target among all columns: 1 + items scoring higher or equal (itself excluded)."""
    own = scores[np.arange(len(targets)), targets]
    return (scores >= own[:, None]).sum(axis=1).astype(np.float64)


def search_metrics(ranks: np.ndarray, ks: list[int], *, depth: int) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 1), 0.0).mean())
        out[f"recall@{k}"] = float(hit.mean())
    out["mrr"] = float(np.where(ranks <= depth, 1.0 / ranks, 0.0).mean())
    out["queries"] = len(ranks)
    return out


def metric_name(name: str) -> str:
    """`ndcg@100` -> `ndcg_at_100`, for MLflow and KFP metric names."""
    return name.replace("@", "_at_")
