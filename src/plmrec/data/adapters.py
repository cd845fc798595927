"""Adapters: a shop's files in the formats recommender teams have, read into the canonical tables
(plmrec.data.shop). `data.format` names the adapter; `auto` detects it where that is unambiguous.

  online_retail  UCI Online Retail I and II (xlsx, csv, parquet) and the synthetic generator; today's
                 cleaning (clean.*) is its cleaning, each reason counted
  amazon         Amazon Reviews 2018 and 2023 (JSON lines, gzip or not), with its metadata file
                 (data.meta_path): a review is an interaction and keeps its rating
  recbole        RecBole atomic files: <name>.inter (user_id, item_id, rating, timestamp) and <name>.item
  unisrec        the processed UniSRec benchmark: <name>.{train,valid,test}.inter, .text, .item2index;
                 its leave-one-out split is kept as `split`
  table          any CSV or Parquet, its columns mapped by data.columns (e.g. user: customer_id), the
                 catalogue in data.items_path or the same table
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pandas as pd

from plmrec.config import DataParams, Params
from plmrec.data.files import missing, require_data_file
from plmrec.data.shop import ShopData, finish, item_sentence
from plmrec.errors import DataLoadError

FORMATS = ("online_retail", "amazon", "recbole", "unisrec", "table")
ITEM_TEXT_FIELDS = ("title", "description", "category", "brand")  # the default sentence, in this order
USER_ALIASES = ("user", "user_id", "userid", "customer", "customer_id", "customerid", "reviewerid", "visitorid")
ITEM_ALIASES = ("item", "item_id", "itemid", "product", "product_id", "productid", "asin", "sku", "parent_asin")


def _columns_of(path: Path) -> list[str]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_schema(path).names
    if name.endswith(".xlsx"):
        return list(pd.read_excel(path, nrows=0).columns)
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            return pd.read_csv(fh, nrows=0, sep=None, engine="python").columns.tolist()
    except (pd.errors.ParserError, csv.Error, OSError, EOFError) as exc:
        raise DataLoadError(f"{path}: cannot read its header line as CSV: {exc}") from None


def detect_format(path: str | Path) -> str:
    """The adapter for `path`, where its layout says so unambiguously."""
    path = Path(path)
    if not path.exists():
        why = missing(path)
        raise DataLoadError(f"{path}: {'no such file or directory' if why == 'file not found' else why} (data.path)")
    if path.is_dir():
        if list(path.glob("*.test.inter")):
            return "unisrec"
        if list(path.glob("*.inter")):
            return "recbole"
        held = [p.name for p in path.iterdir()][:5]
        there = f"it holds {', '.join(held)}" if held else "it is empty"
        raise DataLoadError(f"{path}: a directory without .inter files ({there}); name a file, or set data.format")
    require_data_file(path)
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return "amazon"
    if name.endswith((".csv", ".csv.gz", ".parquet", ".xlsx")):
        found = {c.strip() for c in _columns_of(path)}
        if {"StockCode"} <= found and found & {"InvoiceNo", "Invoice"}:
            return "online_retail"
        return "table"
    raise DataLoadError(f"{path}: cannot tell its format from the name; set data.format (one of {', '.join(FORMATS)})")


def read_shop(params: Params, path: str | Path | None = None) -> ShopData:
    """The shop's canonical tables, from `path` (else data.path, or the synthetic generator)."""
    data = params.data
    path = path or data.path
    if path is None and data.source == "synthetic":
        return online_retail(params, None)
    if path is None:
        raise DataLoadError("no data file: set data.path (or pass one)")
    fmt = data.format if data.format != "auto" else detect_format(path)
    reader = {"online_retail": online_retail, "amazon": amazon, "recbole": recbole, "unisrec": unisrec}
    return reader.get(fmt, table)(params, Path(path))


# ---------------------------------------------------------------------------- the adapters
def online_retail(params: Params, path: Path | None) -> ShopData:
    """Online Retail transactions (or the synthetic generator's): its cleaning, then a line is an interaction,
    the invoice its basket, the description the item's text."""
    from plmrec.data.prepare import clean_transactions

    if path is None:
        from plmrec.data.synthetic import generate_transactions

        raw, sources = generate_transactions(params.data.synthetic), ["synthetic"]
    else:
        from plmrec.data.online_retail import load_transactions

        raw, sources = load_transactions(path, encoding=params.data.encoding), [str(path)]
    clean, report = clean_transactions(raw, params.clean)
    interactions = pd.DataFrame(
        {
            "user": clean["CustomerID"],
            "item": clean["StockCode"],
            "time": clean["InvoiceDate"],
            "quantity": clean["Quantity"].astype(float),
            "price": clean["UnitPrice"].astype(float),
            "basket": clean["InvoiceNo"],
            "country": clean["Country"],
        }
    )
    described = clean.dropna(subset=["Description"]).groupby("StockCode", sort=False)["Description"].first()
    items = pd.DataFrame({"item": clean["StockCode"].drop_duplicates().to_numpy()})
    items["title"] = items["item"].map(described)
    items["text"] = item_sentence(items, _template(params.data, items))
    shop = finish(interactions, items, adapter="online_retail", sources=sources, columns=_OR_COLUMNS)
    shop.dropped = {**{f"clean_{k}": v for k, v in report.dropped.items() if v}, **shop.dropped}
    return shop


