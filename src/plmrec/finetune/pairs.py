"""Text pairs for contrastive fine-tuning, built from training-split data only.

Tasks (one per fine-tuning phase):
  review_item        review title + text  <->  item title + features + description (BLaIR; Amazon)
  item_context       item description     <->  a description co-purchased in the same baskets
  sequence_next      user history sentence <->  the next purchased item (Sentence-T5)
  sequence_sequence  two views of one user's history (disjoint halves)
  item_text          item title <-> its full text (Amazon); Online Retail has one description per
                     item, so the second side is a word-dropout view of it
A history sentence lists the most recent purchases first, so the tokenizer's truncation to
max_length drops the oldest. Two templates (finetune.history_template):
  plain       "<newest>; <older>; ...; <oldest>"
  structured  "1: <newest>; 2: <older>; ...; n: <oldest>"  (Sentence-T5's structured form: item titles
              only, each behind its position marker, most recent first)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from plmrec.errors import PairError

HISTORY_SEPARATOR = "; "
HISTORY_TEMPLATES = ("plain", "structured")


def training_rows(prepared: pd.DataFrame, train_end: dt.date | str) -> pd.DataFrame:
    """The rows fine-tuning may learn from: split 'train', all strictly before train_end (checked where
    the split is temporal; a leave-one-out split holds each user's earlier interactions)."""
    from plmrec.data.prepare import split_mode_of

    missing = {"CustomerID", "InvoiceNo", "InvoiceDate", "StockCode", "Description", "split"} - set(prepared.columns)
    if missing:
        raise PairError(f"prepared table lacks columns {sorted(missing)}")
    cut = pd.Timestamp(train_end)
    train = prepared[prepared["split"] == "train"]
    if split_mode_of(prepared) == "leave_one_out":
        if train.empty:
            raise PairError("no training rows: every user has fewer than three interactions")
        return train
    late = train[train["InvoiceDate"] >= cut]
    if len(late):
        first = late.iloc[0]
        raise PairError(
            f"{len(late)} rows marked 'train' are on or after train_end={train_end} (first: invoice "
            f"{first['InvoiceNo']} at {first['InvoiceDate']}); the prepared table is inconsistent "
            f"with split.train_end"
        )
    if train.empty:
        raise PairError(f"no training rows before train_end={train_end}")
    return train


def catalogue(prepared: pd.DataFrame) -> pd.DataFrame:
    """One row per stock code with its most frequent description, sorted by code."""
    desc = prepared.dropna(subset=["Description"])
    desc = desc[desc["Description"].astype(str).str.strip() != ""]
    counts = desc.groupby(["StockCode", "Description"], observed=True).size().rename("n").reset_index()
    counts = counts.sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
    out = counts.drop_duplicates("StockCode")[["StockCode", "Description"]]
    out["StockCode"] = out["StockCode"].astype(str)
    out["Description"] = out["Description"].astype(str).str.strip()
    return out.sort_values("StockCode").reset_index(drop=True)


def descriptions(rows: pd.DataFrame) -> dict[str, str]:
    """stock code -> its most frequent description in `rows`."""
    cat = catalogue(rows)
    return dict(zip(cat["StockCode"], cat["Description"]))


def render_history(descriptions: list[str], length: int, template: str = "plain") -> str:
    """The last `length` purchases (`descriptions` oldest first) as one sentence, most recent first."""
    newest_first = list(reversed(descriptions[-length:]))
    if template == "plain":
        return HISTORY_SEPARATOR.join(newest_first)
    if template == "structured":
        return HISTORY_SEPARATOR.join(f"{i}: {text}" for i, text in enumerate(newest_first, start=1))
    raise PairError(f"unknown history template '{template}' (expected one of {', '.join(HISTORY_TEMPLATES)})")


def purchase_sequences(rows: pd.DataFrame) -> pd.DataFrame:
    """Per customer, invoices in time order, each with its distinct stock codes (line order kept)."""
    ordered = rows.sort_values(["CustomerID", "InvoiceDate", "InvoiceNo"], kind="stable")
    ordered = ordered.drop_duplicates(["CustomerID", "InvoiceNo", "StockCode"])
    baskets = (
        ordered.groupby(["CustomerID", "InvoiceNo"], sort=False, observed=True)
        .agg(when=("InvoiceDate", "first"), codes=("StockCode", lambda s: [str(c) for c in s]))
        .reset_index()
    )
    return baskets.sort_values(["CustomerID", "when", "InvoiceNo"], kind="stable").reset_index(drop=True)


def customer_histories(rows: pd.DataFrame):
    """(customer, distinct stock codes oldest first, each at its latest purchase), by customer id; the id a
    plain int or str (as the data has it), not numpy's."""
    for customer, user in purchase_sequences(rows).groupby("CustomerID", sort=True):
        plain = customer.item() if hasattr(customer, "item") else customer
        yield plain, history_before([c for basket in user["codes"] for c in basket])


def history_before(codes_in_order: list[str]) -> list[str]:
    """Distinct codes, each at its latest position (so the most recent purchases come last)."""
    seen: dict[str, int] = {}
    for i, c in enumerate(codes_in_order):
        seen[c] = i
    return [c for c, _ in sorted(seen.items(), key=lambda kv: kv[1])]


def _sample(pairs: list[tuple[str, str]], max_pairs: int, seed: int) -> list[tuple[str, str]]:
    if len(pairs) <= max_pairs:
        return pairs
    keep = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
    return [pairs[i] for i in sorted(keep)]


def neighbour_baskets(rows: pd.DataFrame) -> pd.DataFrame:
    """Data without baskets (reviews, benchmark sequences): each two neighbouring interactions of a user
    as a basket (`InvoiceNo` '<user>#<k>'), so co-purchase pairs come from what a user took one after
    the other."""
    from plmrec.data.prepare import history_order

    ranked = rows.sort_values(["CustomerID", *history_order(rows)], kind="stable")
    k = ranked.groupby("CustomerID", sort=False).cumcount()
    user = ranked["CustomerID"].astype(str)
    this = ranked.assign(InvoiceNo=user + "#" + k.astype(str))
    previous = ranked.assign(InvoiceNo=user + "#" + (k + 1).astype(str))  # also in the next one's basket
    return pd.concat([this, previous], ignore_index=True)


def item_context_pairs(
    rows: pd.DataFrame,
    neighbours_per_item: int = 10,
    max_items_per_basket: int = 50,
    *,
    max_pairs: int = 200_000,
    weighting: str = "uniform",
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Each item's description with those of its most co-purchased items (ties: by code).

    weighting "uniform": each (item, neighbour) pair once. "count": `max_pairs` pairs drawn with
    replacement, each (item, neighbour) with probability proportional to the number of baskets
    that hold both, so the pairs the shop sees most are trained on most."""
    if weighting not in ("uniform", "count"):
        raise PairError(f"unknown pair weighting '{weighting}' (expected uniform or count)")
    cat = catalogue(rows)
    index = {c: i for i, c in enumerate(cat["StockCode"])}
    texts = cat["Description"].tolist()
    rng = np.random.default_rng(seed)
    keys = []
    for codes in rows.groupby("InvoiceNo", observed=True)["StockCode"].agg(lambda s: list(dict.fromkeys(map(str, s)))):
        ids = np.array([index[c] for c in codes if c in index], dtype=np.int64)
        if len(ids) < 2:
            continue
        if len(ids) > max_items_per_basket:
            ids = rng.choice(ids, size=max_items_per_basket, replace=False)
        a, b = np.meshgrid(ids, ids, indexing="ij")
        off = a != b
        keys.append(a[off] * len(texts) + b[off])
    if not keys:
        return []
    uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    frame = pd.DataFrame({"a": uniq // len(texts), "b": uniq % len(texts), "n": counts})
    frame = frame.sort_values(["a", "n", "b"], ascending=[True, False, True])
    frame = frame.groupby("a", sort=False).head(neighbours_per_item)
    frame = frame[[texts[a] != texts[b] for a, b in zip(frame["a"], frame["b"])]]
    if weighting == "count" and len(frame):
        n = frame["n"].to_numpy(dtype=np.float64)
        drawn = np.sort(rng.choice(len(frame), size=max_pairs, replace=True, p=n / n.sum()))
        a, b = frame["a"].to_numpy()[drawn], frame["b"].to_numpy()[drawn]
        return [(texts[i], texts[j]) for i, j in zip(a, b)]
    pairs = [(texts[a], texts[b]) for a, b in zip(frame["a"], frame["b"])]
    return _sample(pairs, max_pairs, seed)


def sequence_next_pairs(
    rows: pd.DataFrame,
    history_length: int = 20,
    pairs_per_user: int = 20,
    *,
    max_pairs: int = 200_000,
    template: str = "plain",
    seed: int = 0,
) -> list[tuple[str, str]]:
    """(history sentence before a basket, an item of that basket not bought before), most recent first."""
    text = descriptions(rows)
    pairs: list[tuple[str, str]] = []
    rng = np.random.default_rng(seed)
    for _, user in purchase_sequences(rows).groupby("CustomerID", sort=False):
        baskets = user["codes"].tolist()
        last_seen: dict[str, int] = {}  # code -> position of its latest purchase
        position = 0
        first_used = max(1, len(baskets) - pairs_per_user)  # only the most recent baskets become pairs
        for t, basket in enumerate(baskets):
            if t >= first_used and last_seen:
                new = [c for c in basket if c not in last_seen]
                if new:
                    history = sorted(last_seen, key=last_seen.__getitem__)
                    target = new[rng.integers(len(new))]
                    pairs.append((render_history([text[c] for c in history], history_length, template), text[target]))
            for c in basket:
                last_seen[c] = position
                position += 1
    return _sample(pairs, max_pairs, seed)


def sequence_sequence_pairs(
    rows: pd.DataFrame, history_length: int = 20, max_pairs: int = 200_000, *, template: str = "plain", seed: int = 0
) -> list[tuple[str, str]]:
    """Two disjoint random halves of each user's distinct items, as history sentences."""
    text = descriptions(rows)
    rng = np.random.default_rng(seed)
    pairs = []
    for _, items in customer_histories(rows):
        if len(items) < 4:
            continue
        side = rng.random(len(items)) < 0.5
        if side.all() or not side.any():
            side[: len(items) // 2] = ~side[: len(items) // 2]
        first = [text[c] for c, s in zip(items, side) if s]
        second = [text[c] for c, s in zip(items, side) if not s]
        pairs.append(
            (render_history(first, history_length, template), render_history(second, history_length, template))
        )
    return _sample(pairs, max_pairs, seed)


def word_dropout(text: str, rate: float, rng: np.random.Generator) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or words[:1])


def item_text_pairs(
    items: pd.DataFrame, max_pairs: int = 200_000, seed: int = 0, *, dropout: float = 0.3
) -> list[tuple[str, str]]:
    """Amazon items (title, item_text): title <-> full text. Shop catalogue (Description only):
    description <-> a word-dropout view of it."""
    rng = np.random.default_rng(seed)
    if "title" in items.columns and "item_text" in items.columns:
        pairs = [(t, x) for t, x in zip(items["title"], items["item_text"]) if t and x and x != t]
    else:
        pairs = [(d, word_dropout(d, dropout, rng)) for d in items["Description"] if len(d.split()) > 1]
    return _sample(pairs, max_pairs, seed)


def review_item_pairs(
    reviews: pd.DataFrame, min_chars: int = 30, max_pairs: int = 200_000, *, seed: int = 0
) -> list[tuple[str, str]]:
    """BLaIR: (review title + text, item title + features + description), both at least min_chars,
    from reviews joined with their items (plmrec.data.amazon.load_reviews_with_items)."""
    frame = reviews
    review = (frame["review_title"].fillna("") + ". " + frame["review_text"].fillna("")).str.strip(". ")
    item = frame["item_text"].fillna("")
    ok = (review.str.len() >= min_chars) & (item.str.len() >= min_chars)
    pairs = list(zip(review[ok], item[ok]))
    return _sample(pairs, max_pairs, seed)
