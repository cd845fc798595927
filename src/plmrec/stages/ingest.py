"""ingest: the shop's raw transactions, loaded (a file, a download) or generated (synthetic).

Online Retail files and the synthetic generator are written as they are (their cleaning is `prepare`'s);
any other format (`data.format`: amazon, recbole, unisrec, table) is read by its adapter into the
canonical tables (plmrec.data.shop) and written as the one table the stages read, what the data lacks
named in the table's metadata (`absent`), what the adapter dropped counted (`dropped`).

Inputs: none (params `data`). Outputs: `raw` (table, data/raw.parquet), `metrics` (metrics/ingest.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest, require_size
from plmrec.data.tables import write_table
from plmrec.errors import DataLoadError
from plmrec.stages.common import kfp_setup, log_figures, say, write_json
from plmrec.stages.declaration import Port, Stage

RAW = Port("raw", "table", "the raw transactions table (parquet)", "data/raw.parquet")
# What the stages do where the data lacks a column (one line in the run, the same in MLflow's tags).
ABSENT_MEANS = {
    "time": "positions stand in for dates (a history's k-th interaction is day k); the split is leave-one-out",
    "basket": "a user's interactions at one time form a basket; co-purchase pairs come from neighbours",
    "quantity": "quantity labels are skipped (train-baseline, evaluate-baseline, the classifier ablation)",
    "price": "price features are zero",
    "country": "the consumer-profile probe's home-country attribute is skipped",
}
SPEC = Stage(
    "ingest",
    __name__,
    outputs=(RAW, Port("metrics", "metrics", "rows and invoices read (JSON)", "metrics/ingest.json", required=False)),
    params=("data",),
    code=("src/plmrec/data",),
)


def load_source(params: Params, download_dir: str | Path = "data/external") -> tuple[pd.DataFrame, dict]:
    """The table data.source names (the synthetic generator, a file in any format, or a public dataset
    downloaded) and what it is: its adapter, and for the canonical formats what they lack and dropped."""
    from plmrec.data.adapters import data_format

    source = params.data
    if source.source == "file":
        require_size(source.path, source.max_file_mb)
    if data_format(params) != "online_retail":
        from plmrec.data.adapters import read_shop
        from plmrec.data.shop import to_transactions

        return to_transactions(read_shop(params))
    if source.source == "synthetic":
        from plmrec.data.synthetic import generate_transactions

        table = generate_transactions(source.synthetic)
    else:
        from plmrec.data.download import download
        from plmrec.data.online_retail import load_transactions

        path = source.path if source.source == "file" else download(source.source, download_dir)
        table = load_transactions(path, encoding=source.encoding, max_rows=source.max_rows)
    return table, {"adapter": "online_retail", "absent": []}


def ingest(
    params: Params,
    *,
    raw: str | Path,
    metrics: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Load or generate the raw transactions table and write it to `raw`."""
    start = time.perf_counter()
    with tracking.stage_run(params, "ingest", run_key=run_key, tracking_uri=tracking_uri) as run:
        table, found = load_source(params)
        where = params.data.path if params.data.source == "file" else params.data.source
        if table.empty:
            raise DataLoadError(f"{where}: read 0 rows ({found['adapter']}); the data holds no purchases to learn from")
        if len(table) > params.data.max_rows:
            raise DataLoadError(
                f"{where}: {len(table):,} rows, more than data.max_rows ({params.data.max_rows:,}); a larger shop "
                f"raises it (-S data.max_rows=...)"
            )
        meta = {
            "source": params.data.source,
            "path": params.data.path,
            "rows": len(table),
            "columns": list(table.columns),
            **found,
        }
        write_table(table, raw, meta)
        stats = {
            "rows": len(table),
            "invoices": int(table["InvoiceNo"].nunique()) if "InvoiceNo" in table else 0,
            "seconds": round(time.perf_counter() - start, 3),
        }
        tracking.log_numeric(stats, "raw_")
        tracking.set_tags(
            {
                "data.raw_md5": file_digest(raw, "md5"),
                "data.format": found["adapter"],
                **{f"data.absent.{c}": ABSENT_MEANS[c] for c in found["absent"]},
            }
        )
        for column in found["absent"]:
            say("ingest", f"the data has no {column}: {ABSENT_MEANS[column]}")
        if found.get("items_without_text"):
            say("ingest", f"{found['items_without_text']:,} items have no text: their id stands in for it")
            tracking.log_numeric({"items_without_text": found["items_without_text"]}, "raw_")
        if found.get("dropped"):
            say("ingest", "dropped while reading: " + ", ".join(f"{k} {v:,}" for k, v in found["dropped"].items()))
            tracking.log_numeric(found["dropped"], "raw_dropped_")
        if metrics is not None:
            write_json(metrics, {"ingest": {k: stats[k] for k in ("rows", "invoices")}})
        say(
            "ingest",
            f"{stats['rows']:,} rows from {params.data.source} ({found['adapter']}) -> {raw} ({stats['seconds']}s)",
        )
        return {**stats, "mlflow_run_id": run.info.run_id}


command = SPEC.command(ingest, help="Load or generate the raw transactions table.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, raw, metrics) -> None:
    """The KFP component's body: artifacts in, the stage, metadata and metrics out."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    out = ingest(params, **SPEC.kfp_paths({"raw": raw, "metrics": metrics}), **tracked)
    raw.metadata.update({"rows": out["rows"], "format": "parquet", "source": params.data.source})
    log_figures(metrics, metrics.path)
