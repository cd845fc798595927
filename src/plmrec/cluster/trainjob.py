"""Training steps as Kubeflow Trainer v2 jobs: render, validate offline, submit, wait.

With `<section>.resources.distributed.workers` > 1 (pretrain, finetune, user_model), the pipeline step does not
train in its own pod: it copies its inputs to a shared volume, renders a TrainJob
(trainer.kubeflow.org/v1alpha1) that runs the same `plmrec stage <name>` under torchrun on N nodes
of the `torch-distributed` ClusterTrainingRuntime, submits it, reports its status until it ends,
fails with the job's own reason, and copies the model the job wrote back to its output artifact.

Why Trainer v2 and not the Training Operator's PyTorchJob: since Trainer v2.0 (2025) the Training
Operator v1 is in maintenance, and Kubeflow 1.11 installs Trainer v2 by default (docs/cluster.md).

The torch runtime sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and
PET_MASTER_PORT on every node; torchrun reads them and starts the ranks (a test runs two "nodes"
with exactly that environment). The job is checked offline against a JSON schema generated from the
`kubeflow-trainer-api` models (the SDK's own types) with unknown fields rejected, because the models
themselves drop a misspelt key without a word.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from plmrec.config import Params, ResourceParams
from plmrec.errors import ManifestError, TrainJobFailed

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
PATCH_MANAGER = "plmrec.dev/pipeline"  # who owns the runtime patch (a domain-prefixed path)
NODE = "node"  # the torch runtime's replicated job and container
VOLUME = "plmrec-work"
DISTRIBUTED_STAGES = {"pretrain": "pretrain", "finetune": "finetune", "train-user-model": "user_model"}
# (each stage's `SPEC.distributed`; a test holds the two equal, so the CLI need not import every stage)


def resources_of(params: Params, stage: str) -> ResourceParams:
    if stage not in DISTRIBUTED_STAGES:
        raise ManifestError(f"stage '{stage}' does not train distributed (only {', '.join(DISTRIBUTED_STAGES)})")
    return getattr(params, DISTRIBUTED_STAGES[stage]).resources


def job_ports(stage: str) -> tuple[list, list]:
    """The stage's declared inputs the job reads (its tables and models) and the model folder it writes."""
    from plmrec import stages

    declared = stages.spec(stage)
    inputs = [p for p in declared.inputs if p.kind in ("table", "model")]
    models = [p for p in declared.outputs if p.kind == "model"]
    return inputs, models


def job_name(stage: str, run_key: str) -> str:
    """An RFC 1035 label of at most 63 characters, unique per run key and stage."""
    digest = hashlib.sha1(run_key.encode()).hexdigest()[:10]
    return f"plmrec-{stage}-{digest}"


def _label(value: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63].strip("-_.")
    return value or "none"


def work_dir(params: Params, stage: str, run_key: str) -> Path:
    """The job's folder on the shared volume: inputs, params.yaml, checkpoints and its outputs."""
    return Path(resources_of(params, stage).distributed.mount_path) / "runs" / _label(run_key) / stage


