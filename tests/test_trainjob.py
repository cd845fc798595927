"""Distributed training steps as Kubeflow Trainer v2 TrainJobs, checked offline: the job the compiled
pipeline's step would submit is valid against the Trainer API's schema, a typo, a wrong type or a
missing field is caught, the status is read as the controller writes it, and workers 1 stays one pod."""

import copy

import pytest
import yaml
from click.testing import CliRunner

from helpers import ROOT
from plmrec.cli import main
from plmrec.cluster import trainjob
from plmrec.config import load_params, parse_params
from plmrec.errors import ConfigError, ManifestError
from plmrec.pipelines.training import compile_pipeline

DISTRIBUTED = [
    "pretrain.resources.distributed.workers=2",
    "pretrain.resources.distributed.gpus_per_worker=2",
    "pretrain.resources.distributed.volume_claim=plmrec-work",
    "pretrain.resources.node_selector={nvidia.com/gpu.present: 'true'}",
    "pretrain.resources.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
]


def _compiled(tmp_path, overrides):
    params = load_params(ROOT / "params.yaml", overrides)
    spec, *platform = yaml.safe_load_all(compile_pipeline(params, tmp_path / "pipeline.yaml").read_text())
    k8s = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    return spec, k8s


def test_workers_2_compiles_to_a_launcher_step_whose_job_is_valid(tmp_path):
    users = ["user_model.resources.distributed.workers=2", "user_model.resources.distributed.volume_claim=plmrec-work"]
    spec, k8s = _compiled(tmp_path, [*DISTRIBUTED, *users])
    launcher = spec["deploymentSpec"]["executors"]["exec-train-user-model"]["container"]
    assert "accelerator" not in launcher.get("resources", {}) and "pvcMount" in k8s["exec-train-user-model"]
    step = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]
    assert "accelerator" not in step.get("resources", {}) and step["image"] == "ghcr.io/plmrec/plmrec:0.1.0"
    assert k8s["exec-pretrain"]["pvcMount"][0]["mountPath"] == "/mnt/plmrec"  # the volume it shares with the job
    finetune = spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]
    assert "accelerator" in finetune["resources"]  # finetune keeps workers 1: one GPU pod, as before
    config = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]  # what the step receives
    params = parse_params(config, origin="compiled pipeline")
    doc = trainjob.job_for(params, "pretrain", run_key="kfp-run-1", tracking_uri="http://mlflow:5000", namespace="ml")
    assert trainjob.trainjob_problems(doc) == []
    user_job = trainjob.job_for(params, "train-user-model", run_key="kfp-run-1", tracking_uri="http://mlflow:5000")
    assert trainjob.trainjob_problems(user_job) == [] and "--user-model" in user_job["spec"]["trainer"]["args"]
    trainer = doc["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 2
    assert trainer["image"] == "ghcr.io/plmrec/plmrec-cuda:0.1.0"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["command"] == ["torchrun"] and trainer["args"][:4] == ["--no-python", "plmrec", "stage", "pretrain"]
    assert {"name": "PLMREC_RUN_KEY", "value": "kfp-run-1"} in trainer["env"]
    pod = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod["name"] == "node" and pod_spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod_spec["volumes"][0]["persistentVolumeClaim"] == {"claimName": "plmrec-work"}
    assert len(doc["metadata"]["name"]) <= 63 and doc["metadata"]["namespace"] == "ml"


def test_workers_1_stays_a_single_gpu_pod(tmp_path):
    spec, k8s = _compiled(tmp_path, [])
    step = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]
    assert step["resources"]["accelerator"]["resourceCount"] == "1"
    assert step["image"] == "ghcr.io/plmrec/plmrec-cuda:0.1.0"
    assert "pvcMount" not in k8s.get("exec-pretrain", {})
    out = CliRunner().invoke(main, ["manifests", "trainjob", "pretrain", "--params", str(ROOT / "params.yaml")])
    assert out.exit_code == 0 and "no TrainJob" in out.output


def test_the_cli_prints_the_checked_job(tmp_path):
    args = ["manifests", "trainjob", "pretrain", "--params", str(ROOT / "params.yaml"), "--run-key", "abc"]
    out = CliRunner().invoke(main, [*args, *sum((["-S", o] for o in DISTRIBUTED), [])])
    assert out.exit_code == 0, out.output
    doc = yaml.safe_load(out.output[out.output.index("apiVersion:") :])
    assert doc["kind"] == "TrainJob" and trainjob.trainjob_problems(doc) == []
    assert "/mnt/plmrec/runs/abc/pretrain/model" in doc["spec"]["trainer"]["args"]


@pytest.fixture
def valid_job():
    params = load_params(ROOT / "params.yaml", DISTRIBUTED)
    return trainjob.job_for(params, "pretrain", run_key="k", tracking_uri="http://mlflow:5000")


