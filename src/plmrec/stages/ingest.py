"""ingest: the shop's raw transactions, loaded (a file, a download) or generated (synthetic).

Inputs: none (params `data`). Outputs: `raw` (table, data/raw.parquet), `metrics` (metrics/ingest.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.data.tables import write_table
from plmrec.stages.common import kfp_setup, log_figures, say, write_json
from plmrec.stages.declaration import Port, Stage

RAW = Port("raw", "table", "the raw transactions table (parquet)", "data/raw.parquet")
SPEC = Stage(
    "ingest",
    __name__,
    outputs=(RAW, Port("metrics", "metrics", "rows and invoices read (JSON)", "metrics/ingest.json", required=False)),
    params=("data",),
    code=("src/plmrec/data",),
)


def load_source(params: Params, download_dir: str | Path = "data/external") -> pd.DataFrame:
    """The table data.source names: the synthetic generator, a file, or a public dataset downloaded."""
    source = params.data
    if source.source == "synthetic":
        from plmrec.data.synthetic import generate_transactions

        return generate_transactions(source.synthetic)
    from plmrec.data.online_retail import load_transactions

    if source.source == "file":
        return load_transactions(source.path, encoding=source.encoding)
    from plmrec.data.download import download

    return load_transactions(download(source.source, download_dir), encoding=source.encoding)


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
        table = load_source(params)
        meta = {
            "source": params.data.source,
            "path": params.data.path,
            "rows": len(table),
            "columns": list(table.columns),
        }
        write_table(table, raw, meta)
        stats = {
            "rows": len(table),
            "invoices": int(table["InvoiceNo"].nunique()) if "InvoiceNo" in table else 0,
            "seconds": round(time.perf_counter() - start, 3),
        }
        tracking.log_numeric(stats, "raw_")
        tracking.set_tags({"data.raw_md5": file_digest(raw, "md5")})
        if metrics is not None:
            write_json(metrics, {"ingest": {k: stats[k] for k in ("rows", "invoices")}})
        say("ingest", f"{stats['rows']:,} rows from {params.data.source} -> {raw} ({stats['seconds']}s)")
        return {**stats, "mlflow_run_id": run.info.run_id}


command = SPEC.command(ingest, help="Load or generate the raw transactions table.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, raw, metrics) -> None:
    """The KFP component's body: artifacts in, the stage, metadata and metrics out."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    out = ingest(params, **SPEC.kfp_paths({"raw": raw, "metrics": metrics}), **tracked)
    raw.metadata.update({"rows": out["rows"], "format": "parquet", "source": params.data.source})
    log_figures(metrics, metrics.path)
