"""The `evaluate-retrieval` step: the KFP component of plmrec.stages.evaluate_retrieval, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def evaluate_retrieval(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    pretrained: Input[Model],
    finetuned: Input[Model],
    encoder: Output[Model],
    metrics: Output[Metrics],
    reports: Output[Artifact],
    report: Output[HTML],
):
    """Next-item retrieval with full ranking for the base, pretrained and fine-tuned encoders; the one
    chosen on the valid window, with its item and user embeddings, is the `encoder` output."""
    from plmrec.stages import evaluate_retrieval

    evaluate_retrieval.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        pretrained=pretrained,
        finetuned=finetuned,
        encoder=encoder,
        metrics=metrics,
        reports=reports,
        report=report,
    )
