"""The `train-user-model` step: the KFP component of plmrec.stages.train_user_model, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def train_user_model(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    encoder: Input[Model],
    user_model: Output[Model],
    metrics: Output[Metrics],
):
    """GUIM user-model variants over the chosen encoder's item text on the temporal windows; the best
    on valid, with every customer's C vectors, is the `user_model` output."""
    from plmrec.stages import train_user_model

    train_user_model.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        encoder=encoder,
        user_model=user_model,
        metrics=metrics,
    )
