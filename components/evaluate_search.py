"""The `evaluate-search` step: the KFP component of plmrec.stages.evaluate_search, whose declaration
(`SPEC`) names these inputs and outputs."""

from kfp.dsl import HTML, Input, Metrics, Model, Output

from plmrec.components.base import component


@component
def evaluate_search(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    encoder: Input[Model],
    search: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Complex product search on the configured review data: BM25, the base and selected encoders, BLaIR
    per seed and the hybrids; `search` holds the mode chosen on valid (a skip when no data is set)."""
    from plmrec.stages import evaluate_search

    evaluate_search.kfp(
        config,
        tracking_uri,
        run_key or job_id,
        encoder=encoder,
        search=search,
        metrics=metrics,
        report=report,
    )
