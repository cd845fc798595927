"""The `ingest` step: the KFP component of plmrec.stages.ingest, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import Dataset, Metrics, Output

from plmrec.components.base import component


@component
def ingest(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    raw: Output[Dataset],
    metrics: Output[Metrics],
):
    """Load or generate the raw transactions table (parquet)."""
    from plmrec.stages import ingest

    ingest.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        raw=raw,
        metrics=metrics,
    )
