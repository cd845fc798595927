"""The `finetune` step: the KFP component of plmrec.stages.finetune, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def finetune(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    pretrained: Input[Model],
    finetuned: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Contrastive fine-tuning (in-batch InfoNCE), then item/user embeddings and the item index."""
    from plmrec.stages import finetune

    finetune.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        pretrained=pretrained,
        finetuned=finetuned,
        metrics=metrics,
        report=report,
    )
