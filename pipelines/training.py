"""The training pipeline: ingest -> validate raw -> prepare -> validate prepared, then two branches:
pretrain encoder (GPU) -> fine-tune encoder (GPU) -> evaluate retrieval (the valid window chooses
the encoder every later step uses) -> evaluate product search (BM25, dense, BLaIR, hybrid on review
data; its valid winner is the bundle's query mode), train the user model (GUIM) and compare models (XGBoost with
PLM features, ALS variants, learning to rank) -> register the served recommender in MLflow (a gate
promotes it to @champion), and train -> evaluate the baseline.

With `pretrain.resources.distributed.workers` (or finetune's, or user_model's) above 1 that step becomes a light CPU pod
that runs the stage as a Kubeflow Trainer TrainJob on N nodes (plmrec.cluster.trainjob) and waits for it.

Every stage logs to one MLflow parent run (keyed by the KFP job id, or `run_key`); an exit
handler closes that run with the pipeline's final state, failed or not.
"""

from pathlib import Path

import yaml
from kfp import compiler, dsl, kubernetes

from plmrec import components as c
from plmrec.config import Params, ResourceParams
from plmrec.stages import FINISH_TRACKING, STAGES

TRACKING_LOGIN = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def request_resources(task, resources: ResourceParams, pull_secrets: list[str] = ()):
    """CPU and memory requests and limits, the accelerator (e.g. one nvidia.com/gpu) when its limit is
    above 0, node selector and tolerations. The local runner ignores these; a cluster schedules the
    step onto a matching node."""
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if resources.accelerator_limit > 0:
        task.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_limit)
    for label, value in resources.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in resources.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator, value=toleration.value, effect=toleration.effect
        )
    if pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(pull_secrets))
    return task


def build_training_pipeline(params: Params):
    """The pipeline function, with params.yaml as the default of its `config` parameter."""
    default_config = params.to_dict()
    caching = params.pipeline.enable_caching

    @dsl.pipeline(
        name=params.pipeline.name,
        description="plmrec: validated Online Retail data to pretrained and fine-tuned encoders, "
        "item/user embeddings, recommenders compared over seeds, the best registered and gated for serving, "
        "and a baseline model",
    )
    def training_pipeline(config: dict = default_config, tracking_uri: str = "", run_key: str = ""):
        ctx = dict(config=config, tracking_uri=tracking_uri, run_key=run_key, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        finish = c.finish_tracking(**ctx).set_display_name(FINISH_TRACKING)
        with dsl.ExitHandler(finish, name="tracked-run"):
            ingested = c.ingest(**ctx)
            raw = ingested.outputs["raw"]
            raw_ok = c.validate_raw(**ctx, raw=raw)
            prep = c.prepare(**ctx, raw=raw).after(raw_ok)
            prepared = prep.outputs["prepared"]
            prep_ok = c.validate_prepared(**ctx, prepared=prepared)
            model = c.train_baseline(**ctx, prepared=prepared).after(prep_ok)
            scored = c.evaluate_baseline(**ctx, prepared=prepared, baseline=model.outputs["baseline"])
            encoder = c.pretrain(**ctx, prepared=prepared).after(prep_ok)
            pretrained = encoder.outputs["pretrained"]
            tuned = c.finetune(**ctx, prepared=prepared, pretrained=pretrained)
            retrieval = c.evaluate_retrieval(
                **ctx, prepared=prepared, pretrained=pretrained, finetuned=tuned.outputs["finetuned"]
            )
            chosen = retrieval.outputs["encoder"]
            searched = c.evaluate_search(**ctx, encoder=chosen)
            users = c.train_user_model(**ctx, prepared=prepared, encoder=chosen)
            compared = c.compare_models(
                **ctx,
                prepared=prepared,
                encoder=chosen,
                user_model=users.outputs["user_model"],
                search=searched.outputs["search"],
            )
            registered = c.register_model(**ctx, prepared=prepared, bundle=compared.outputs["bundle"])
        tasks = (
            *(ingested, raw_ok, prep, prep_ok, model, scored, encoder, tuned, retrieval),
            *(searched, users, compared, registered),
        )
        for name, task in zip(STAGES, tasks, strict=True):  # the task name is the stage name; show it as such
            task.set_display_name(name)
        gpu_steps = {
            encoder: params.pretrain.resources,
            tuned: params.finetune.resources,
            retrieval: params.finetune.resources,
            users: params.user_model.resources,
            searched: params.search.resources,
        }
        launchable = (
            (encoder, params.pretrain.resources),
            (tuned, params.finetune.resources),
            (users, params.user_model.resources),
        )
        for task, resources in launchable:
            dist = resources.distributed
            if dist.workers > 1:  # the step launches a TrainJob and waits: a light CPU pod on the shared volume
                gpu_steps[task] = params.pipeline.step_resources
                kubernetes.mount_pvc(task, pvc_name=dist.volume_claim, mount_path=dist.mount_path)
        for task in (finish, *tasks):
            request_resources(
                task, gpu_steps.get(task, params.pipeline.step_resources), params.pipeline.image_pull_secrets
            )
            if params.tracking.credentials_secret:  # MLflow's authentication: the steps log in as one user
                kubernetes.use_secret_as_env(
                    task, secret_name=params.tracking.credentials_secret, secret_key_to_env=TRACKING_LOGIN
                )
            task.set_caching_options(caching)
        registered.set_caching_options(False)  # registering is a side effect: never skip it
        finish.set_caching_options(False)

    return training_pipeline


def compile_pipeline(params: Params, output) -> Path:
    """Write the pipeline IR YAML: steps that request an accelerator run in params.pipeline.gpu_image,
    the others in params.pipeline.image."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_training_pipeline(params), str(output))
    spec, *platform = yaml.safe_load_all(output.read_text())  # platform: kfp-kubernetes settings, if any
    for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
        if "container" in executor:
            container = executor["container"]
            wants_gpu = "accelerator" in container.get("resources", {})
            container["image"] = params.pipeline.gpu_image if wants_gpu else params.pipeline.image
    output.write_text(yaml.safe_dump_all([spec, *platform], sort_keys=False))
    return output