def _tracking_login(secret: str) -> list[dict]:
    """The MLflow login of the pipeline's user, from its Secret (tracking.credentials_secret)."""
    if not secret:
        return []
    keys = {"MLFLOW_TRACKING_USERNAME": "username", "MLFLOW_TRACKING_PASSWORD": "password"}
    return [{"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for n, k in keys.items()]


def render_trainjob(
    params: Params,
    stage: str,
    *,
    run_key: str,
    args: list[str],
    env: dict[str, str] | None = None,
    namespace: str | None = None,
) -> dict:
    """The TrainJob that runs `plmrec <args>` under torchrun with the stage's resources: N nodes, G GPUs
    (and G processes) per node, node selector, tolerations, the shared volume."""
    res = resources_of(params, stage)
    dist = res.distributed
    gpus = dist.gpus_per_worker
    requests = {"cpu": res.cpu_request, "memory": res.memory_request}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if gpus:
        requests[res.accelerator_type] = limits[res.accelerator_type] = str(gpus)
    pod = {
        "nodeSelector": dict(res.node_selector) or None,
        "tolerations": [t.model_dump(exclude_none=True) for t in res.tolerations] or None,
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": dist.volume_claim}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": VOLUME, "mountPath": dist.mount_path}]}],
        "serviceAccountName": dist.service_account,
        "imagePullSecrets": [{"name": s} for s in params.pipeline.image_pull_secrets] or None,
    }
    spec = {
        "runtimeRef": {"name": dist.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": GROUP},
        "trainer": {
            "image": params.pipeline.gpu_image if gpus else params.pipeline.image,
            "command": ["torchrun"],
            "args": ["--no-python", "plmrec", *args],
            "env": [{"name": k, "value": v} for k, v in {"PYTHONUNBUFFERED": "1", **(env or {})}.items()]
            + _tracking_login(params.tracking.credentials_secret),
            "numNodes": dist.workers,
            "numProcPerNode": max(1, gpus),  # unset, a CPU job would start one process per requested core
            "resourcesPerNode": {"requests": requests, "limits": limits},
        },
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": NODE,
                                    "template": {
                                        "spec": {"template": {"spec": {k: v for k, v in pod.items() if v is not None}}}
                                    },
                                }
                            ]
                        }
                    }
                },
            }
        ],
    }
    if dist.active_deadline_s:
        spec["activeDeadlineSeconds"] = dist.active_deadline_s
    metadata = {
        "name": job_name(stage, run_key),
        "labels": {
            "app.kubernetes.io/part-of": "plmrec",
            "plmrec.dev/stage": stage,
            "plmrec.dev/run-key": _label(run_key),
        },
    }
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


# ------------------------------------------------------------------------------- offline validation
def _close(node):
    """additionalProperties: false on every object schema that lists its properties; `X or null` made
    plain `X` (a rendered job leaves a field out rather than sending null), so errors name the field."""
    if isinstance(node, dict):
        options = node.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            node.pop("anyOf")
            node.update(next(o for o in options if o != {"type": "null"}))
            node.pop("default", None)
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)
    return node


@functools.cache
def trainjob_schema() -> dict:
    """A JSON schema of a TrainJob from the kubeflow-trainer-api models (the SDK's generated types, Trainer
    v2.3): every field typed, required fields required, unknown fields rejected."""
    from kubeflow_trainer_api import models

    schema = models.TrainerV1alpha1TrainJob.model_json_schema(by_alias=True)
    # the generator models a Quantity as a oneOf wrapper object; on the wire it is a string or a number
    schema["$defs"]["IoK8sApimachineryPkgApiResourceQuantity"] = {
        "description": "a Kubernetes quantity, e.g. '2', '500m', '8G'",
        "type": ["string", "number"],
    }
    return _close(schema)


def trainjob_problems(doc: dict) -> list[str]:
    """What the schema rejects in a rendered TrainJob, one line each (empty: valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(trainjob_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    name = doc.get("metadata", {}).get("name", "?") if isinstance(doc, dict) else "?"
    return [f"TrainJob {name}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def check_trainjob(doc: dict) -> dict:
    problems = trainjob_problems(doc)
    if problems:
        raise ManifestError("the rendered TrainJob is invalid:\n  " + "\n  ".join(problems))
    return doc


# ------------------------------------------------------------------------------- status
def job_state(obj: dict) -> tuple[str, str, str]:
    """(state, reason, message) from a TrainJob's status: Complete or Failed from their conditions
    (status True), Suspended, Running while a node job is active, else Created."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("Failed", "Complete", "Suspended"):
        c = conditions.get(kind)
        if c and c.get("status") == "True":
            return kind, c.get("reason", ""), c.get("message", "")
    if any((j.get("active") or 0) > 0 for j in status.get("jobsStatus") or []):
        return "Running", "", ""
    return "Created", "", ""


