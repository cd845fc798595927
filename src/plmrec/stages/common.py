"""What every stage shares: its one-line progress report, reading a checked input table, copying its
pictures where DVC shows them, and the KFP side's set-up (validated params, tracking keywords),
metrics logging and distributed launch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params, parse_params
from plmrec.data.tables import read_table
from plmrec.errors import StageError
from plmrec.stages.declaration import flat_figures, write_json

__all__ = [
    "ENCODER_COLUMNS",
    "copy_pictures",
    "kfp_setup",
    "log_figures",
    "read_checked",
    "say",
    "skip",
    "skipped",
    "write_json",
    "write_loss_curve",
]
SKIPPED_FILE = "SKIPPED.json"  # in a model folder a stage did not train: why

ENCODER_COLUMNS = ["CustomerID", "InvoiceNo", "InvoiceDate", "StockCode", "Description", "split"]


def say(stage: str, message: str) -> None:
    """A stage's one-line progress report (the local runner shows these lines)."""
    print(f"[plmrec] {stage}: {message}", flush=True)


def skip(stage: str, why: str, *, folder: str | Path | None = None) -> dict:
    """A stage the data cannot feed (e.g. no quantities for the quantity labels): one line in the run, a
    `skipped` tag on its MLflow run, and `folder` (its model output) holding only SKIPPED.json, so the
    stages reading it skip too. Never a crash, never a silent gap."""
    say(stage, f"skipped: {why}")
    tracking.set_tags({"skipped": why})
    if folder is not None:
        write_json(Path(folder) / SKIPPED_FILE, {"stage": stage, "skipped": why})
    return {"skipped": why}


def skipped(folder: str | Path) -> str | None:
    """Why the stage that writes `folder` skipped, or None where it trained."""
    path = Path(folder) / SKIPPED_FILE
    return json.loads(path.read_text())["skipped"] if path.is_file() else None


def read_checked(path: str | Path, suite: str, *, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """A stage's input table, after checking it has the columns the stage reads, each of its type: a table
    that failed validation stops here with the rows that are wrong (exit 3), never deeper with a traceback."""
    import pyarrow.parquet as pq

    from plmrec.validation import check_columns, check_schema

    if not Path(path).is_file():
        raise StageError(f"{path} does not exist: run the stage that writes it first (dvc.yaml lists the order)")
    check_columns(pq.read_schema(path).names, suite, source=path, columns=columns)
    table, meta = read_table(path, columns=columns)
    check_schema(table, suite, source=path, columns=columns)
    tracking.log_input_table(table, path=path, name=suite, context=suite)
    return table, meta


def copy_pictures(source: str | Path, plots: str | Path | None, names: dict[str, str]) -> None:
    """The stage's pictures (name in `source` -> name in `plots`) copied where DVC shows them as plots."""
    if plots is None:
        return
    Path(plots).mkdir(parents=True, exist_ok=True)
    for name, target in names.items():
        if (Path(source) / name).exists():
            shutil.copyfile(Path(source) / name, Path(plots) / target)


def write_loss_curve(report: dict, plots: str | Path | None, name: str) -> None:
    """The training report's losses as a table DVC draws (`dvc plots show`, `dvc plots diff`): one row per
    logged step, `step` counted across phases so the curve runs on, `phase` naming each part."""
    if plots is None:
        return
    import pandas as pd

    rows, offset = [], 0
    for phase in report.get("phases", []):
        losses = [(int(step), float(loss)) for step, loss in phase.get("losses", [])]
        rows += [{"step": offset + step, "loss": loss, "phase": phase["label"]} for step, loss in losses]
        offset += max((step for step, _ in losses), default=0)
    Path(plots).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["step", "loss", "phase"]).to_csv(Path(plots) / name, index=False)


# ---------------------------------------------------------------------------- the KFP side
def kfp_setup(config: dict, tracking_uri: str, run_key: str) -> tuple[Params, dict]:
    """The validated params, and the stage's tracking keywords (run key, MLflow URI: the pipeline
    parameter, else the params' default)."""
    from plmrec.interrupts import raise_on_signal

    raise_on_signal("this pipeline step", kept="its MLflow run is marked KILLED; a rerun of the pipeline runs it again")
    params = parse_params(config, origin="pipeline parameter 'config'")
    return params, {"run_key": run_key, "tracking_uri": tracking_uri or tracking.resolve_tracking_uri(params)}


def log_figures(metrics_artifact, values) -> None:
    """Every number of `values` (nested dicts) on a KFP Metrics artifact; the JSON file DVC reads is the
    artifact's own file when the stage wrote one there."""
    if isinstance(values, (str, Path)):
        values = json.loads(Path(values).read_text()) if Path(values).is_file() else {}
    for key, value in flat_figures(values).items():
        metrics_artifact.log_metric(key, value)


def run_distributed(params: Params, stage: str, tracked: dict, *, inputs: dict, model: str) -> dict:
    """The stage as a Kubeflow Trainer job (plmrec.cluster.trainjob): its model copied to `model`, its
    report returned. The job's rank 0 logs the stage's MLflow run under the pipeline's parent."""
    from plmrec.cluster import trainjob

    work = trainjob.run_distributed(
        params,
        stage,
        run_key=tracked["run_key"],
        tracking_uri=tracked["tracking_uri"],
        inputs=inputs,
        report=lambda message: say(stage, message),
    )
    shutil.copytree(work / "model", model, dirs_exist_ok=True)
    return json.loads((work / "result.json").read_text())
