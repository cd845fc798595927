"""The `compare-models` step: the KFP component of plmrec.stages.compare_models, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def compare_models(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared: Input[Dataset],
    encoder: Input[Model],
    user_model: Input[Model],
    search: Input[Model],
    bundle: Output[Model],
    metrics: Output[Metrics],
    reports: Output[Artifact],
    report: Output[HTML],
):
    """XGBoost with and without PLM features, the recommender rows and learning to rank, over several
    seeds; the served recommender's bundle, refitted on all purchases."""
    from plmrec.stages import compare_models

    compare_models.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        prepared=prepared,
        encoder=encoder,
        user_model=user_model,
        search=search,
        bundle=bundle,
        metrics=metrics,
        reports=reports,
        report=report,
    )
