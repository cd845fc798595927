"""The `prepare` step: the KFP component of plmrec.stages.prepare, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import Dataset, Input, Metrics, Output

from plmrec.components.base import component


@component
def prepare(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    raw: Input[Dataset],
    prepared: Output[Dataset],
    metrics: Output[Metrics],
):
    """Clean, split by date and label the transactions (one parquet with a `split` column)."""
    from plmrec.stages import prepare

    prepare.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        raw=raw,
        prepared=prepared,
        metrics=metrics,
    )
