"""The `pretrain` step: the KFP component of plmrec.stages.pretrain, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def pretrain(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    pretrained: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """DAPT/TAPT pretraining with MLM and TSDAE; uses the GPU the pipeline requests, or the CPU."""
    from plmrec.stages import pretrain

    pretrain.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        pretrained=pretrained,
        metrics=metrics,
        report=report,
    )
