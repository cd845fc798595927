"""The serving manifests agree with the predictor they deploy (full schema validation: cluster tests)."""

import yaml
from click.testing import CliRunner

from helpers import ROOT
from plmrec.config import Params

BASE = ROOT / "manifests" / "base"


def _load(name: str) -> dict:
    return yaml.safe_load((BASE / name).read_text())


def test_inference_service_serves_the_bundle_with_probes_resources_and_a_canary():
    isvc = _load("inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "plmrec-bundle" and model["runtime"] == "plmrec-runtime"
    assert model["storageUri"].startswith("s3://")
    assert model["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # answered by the predictor (test_serving)
    assert model["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert set(model["resources"]) == {"requests", "limits"}


def test_serving_runtime_runs_the_real_serve_command():
    from plmrec.cli import main

    runtime = _load("serving-runtime.yaml")
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "plmrec-bundle"
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container" and container["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and set(container["resources"]) == {
        "requests",
        "limits",
    }
    args = [a.replace("{{.Name}}", "plmrec") for a in container["args"]]
    assert "--bundle=/mnt/models" in args and "--host=0.0.0.0" in args
    port = container["ports"][0]["containerPort"]
    assert f"--port={port}" in args
    # the arguments parse with the real CLI (a missing bundle directory is the only complaint)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "'/mnt/models' does not exist" in result.output, result.output
    assert Params().serving.model_name == "plmrec"
