"""BM25 over item text with bm25s (Lucene's variant: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
term weight tf / (tf + k1 * (1 - b + b * dl / avgdl))), English stop words and Snowball stemming.

The index saves to a directory (bm25s's files plus the tokenizer's vocabulary and settings), so a
serving bundle can carry it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from plmrec.errors import BundleError

SETTINGS_FILE = "plmrec_bm25.json"


def _tokenizer(stemmer: str | None, stopwords: str | None):
    from bm25s.tokenization import Tokenizer

    stem = None
    if stemmer:
        import Stemmer

        stem = Stemmer.Stemmer(stemmer).stemWord
    return Tokenizer(stemmer=stem, stopwords=stopwords or [])


class Bm25Index:
    """`scores` gives every item's BM25 score for each query; `top` the best k."""

    def __init__(
        self,
        texts: list[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
    ):
        import bm25s

        self.settings = {"k1": k1, "b": b, "stemmer": stemmer, "stopwords": stopwords}
        self.tokenizer = _tokenizer(stemmer, stopwords)
        ids = self.tokenizer.tokenize(list(texts), update_vocab=True, return_as="ids", show_progress=False)
        self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.retriever.index(ids, show_progress=False)
        self.n_items = len(texts)

    def _query_ids(self, queries: list[str]) -> list[list[int]]:
        return self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)

    def scores(self, queries: list[str], chunk: int = 256) -> Iterator[np.ndarray]:
        """[len(chunk), n_items] float32 score blocks, in query order. A word the items never use scores 0."""
        for start in range(0, len(queries), chunk):
            ids = self._query_ids(queries[start : start + chunk])
            yield np.stack([self._scores(q) for q in ids]).astype(np.float32, copy=False)

    def _scores(self, ids: list[int]) -> np.ndarray:
        if not ids:  # only stop words: nothing to match
            return np.zeros(self.n_items, dtype=np.float32)
        return self.retriever.get_scores([int(i) for i in ids])

    def top(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(item rows [Q, k], scores [Q, k]), best first; rows with score 0 (no shared word) are -1."""
        from plmrec.recsys.recommend import top_k

        k = min(k, self.n_items)
        rows, scores = [], []
        for block in self.scores(queries):
            best = top_k(block, k)  # by score, ties by item row
            value = np.take_along_axis(block, best, axis=1)
            rows.append(np.where(value > 0, best, -1))
            scores.append(value)
        return np.concatenate(rows), np.concatenate(scores)

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # indexed from token ids, bm25s keeps an id -> id vocabulary that its JSON writer refuses (int keys);
        # queries are token ids from our tokenizer's vocabulary, so the retriever's copy is saved as text
        self.retriever.vocab_dict = {str(k): v for k, v in self.retriever.vocab_dict.items()}
        self.retriever.save(str(out), show_progress=False)
        self.tokenizer.save_vocab(str(out))
        (out / SETTINGS_FILE).write_text(json.dumps({**self.settings, "n_items": self.n_items}))

    @classmethod
    def load(cls, path: str | Path) -> Bm25Index:
        import bm25s

        path = Path(path)
        if not (path / SETTINGS_FILE).exists():
            raise BundleError(f"{path}: no BM25 index ({SETTINGS_FILE} missing); rebuild the bundle")
        settings = json.loads((path / SETTINGS_FILE).read_text())
        index = cls.__new__(cls)
        index.n_items = settings.pop("n_items")
        index.settings = settings
        index.tokenizer = _tokenizer(settings["stemmer"], settings["stopwords"])
        index.tokenizer.load_vocab(str(path))
        index.retriever = bm25s.BM25.load(str(path), show_progress=False, verbosity=0)
        return index
