"""A C4-style search benchmark from review data that has item text.

Amazon-C4 was built from reviews: a review was rewritten into a request, and the reviewed item is
the answer. Here the request is the review itself (title + text, long reviews only, as C4's queries
average about 230 characters), the target is the reviewed item and the pool is every item with text
in the loaded data. Reviews are split by time: those before the valid cut-off may train a ranker
(BLaIR pairs); later ones become valid queries (choices) and the latest test queries (scored once).
A review on a cut-off's timestamp goes to the later part, so no query shares a moment with training.

Review data: Amazon 2018 or 2023 reviews with their metadata file (plmrec.data.amazon), or a
UCSD-style user-record sample (one JSON object per user: category, history and heldout reviews, each
with its product), given as a file or a directory of such files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plmrec.data.amazon import clean_text, item_text, iter_json_lines, load_items, load_reviews
from plmrec.errors import DataLoadError

SPLITS = ("valid", "test")
QUERY_COLUMNS = ["qid", "query", "item_id", "category", "timestamp"]


@dataclass
class SearchBenchmark:
    """Items (item_id, text, category), queries per split (qid, query, item_id, category, timestamp)
    and the reviews a ranker may train on (review_title, review_text, item_id, item_text, timestamp)."""

    name: str
    items: pd.DataFrame
    queries: dict[str, pd.DataFrame]
    training: pd.DataFrame
    cutoffs: dict[str, str] = field(default_factory=dict)

    def targets(self, split: str) -> np.ndarray:
        """Each query's item as a row of `items`."""
        row = pd.Series(np.arange(len(self.items)), index=self.items["item_id"])
        return row.loc[self.queries[split]["item_id"]].to_numpy()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "items": len(self.items),
            "training_reviews": len(self.training),
            **{f"{s}_queries": len(q) for s, q in self.queries.items()},
            "categories": int(self.items["category"].nunique()),
            **self.cutoffs,
        }


def _category_of(path: Path) -> str:
    stem = path.name.split(".")[0]
    for prefix in ("reviews_", "review_"):
        stem = stem.removeprefix(prefix)
    return stem.removesuffix("_5")


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")))
        if not files:
            raise DataLoadError(f"{path}: a directory with no .jsonl(.gz) or .json(.gz) files")
        return files
    return [path]


def _is_user_record(record: dict) -> bool:
    return "history" in record and "heldout" in record