_OR_COLUMNS = {
    "user": "CustomerID",
    "item": "StockCode",
    "time": "InvoiceDate",
    "quantity": "Quantity",
    "price": "UnitPrice",
    "basket": "InvoiceNo",
    "country": "Country",
    "title": "Description",
}


def amazon(params: Params, path: Path) -> ShopData:
    """Amazon reviews (2018 or 2023) and, with data.meta_path, the item metadata."""
    from plmrec.data.amazon import load_items, load_reviews

    reviews = load_reviews(path)
    interactions = reviews.rename(columns={"user_id": "user", "item_id": "item", "timestamp": "time"})[
        ["user", "item", "time", "rating"]
    ]
    review_table = pd.DataFrame(
        {
            "user": reviews["user_id"],
            "item": reviews["item_id"],
            "time": reviews["timestamp"],
            "rating": reviews["rating"],
            "title": reviews["review_title"],
            "text": reviews["review_text"],
        }
    )
    sources = [str(path)]
    if params.data.meta_path:
        meta = load_items(params.data.meta_path, unique=False)  # finish() counts the repeats
        items = pd.DataFrame(
            {
                "item": meta["item_id"],
                "title": meta["title"],
                "description": (meta["features"] + " " + meta["description"]).str.strip(),
                "category": meta["categories"],
            }
        )
        sources.append(str(params.data.meta_path))
    else:  # no catalogue: the reviewed items, without text (the text stages will have nothing to read)
        items = pd.DataFrame({"item": interactions["item"].drop_duplicates().to_numpy(), "title": ""})
    items["text"] = item_sentence(items, _template(params.data, items))
    columns = {"user": "user_id|reviewerID", "item": "parent_asin|asin", "time": "timestamp|unixReviewTime"}
    return finish(
        interactions,
        items,
        reviews=review_table,
        adapter="amazon",
        sources=sources,
        columns=columns,
        unique_events=True,
    )


def _atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header `name:type`; the types dropped from the names."""
    head = path.open(encoding="utf-8").readline().rstrip("\n").split("\t")
    if not all(":" in h for h in head):
        raise DataLoadError(f"{path}: header {head} is not RecBole's `name:type` form (e.g. user_id:token)")
    names = [h.split(":")[0] for h in head]
    types = {n: h.split(":")[1] for n, h in zip(names, head)}
    table = pd.read_csv(path, sep="\t", header=0, names=names, dtype=str, keep_default_na=False, na_values=[""])
    for name, kind in types.items():
        if kind == "float":
            table[name] = pd.to_numeric(table[name], errors="coerce")
    return table


def _atomic_files(path: Path, suffix: str) -> list[Path]:
    if path.is_file():
        found = path.with_suffix(suffix)
        return [found] if found.is_file() else []
    return sorted(p for p in path.glob(f"*{suffix}") if p.name.count(".") == 1)


def recbole(params: Params, path: Path) -> ShopData:
    """RecBole atomic files: <name>.inter, and <name>.item for the items' text."""
    inter_files = [path] if path.is_file() else _atomic_files(path, ".inter")
    if len(inter_files) != 1:
        raise DataLoadError(f"{path}: expected one <name>.inter, found {[p.name for p in inter_files] or 'none'}")
    raw = _atomic(inter_files[0])
    for need in ("user_id", "item_id"):
        if need not in raw:
            raise DataLoadError(f"{inter_files[0]}: no '{need}' column (found {list(raw.columns)})")
    interactions = pd.DataFrame({"user": raw["user_id"], "item": raw["item_id"]})
    if "timestamp" in raw:
        interactions["time"] = pd.to_datetime(raw["timestamp"], unit="s", errors="coerce")
    if "rating" in raw:
        interactions["rating"] = raw["rating"]
    sources = [str(inter_files[0])]
    item_files = _atomic_files(inter_files[0], ".item")
    if item_files:
        meta = _atomic(item_files[0])
        sources.append(str(item_files[0]))
        renames = {"item_id": "item", "movie_title": "title", "categories": "category", "genre": "category"}
        items = meta.rename(columns=renames)
        items = items[[c for c in ["item", "title", "description", "category", "brand", "price"] if c in items]]
    else:
        items = pd.DataFrame({"item": interactions["item"].drop_duplicates().to_numpy(), "title": ""})
    items["text"] = item_sentence(items, _template(params.data, items))
    return finish(interactions, items, adapter="recbole", sources=sources, columns={"user": "user_id", "item": "item_id"})


