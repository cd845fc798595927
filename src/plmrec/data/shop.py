"""Any shop's data as three canonical tables, the contract every adapter (plmrec.data.adapters) writes:

  interactions  user, item (string ids), time (datetime64[ns]; NaT where the data has none), position
                (the order within the user's history, 0 = oldest); optional quantity, price, basket
                (a basket, invoice or session id), rating, and user attributes (e.g. country)
  items         item (string id), text (the item's sentence: its text fields joined by a template);
                optional title, description, category, brand, price
  reviews       optional: user, item, time, rating, title, text

`split` (optional, on interactions): a benchmark's own split (train, valid, test), kept as given.

Bad input is a clear error naming the table and column, or a counted drop (`ShopData.dropped`):
interactions whose item has no catalogue row, duplicate catalogue ids (the first is kept), reviews of
items not in the catalogue, interactions without a user or an item, a review repeated in every column. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plmrec.errors import DataLoadError

INTERACTION_COLUMNS = ["user", "item", "time", "position"]
INTERACTION_OPTIONAL = ["quantity", "price", "basket", "rating", "country", "split"]
ITEM_COLUMNS = ["item", "text"]
ITEM_OPTIONAL = ["title", "description", "category", "brand", "price"]
REVIEW_COLUMNS = ["user", "item", "time", "rating", "title", "text"]
SPLITS = ("train", "valid", "test")


@dataclass
class ShopData:
    """The canonical tables of one shop, where they came from and what was dropped on the way."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    reviews: pd.DataFrame | None = None
    adapter: str = ""
    sources: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)  # canonical column -> the source's column

    def has(self, column: str) -> bool:
        """Whether interactions carry `column` with at least one value."""
        return column in self.interactions and self.interactions[column].notna().any()

    def facts(self) -> dict:
        """Counts a person reads first: users, items, interactions, reviews, time range, drops."""
        inter = self.interactions
        out = {
            "interactions": len(inter),
            "users": int(inter["user"].nunique()),
            "items": len(self.items),
            "items_interacted": int(inter["item"].nunique()),
            "reviews": 0 if self.reviews is None else len(self.reviews),
        }
        if inter["time"].notna().any():
            out["first_time"] = str(inter["time"].min())
            out["last_time"] = str(inter["time"].max())
        if "basket" in inter and inter["basket"].notna().any():
            out["baskets"] = int(inter["basket"].nunique())
        return out


def string_ids(values: pd.Series, *, table: str, column: str) -> pd.Series:
    """Ids as strings; a column holding both numbers and text (e.g. 123 and '00123' from a JSON file) is
    an error, since their string forms may collide or differ from what a client sends."""
    present = values.dropna()
    kinds = {type(v).__name__ for v in present.head(100_000)}
    numeric, text = kinds & {"int", "float", "int64", "float64", "int32"}, kinds & {"str"}
    if numeric and text:
        example_n = next(v for v in present if not isinstance(v, str))
        example_s = next(v for v in present if isinstance(v, str))
        raise DataLoadError(
            f"{table}: column '{column}' mixes id types ({', '.join(sorted(kinds))}), e.g. {example_n!r} and "
            f"{example_s!r}; ids must be all text or all numbers"
        )
    if pd.api.types.is_float_dtype(values) and (present % 1 == 0).all():
        values = values.astype("Int64")  # 12346.0 -> '12346', as the shop wrote it
    out = values.astype("string")
    return out.where(values.notna(), None).astype(object)


def item_sentence(items: pd.DataFrame, template: str) -> pd.Series:
    """Each item's sentence from `template` (e.g. '{title}. {description}'): a field the item lacks is
    left out with its separator, so no sentence ends in '. .'."""
    import re

    fields = re.findall(r"{(\w+)}", template)
    missing = [f for f in fields if f not in items]
    if missing:
        raise DataLoadError(f"items: the item template {template!r} names {missing}, not in the catalogue's columns")

    def render(row) -> str:
        parts = []
        for piece in re.split(r"({\w+})", template):
            name = piece[1:-1] if piece.startswith("{") else None
            if name is None:
                parts.append(("sep", piece))
            else:
                value = row[name]
                text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
                parts.append(("field", text))
        out, pending = "", ""
        for kind, text in parts:
            if kind == "sep":
                pending += text
            elif text:
                if out and out[-1] in ".!?" and pending.startswith(out[-1]):
                    pending = pending[1:]  # 'decor.' + '. ' + 'Magazines': one full stop, not two
                out += (pending if out else "") + text
                pending = ""
            else:
                pending = ""
        return " ".join(out.split())

    return items.apply(render, axis=1) if len(items) else pd.Series([], dtype=object)


