"""KFP components: thin wrappers that move artifacts in and out of `plmrec.stages` (through
`plmrec.kfp_runtime`). Each component is named as its stage (`plmrec.stages.STAGES`).

Each component body imports plmrec inside the function, as KFP lightweight components
require; the component image (`plmrec.components.IMAGE`, or params.pipeline.image at
compile time) has plmrec installed.
"""

import copy
import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from plmrec.config import DEFAULT_IMAGE

IMAGE = os.environ.get("PLMREC_IMAGE", DEFAULT_IMAGE)


def component(fn):
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(fn)


def as_stage(component, name: str):
    """The same component under a stage's name: one function serves the two validation stages."""
    named = copy.deepcopy(component)
    named.component_spec.name = named.name = name
    return named


@component
def ingest(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    raw_data: Output[Dataset],
    ingest_metrics: Output[Metrics],
):
    """Load or generate the raw transactions table (parquet)."""
    from plmrec import kfp_runtime

    kfp_runtime.ingest(config, tracking_uri, run_key or job_id, raw_data=raw_data, ingest_metrics=ingest_metrics)


@component
def validate(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    suite: str,
    table: Input[Dataset],
    report: Output[HTML],
    report_files: Output[Artifact],
    validation_metrics: Output[Metrics],
):
    """A great-expectations suite (raw or prepared); a failure stops the pipeline with the report in MLflow."""
    from plmrec import kfp_runtime

    kfp_runtime.validate(
        config,
        tracking_uri,
        run_key or job_id,
        suite=suite,
        table=table,
        report=report,
        report_files=report_files,
        validation_metrics=validation_metrics,
    )


validate_raw = as_stage(validate, "validate-raw")
validate_prepared = as_stage(validate, "validate-prepared")


@component
def prepare(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    raw_data: Input[Dataset],
    prepared_data: Output[Dataset],
    prepare_metrics: Output[Metrics],
):
    """Clean, split by date and label the transactions (one parquet with a `split` column)."""
    from plmrec import kfp_runtime

    kfp_runtime.prepare(
        config,
        tracking_uri,
        run_key or job_id,
        raw_data=raw_data,
        prepared_data=prepared_data,
        prepare_metrics=prepare_metrics,
    )


@component
def train_baseline(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """XGBoost on non-text features for the quantity label (early stopping on valid)."""
    from plmrec import kfp_runtime

    kfp_runtime.train_baseline(
        config, tracking_uri, run_key or job_id, prepared_data=prepared_data, model=model, train_metrics=train_metrics
    )


@component
def evaluate_baseline(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    model: Input[Model],
    test_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    """Score the baseline on the test split once."""
    from plmrec import kfp_runtime

    kfp_runtime.evaluate_baseline(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        model=model,
        test_metrics=test_metrics,
        confusion=confusion,
    )


@component
def pretrain(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    model: Output[Model],
    pretrain_metrics: Output[Metrics],
    loss_curve: Output[HTML],
):
    """DAPT/TAPT pretraining with MLM and TSDAE; uses the GPU the pipeline requests, or the CPU."""
    from plmrec import kfp_runtime

    kfp_runtime.pretrain(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        model=model,
        pretrain_metrics=pretrain_metrics,
        loss_curve=loss_curve,
    )


@component
def finetune(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    pretrained: Input[Model],
    model: Output[Model],
    finetune_metrics: Output[Metrics],
    plots: Output[HTML],
):
    """Contrastive fine-tuning (in-batch InfoNCE), then item/user embeddings and the item index."""
    from plmrec import kfp_runtime

    kfp_runtime.finetune(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        pretrained=pretrained,
        model=model,
        finetune_metrics=finetune_metrics,
        plots=plots,
    )


@component
def evaluate_retrieval(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    pretrained: Input[Model],
    finetuned: Input[Model],
    retrieval_metrics: Output[Metrics],
    table: Output[HTML],
    encoder: Output[Model],
):
    """Next-item retrieval with full ranking for the base, pretrained and fine-tuned encoders; the one
    chosen on the valid window, with its item and user embeddings, is the `encoder` output."""
    from plmrec import kfp_runtime

    kfp_runtime.evaluate_retrieval(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        pretrained=pretrained,
        finetuned=finetuned,
        retrieval_metrics=retrieval_metrics,
        table=table,
        encoder=encoder,
    )


@component
def evaluate_search(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    encoder: Input[Model],
    search: Output[Model],
    search_metrics: Output[Metrics],
    results: Output[HTML],
):
    """Complex product search on the configured review data: BM25, the base and selected encoders, BLaIR
    per seed and the hybrids; `search` holds the mode chosen on valid (a skip when no data is set)."""
    from plmrec import kfp_runtime

    kfp_runtime.evaluate_search(
        config,
        tracking_uri,
        run_key or job_id,
        encoder=encoder,
        search=search,
        search_metrics=search_metrics,
        results=results,
    )


@component
def train_user_model(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    encoder: Input[Model],
    user_model: Output[Model],
    user_model_metrics: Output[Metrics],
):
    """GUIM user-model variants over the selected encoder's item text on the temporal windows; the best
    on valid, with every customer's C vectors, is the `user_model` output."""
    from plmrec import kfp_runtime

    kfp_runtime.train_user_model(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        encoder=encoder,
        user_model=user_model,
        user_model_metrics=user_model_metrics,
    )


@component
def compare_models(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    encoder: Input[Model],
    user_model: Input[Model],
    search: Input[Model],
    compare_metrics: Output[Metrics],
    results: Output[HTML],
    bundle: Output[Model],
):
    """XGBoost with and without PLM features, ALS and its PLM variants, the user model, learning to rank
    with and without it: several seeds; the served recommender's bundle, refitted on all purchases."""
    from plmrec import kfp_runtime

    kfp_runtime.compare_models(
        config,
        tracking_uri,
        run_key or job_id,
        prepared_data=prepared_data,
        encoder=encoder,
        user_model=user_model,
        search=search,
        compare_metrics=compare_metrics,
        results=results,
        bundle=bundle,
    )


@component
def register_model(
    config: dict,
    tracking_uri: str,
    run_key: str,
    job_id: str,
    prepared_data: Input[Dataset],
    bundle: Input[Model],
    decision: Output[Metrics],
):
    """Register the bundle in the MLflow registry (@challenger); the gate promotes it to @champion."""
    from plmrec import kfp_runtime

    kfp_runtime.register_model(
        config, tracking_uri, run_key or job_id, prepared_data=prepared_data, bundle=bundle, decision=decision
    )


@component
def finish_tracking(config: dict, tracking_uri: str, run_key: str, job_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final state."""
    from plmrec import kfp_runtime

    kfp_runtime.finish_tracking(
        config, tracking_uri, run_key or job_id, state=status.state, message=status.error_message or ""
    )


__all__ = [
    "compare_models",
    "evaluate_baseline",
    "evaluate_retrieval",
    "evaluate_search",
    "finetune",
    "finish_tracking",
    "ingest",
    "pretrain",
    "prepare",
    "register_model",
    "train_baseline",
    "train_user_model",
    "validate_prepared",
    "validate_raw",
]
