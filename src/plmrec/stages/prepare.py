"""prepare: clean, split by date and label the transactions (one table with a `split` column).

Input: `raw` (data/raw.parquet, after validate-raw passed). Outputs: `prepared` (table,
data/prepared.parquet), `metrics` (metrics/prepare.json: rows kept and dropped, per split).
"""

from __future__ import annotations

from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.data.tables import write_table
from plmrec.stages.common import kfp_setup, log_figures, read_checked, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.ingest import RAW

PREPARED = Port("prepared", "table", "the prepared table: cleaned, labelled, split (parquet)", "data/prepared.parquet")
SPEC = Stage(
    "prepare",
    __name__,
    inputs=(RAW,),
    outputs=(
        PREPARED,
        Port("metrics", "metrics", "rows kept and dropped (JSON)", "metrics/prepare.json", required=False),
    ),
    params=("clean", "split"),
    code=("src/plmrec/data/prepare.py",),
    after=("reports/validation/raw/summary.json",),
)


def prepare(
    params: Params,
    *,
    raw: str | Path,
    prepared: str | Path,
    metrics: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Clean, split and label `raw` into `prepared`; returns the table's metadata (cleaning, split)."""
    from plmrec.data.prepare import prepare_transactions

    with tracking.stage_run(params, "prepare", run_key=run_key, tracking_uri=tracking_uri):
        table, raw_meta = read_checked(raw, "raw")
        _require_validated(
            params, table, raw=raw, meta=raw_meta, tracked={"run_key": run_key, "tracking_uri": tracking_uri}
        )
        out, meta = prepare_transactions(
            table,
            params.clean,
            params.split,
            adapter=raw_meta.get("adapter", "online_retail"),
            absent=raw_meta.get("absent", []),
        )
        write_table(out, prepared, meta)
        tracking.log_json(meta, "prepare/summary.json")
        cleaning = meta["cleaning"]
        figures = {
            **{f"dropped_{k}": v for k, v in cleaning["dropped"].items()},
            "rows": cleaning["rows_out"],
            "customers": cleaning["customers"],
            "stock_codes": cleaning["stock_codes"],
            **{f"rows_{k}": v for k, v in meta["split"]["rows"].items()},
        }
        tracking.log_numeric(figures, "prepared_")
        tracking.set_tags({"data.prepared_md5": file_digest(prepared, "md5"), "data.split_mode": meta["split"]["mode"]})
        if metrics is not None:
            write_json(metrics, {"prepare": figures})
        say(
            "prepare",
            f"{cleaning['rows_out']:,} rows kept of {cleaning['rows_in']:,} "
            f"(dropped {cleaning['dropped']}); split ({meta['split']['mode']}) {meta['split']['rows']}",
        )
        for what, why in meta["skipped"].items():
            say("prepare", f"skipped {what.replace('_', ' ')}: {why}")
            tracking.set_tags({f"skipped.{what}": why})
        return meta


def _require_validated(params: Params, table, *, raw: str | Path, meta: dict, tracked: dict) -> None:
    """Prepare trusts `raw` only with a passing validate-raw record for these very bytes in this pipeline run;
    without one (a stage run alone, another file) it runs the raw suite's checks itself, and a table that
    fails them stops here (exit 3), never cleaned into one that would pass the prepared suite."""
    from plmrec.validation import passed_tag, validate_table

    if tracking.parent_tags(params, **tracked).get(passed_tag("raw")) == file_digest(raw, "md5"):
        return
    say("prepare", "no passing validate-raw record for this table in this run: checking it with the raw suite")
    validate_table(table, "raw", params, meta=meta)


command = SPEC.command(prepare, help="Clean, split and label.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, raw, prepared, metrics) -> None:
    """The KFP component's body: the split's cut-offs and label thresholds on the table's metadata."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    meta = prepare(params, **SPEC.kfp_paths({"raw": raw, "prepared": prepared, "metrics": metrics}), **tracked)
    prepared.metadata.update(
        {
            "rows": meta["split"]["rows"],
            "label_thresholds": meta["label_thresholds"],
            "split_mode": meta["split"]["mode"],
            "train_end": meta["split"].get("train_end"),
            "valid_end": meta["split"].get("valid_end"),
        }
    )
    log_figures(metrics, metrics.path)
