"""Retrieval for users with several vectors: an item's score is max_c cos(u_c, v_j), so one item index
serves all C vectors. Each u_c is searched for its own top K; the union, ranked by the max, holds the
exact top K (an item in the top K by max is in the top K of the c that attains its max), so the
answer equals brute force with the exact index and inherits faiss's approximation with faiss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from plmrec.ranking import ranking_metrics
from plmrec.usermodel.objective import pad_batch


def search_max(index, users: np.ndarray, k: int, *, exclude: list[list[int]] | None = None):
    """Top-k item rows and max-over-c scores for users (U, C, w) against `index`
    (plmrec.finetune.embed.ExactIndex or FaissIndex); ties go to the lower item row."""
    n_users, c, w = users.shape
    k = min(k, len(index))
    if getattr(index, "kind", None) == "exact":
        return index.search(users, k, exclude)  # the max over c in one product per chunk
    flat_exclude = [e for e in exclude for _ in range(c)] if exclude is not None else None
    ids, scores = index.search(users.reshape(n_users * c, w), k, flat_exclude)
    ids, scores = ids.reshape(n_users, c * k), scores.reshape(n_users, c * k)
    out_ids = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    for u in range(n_users):
        best: dict[int, float] = {}
        for i, s in zip(ids[u], scores[u]):
            if i >= 0 and s > best.get(int(i), -np.inf):
                best[int(i)] = float(s)
        top = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for j, (i, s) in enumerate(top):
            out_ids[u, j], out_scores[u, j] = i, s
    return out_ids, out_scores


def search_with_offset(
    index, users: np.ndarray, k: int, *, items: np.ndarray, histories, offset: float, exclude=None
) -> np.ndarray:
    """Top-k item rows by max_c cos, plus `offset` for the items of each user's own history (the
    model's learned repeat offset): the index's top k + h (h: the longest history) without the
    history items, which can hold every other item of the answer, merged with the history items'
    exact scores plus the offset. Exact with the exact index, for either sign of `offset`."""
    n_users = len(users)
    extra = max((len(h) for h in histories), default=0)
    ids, scores = search_max(index, users, k + extra, exclude=exclude)
    out = np.full((n_users, min(k, len(index))), -1, dtype=np.int64)
    for u in range(n_users):
        own = {int(i) for i in histories[u]} - ({int(i) for i in exclude[u]} if exclude is not None else set())
        ranked = [(float(s), int(i)) for i, s in zip(ids[u], scores[u]) if i >= 0 and int(i) not in own]
        if own:
            rows = np.fromiter(sorted(own), dtype=np.int64)
            ranked += [(float(s) + offset, int(i)) for i, s in zip(rows, (users[u] @ items[rows].T).max(0))]
        ranked.sort(key=lambda t: (-t[0], t[1]))
        top = [i for _, i in ranked[: out.shape[1]]]
        out[u, : len(top)] = top
    return out


@dataclass
class UserQueries:
    """Sequences to encode (item rows oldest first, their time buckets) and what each user bought next."""

    users: list
    sequences: list[np.ndarray]
    buckets: list[np.ndarray]
    relevant: list[set[int]]
    exclude: list[list[int]] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.users)


@torch.no_grad()
def encode_users(model, sequences: list[np.ndarray], buckets: list[np.ndarray], *, batch_size: int = 512) -> np.ndarray:
    """(U, C', w) normalised user vectors; an empty sequence gives the model's answer for no history."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        seq, buck = pad_batch(
            sequences[start : start + batch_size],
            buckets[start : start + batch_size],
            pad_index=model.pad_index,
            max_length=model.spec.max_length,
        )
        out.append(model.user_vectors(seq.to(device), buck.to(device)).float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.spec.n_user_vectors, model.spec.width), dtype=np.float32)
    return np.concatenate(out)


@torch.no_grad()
def encode_items(model) -> np.ndarray:
    was_training = model.training
    model.eval()
    vectors = model.item_vectors().float().cpu().numpy()
    model.train(was_training)
    return vectors


def evaluate(model, queries: UserQueries, ks: list[int], *, index_kind: str = "exact") -> dict[str, float]:
    """Recall and NDCG at each K, full ranking over every item (max over the user's vectors)."""
    from plmrec.finetune.embed import build_index

    items = encode_items(model)
    users = encode_users(model, queries.sequences, queries.buckets)
    index = build_index(items, index_kind)
    if model.repeat is not None:
        top = search_with_offset(
            index,
            users,
            max(ks),
            items=items,
            histories=[s[-model.spec.max_length :] for s in queries.sequences],  # what the model reads
            offset=float(model.repeat.detach()),
            exclude=queries.exclude,
        )
    else:
        top, _ = search_max(index, users, max(ks), exclude=queries.exclude)
    return ranking_metrics(top, queries.relevant, ks, names=("recall", "ndcg"))


def customer_sequences(model, rows, *, cutoff) -> dict:
    """customer -> (item rows, time buckets) of their purchases before `cutoff` (`rows`: purchases with
    item rows as `item`), shaped for `model` (its sequence length and time buckets)."""
    from plmrec.usermodel.sequences import sequences_before

    spec = model.spec
    return sequences_before(rows, cutoff, max_length=spec.max_length, buckets=spec.time_buckets)


def customer_vectors(model, seqs: dict, customers=None) -> tuple[list, np.ndarray]:
    """(customers, their (U, C', w) vectors) from `seqs` (customer_sequences); `customers` defaults to
    every customer in it, and one without a sequence gets the model's answer for no history."""
    customers = sorted(seqs) if customers is None else list(customers)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    chosen = [seqs.get(c, empty) for c in customers]
    return customers, encode_users(model, [s for s, _ in chosen], [b for _, b in chosen])
