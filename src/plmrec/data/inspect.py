"""`plmrec data inspect`: what plmrec makes of a shop's files before anything trains: the adapter that
reads them, the columns found and mapped, counts, what was dropped and why, the split it would make,
and which parts of the pipeline the data can feed and which it cannot (with the column they need)."""

from __future__ import annotations

import pandas as pd

from plmrec.config import Params
from plmrec.data.shop import SPLITS, ShopData, leave_one_out, temporal

def _counts(split) -> dict:
    return {s: int((split == s).sum()) for s in SPLITS} | {"none": int(split.isna().sum())}


def split_plan(shop: ShopData, params: Params) -> dict:
    """The split `prepare` will make (split.mode; auto: temporal for Online Retail, else leave-one-out),
    interactions per part."""
    from plmrec.data.prepare import split_mode

    inter = shop.interactions
    mode = split_mode(params.split, shop.adapter)
    if mode == "temporal" and not shop.has("time"):
        return {
            "mode": "temporal, but the data has no times",
            "interactions": _counts(pd.Series(None, index=inter.index, dtype=object)),
            "warning": "set split.mode: leave_one_out",
        }
    if mode == "temporal":
        split = temporal(inter, params.split.train_end, params.split.valid_end)
        plan = {
            "mode": f"temporal: train < {params.split.train_end} <= valid < {params.split.valid_end} <= test",
            "interactions": _counts(split),
        }
        empty = [s for s in SPLITS if not (split == s).any()]
        if empty:
            plan["warning"] = f"no interaction in {', '.join(empty)}: move split.train_end / split.valid_end"
        return plan
    split, short = leave_one_out(inter)
    return {
        "mode": "leave-one-out (each user's last interaction is test, the one before valid)",
        "interactions": _counts(split),
        "users_too_short": short,
    }


def coverage(shop: ShopData) -> list[tuple[str, bool, str]]:
    """(part of the pipeline, can it run on this data, why) for each part that needs a particular column."""
    inter, items = shop.interactions, shop.items
    with_text = float((items["text"].str.len() > 0).mean()) if len(items) else 0.0
    reviews = shop.reviews is not None and len(shop.reviews) > 0
    return [
        ("temporal split", shop.has("time"), "needs interaction times" if not shop.has("time") else "times present"),
        (
            "language-model stages (pretrain, finetune, evaluate-retrieval, text features)",
            with_text > 0,
            f"{with_text:.0%} of items have text",
        ),
        (
            "co-purchase fine-tuning pairs and basket features",
            shop.has("basket"),
            "from baskets" if shop.has("basket") else "no basket or session id: pairs from neighbouring interactions",
        ),
        (
            "quantity-label XGBoost (train-baseline, evaluate-baseline, the classifier ablation)",
            shop.has("quantity"),
            "needs a quantity per interaction",
        ),
        (
            "review/item fine-tuning pairs and product search (evaluate-search)",
            reviews,
            f"{len(shop.reviews):,} reviews" if reviews else "needs reviews",
        ),
        ("ratings", shop.has("rating"), "ratings present" if shop.has("rating") else "no rating column"),
        ("user attributes (country)", shop.has("country"), "for the consumer-profile probe"),
    ]


def report(shop: ShopData, params: Params) -> dict:
    return {
        "adapter": shop.adapter,
        "sources": shop.sources,
        "columns": {
            "interactions": list(shop.interactions.columns),
            "items": list(shop.items.columns),
            "reviews": [] if shop.reviews is None else list(shop.reviews.columns),
            "mapped": shop.columns,
        },
        "counts": shop.facts(),
        "dropped": shop.dropped,
        "split": split_plan(shop, params),
        "pipeline": [{"part": p, "runs": ok, "why": why} for p, ok, why in coverage(shop)],
        "example_item": shop.items["text"].iloc[0] if len(shop.items) else None,
    }


def lines(found: dict) -> list[str]:
    """The report as the terminal shows it."""
    counts = found["counts"]
    out = [
        f"adapter: {found['adapter']} ({', '.join(found['sources'])})",
        "counts: "
        + ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in counts.items()),
        f"columns: interactions {found['columns']['interactions']}; items {found['columns']['items']}"
        + (f"; reviews {found['columns']['reviews']}" if found["columns"]["reviews"] else ""),
    ]
    if found["columns"]["mapped"]:
        out.append("mapped: " + ", ".join(f"{k} <- {v}" for k, v in found["columns"]["mapped"].items()))
    out.append(
        "dropped: " + (", ".join(f"{k} {v:,}" for k, v in found["dropped"].items()) if found["dropped"] else "nothing")
    )
    split = found["split"]
    out.append(f"split: {split['mode']}: " + ", ".join(f"{k} {v:,}" for k, v in split["interactions"].items()))
    for key in ("warning", "users_too_short"):
        if split.get(key):
            out.append(f"  {key.replace('_', ' ')}: {split[key]}")
    if found["example_item"] is not None:
        out.append(f"an item's sentence: {found['example_item'][:120]!r}")
    out.append("pipeline:")
    out += [f"  {'runs   ' if p['runs'] else 'skipped'}  {p['part']}: {p['why']}" for p in found["pipeline"]]
    return out