@pytest.mark.parametrize(
    "case, change, message",
    [
        ("typo", lambda d: d["spec"]["trainer"].update(numNode=2), "'numNode' was unexpected"),
        ("wrong type", lambda d: d["spec"]["trainer"].update(numNodes="2"), "numNodes: '2' is not of type 'integer'"),
        ("missing field", lambda d: d["spec"]["runtimeRef"].pop("name"), "'name' is a required property"),
        (
            "field of an older Trainer",
            lambda d: d["spec"].update(podTemplateOverrides=[]),
            "'podTemplateOverrides' was unexpected",
        ),
        (
            "typo in a Kubernetes type",
            lambda d: d["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
                "template"
            ]["spec"]["template"]["spec"]["tolerations"][0].update(keyy="x"),
            "tolerations.0: Additional properties are not allowed ('keyy' was unexpected)",
        ),
        ("command not a list", lambda d: d["spec"]["trainer"].update(command="torchrun"), "is not of type 'array'"),
    ],
)
def test_the_schema_rejects_what_the_api_server_would(valid_job, case, change, message):
    assert trainjob.trainjob_problems(valid_job) == []
    broken = copy.deepcopy(valid_job)
    change(broken)
    problems = trainjob.trainjob_problems(broken)
    assert any(message in p for p in problems), (case, problems)
    with pytest.raises(ManifestError, match="the rendered TrainJob is invalid"):
        trainjob.check_trainjob(broken)


def test_distributed_settings_are_checked_where_they_are_written():
    with pytest.raises(ConfigError, match="needs distributed.volume_claim"):
        load_params(ROOT / "params.yaml", ["finetune.resources.distributed.workers=3"])
    with pytest.raises(ConfigError, match="search: distributed.workers > 1 is for pretrain, finetune and user_model"):
        load_params(
            ROOT / "params.yaml",
            ["search.resources.distributed.workers=2", "search.resources.distributed.volume_claim=v"],
        )


@pytest.mark.parametrize(
    "status, state",
    [
        ({}, ("Created", "", "")),
        ({"jobsStatus": [{"name": "node", "active": 2, "ready": 2}]}, ("Running", "", "")),
        (
            {"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": "x"}]},
            ("Suspended", "Suspended", "x"),
        ),
        (
            {
                "conditions": [{"type": "Suspended", "status": "False", "reason": "Resumed"}],
                "jobsStatus": [{"active": 1}],
            },
            ("Running", "", ""),
        ),
        (
            {"conditions": [{"type": "Complete", "status": "True", "reason": "AllJobsCompleted", "message": "ok"}]},
            ("Complete", "AllJobsCompleted", "ok"),
        ),
        (
            {
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "jobset failed due to"}
                ]
            },
            ("Failed", "FailedJobs", "jobset failed due to"),
        ),
    ],
)
def test_the_job_state_is_read_from_its_conditions(status, state):
    assert trainjob.job_state({"status": status}) == state


def test_the_work_folder_holds_the_inputs_and_params_that_train_in_one_process_per_rank(tmp_path):
    mount = tmp_path / "volume"
    overrides = [*DISTRIBUTED, f"pretrain.resources.distributed.mount_path={mount}"]
    params = load_params(ROOT / "params.yaml", overrides)
    prepared = tmp_path / "prepared_data"
    prepared.write_bytes(b"PAR1 not really")
    work = trainjob.prepare_work_dir(params, "pretrain", run_key="run/1", inputs={"prepared": prepared})
    assert work == mount / "runs" / "run-1" / "pretrain"
    assert (work / "inputs" / "prepared").read_bytes() == b"PAR1 not really"
    inner = load_params(work / "params.yaml")
    assert inner.pretrain.resources.distributed.workers == 1  # inside the job the stage trains itself
    assert inner.pretrain.resources.distributed.volume_claim == "plmrec-work"
    args = trainjob.stage_args(params, "pretrain", run_key="run/1")
    assert args[args.index("--prepared") + 1] == str(work / "inputs" / "prepared")
    with pytest.raises(ManifestError, match="inputs"):
        trainjob.prepare_work_dir(params, "finetune", run_key="r", inputs={"prepared": prepared})


@pytest.mark.integration
def test_the_user_model_stage_runs_as_two_trainjob_nodes(tmp_path):
    """What a TrainJob's nodes run for train-user-model: `torchrun -m plmrec.cli stage train-user-model`
    on each of two "nodes", rendezvous from the PET_* variables alone (as the torch runtime sets them);
    both ranks train, rank 0 writes the model and the report once."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from helpers import SMALL, minilm_items, quick_user_model_params
    from plmrec.config import Params, SyntheticParams
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    prepared, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    items, _ = minilm_items(prepared)
    (tmp_path / "encoder").mkdir()
    items.to_parquet(tmp_path / "encoder" / "item_embeddings.parquet", index=False)
    prepared.to_parquet(tmp_path / "prepared.parquet", index=False)
    params = Params(user_model=quick_user_model_params(variants=[{"vectors": 2, "inputs": "id+text"}], seeds=[0]))
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stage = ["-m", "plmrec.cli", "stage", "train-user-model", "--params", str(tmp_path / "params.yaml")]
    stage += ["--prepared", str(tmp_path / "prepared.parquet"), "--encoder", str(tmp_path / "encoder")]
    stage += ["--user-model", str(tmp_path / "model"), "--metrics", str(tmp_path / "metrics.json")]
    stage += ["--result", str(tmp_path / "result.json")]
    pet = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *stage],
            env={**os.environ, "OMP_NUM_THREADS": "1", "PLMREC_RUN_KEY": "job-test", **pet, "PET_NODE_RANK": str(n)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    outputs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, (out[-2000:], err[-3000:])
    result = json.loads((tmp_path / "result.json").read_text())["user_model"]
    assert result["chosen"] == "guim-c2-id+text" and (tmp_path / "model" / "user_model.pt").exists()
    assert (tmp_path / "model" / "seeds" / "0" / "refit.pt").exists()
    assert 0 <= result["variants"]["guim-c2-id+text"]["valid_ndcg@10"] <= 1