def finish(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    *,
    reviews: pd.DataFrame | None = None,
    adapter: str,
    sources: list[str],
    columns: dict[str, str] | None = None,
    unique_events: bool = False,
) -> ShopData:
    """The adapters' common last step: ids as strings, positions per user, the catalogue de-duplicated,
    interactions and reviews without a catalogue item dropped, every drop counted. `unique_events`: an
    interaction cannot happen twice (a review), so a repeat in every column is dropped; elsewhere (two
    identical order lines) repeats stay, for validation to count and clean.drop_exact_duplicates to merge."""
    dropped: dict[str, int] = {}
    for name, frame in (("interactions", interactions), ("items", items)):
        need = ITEM_COLUMNS if name == "items" else ["user", "item"]
        missing = [c for c in need if c not in frame]
        if missing:
            raise DataLoadError(f"{name}: canonical column(s) {missing} missing (found {list(frame.columns)})")
    items = items.copy()
    items["item"] = string_ids(items["item"], table="items", column="item")
    no_id = items["item"].isna()
    if no_id.any():
        dropped["item_without_id"] = int(no_id.sum())
        items = items[~no_id]
    duplicate = items["item"].duplicated()
    if duplicate.any():
        dropped["duplicate_item"] = int(duplicate.sum())
        items = items[~duplicate]
    items = items.reset_index(drop=True)

    inter = interactions.copy()
    for column in ("user", "item"):
        inter[column] = string_ids(inter[column], table="interactions", column=column)
    if "basket" in inter:
        inter["basket"] = string_ids(inter["basket"], table="interactions", column="basket")
    no_key = inter["user"].isna() | inter["item"].isna()
    if no_key.any():
        dropped["interaction_without_user_or_item"] = int(no_key.sum())
        inter = inter[~no_key]
    unknown = ~inter["item"].isin(set(items["item"]))
    if unknown.any():
        dropped["interaction_item_not_in_catalogue"] = int(unknown.sum())
        inter = inter[~unknown]
    for column in ("quantity", "price", "rating"):  # one numeric type for every adapter
        if column in inter:
            inter[column] = pd.to_numeric(inter[column], errors="coerce").astype("float64")
    if "time" not in inter:
        inter["time"] = pd.NaT
    inter["time"] = pd.to_datetime(inter["time"], errors="coerce")
    if unique_events and inter["time"].notna().any():  # the same review twice (Amazon's files repeat some)
        same = inter.drop(columns="position", errors="ignore").duplicated()
        if same.any():
            dropped["duplicate_interaction"] = int(same.sum())
            inter = inter[~same]
    if "position" not in inter:  # oldest first; ties keep the file's order
        inter["_row"] = range(len(inter))
        inter = inter.sort_values(["user", "time", "_row"], kind="stable", na_position="last")
        inter["position"] = inter.groupby("user").cumcount()
        inter = inter.drop(columns="_row")
    inter = inter.sort_values(["user", "position"], kind="stable").reset_index(drop=True)
    if reviews is not None:
        reviews = reviews.copy()
        for column in ("user", "item"):
            reviews[column] = string_ids(reviews[column], table="reviews", column=column)
        outside = ~reviews["item"].isin(set(items["item"]))
        if outside.any():
            dropped["review_item_not_in_catalogue"] = int(outside.sum())
            reviews = reviews[~outside].reset_index(drop=True)
    keep = [c for c in [*INTERACTION_COLUMNS, *INTERACTION_OPTIONAL] if c in inter]
    item_keep = [c for c in [*ITEM_COLUMNS, *ITEM_OPTIONAL] if c in items]
    return ShopData(
        interactions=inter[keep],
        items=items[item_keep],
        reviews=reviews,
        adapter=adapter,
        sources=sources,
        dropped=dropped,
        columns=columns or {},
    )


def leave_one_out_rows(frame: pd.DataFrame, *, user: str, order: list[str]) -> tuple[pd.Series, pd.Series]:
    """RecBole's split over any table: each user's last row (by `order`, then the table's order) is test,
    the one before it valid, the rest train; (split per row, mask of the rows whose user has fewer than
    three, who cannot give all three parts). The canonical tables (below) and `prepare` both use it."""
    ranked = frame.assign(_row=np.arange(len(frame))).sort_values([user, *order, "_row"], kind="stable")
    from_end = ranked.groupby(user, sort=False).cumcount(ascending=False)
    size = ranked.groupby(user, sort=False)[user].transform("size")
    split = pd.Series(np.where(from_end == 0, "test", np.where(from_end == 1, "valid", "train")), index=ranked.index)
    return split.astype(object).reindex(frame.index), (size < 3).reindex(frame.index)


