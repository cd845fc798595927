"""The `evaluate-baseline` step: the KFP component of plmrec.stages.evaluate_baseline, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def evaluate_baseline(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    baseline: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    """Score the baseline on the test split once."""
    from plmrec.stages import evaluate_baseline

    evaluate_baseline.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        baseline=baseline,
        metrics=metrics,
        confusion=confusion,
    )
