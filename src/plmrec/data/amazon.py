"""Amazon review data in both public schemas, read in chunks into one canonical layout.

Amazon Reviews 2023: reviews (rating, title, text, asin, parent_asin, user_id, timestamp in ms)
and `meta_*` items (parent_asin, title, features, description, categories, ...), joined on
`parent_asin`. Amazon Review Data 2018: reviews (overall, summary, reviewText, asin,
reviewerID, unixReviewTime in s) and metadata (asin, title, feature, description, category).

Canonical reviews: user_id, item_id, rating, review_title, review_text, timestamp.
Canonical items: item_id, title, features, description, categories (text fields joined).
"""

from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path
from typing import Iterator

import pandas as pd

from plmrec.data.files import require_data_file
from plmrec.errors import DataLoadError

CHUNK_LINES = 50_000
REVIEW_COLUMNS = ["user_id", "item_id", "rating", "review_title", "review_text", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "features", "description", "categories"]
_TAGS = re.compile(r"<[^>]*>|<[a-zA-Z/][^<]*$")  # tags, and a tag cut off at the end (2018 titles)


def _open(path: Path):
    require_data_file(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def iter_json_lines(path: str | Path, chunk_lines: int = CHUNK_LINES) -> Iterator[list[dict]]:
    """Yield lists of parsed records; a malformed line raises with its line number."""
    path = Path(path)
    chunk: list[dict] = []
    with _open(path) as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataLoadError(f"{path}: line {lineno} is not valid JSON: {exc.msg} at column {exc.colno}") from None
                if not isinstance(rec, dict):
                    raise DataLoadError(f"{path}: line {lineno} is a JSON {type(rec).__name__}, expected an object")
                chunk.append(rec)
                if len(chunk) >= chunk_lines:
                    yield chunk
                    chunk = []
        except UnicodeDecodeError as exc:
            raise DataLoadError(f"{path}: not valid UTF-8 ({exc.reason}) near line {lineno + 1}") from None
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            raise DataLoadError(f"{path}: truncated or corrupt gzip: {exc}") from None
    if chunk:
        yield chunk


def clean_text(value) -> str:
    """Join list fields, unescape HTML entities and drop tags; None becomes ''."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    text = _TAGS.sub(" ", html.unescape(str(value)))
    return " ".join(text.split())


def detect_review_schema(record: dict) -> str:
    if "parent_asin" in record or "rating" in record:
        return "2023"
    if "reviewerID" in record or "overall" in record:
        return "2018"
    raise DataLoadError(f"unrecognised review record with keys {sorted(record)}; expected Amazon 2023 or 2018 fields")


def _reviews_frame(records: list[dict], schema: str) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    if schema == "2023":
        item = df["parent_asin"] if "parent_asin" in df else df.get("asin")
        out = pd.DataFrame({"user_id": df.get("user_id"), "item_id": item, "rating": df.get("rating"),
                            "review_title": df.get("title"), "review_text": df.get("text"),
                            "timestamp": pd.to_datetime(df.get("timestamp"), unit="ms", errors="coerce")})
    else:
        out = pd.DataFrame({"user_id": df.get("reviewerID"), "item_id": df.get("asin"), "rating": df.get("overall"),
                            "review_title": df.get("summary"), "review_text": df.get("reviewText"),
                            "timestamp": pd.to_datetime(df.get("unixReviewTime"), unit="s", errors="coerce")})
    missing = [c for c in ("user_id", "item_id", "rating") if out[c].isna().all()]
    if missing:
        raise DataLoadError(f"review records lack {missing} (schema {schema})")
    for c in ("review_title", "review_text"):
        out[c] = out[c].map(clean_text)
    out["rating"] = pd.to_numeric(out["rating"], errors="coerce").astype("float32")
    return out[REVIEW_COLUMNS]


def load_reviews(path: str | Path, chunk_lines: int = CHUNK_LINES) -> pd.DataFrame:
    frames, schema = [], None
    for chunk in iter_json_lines(path, chunk_lines):
        schema = schema or detect_review_schema(chunk[0])
        frames.append(_reviews_frame(chunk, schema))
    if not frames:
        raise DataLoadError(f"{path}: no review records")
    return pd.concat(frames, ignore_index=True)


def _items_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    key = "parent_asin" if "parent_asin" in df else "asin"
    if key not in df:
        raise DataLoadError(f"metadata records have neither parent_asin nor asin (keys: {sorted(df.columns)[:12]})")

    def col(*names):
        for n in names:
            if n in df:
                return df[n].map(clean_text)
        return pd.Series("", index=df.index)

    return pd.DataFrame({"item_id": df[key].astype(str), "title": col("title"), "features": col("features", "feature"),
                         "description": col("description"), "categories": col("categories", "category")})


def load_items(path: str | Path, chunk_lines: int = CHUNK_LINES, *, unique: bool = True) -> pd.DataFrame:
    """Item metadata, one row per item id (the raw 2018 files repeat items: first kept); `unique=False`
    keeps the repeats for a caller that counts them."""
    frames = [_items_frame(chunk) for chunk in iter_json_lines(path, chunk_lines)]
    if not frames:
        raise DataLoadError(f"{path}: no metadata records")
    items = pd.concat(frames, ignore_index=True)
    return items.drop_duplicates("item_id", keep="first").reset_index(drop=True) if unique else items


def item_text(items: pd.DataFrame) -> pd.Series:
    """title. features. description: the item side of BLaIR-style pairs and of DAPT text."""
    parts = items[["title", "features", "description"]].fillna("")
    return parts.apply(lambda r: ". ".join(p for p in r if p), axis=1)


def load_reviews_with_items(reviews_path: str | Path, meta_path: str | Path | None) -> pd.DataFrame:
    """Reviews joined with their item's text on item id (parent_asin for 2023)."""
    reviews = load_reviews(reviews_path)
    if meta_path is None:
        return reviews.assign(item_text="", has_item_meta=False)
    items = load_items(meta_path)
    items = items.assign(item_text=item_text(items), has_item_meta=True)[["item_id", "item_text", "has_item_meta"]]
    joined = reviews.merge(items, on="item_id", how="left")
    joined["has_item_meta"] = joined["has_item_meta"].eq(True)  # NaN (no metadata) -> False
    return joined.fillna({"item_text": ""})
