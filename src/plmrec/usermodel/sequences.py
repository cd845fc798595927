"""Training sequences and evaluation queries for the user model.

Leave-one-out data (UniSRec/RecBole): a training example is a history and the next item; valid and
test queries are the benchmark's own rows (history, next item), history items not masked.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from plmrec.data.seqrec import SeqRecDataset
from plmrec.usermodel.objective import example
from plmrec.usermodel.retrieval import UserQueries


def id_vocabulary(purchases, n_items: int, top: int) -> np.ndarray:
    """Item row -> id-embedding row: the `top` most bought items (in `purchases`, training rows
    only) get 1..top by rank, every other item shares 0."""
    counts = Counter(int(i) for i in purchases)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))[:top]
    ids = np.zeros(n_items, dtype=np.int64)
    ids[np.asarray(ranked, dtype=np.int64)] = np.arange(1, len(ranked) + 1)
    return ids


def leave_one_out(ds: SeqRecDataset, *, max_length: int) -> tuple[list[np.ndarray], UserQueries, UserQueries]:
    """(training examples, valid queries, test queries); a training history is cut to its newest
    `max_length` items, its target is the item after it."""
    train = ds.splits["train"]
    examples = [example(h[-max_length:], targets=[t]) for h, t in zip(train["history"], train["target"])]

    def queries(split: str) -> UserQueries:
        frame = ds.splits[split]
        seqs = [np.asarray(h[-max_length:], dtype=np.int64) for h in frame["history"]]
        return UserQueries(
            users=frame["user"].tolist(),
            sequences=seqs,
            buckets=[np.zeros(len(s), dtype=np.int64) for s in seqs],
            relevant=[{int(t)} for t in frame["target"]],
        )

    return examples, queries("valid"), queries("test")


def training_purchases(ds: SeqRecDataset) -> list[int]:
    """Items bought in the training part, one entry per purchase: each user's valid history (the
    benchmark keeps its newest 50 items; the valid and test targets are left out)."""
    valid = ds.splits["valid"]
    return [i for h in valid["history"] for i in h]


# ---------------------------------------------------------------------------- Online Retail windows
def time_bucket(days: np.ndarray, buckets: int) -> np.ndarray:
    """Days before the cut-off -> 1 + floor(log2(1 + days)), capped at `buckets` (0 is the CLS tokens'; a
    model without time buckets, `buckets` 0, gets 0 everywhere)."""
    days = np.maximum(np.asarray(days, dtype=np.float64), 0.0)
    return np.minimum(1 + np.floor(np.log2(1.0 + days)), buckets).astype(np.int64)


def sequences_before(rows: pd.DataFrame, cutoff: pd.Timestamp, *, max_length: int, buckets: int) -> dict:
    """customer -> (item rows oldest first, each distinct item at its latest purchase, time buckets)."""
    before = rows[rows["InvoiceDate"] < cutoff].sort_values(["InvoiceDate", "InvoiceNo"], kind="stable")
    before = before.drop_duplicates(["CustomerID", "item"], keep="last")
    out = {}
    for customer, user in before.groupby("CustomerID", sort=True):
        user = user.tail(max_length)
        days = (cutoff - user["InvoiceDate"]).dt.total_seconds().to_numpy() / 86400.0
        out[customer] = (user["item"].to_numpy(np.int64), time_bucket(days, buckets))
    return out


def _items_in(rows: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    window = rows[(rows["InvoiceDate"] >= start) & (rows["InvoiceDate"] < end)]
    return {c: set(g["item"].tolist()) for c, g in window.groupby("CustomerID", sort=True)}


def with_item_rows(prepared: pd.DataFrame, item_row: dict[str, int]) -> pd.DataFrame:
    """Customer purchases (known customers, catalogue items) with the item's row as `item`."""
    rows = prepared[prepared["CustomerID"].notna()].copy()
    rows["item"] = rows["StockCode"].astype(str).map(item_row)
    rows = rows[rows["item"].notna()]
    rows["item"] = rows["item"].astype(np.int64)
    order = ["position"] if "position" in rows else []  # leave-one-out tables: the order within a history
    return rows[["CustomerID", "InvoiceNo", "InvoiceDate", "item", "split", *order]]


def window_examples(
    rows: pd.DataFrame,
    *,
    end: pd.Timestamp,
    horizon: pd.Timedelta,
    cutoffs: int,
    max_length: int,
    buckets: int,
) -> list[np.ndarray]:
    """Training examples from rows strictly before `end`: for cut-offs end - horizon, end - 2 horizon,
    ... each customer's sequence before the cut-off and the items it bought in the next `horizon`
    (which ends by `end`, so nothing after `end` is read)."""
    rows = rows[rows["InvoiceDate"] < end]
    examples = []
    for k in range(1, cutoffs + 1):
        cutoff = end - k * horizon
        if cutoff <= rows["InvoiceDate"].min():
            break
        seqs = sequences_before(rows, cutoff, max_length=max_length, buckets=buckets)
        for customer, items in _items_in(rows, cutoff, cutoff + horizon).items():
            if customer in seqs:
                seq, buck = seqs[customer]
                examples.append(example(seq, buckets=buck, targets=sorted(items)))
    return examples


def window_queries(
    rows: pd.DataFrame,
    *,
    cutoff: pd.Timestamp,
    end: pd.Timestamp,
    max_length: int,
    buckets: int,
    exclude_history: bool,
) -> UserQueries:
    """Sequences before `cutoff` and the items bought in [cutoff, end); with exclude_history, items
    bought before are neither relevant nor ranked (only new items count)."""
    seqs = sequences_before(rows, cutoff, max_length=max_length, buckets=buckets)
    bought = rows[rows["InvoiceDate"] < cutoff].groupby("CustomerID", sort=False)["item"].agg(set)
    users, sequences, bucket_lists, relevant, exclude = [], [], [], [], []
    for customer, items in _items_in(rows, cutoff, end).items():
        if customer not in seqs:
            continue
        seen = bought[customer]
        wanted = items - seen if exclude_history else items
        if not wanted:
            continue
        seq, buck = seqs[customer]
        users.append(customer)
        sequences.append(seq)
        bucket_lists.append(buck)
        relevant.append(wanted)
        exclude.append(sorted(seen))
    return UserQueries(users, sequences, bucket_lists, relevant, exclude if exclude_history else None)


# ---------------------------------------------------------------------------- leave-one-out tables
def seqrec_from_rows(rows: pd.DataFrame, items: pd.DataFrame, *, name: str = "prepared") -> SeqRecDataset:
    """A leave-one-out prepared table (rows from `with_item_rows`, split per user: train..., valid,
    test) as the benchmark's files shape it: a train row per training interaction after the first
    (the interactions before it, the item), the valid row (every train item, the valid item) and the
    test row (train and valid items, the test item); histories keep their newest 50, as UniSRec's do."""
    from plmrec.data.prepare import history_order

    rows = rows.assign(_row=np.arange(len(rows))).sort_values(
        ["CustomerID", *history_order(rows), "_row"], kind="stable"
    )
    out = {s: {"user": [], "history": [], "target": []} for s in ("train", "valid", "test")}
    for user, frame in rows.groupby("CustomerID", sort=True):
        sequence, parts = frame["item"].to_list(), frame["split"].to_list()
        for t in range(1, len(sequence)):
            part = out[parts[t]]
            part["user"].append(user)
            part["history"].append(sequence[max(0, t - 50) : t])
            part["target"].append(int(sequence[t]))
    return SeqRecDataset(name=name, items=items, splits={s: pd.DataFrame(v) for s, v in out.items()})
