"""The `register-model` step: the KFP component of plmrec.stages.register_model, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def register_model(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    bundle: Input[Model],
    prepared: Input[Dataset],
    decision: Output[Metrics],
):
    """Register the bundle in the MLflow registry (@challenger); the gate promotes it to @champion."""
    from plmrec.stages import register_model

    register_model.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        bundle=bundle,
        prepared=prepared,
        decision=decision,
    )