def unisrec(params: Params, path: Path) -> ShopData:
    """The UniSRec benchmark: each user's full sequence (the test row's history and target, oldest first),
    its leave-one-out split kept (last test, the one before valid), the `.text` as the item's sentence."""
    from plmrec.data.seqrec import load_seqrec

    data = load_seqrec(path)
    ids = data.items["item_id"].tolist()
    # A history in the files keeps its newest 50 items: a long sequence is whole only in its training rows
    # (the oldest row's history, then each row's target, oldest first), then the valid and test targets.
    per_user: dict = {}
    for row in data.splits["train"].itertuples(index=False):
        per_user.setdefault(row.user, []).append(row)
    trained = {}
    for user, found in per_user.items():
        found = found[::-1]  # the files list a user's rows newest first
        trained[user] = [*found[0].history, *(r.target for r in found)]
    valid = dict(zip(data.splits["valid"]["user"], data.splits["valid"]["target"]))
    rows = []
    for row in data.splits["test"].itertuples(index=False):
        sequence = [*row.history, row.target]
        if row.user in trained and row.user in valid:
            sequence = [*trained[row.user], valid[row.user], row.target]
        for position, index in enumerate(sequence):
            split = "test" if position == len(sequence) - 1 else "valid" if position == len(sequence) - 2 else "train"
            rows.append((str(row.user), ids[index], position, split))
    interactions = pd.DataFrame(rows, columns=["user", "item", "position", "split"])
    items = pd.DataFrame({"item": data.items["item_id"], "text": data.items["text"]})
    return finish(interactions, items, adapter="unisrec", sources=[str(path)], columns={"item": "item_id:token"})


def _read_any(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    if name.endswith(".xlsx"):
        return pd.read_excel(path)
    return pd.read_csv(path, sep=None, engine="python", keep_default_na=False, na_values=[""])


def _mapped(frame: pd.DataFrame, mapping: dict[str, str], *, source: Path, wanted: tuple[str, ...]) -> pd.DataFrame:
    """The canonical columns of `frame` (canonical name -> its column), a missing one named with its key."""
    out = pd.DataFrame(index=frame.index)
    for canonical in wanted:
        column = mapping.get(canonical)
        if column is None:
            continue
        if column not in frame:
            raise DataLoadError(
                f"{source}: data.columns.{canonical} is '{column}', which the file does not have "
                f"(its columns: {', '.join(map(str, frame.columns))})"
            )
        out[canonical] = frame[column]
    return out


def _guess(columns: list[str], aliases: tuple[str, ...]) -> str | None:
    found = [c for c in columns if str(c).strip().lower() in aliases]
    return found[0] if len(found) == 1 else None


def table(params: Params, path: Path) -> ShopData:
    """A plain table of interactions (data.columns maps user, item, and optionally time, quantity, price,
    basket, rating, country, title, description, category, brand); its catalogue in data.items_path
    (item_columns: item, title, ...) or, without one, the item columns of the same table."""
    frame = _read_any(path)
    mapping = dict(params.data.columns)
    for canonical, aliases in (("user", USER_ALIASES), ("item", ITEM_ALIASES)):
        if canonical not in mapping:
            guessed = _guess(list(frame.columns), aliases)
            if guessed is None:
                raise DataLoadError(
                    f"{path}: which column is the {canonical}? set data.columns.{canonical} "
                    f"(the file's columns: {', '.join(map(str, frame.columns))})"
                )
            mapping[canonical] = guessed
    wanted = ("user", "item", "time", "quantity", "price", "basket", "rating", "country")
    interactions = _mapped(frame, mapping, source=path, wanted=wanted)
    if "time" in interactions:
        interactions["time"] = pd.to_datetime(interactions["time"], errors="coerce")
    sources = [str(path)]
    text_fields = ("title", "description", "category", "brand")
    if params.data.items_path:
        catalogue, item_map = _read_any(Path(params.data.items_path)), dict(params.data.item_columns)
        item_map.setdefault("item", mapping["item"] if mapping["item"] in catalogue else "item")
        items = _mapped(catalogue, item_map, source=Path(params.data.items_path), wanted=("item", *text_fields))
        sources.append(str(params.data.items_path))
    else:
        items = _mapped(frame, mapping, source=path, wanted=("item", *text_fields)).drop_duplicates("item")
        if items.shape[1] == 1:
            items["title"] = ""
    items["text"] = item_sentence(items, _template(params.data, items))
    return finish(interactions, items, adapter="table", sources=sources, columns=mapping)


def _template(data: DataParams, items: pd.DataFrame) -> str:
    """data.item_template, or the text fields the catalogue has, in ITEM_TEXT_FIELDS order, '. '-joined."""
    if data.item_template:
        return data.item_template
    present = [f for f in ITEM_TEXT_FIELDS if f in items]
    return ". ".join(f"{{{f}}}" for f in present) or "{item}"


def data_format(params: Params) -> str:
    """The adapter `plmrec run` uses: online_retail for the synthetic generator and downloads, else
    data.format, or what data.path's layout says where it is `auto`."""
    data = params.data
    if data.source != "file":
        return "online_retail"
    return data.format if data.format != "auto" else detect_format(data.path)