def leave_one_out(interactions: pd.DataFrame) -> tuple[pd.Series, int]:
    """RecBole's split of the canonical interactions (by position): (split per row, None for the rows of
    users with fewer than three interactions, how many such users)."""
    split, short = leave_one_out_rows(interactions, user="user", order=["position"])
    split[short] = None
    return split, int(interactions.loc[short, "user"].nunique())


def temporal(interactions: pd.DataFrame, train_end, valid_end) -> pd.Series:
    """The absolute-date split (split.train_end, split.valid_end); None where a row has no time."""
    time = interactions["time"]
    split = pd.Series(None, index=interactions.index, dtype=object)
    split[time < pd.Timestamp(train_end)] = "train"
    split[(time >= pd.Timestamp(train_end)) & (time < pd.Timestamp(valid_end))] = "valid"
    split[time >= pd.Timestamp(valid_end)] = "test"
    return split


SYNTHETIC_CLOCK = pd.Timestamp("2000-01-01")  # data without times: position k of a history is day k


def customer_ids(values: pd.Series) -> pd.Series:
    """User ids in the type the data has: int64 where every id is a plain integer ('12518', not '007'),
    else text. A client then sends the id as the shop writes it, to v1 and v2 alike."""
    text = values.astype(str)
    if len(text) and text.str.fullmatch(r"0|[1-9]\d{0,17}").all():
        return text.astype("int64")
    return text.astype(object)


def to_transactions(shop: ShopData) -> tuple[pd.DataFrame, dict]:
    """The canonical tables as the table the stages read: one row per interaction, the item's sentence as
    its Description (its id where it has no text, counted in `meta['items_without_text']`), and what the
    data lacks filled (quantity 1, price 0, one basket per user and time) and named in `meta['absent']`
    so the stages that need it are skipped, never fed the fill."""
    inter = shop.interactions
    text = shop.items.set_index("item")["text"].fillna("").astype(str).str.strip()
    blank = text == ""
    text = text.where(~blank, text.index.to_series())  # no text: the id stands in, so no item is lost
    has_time = shop.has("time")
    time = inter["time"] if has_time else SYNTHETIC_CLOCK + pd.to_timedelta(inter["position"], unit="D")
    if has_time and inter["time"].isna().any():
        raise DataLoadError(
            f"interactions: {int(inter['time'].isna().sum()):,} of {len(inter):,} rows have no time while "
            "the others do; give every row a time or none"
        )
    user = customer_ids(inter["user"])
    basket = inter["basket"] if shop.has("basket") else user.astype(str) + "@" + time.dt.strftime("%Y-%m-%d %H:%M")
    out = pd.DataFrame(
        {
            "InvoiceNo": basket.astype(str).to_numpy(),
            "StockCode": inter["item"].astype(str).to_numpy(),
            "Description": inter["item"].map(text).fillna("").astype(str).to_numpy(),
            "Quantity": (inter["quantity"] if shop.has("quantity") else pd.Series(1, index=inter.index))
            .fillna(1)
            .round()
            .astype("int64")
            .to_numpy(),
            "InvoiceDate": pd.to_datetime(time).astype("datetime64[ns]").to_numpy(),
            "UnitPrice": (inter["price"] if shop.has("price") else pd.Series(0.0, index=inter.index))
            .fillna(0.0)
            .astype("float64")
            .to_numpy(),
            "CustomerID": user.to_numpy(),
            "Country": (inter["country"] if shop.has("country") else pd.Series("", index=inter.index))
            .fillna("")
            .astype(str)
            .to_numpy(),
            "position": inter["position"].astype("int64").to_numpy(),
        }
    )
    if shop.has("rating"):
        out["rating"] = inter["rating"].to_numpy()
    if "split" in inter and inter["split"].notna().any():
        out["benchmark_split"] = inter["split"].astype(object).to_numpy()
    absent = [c for c in ("time", "basket", "quantity", "price", "country") if not shop.has(c)]
    meta = {
        "adapter": shop.adapter,
        "sources": shop.sources,
        "columns": shop.columns,
        "dropped": shop.dropped,
        "absent": absent,
        "counts": shop.facts(),
        "reviews": 0 if shop.reviews is None else len(shop.reviews),
        "items_without_text": int(blank[blank.index.isin(set(inter["item"]))].sum()),
    }
    return out, meta