def _user_records(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    reviews, items = [], []
    for path in paths:
        for chunk in iter_json_lines(path):
            for lineno, rec in enumerate(chunk, start=1):
                if not _is_user_record(rec):
                    raise DataLoadError(f"{path}: record {lineno} has no history/heldout; mixed formats in one source")
                for review in [*rec["history"], rec["heldout"]]:
                    product = review.get("product") or {}
                    reviews.append(
                        {
                            "user_id": rec["user_id"],
                            "item_id": review["parent_asin"],
                            "rating": review.get("rating"),
                            "review_title": clean_text(review.get("review_title")),
                            "review_text": clean_text(review.get("review_full") or review.get("review_excerpt")),
                            "timestamp": pd.to_datetime(review.get("timestamp_ms"), unit="ms"),
                            "category": rec.get("category", ""),
                        }
                    )
                    brand = clean_text(product.get("brand"))
                    items.append(
                        {
                            "item_id": review["parent_asin"],
                            "title": clean_text(product.get("title")),
                            "features": f"Brand: {brand}" if brand else "",
                            "description": "",
                            "categories": clean_text(product.get("main_category")),
                            "category": rec.get("category", ""),
                        }
                    )
    return pd.DataFrame(reviews), pd.DataFrame(items)


def load_review_data(
    reviews_path: str | Path, meta_path: str | Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reviews: user_id, item_id, rating, review_title, review_text, timestamp, category;
    items: item_id, text, category), duplicates dropped."""
    paths = _files(Path(reviews_path))
    first = next(iter_json_lines(paths[0], chunk_lines=1))[0]
    if _is_user_record(first):
        reviews, items = _user_records(paths)
    else:
        if meta_path is None:
            raise DataLoadError(f"{reviews_path}: Amazon review files need their metadata file (search.meta_path)")
        reviews = pd.concat([load_reviews(p).assign(category=_category_of(p)) for p in paths], ignore_index=True)
        items = load_items(meta_path).assign(category=_category_of(paths[0]) if len(paths) == 1 else "")
    items = items.assign(text=item_text(items)).drop_duplicates("item_id")
    items = items[items["text"].str.len() > 0][["item_id", "text", "category"]].reset_index(drop=True)
    reviews = reviews.dropna(subset=["timestamp"]).drop_duplicates(["user_id", "item_id", "timestamp"])
    return reviews.reset_index(drop=True), items


def cut_text(text: str, max_chars: int) -> str:
    """At most max_chars characters, cut at a word boundary."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


def review_benchmark(
    reviews: pd.DataFrame,
    items: pd.DataFrame,
    *,
    name: str,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    min_query_chars: int = 100,
    max_query_chars: int = 1000,
) -> SearchBenchmark:
    """Split reviews by time at the given fractions; later reviews on pool items become queries."""
    if reviews.empty or items.empty:
        raise DataLoadError(f"{name}: no reviews or no items with text to build a search benchmark from")
    ordered = reviews.sort_values("timestamp", kind="stable").reset_index(drop=True)
    n = len(ordered)
    at = ordered["timestamp"].iloc
    valid_from = at[min(n - 1, int(n * (1 - valid_fraction - test_fraction)))]
    test_from = at[min(n - 1, int(n * (1 - test_fraction)))]
    text = (ordered["review_title"].fillna("") + ". " + ordered["review_text"].fillna("")).str.strip(". ")
    in_pool = ordered["item_id"].isin(set(items["item_id"]))
    long = text.str.len() >= min_query_chars
    parts = {
        "valid": (ordered["timestamp"] >= valid_from) & (ordered["timestamp"] < test_from),
        "test": ordered["timestamp"] >= test_from,
    }
    queries = {}
    for split, mask in parts.items():
        rows = ordered[mask & in_pool & long]
        queries[split] = pd.DataFrame(
            {
                "qid": [f"{split}-{i}" for i in range(len(rows))],
                "query": text[rows.index].map(lambda t: cut_text(t, max_query_chars)).to_numpy(),
                "item_id": rows["item_id"].astype(str).to_numpy(),
                "category": rows["category"].astype(str).to_numpy(),
                "timestamp": rows["timestamp"].to_numpy(),
            }
        )
        if queries[split].empty:
            raise DataLoadError(
                f"{name}: no {split} queries (reviews of pool items with at least {min_query_chars} characters "
                f"after the cut-off); lower search.min_query_chars or give more data"
            )
    texts = items.set_index("item_id")["text"]
    training = ordered[ordered["timestamp"] < valid_from]
    training = training.assign(item_text=training["item_id"].map(texts).fillna(""))
    return SearchBenchmark(
        name=name,
        items=items.reset_index(drop=True),
        queries=queries,
        training=training.reset_index(drop=True),
        cutoffs={"valid_from": str(valid_from), "test_from": str(test_from)},
    )


def query_benchmark(
    queries: pd.DataFrame, items: pd.DataFrame, *, name: str, valid_fraction: float = 0.1, seed: int = 0
) -> SearchBenchmark:
    """A benchmark from ready-made queries (Amazon-C4: qid, query, item_id, category) and their pool: a
    seeded slice of the queries is the valid slice, the rest test; nothing to train on. Queries whose
    item is not in the pool are an error naming how many."""
    missing = ~queries["item_id"].isin(set(items["item_id"]))
    if missing.any():
        raise DataLoadError(f"{name}: {int(missing.sum())} of {len(queries)} queries name items not in the pool")
    order = np.random.default_rng(seed).permutation(len(queries))
    n_valid = max(1, int(round(len(queries) * valid_fraction)))
    frame = queries.assign(timestamp=pd.NaT)[QUERY_COLUMNS]
    split = {"valid": frame.iloc[np.sort(order[:n_valid])], "test": frame.iloc[np.sort(order[n_valid:])]}
    return SearchBenchmark(
        name=name,
        items=items[["item_id", "text", "category"]].reset_index(drop=True),
        queries={k: v.reset_index(drop=True) for k, v in split.items()},
        training=pd.DataFrame(columns=["review_title", "review_text", "item_id", "item_text", "timestamp"]),
    )
