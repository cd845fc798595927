"""The two pretraining corpora: TAPT (the shop's own item descriptions) and DAPT (broad e-commerce
text: Amazon item titles, features, descriptions and reviews, or a synthetic stand-in offline).

Both are lists of short sentences: whitespace collapsed, cut at a word boundary to `max_chars`
(the study used 50), deduplicated case-insensitively in first-seen order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from plmrec.errors import DataLoadError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def cap_text(text: str, max_chars: int) -> str:
    """Collapse whitespace and cut to at most `max_chars`, at the last word boundary when there is one."""
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    head = cut.rsplit(" ", 1)[0] if " " in cut else text[:max_chars]
    return head[:max_chars].rstrip(" ,;:-")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(str(text).split())) if s]


def finish_corpus(texts: Iterable[str], max_chars: int, min_chars: int, *, limit: int | None = None) -> list[str]:
    out, seen = [], set()
    for t in texts:
        s = cap_text(t, max_chars)
        key = s.casefold()
        if len(s) < min_chars or key in seen:
            continue
        seen.add(key)
        out.append(s)
        if limit is not None and len(out) >= limit:
            break
    return out


def tapt_corpus(prepared: pd.DataFrame, splits: list[str], max_chars: int = 50, *, min_chars: int = 3) -> list[str]:
    """Distinct descriptions of the items sold in `splits` of the prepared table."""
    missing = {"Description", "split"} - set(prepared.columns)
    if missing:
        raise DataLoadError(f"prepared table lacks {sorted(missing)} needed for the TAPT corpus")
    rows = prepared.loc[prepared["split"].isin(splits), "Description"].dropna().astype(str)
    return finish_corpus(rows.drop_duplicates(), max_chars, min_chars)


def _amazon_files(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and re.search(r"\.(jsonl?|json\.gz|jsonl\.gz)$", f.name))
        if files:
            return files
        raise DataLoadError(f"{p}: no Amazon .json/.jsonl(.gz) files in this directory")
    raise DataLoadError(f"DAPT corpus path {p} does not exist")


def amazon_texts(path: str | Path) -> Iterable[str]:
    """Sentences from Amazon 2018/2023 files: metadata files (meta_*) give titles, features and
    descriptions; review files give review titles and texts."""
    from plmrec.data.amazon import load_items, load_reviews

    for f in _amazon_files(path):
        if f.name.startswith("meta_"):
            items = load_items(f)
            for col in ("title", "features", "description"):
                for value in items[col]:
                    yield from split_sentences(value)
        else:
            reviews = load_reviews(f)
            for col in ("review_title", "review_text"):
                for value in reviews[col].fillna(""):
                    yield from split_sentences(value)


_SYNTH_OPENERS = ["Perfect for", "Great for", "Ideal for", "Lovely as a gift for", "Bought this for", "Works well for"]
_SYNTH_OCCASIONS = [
    "a wedding",
    "the kitchen",
    "a birthday party",
    "the garden",
    "christmas dinner",
    "a baby shower",
    "the living room",
    "a picnic",
    "the office",
    "a school fair",
    "the holidays",
    "a tea party",
]
_SYNTH_QUALITIES = [
    "sturdy and well made",
    "smaller than expected",
    "bright colours",
    "arrived quickly",
    "good value for money",
    "looks vintage",
    "easy to clean",
    "a bit fragile",
    "lovely finish",
]


def synthetic_dapt_corpus(n: int, seed: int = 0) -> list[str]:
    """Offline stand-in for broad e-commerce text: product titles and review-like sentences built
    from the synthetic generator's vocabulary plus generic shopping phrases."""
    from plmrec.data.synthetic import COLOURS, MATERIALS, PRODUCT_TYPES, THEMES

    rng = np.random.default_rng(seed)
    words = [w for ws in THEMES.values() for w in ws]
    types = list(PRODUCT_TYPES)
    pick = lambda seq: seq[rng.integers(len(seq))]  # noqa: E731
    out = []
    for _ in range(n * 2):
        kind = rng.integers(3)
        item = f"{pick(COLOURS).lower()} {pick(words).lower()} {pick(types).lower()}"
        if kind == 0:
            out.append(f"{pick(MATERIALS).title()} {item.title()}")
        elif kind == 1:
            out.append(f"{pick(_SYNTH_OPENERS)} {pick(_SYNTH_OCCASIONS)}, this {item} is {pick(_SYNTH_QUALITIES)}.")
        else:
            out.append(f"The {item} was {pick(_SYNTH_QUALITIES)}.")
    return out


def dapt_corpus(
    source: str,
    path: str | None,
    max_chars: int = 50,
    *,
    min_chars: int = 10,
    max_sentences: int = 1_024_000,
    synthetic_sentences: int = 20_000,
    seed: int = 0,
) -> list[str]:
    if source == "amazon":
        if not path:
            raise DataLoadError("DAPT source 'amazon' needs pretrain.dapt.path")
        return finish_corpus(amazon_texts(path), max_chars, min_chars, limit=max_sentences)
    if source == "synthetic":
        return finish_corpus(
            synthetic_dapt_corpus(synthetic_sentences, seed),
            max_chars,
            min_chars,
            limit=min(max_sentences, synthetic_sentences),
        )
    raise DataLoadError(f"unknown DAPT source '{source}' (expected synthetic or amazon)")


def write_corpus(sentences: list[str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sentences) + ("\n" if sentences else ""), encoding="utf-8")
    return path
