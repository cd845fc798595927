"""Item and user embeddings for downstream stages, and nearest-neighbour search over items.

Tables (parquet): item_embeddings (StockCode, Description, embedding) and user_embeddings
(CustomerID, n_items, mean, recency, sentence). Vectors are L2-normalised float32, so the inner
product is the cosine similarity. Two indexes answer the same `search`: exact (torch matrix
products, the default) and faiss HNSW for large catalogues.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plmrec.errors import PlmrecError
from plmrec.finetune.pairs import render_history
from plmrec.vectors import normalise, stack


def encode_texts(model, texts: list[str], batch_size: int = 128, *, progress: bool = False) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in the input order."""
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    vecs = model.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=progress
    )
    return np.ascontiguousarray(vecs, dtype=np.float32)


def recency_weights(n: int, half_life: float) -> np.ndarray:
    """Weights for n purchases, oldest first: the newest weighs 1, halving every half_life items back."""
    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, age / half_life)


def user_vectors(
    histories: list[list[int]], item_vectors: np.ndarray, half_life: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and recency-weighted mean of each history's item vectors (item row indices, oldest first)."""
    dim = item_vectors.shape[1]
    mean = np.zeros((len(histories), dim), dtype=np.float32)
    recent = np.zeros_like(mean)
    for i, rows in enumerate(histories):
        if len(rows) == 0:
            continue
        vecs = item_vectors[np.asarray(rows)]
        mean[i] = vecs.mean(axis=0)
        w = recency_weights(len(rows), half_life)
        recent[i] = (w[:, None] * vecs).sum(axis=0) / w.sum()
    return normalise(mean), normalise(recent)


class ExactIndex:
    """Brute-force inner-product search, chunked over queries; optional per-query exclusions."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, chunk: int = 1024):
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        self.chunk = chunk

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(
        self, queries: np.ndarray, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows and scores per query, best first; ties go to the lower row index. Queries of
        shape (n, C, dim) are users with C vectors: an item scores its max over the C."""
        k = min(k, len(self))
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        ids, scores = [], []
        for start in range(0, len(q), self.chunk):
            chunk = q[start : start + self.chunk]
            s = chunk @ self.vectors.T if chunk.ndim == 2 else torch.einsum("bcw,nw->bcn", chunk, self.vectors).amax(1)
            if exclude is not None:
                for r, rows in enumerate(exclude[start : start + self.chunk]):
                    if len(rows):
                        s[r, torch.as_tensor(rows, dtype=torch.long)] = float("-inf")
            # stable descending sort: equal scores keep ascending item order
            top = torch.sort(s, dim=1, descending=True, stable=True)
            ids.append(top.indices[:, :k].numpy())
            scores.append(top.values[:, :k].numpy())
        if not ids:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(scores)


class FaissIndex:
    """Approximate search with a faiss HNSW graph (inner product); excluded rows are filtered after
    over-fetching. Needs `pip install faiss-cpu`."""

    kind = "faiss"

    def __init__(self, vectors: np.ndarray, m: int = 32, ef_search: int = 128):
        try:
            import faiss
        except ImportError:
            raise PlmrecError("retrieval.index is 'faiss' but faiss is not installed: pip install faiss-cpu") from None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efSearch = ef_search
        self.index.add(vectors)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(
        self, queries: np.ndarray, k: int, exclude: list[list[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(len(self), k + extra)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        for r in range(len(ids)):
            banned = set(exclude[r]) if exclude else set()
            keep = [(i, s) for i, s in zip(ids[r], scores[r]) if i >= 0 and i not in banned][:k]
            for j, (i, s) in enumerate(keep):
                out_ids[r, j], out_scores[r, j] = i, s
        return out_ids, out_scores


def build_index(vectors: np.ndarray, kind: str = "exact"):
    if kind == "exact":
        return ExactIndex(vectors)
    if kind == "faiss":
        return FaissIndex(vectors)
    raise PlmrecError(f"unknown index kind '{kind}' (expected exact or faiss)")


def item_table(codes: list[str], texts: list[str], vectors: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"StockCode": codes, "Description": texts, "embedding": list(vectors)})


def user_table(
    customers: list,
    histories: list[list[int]],
    item_vectors: np.ndarray,
    *,
    item_texts: list[str],
    model,
    history_length: int,
    half_life: float,
    template: str = "plain",
    batch_size: int = 128,
    sentences: bool = True,
) -> pd.DataFrame:
    """Per customer: mean and recency-weighted item vectors, and (with `sentences`: one encoding per
    customer) the encoded history sentence."""
    mean, recent = user_vectors(histories, item_vectors, half_life)
    table = pd.DataFrame(
        {"CustomerID": customers, "n_items": [len(h) for h in histories], "mean": list(mean), "recency": list(recent)}
    )
    if sentences:
        texts = [render_history([item_texts[i] for i in rows], history_length, template) for rows in histories]
        table["sentence"] = list(encode_texts(model, texts, batch_size))
    return table


def save_embeddings(
    out_dir: str | Path, items: pd.DataFrame, users: pd.DataFrame, *, index_kind: str, model_info: dict
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items.to_parquet(out / "item_embeddings.parquet", index=False)
    users.to_parquet(out / "user_embeddings.parquet", index=False)
    dim = len(items["embedding"].iloc[0]) if len(items) else 0
    (out / "index.json").write_text(
        json.dumps(
            {
                "kind": index_kind,
                "items": len(items),
                "dim": dim,
                "metric": "inner product of L2-normalised vectors (cosine)",
                **model_info,
            },
            indent=2,
        )
    )


def load_item_index(out_dir: str | Path):
    """The item table and its index as saved by save_embeddings."""
    out = Path(out_dir)
    items = pd.read_parquet(out / "item_embeddings.parquet")
    meta = json.loads((out / "index.json").read_text())
    return items, build_index(stack(items["embedding"]), meta["kind"])
