"""The training pipeline: ingest -> validate raw -> prepare -> validate prepared, then two branches:
pretrain encoder (GPU) -> fine-tune encoder (GPU) -> evaluate retrieval and compare models (XGBoost with PLM
features, ALS variants, learning to rank) -> register the served recommender in MLflow (a gate
promotes it to @champion), and train -> evaluate the baseline.

Every stage logs to one MLflow parent run (keyed by the KFP job id, or `run_key`); an exit
handler closes that run with the pipeline's final state, failed or not.
"""

from pathlib import Path

import yaml
from kfp import compiler, dsl

from plmrec.components import (
    compare_models,
    evaluate_baseline,
    evaluate_retrieval,
    finetune_encoder,
    finish_tracking,
    ingest,
    prepare_data,
    pretrain_encoder,
    register_model,
    train_baseline,
    validate_data,
)
from plmrec.config import Params, ResourceParams


def request_resources(task, resources: ResourceParams):
    """CPU and memory limits, and the accelerator (e.g. one nvidia.com/gpu) when the limit is above 0.
    The local runner ignores these; a cluster schedules the step onto a matching node."""
    task.set_cpu_limit(resources.cpu_limit).set_memory_limit(resources.memory_limit)
    if resources.accelerator_limit > 0:
        task.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_limit)
    return task


def build_training_pipeline(params: Params):
    """The pipeline function, with params.yaml as the default of its `config` parameter."""
    default_config = params.to_dict()
    caching = params.pipeline.enable_caching

    @dsl.pipeline(name=params.pipeline.name,
                  description="plmrec: validated Online Retail data to pretrained and fine-tuned encoders, "
                              "item/user embeddings, recommenders compared over seeds, the best registered and gated for serving, "
                              "and a baseline model")
    def training_pipeline(config: dict = default_config, tracking_uri: str = "", run_key: str = ""):
        ctx = dict(config=config, tracking_uri=tracking_uri, run_key=run_key, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish = finish_tracking(**ctx).set_display_name("finish-tracking")
        with dsl.ExitHandler(finish, name="tracked-run"):
            raw = ingest(**ctx).set_display_name("ingest")
            raw_ok = validate_data(**ctx, suite="raw", table=raw.outputs["raw_data"]).set_display_name("validate-raw")
            prep = prepare_data(**ctx, raw_data=raw.outputs["raw_data"]).after(raw_ok).set_display_name("prepare")
            prep_ok = validate_data(**ctx, suite="prepared", table=prep.outputs["prepared_data"]) \
                .set_display_name("validate-prepared")
            model = train_baseline(**ctx, prepared_data=prep.outputs["prepared_data"]).after(prep_ok) \
                .set_display_name("train-baseline")
            scored = evaluate_baseline(**ctx, prepared_data=prep.outputs["prepared_data"], model=model.outputs["model"]) \
                .set_display_name("evaluate")
            encoder = pretrain_encoder(**ctx, prepared_data=prep.outputs["prepared_data"]).after(prep_ok) \
                .set_display_name("pretrain")
            request_resources(encoder, params.pretrain.resources)
            tuned = finetune_encoder(**ctx, prepared_data=prep.outputs["prepared_data"],
                                     pretrained=encoder.outputs["model"]).set_display_name("finetune")
            request_resources(tuned, params.finetune.resources)
            retrieval = evaluate_retrieval(**ctx, prepared_data=prep.outputs["prepared_data"],
                                           pretrained=encoder.outputs["model"], finetuned=tuned.outputs["model"]) \
                .set_display_name("evaluate-retrieval")
            request_resources(retrieval, params.finetune.resources)
            compared = compare_models(**ctx, prepared_data=prep.outputs["prepared_data"],
                                      finetuned=tuned.outputs["model"]).set_display_name("compare-models")
            registered = register_model(**ctx, prepared_data=prep.outputs["prepared_data"],
                                        bundle=compared.outputs["bundle"]).set_display_name("register-model")
        for task in (raw, raw_ok, prep, prep_ok, model, scored, encoder, tuned, retrieval, compared):
            task.set_caching_options(caching)
        registered.set_caching_options(False)  # registering is a side effect: never skip it
        finish.set_caching_options(False)

    return training_pipeline


def compile_pipeline(params: Params, output) -> Path:
    """Write the pipeline IR YAML, with params.pipeline.image as every step's image."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_training_pipeline(params), str(output))
    spec = yaml.safe_load(output.read_text())
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            executor["container"]["image"] = params.pipeline.image
    output.write_text(yaml.safe_dump(spec, sort_keys=False))
    return output
