"""The `validate-prepared` step: the KFP component of plmrec.stages.validate, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from plmrec.components.base import component


@component
def validate_prepared(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    reports: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """The great-expectations `prepared` suite on the prepared table; a failure stops the pipeline."""
    from plmrec.stages import validate

    validate.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        suite="prepared",
        table=prepared,
        reports=reports,
        metrics=metrics,
        report=report,
    )