def _custom_objects_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def submit_and_wait(
    doc: dict, *, namespace: str, poll_s: float, report: Callable[[str], None], timeout_s: float | None = None, api=None
) -> dict:
    """Create the TrainJob (unknown fields refused by the API server: fieldValidation Strict) and poll it
    until Complete; Failed (or the timeout) raises TrainJobFailed with the job's reason and message."""
    api = api or _custom_objects_api()
    name = doc["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, doc, field_validation="Strict")
    report(f"TrainJob {namespace}/{name} submitted: {doc['spec']['trainer']['numNodes']} nodes")
    started, last = time.monotonic(), None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state, reason, message = job_state(obj)
        if state != last:
            report(f"TrainJob {name}: {state}" + (f" ({reason}: {message})" if reason else ""))
            last = state
        if state == "Complete":
            return obj
        if state == "Failed":
            raise TrainJobFailed(
                f"TrainJob {namespace}/{name} failed: {reason}: {message} "
                f"(kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name} -c {NODE})"
            )
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TrainJobFailed(f"TrainJob {namespace}/{name} still {state} after {timeout_s:.0f} s")
        time.sleep(poll_s)


# ------------------------------------------------------------------------------- the step
def _namespace() -> str:
    found = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return found.read_text().strip() if found.exists() else "default"


def stage_args(params: Params, stage: str, *, run_key: str) -> list[str]:
    """`plmrec stage <stage> ...` as the job runs it: params, its declared inputs (in the job's `inputs/`),
    its model folder (`model/`) and its report (`--result result.json`)."""
    work = work_dir(params, stage, run_key)
    inputs, models = job_ports(stage)
    args = ["stage", stage, "--params", str(work / "params.yaml")]
    for port in inputs:
        args += [port.option, str(work / "inputs" / port.name)]
    for port in models:
        args += [port.option, str(work / "model")]
    return [*args, "--result", str(work / "result.json")]


def prepare_work_dir(params: Params, stage: str, *, run_key: str, inputs: dict[str, str | Path]) -> Path:
    """The job's folder filled: each input (port name -> local path) copied in, params.yaml written with
    distribution switched off (inside the job the stage trains itself, under torchrun)."""
    work = work_dir(params, stage, run_key)
    declared = [p.name for p in job_ports(stage)[0]]
    missing = set(declared) - set(inputs)
    if missing:
        raise ManifestError(f"{stage}: inputs {sorted(missing)} not given to the distributed step")
    (work / "inputs").mkdir(parents=True, exist_ok=True)
    for name in declared:
        source, target = Path(inputs[name]), work / "inputs" / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    config = params.to_dict()
    config[DISTRIBUTED_STAGES[stage]]["resources"]["distributed"]["workers"] = 1
    (work / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work


def job_for(params: Params, stage: str, *, run_key: str, tracking_uri: str, namespace: str | None = None) -> dict:
    """The checked TrainJob of a stage: what the step submits and `plmrec manifests trainjob` prints."""
    from plmrec.tracking import RUN_KEY_ENV

    env = {"MLFLOW_TRACKING_URI": tracking_uri, RUN_KEY_ENV: run_key}
    args = stage_args(params, stage, run_key=run_key)
    return check_trainjob(render_trainjob(params, stage, run_key=run_key, args=args, env=env, namespace=namespace))


def run_distributed(
    params: Params,
    stage: str,
    *,
    run_key: str,
    tracking_uri: str,
    inputs: dict[str, str | Path],
    report: Callable[[str], None],
) -> Path:
    """The whole distributed step: inputs to the volume, the job rendered, checked, submitted and waited
    for; returns the job's folder (`model/`, `result.json`)."""
    work = prepare_work_dir(params, stage, run_key=run_key, inputs=inputs)
    namespace = params.serving.namespace or _namespace()
    doc = job_for(params, stage, run_key=run_key, tracking_uri=tracking_uri, namespace=namespace)
    (work / "trainjob.json").write_text(json.dumps(doc, indent=2))
    dist = resources_of(params, stage).distributed
    submit_and_wait(doc, namespace=namespace, poll_s=dist.poll_s, report=report)
    return work
