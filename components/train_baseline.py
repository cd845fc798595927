"""The `train-baseline` step: the KFP component of plmrec.stages.train_baseline, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def train_baseline(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    baseline: Output[Model],
    metrics: Output[Metrics],
):
    """XGBoost on non-text features for the quantity label (early stopping on valid)."""
    from plmrec.stages import train_baseline

    train_baseline.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        baseline=baseline,
        metrics=metrics,
    )
