"""validate-raw and validate-prepared: a great-expectations suite on a table; a failure stops the
pipeline (exit 3) after writing the report.

validate-raw: input `raw` (data/raw.parquet); outputs `reports` (reports/validation/raw: report.json,
report.html, data_docs/, summary.json), `metrics`, `report` (KFP: the report page).
validate-prepared: the same on `prepared` (data/prepared.parquet), reports under reports/validation/prepared.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.data.tables import read_table
from plmrec.errors import DataValidationFailed
from plmrec.stages.common import kfp_setup, log_figures, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.ingest import RAW
from plmrec.stages.prepare import PREPARED


def _outputs(suite: str) -> tuple[Port, ...]:
    reports = Port(
        "reports",
        "folder",
        "where the report goes (report.json, report.html, data_docs/, summary.json)",
        f"reports/validation/{suite}",
        files=("data_docs", "report.html", "report.json"),
        metrics_file="summary.json",
    )
    return (
        reports,
        Port("metrics", "metrics", "expectations evaluated and failed (JSON)", required=False),
        Port("report", "html", "the report page"),
    )


RAW_SPEC = Stage(
    "validate-raw",
    __name__,
    inputs=(RAW,),
    outputs=_outputs("raw"),
    params=("validation", "clean.drop_exact_duplicates"),
    code=("src/plmrec/validation.py",),
)
PREPARED_SPEC = Stage(
    "validate-prepared",
    __name__,
    inputs=(PREPARED,),
    outputs=_outputs("prepared"),
    params=("validation", "clean", "split"),
    code=("src/plmrec/validation.py",),
)
SPECS = {"raw": RAW_SPEC, "prepared": PREPARED_SPEC}


def validate(
    params: Params,
    suite: str,
    table: str | Path,
    *,
    reports: str | Path,
    metrics: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
):
    """Run a great-expectations suite; raises DataValidationFailed after writing and logging the report."""
    from plmrec.validation import passed_tag, validate_table

    stage, start = f"validate-{suite}", time.perf_counter()
    with tracking.stage_run(params, stage, run_key=run_key, tracking_uri=tracking_uri):
        frame, meta = read_table(table)
        tracking.log_input_table(frame, path=table, name=suite, context=suite)
        try:
            outcome = validate_table(frame, suite, params, report_dir=reports, raise_on_failure=False, meta=meta)
        finally:
            if Path(reports).exists():
                tracking.log_dir(reports, f"validation_{suite}")
        figures = {"success": int(outcome.success), "failed": len(outcome.failures), "evaluated": outcome.evaluated}
        tracking.log_numeric(figures, f"validation_{suite}_")
        if metrics is not None:
            write_json(metrics, {f"validation_{suite}": figures})
        say(stage, f"{outcome.summary} ({time.perf_counter() - start:.1f}s)")
        if not outcome.success:
            raise DataValidationFailed(outcome.summary, str(Path(reports) / "report.json"))
        record = {passed_tag(suite): file_digest(table, "md5")}
        tracking.set_parent_tags(params, record, run_key=run_key, tracking_uri=tracking_uri)
        return outcome


def validate_raw(
    params: Params, *, raw: str | Path, reports: str | Path, metrics=None, run_key=None, tracking_uri=None
):
    """The `raw` suite on the ingested table."""
    return validate(params, "raw", raw, reports=reports, metrics=metrics, run_key=run_key, tracking_uri=tracking_uri)


def validate_prepared(
    params: Params, *, prepared: str | Path, reports: str | Path, metrics=None, run_key=None, tracking_uri=None
):
    """The `prepared` suite on the cleaned, split and labelled table."""
    return validate(
        params, "prepared", prepared, reports=reports, metrics=metrics, run_key=run_key, tracking_uri=tracking_uri
    )


def _report(outcome) -> dict:
    return {"success": outcome.success, "evaluated": outcome.evaluated, "failures": outcome.failures}


raw_command = RAW_SPEC.command(
    lambda params, **ports: _report(validate_raw(params, **ports)),
    help="Run the 'raw' validation suite on the ingested table.",
)
prepared_command = PREPARED_SPEC.command(
    lambda params, **ports: _report(validate_prepared(params, **ports)),
    help="Run the 'prepared' validation suite on the prepared table.",
)
COMMANDS = {"validate-raw": raw_command, "validate-prepared": prepared_command}


def kfp(config: dict, tracking_uri: str, run_key: str, *, suite: str, table, reports, metrics, report) -> None:
    """The body of both validation components (`suite` raw or prepared; `table` its input): the report
    page is copied to the `report` artifact even when the suite fails."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    try:
        validate(params, suite, table.path, reports=reports.path, metrics=metrics.path, **tracked)
    finally:
        page = Path(reports.path) / "report.html"
        if page.exists():
            shutil.copyfile(page, report.path)
    log_figures(metrics, metrics.path)
