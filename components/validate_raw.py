"""The `validate-raw` step: the KFP component of plmrec.stages.validate, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from plmrec.components.base import component


@component
def validate_raw(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    raw: Input[Dataset],
    reports: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """The great-expectations `raw` suite on the ingested table; a failure stops the pipeline with the report
    in MLflow."""
    from plmrec.stages import validate

    validate.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        suite="raw",
        table=raw,
        reports=reports,
        metrics=metrics,
        report=report,
    )
