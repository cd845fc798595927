import yaml
from click.testing import CliRunner

from helpers import ROOT
from plmrec.cli import main
from plmrec.config import load_params


def test_compiled_pipeline_ir(tmp_path):
    out = tmp_path / "pipeline.yaml"
    res = CliRunner().invoke(
        main,
        [
            "compile",
            "--params",
            str(ROOT / "params.yaml"),
            "-o",
            str(out),
            "-S",
            "pipeline.image=registry.example/plmrec:test",
        ],
    )
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "plmrec-training"
    execs = spec["deploymentSpec"]["executors"]
    gpu_steps = {
        "exec-pretrain",
        "exec-finetune",
        "exec-evaluate-retrieval",
        "exec-evaluate-search",
        "exec-train-user-model",
    }
    assert {n for n, e in execs.items() if e["container"]["image"] == "ghcr.io/plmrec/plmrec-cuda:0.1.0"} == gpu_steps
    assert {e["container"]["image"] for n, e in execs.items() if n not in gpu_steps} == {"registry.example/plmrec:test"}
    names = {c.removeprefix("comp-") for c in spec["components"]}
    assert {"ingest", "validate-raw", "prepare", "train-baseline", "evaluate-baseline", "finish-tracking"} <= names
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["config"]["parameterType"] == "STRUCT"
    expected = load_params(ROOT / "params.yaml", ["pipeline.image=registry.example/plmrec:test"]).to_dict()
    assert params["config"]["defaultValue"] == expected
    # the data's format and split are the run's parameters, as every other key (a run may override them)
    assert expected["data"]["format"] == "auto" and expected["split"]["mode"] == "auto"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["finish-tracking"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["prepare"]["dependentTasks"] == ["ingest", "validate-raw"]
    assert inner["train-baseline"]["dependentTasks"] == ["prepare", "validate-prepared"]


def _pretrain_resources(*overrides):
    import tempfile
    from pathlib import Path

    from plmrec.pipelines.training import compile_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        out = compile_pipeline(load_params(ROOT / "params.yaml", list(overrides)), Path(tmp) / "p.yaml")
        spec = yaml.safe_load(out.read_text())
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["pretrain"]["dependentTasks"] == ["prepare", "validate-prepared"]
    executor = spec["deploymentSpec"]["executors"]["exec-pretrain"]
    return executor["container"].get("resources", {})


def test_pretrain_step_requests_a_gpu():
    res = _pretrain_resources()
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["accelerator"]["resourceCount"] == "1"
    assert res["resourceCpuLimit"] == "8" and res["resourceMemoryLimit"] == "32G"
    cpu_only = _pretrain_resources("pretrain.resources.accelerator_limit=0")
    assert "accelerator" not in cpu_only
