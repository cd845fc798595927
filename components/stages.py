"""Components for ingest, validation, preparation, pretraining, fine-tuning, the baseline model and the evaluations."""

import os

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

IMAGE = os.environ.get("PLMREC_IMAGE", "ghcr.io/plmrec/plmrec:0.1.0")


def component(fn):
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(fn)


@component
def ingest(config: dict, tracking_uri: str, run_key: str, job_id: str,
           raw_data: Output[Dataset], ingest_metrics: Output[Metrics]):
    """Load or generate the raw transactions table (parquet)."""
    from plmrec.kfp_runtime import ingest_task

    ingest_task(config, tracking_uri, run_key or job_id, raw_data, ingest_metrics)


@component
def validate_data(config: dict, tracking_uri: str, run_key: str, job_id: str, suite: str,
                  table: Input[Dataset], report: Output[HTML], report_files: Output[Artifact],
                  validation_metrics: Output[Metrics]):
    """Run a great-expectations suite; a failure stops the pipeline with the report in MLflow."""
    from plmrec.kfp_runtime import validate_task

    validate_task(config, tracking_uri, run_key or job_id, suite, table, report, report_files, validation_metrics)


@component
def prepare_data(config: dict, tracking_uri: str, run_key: str, job_id: str, raw_data: Input[Dataset],
                 prepared_data: Output[Dataset], prepare_metrics: Output[Metrics]):
    """Clean, split by date and label the transactions (one parquet with a `split` column)."""
    from plmrec.kfp_runtime import prepare_task

    prepare_task(config, tracking_uri, run_key or job_id, raw_data, prepared_data, prepare_metrics)


@component
def train_baseline(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                   model: Output[Model], train_metrics: Output[Metrics]):
    """XGBoost on non-text features for the quantity label (early stopping on valid)."""
    from plmrec.kfp_runtime import train_baseline_task

    train_baseline_task(config, tracking_uri, run_key or job_id, prepared_data, model, train_metrics)


@component
def evaluate_baseline(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                      model: Input[Model], test_metrics: Output[Metrics],
                      confusion: Output[ClassificationMetrics]):
    """Score the test split once."""
    from plmrec.kfp_runtime import evaluate_baseline_task

    evaluate_baseline_task(config, tracking_uri, run_key or job_id, prepared_data, model, test_metrics, confusion)


@component
def pretrain_encoder(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                     model: Output[Model], pretrain_metrics: Output[Metrics], loss_curve: Output[HTML]):
    """DAPT/TAPT pretraining with MLM and TSDAE; uses the GPU the pipeline requests, or the CPU."""
    from plmrec.kfp_runtime import pretrain_task

    pretrain_task(config, tracking_uri, run_key or job_id, prepared_data, model, pretrain_metrics, loss_curve)


@component
def finetune_encoder(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                     pretrained: Input[Model], model: Output[Model], finetune_metrics: Output[Metrics],
                     plots: Output[HTML]):
    """Contrastive fine-tuning (in-batch InfoNCE), then item/user embeddings and the item index."""
    from plmrec.kfp_runtime import finetune_task

    finetune_task(config, tracking_uri, run_key or job_id, prepared_data, pretrained, model, finetune_metrics, plots)


@component
def evaluate_retrieval(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                       pretrained: Input[Model], finetuned: Input[Model], retrieval_metrics: Output[Metrics],
                       table: Output[HTML]):
    """Next-item retrieval with full ranking for the base, pretrained and fine-tuned encoders."""
    from plmrec.kfp_runtime import evaluate_retrieval_task

    evaluate_retrieval_task(config, tracking_uri, run_key or job_id, prepared_data, pretrained, finetuned,
                            retrieval_metrics, table)


@component
def compare_models(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                   finetuned: Input[Model], compare_metrics: Output[Metrics], results: Output[HTML],
                   bundle: Output[Model]):
    """XGBoost with and without PLM features, ALS and its PLM variants, learning to rank: several seeds;
    the served recommender's bundle, refitted on all purchases."""
    from plmrec.kfp_runtime import compare_models_task

    compare_models_task(config, tracking_uri, run_key or job_id, prepared_data, finetuned, compare_metrics, results,
                        bundle)


@component
def register_model(config: dict, tracking_uri: str, run_key: str, job_id: str, prepared_data: Input[Dataset],
                   bundle: Input[Model], decision: Output[Metrics]):
    """Register the bundle in the MLflow registry (@challenger); the gate promotes it to @champion."""
    from plmrec.kfp_runtime import register_model_task

    register_model_task(config, tracking_uri, run_key or job_id, prepared_data, bundle, decision)


@component
def finish_tracking(config: dict, tracking_uri: str, run_key: str, job_id: str,
                    status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final state."""
    from plmrec.kfp_runtime import finish_task

    finish_task(config, tracking_uri, run_key or job_id, status.state, status.error_message or "")
