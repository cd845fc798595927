"""Product-search benchmarks in their published formats.

Amazon-C4 (Hou et al. 2024, BLaIR; Hugging Face dataset `McAuley-Lab/Amazon-C4`): `test.csv` with
qid, query, item_id, user_id, ori_rating, ori_review, and the item pool
`sampled_item_metadata_1M.jsonl` (item_id, category, metadata). The `ori_*` columns are the review
the query was written from: reference only. `load_c4_queries` drops them, so they cannot reach a
model or a query; `load_c4_reference` reads them apart. The Rec-R1 per-category split (a JSON array
per category, `<Category>.test.json`) reads the same way, its category taken from the file name.

ESCI (Reddy et al. 2022, `amazon-science/esci-data`): examples (query_id, query, product_id,
product_locale, esci_label, split) and products (product_id, product_title, product_description,
product_bullet_point, product_brand, product_locale), in parquet or csv.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd

from plmrec.data.amazon import clean_text, iter_json_lines
from plmrec.data.files import require_data_file
from plmrec.errors import DataLoadError

C4_DATASET = "McAuley-Lab/Amazon-C4"
C4_FILES = {"queries": "test.csv", "items": "sampled_item_metadata_1M.jsonl"}
C4_COLUMNS = ("qid", "query", "item_id", "user_id", "ori_rating", "ori_review")
C4_REFERENCE_ONLY = ("ori_rating", "ori_review")
ESCI_BASE = "https://github.com/amazon-science/esci-data/raw/main/shopping_queries_dataset"
ESCI_FILES = {
    "examples": "shopping_queries_dataset_examples.parquet",
    "products": "shopping_queries_dataset_products.parquet",
}
ESCI_COLUMNS = ("query_id", "query", "product_id", "product_locale", "esci_label")
ESCI_LABELS = ("E", "S", "C", "I")


def _require(frame: pd.DataFrame, columns, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataLoadError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns))}); "
            f"expected {', '.join(columns)}"
        )


def _read_table(path: Path) -> pd.DataFrame:
    require_data_file(path)
    name = path.name.lower()
    try:
        if name.endswith((".json", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as fh:
                records = json.load(fh)
            if not isinstance(records, list):
                raise DataLoadError(f"{path}: expected a JSON array of query records, got {type(records).__name__}")
            return pd.DataFrame.from_records(records)
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, DataLoadError):
            raise
        raise DataLoadError(f"{path}: cannot be read as a query table: {exc}") from None


def _category_from_name(path: Path) -> str:
    stem = path.name.split(".")[0]
    return "" if stem in ("test", "test_subset") else stem


def read_c4(path: str | Path) -> pd.DataFrame:
    """The whole C4 query table, `ori_*` included, its columns checked."""
    path = Path(path)
    frame = _read_table(path)
    _require(frame, C4_COLUMNS, path)
    if frame.empty:
        raise DataLoadError(f"{path}: no query rows")
    return frame


def load_c4_queries(path: str | Path) -> pd.DataFrame:
    """qid, query, item_id, user_id, category: the queries as a ranker may see them (no `ori_*`)."""
    path = Path(path)
    frame = read_c4(path)
    category = frame["subset"] if "subset" in frame else pd.Series(_category_from_name(path), index=frame.index)
    return pd.DataFrame(
        {
            "qid": frame["qid"].astype(str),
            "query": frame["query"].astype(str).str.strip(),
            "item_id": frame["item_id"].astype(str),
            "user_id": frame["user_id"].astype(str),
            "category": category.fillna("").astype(str),
        }
    )


def load_c4_reference(path: str | Path) -> pd.DataFrame:
    """qid and the review each query was written from (analysis only; never a ranker's input)."""
    frame = read_c4(path)
    return frame[["qid", *C4_REFERENCE_ONLY]].assign(qid=frame["qid"].astype(str))


def load_c4_items(path: str | Path) -> pd.DataFrame:
    """The C4 item pool: item_id, category, text (the `metadata` string, cleaned)."""
    path = Path(path)
    frames = []
    for chunk in iter_json_lines(path):
        frame = pd.DataFrame.from_records(chunk)
        _require(frame, ("item_id", "category", "metadata"), path)
        frames.append(frame[["item_id", "category", "metadata"]])
    if not frames:
        raise DataLoadError(f"{path}: no item records")
    items = pd.concat(frames, ignore_index=True).drop_duplicates("item_id")
    return pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "category": items["category"].fillna("").astype(str),
            "text": items["metadata"].map(clean_text),
        }
    ).reset_index(drop=True)


def load_esci(
    examples_path: str | Path, products_path: str | Path | None = None, *, locale: str | None = "us"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(examples: query_id, query, product_id, product_locale, esci_label[, split]; products: product_id,
    text), one locale ('us', 'es', 'jp'; None: all). Labels outside E/S/C/I are an error naming them."""
    examples_path = Path(examples_path)
    examples = _read_table(examples_path)
    _require(examples, ESCI_COLUMNS, examples_path)
    bad = sorted(set(examples["esci_label"].astype(str)) - set(ESCI_LABELS))
    if bad:
        raise DataLoadError(f"{examples_path}: esci_label has {', '.join(bad)}; expected one of E, S, C, I")
    if locale is not None:
        examples = examples[examples["product_locale"] == locale]
    keep = [c for c in (*ESCI_COLUMNS, "split") if c in examples.columns]
    examples = examples[keep].reset_index(drop=True)
    if products_path is None:
        return examples, pd.DataFrame(columns=["product_id", "text"])
    products_path = Path(products_path)
    products = _read_table(products_path)
    _require(products, ("product_id", "product_title"), products_path)
    if locale is not None and "product_locale" in products:
        products = products[products["product_locale"] == locale]
    fields = ("product_title", "product_brand", "product_bullet_point", "product_description")
    parts = [c for c in fields if c in products]
    text = products[parts].fillna("").astype(str).map(clean_text).apply(lambda r: ". ".join(p for p in r if p), axis=1)
    return examples, pd.DataFrame({"product_id": products["product_id"].astype(str), "text": text})


def download_c4(dest: str | Path, *, token: str | None = None) -> dict[str, Path]:
    """Amazon-C4's query table and item pool from the Hugging Face Hub (needs network)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    out = {}
    for key, filename in C4_FILES.items():
        try:
            out[key] = Path(
                hf_hub_download(C4_DATASET, filename, repo_type="dataset", local_dir=str(dest), token=token)
            )
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            raise DataLoadError(
                f"download of {filename} from the Hugging Face dataset {C4_DATASET} failed: {exc}; "
                f"without network, copy the two files into {dest} and load them by path"
            ) from None
    return out


def esci_urls() -> dict[str, str]:
    """The ESCI release files on GitHub (large; fetch with `plmrec.data.download` or curl)."""
    return {key: f"{ESCI_BASE}/{name}" for key, name in ESCI_FILES.items()}
