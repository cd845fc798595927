"""Next-item retrieval evaluation with full ranking over all items (no sampled negatives).

Online Retail (temporal): for the test split, a customer's history is every purchase before
valid_end (train + valid), the relevant items are those bought in the test window; for valid, the
history is the training window. With exclude_history (default), items bought before are neither
ranked nor relevant: the task is discovering new items, which text can help with.
UniSRec/RecBole benchmarks (leave-one-out): each test row's history list and its one next item.

Each encoder is scored with three user queries: the encoded history sentence, the mean and the
recency-weighted mean of the history's item vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plmrec.data.prepare import window_rows
from plmrec.finetune import pairs
from plmrec.finetune.embed import build_index, encode_texts, user_vectors
from plmrec.ranking import ranking_metrics

QUERY_KINDS = ("sentence", "mean", "recency")
REPORTED = ("recall", "ndcg")


@dataclass
class Queries:
    users: list
    histories: list[list[int]]  # item rows, oldest first
    relevant: list[set[int]]

    def __len__(self) -> int:
        return len(self.users)


def temporal_queries(
    prepared: pd.DataFrame, item_row: dict[str, int], split: str = "test", *, exclude_history: bool = True
) -> Queries:
    past, future = window_rows(prepared, split)
    targets = future.groupby("CustomerID")["StockCode"].agg(lambda s: {str(c) for c in s})
    users, histories, relevant = [], [], []
    for customer, codes in pairs.customer_histories(past):
        if customer not in targets.index:
            continue
        history = [item_row[c] for c in codes if c in item_row]
        wanted = {item_row[c] for c in targets[customer] if c in item_row}
        if exclude_history:
            wanted -= set(history)
        if history and wanted:
            users.append(customer)
            histories.append(history)
            relevant.append(wanted)
    return Queries(users, histories, relevant)


def seqrec_queries(split_frame: pd.DataFrame, max_users: int | None = None, seed: int = 0) -> Queries:
    frame = split_frame
    if max_users and len(frame) > max_users:
        frame = frame.sample(n=max_users, random_state=seed).sort_index()
    histories = [distinct_history(h) for h in frame["history"]]
    return Queries(frame["user"].tolist(), histories, [{int(t)} for t in frame["target"]])


def distinct_history(items: list[int]) -> list[int]:
    """Distinct items, each at its latest position."""
    return [int(i) for i in pairs.history_before(list(items))]


def score_encoder(
    model,
    item_texts: list[str],
    queries: Queries,
    *,
    ks: list[int],
    history_length: int,
    half_life: float,
    exclude_history: bool,
    batch_size: int = 128,
    index_kind: str = "exact",
    kinds: tuple[str, ...] = QUERY_KINDS,
    template: str = "plain",
    item_vectors: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per query kind (of `kinds`) for one encoder; item vectors are encoded once (or given:
    `item_vectors`, this model's vectors of `item_texts`), history sentences only when the sentence query
    is asked for."""
    start = time.perf_counter()
    items = encode_texts(model, item_texts, batch_size) if item_vectors is None else item_vectors
    built = {}
    if "sentence" in kinds:
        sentences = [
            pairs.render_history([item_texts[i] for i in h], history_length, template) for h in queries.histories
        ]
        built["sentence"] = encode_texts(model, sentences, batch_size)
    encode_s = time.perf_counter() - start
    built["mean"], built["recency"] = user_vectors(queries.histories, items, half_life)
    index = build_index(items, index_kind)
    exclude = queries.histories if exclude_history else None
    out = {}
    for kind in (k for k in QUERY_KINDS if k in kinds):
        top, _ = index.search(built[kind], max(ks), exclude)
        out[kind] = ranking_metrics(top, queries.relevant, ks)
    out["_timing"] = {
        "encode_seconds": round(encode_s, 2),
        "items": len(item_texts),
        "queries": len(queries),
        "items_encoded": item_vectors is None,
    }
    return out


def results_table(results: dict[str, dict], ks: list[int]) -> pd.DataFrame:
    """One row per (encoder, query kind): Recall@K and NDCG@K for each K, plus the query count."""
    rows = []
    for encoder, by_kind in results.items():
        for kind in (k for k in QUERY_KINDS if k in by_kind):  # the kinds scored (retrieval.query_kinds)
            m = by_kind[kind]
            rows.append(
                {
                    "encoder": encoder,
                    "query": kind,
                    **{f"{name}@{k}": round(m[f"{name}@{k}"], 4) for k in ks for name in REPORTED},
                    "queries": m["queries"],
                }
            )
    return pd.DataFrame(rows)
