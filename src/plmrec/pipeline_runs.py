"""Pipeline runs side by side, for the terminal: one column per run, one row per field or metric."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from plmrec.errors import PlmrecError
from plmrec.tracking import ENCODER_TAG, MERGE_TAG, RUN_KEY_TAG


def compare_runs(client, experiment: str, limit: int = 5) -> pd.DataFrame:
    """The newest `limit` pipeline (parent) runs: status, start, duration, run key, every metric."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PlmrecError(f"no MLflow experiment '{experiment}' yet: run the pipeline first (plmrec run)")
    found = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`plmrec.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    if not found:
        raise PlmrecError(f"experiment '{experiment}' has no pipeline runs yet")
    columns = {}
    for run in found:
        info = run.info
        start = dt.datetime.fromtimestamp(info.start_time / 1000)
        seconds = (info.end_time - info.start_time) / 1000 if info.end_time else None
        fields = {
            "status": info.status,
            "started": start.strftime("%Y-%m-%d %H:%M"),
            "duration": f"{seconds / 60:.1f} min" if seconds is not None else "running",
            "run key": run.data.tags.get(RUN_KEY_TAG, ""),
            "run id": info.run_id[:12],
            "encoder": run.data.tags.get(ENCODER_TAG, "-"),  # chosen on valid by evaluate-retrieval
            "merge alpha": run.data.tags.get(MERGE_TAG, "-"),  # chosen on valid by finetune
            "search mode": run.data.tags.get("plmrec.search_mode", "-"),  # chosen on valid by evaluate-search
        }
        fields.update({k: f"{v:.4g}" for k, v in sorted(run.data.metrics.items())})
        columns[info.run_name or info.run_id[:8]] = fields
    table = pd.DataFrame(columns)
    return table.fillna("-")


def format_runs(table: pd.DataFrame, uri: str, experiment: str) -> str:
    with pd.option_context(
        "display.max_rows", 500, "display.max_columns", 50, "display.width", 200, "display.max_colwidth", 40
    ):
        return f"experiment '{experiment}' at {uri}\n{table.to_string()}"
