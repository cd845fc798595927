"""The cluster path, offline: the kustomize overlays render and validate against the Kubernetes 1.37 and
KServe schemas, the policy holds, the references inside them resolve, the MLflow server runs with the
Deployment's own arguments, and `plmrec submit` / `plmrec deploy` do what they can without a cluster."""

import copy
import json
import os
import re
import socket
import struct
import sys
import threading

import pytest
import requests
import yaml
from click.testing import CliRunner

from helpers import ROOT, ChildServer, free_port
from plmrec.cli import main
from plmrec.cluster import deploy
from plmrec.cluster import manifests as mf
from plmrec.cluster.submit import cron_expression
from plmrec.config import load_params, overlay_params_file
from plmrec.errors import DeployError, SubmitError

OVERLAYS = sorted(p for p in (ROOT / "manifests" / "overlays").iterdir() if p.is_dir())


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def rendered():
    return {p.name: mf.render(p) for p in [*OVERLAYS, ROOT / "manifests" / "base"]}


def _one(resources, kind, name=None):
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# ------------------------------------------------------------------------------- manifests
def test_there_is_a_laptop_overlay_and_a_gpu_overlay():
    assert {p.name for p in OVERLAYS} == {"local-kind", "gpu-cluster"}


def test_every_overlay_validates_against_the_kubernetes_and_kserve_schemas_and_the_policy():
    result = _cli("manifests", "validate", *OVERLAYS, ROOT / "manifests" / "base")
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == 4 and "manifests/examples: 2 resources: ok" in result.output, result.output
    assert "InferenceService" in result.output and "ServingRuntime" in result.output


def test_the_stated_kubernetes_version_applies_to_kserve_fields_too():
    overlay = ROOT / "manifests/overlays/gpu-cluster"
    result = _cli("manifests", "validate", "--kubernetes-version", "1.31.0", overlay)
    assert result.exit_code == 0 and ": ok" in result.output, result.output
    assert "io.k8s.api.core.v1.Container" in json.dumps(mf.kserve_schema("V1alpha1ServingRuntime", "1.31.0"))
    result = _cli("manifests", "validate", "--kubernetes-version", "1.2.0", overlay)
    assert result.exit_code == 2 and "no Kubernetes schemas for 1.2.0" in result.output, result.output


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["spec"]["predictor"]["model"].__setitem__("storageURI", "s3://x"), "'storageURI' was unexpected"),
        (
            lambda r: r["spec"]["predictor"].__setitem__("minReplicas", "one"),
            "minReplicas: 'one' is not of type 'integer'",
        ),
        (lambda r: r["spec"].pop("predictor"), "'predictor' is a required property"),
        (lambda r: r["spec"]["predictor"]["model"]["resources"]["limits"].__setitem__("cpu", [2]), "limits.cpu"),
        (
            lambda r: r["spec"]["predictor"]["tolerations"].__setitem__(0, {"efect": "NoSchedule"}),
            "'efect' was unexpected",
        ),
    ],
)
def test_the_kserve_schema_rejects_what_the_crd_would(rendered, mutate, expected):
    isvc = copy.deepcopy(_one(rendered["gpu-cluster"], "InferenceService"))
    isvc["spec"]["predictor"].setdefault("tolerations", [{}])
    assert mf.schema_problems(isvc) == []
    mutate(isvc)
    problems = mf.schema_problems(isvc)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("InferenceService/plmrec: ") for p in problems)


def test_the_kubernetes_schema_and_the_policy_reject_mistakes(rendered):
    deployment = copy.deepcopy(_one(rendered["local-kind"], "Deployment", "mlflow"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicy"] = 3
    assert any("imagePullPolicy: 3 is not of type" in p for p in mf.schema_problems(deployment))
    container.pop("imagePullPolicy")
    container["resource"] = {}  # a typo: strict schemas reject unknown fields
    assert any("'resource' was unexpected" in p for p in mf.schema_problems(deployment))
    del container["resources"]["limits"]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    container["securityContext"].pop("runAsNonRoot")
    container["securityContext"].pop("seccompProfile")
    container["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    pod = deployment["spec"]["template"]["spec"]
    pod["securityContext"].pop("runAsNonRoot")
    pod["securityContext"].pop("seccompProfile")
    pod["hostNetwork"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert mf.policy_problems(deployment) == [
        "Deployment/mlflow: hostNetwork is not allowed under the restricted profile",
        "Deployment/mlflow: a hostPath volume is not allowed under the restricted profile",
        "Deployment/mlflow container mlflow: no limits for cpu, memory",
        "Deployment/mlflow container mlflow: runAsNonRoot is not set",
        "Deployment/mlflow container mlflow: allowPrivilegeEscalation must be false",
        "Deployment/mlflow container mlflow: capabilities must drop ALL",
        "Deployment/mlflow container mlflow: no seccompProfile (RuntimeDefault) at container or pod level",
    ]
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert mf.schema_problems(unknown) == [
        "Widget/w: no schema for example.com/v1 Widget in Kubernetes 1.37.0 or KServe"
    ]


def test_who_can_reach_what_is_checked(rendered):
    """The namespace enforces the restricted profile; ingress is denied by default; no policy lets everyone
    in; MLflow and the predictor are reached only from named sources; MLflow runs its authentication with
    its secrets from Secrets and gives users no permission by default. Each mistake is named."""
    resources = rendered["gpu-cluster"]
    assert mf.access_problems(resources) == []
    policies = {r["metadata"]["name"]: r for r in resources if r["kind"] == "NetworkPolicy"}
    sources = policies["mlflow-from-pipeline-and-predictor"]["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}} in sources
    bad = copy.deepcopy(resources)
    for r in bad:
        if r["kind"] == "Namespace":
            r["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"
        if r["kind"] == "NetworkPolicy" and r["metadata"]["name"] == "predictor-from-ingress":
            r["spec"]["ingress"].append({"ports": [{"port": 8080}]})  # no `from`: anyone
        if r["kind"] == "Service":
            r["spec"]["type"] = "LoadBalancer"
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "mlflow-auth":
            r["data"]["basic_auth.ini"] = r["data"]["basic_auth.ini"].replace("NO_PERMISSIONS", "EDIT")
        if r["kind"] == "Deployment":
            env = r["spec"]["template"]["spec"]["containers"][0]["env"]
            for e in env:
                if e["name"] == "MLFLOW_AUTH_ADMIN_PASSWORD":
                    e.pop("valueFrom")
                    e["value"] = "hunter2"
    bad = [
        r for r in bad if r["metadata"]["name"] not in ("default-deny-ingress", "mlflow-from-pipeline-and-predictor")
    ]
    assert mf.access_problems(bad) == [
        "Namespace/plmrec: pod-security.kubernetes.io/enforce must be 'restricted'",
        "no NetworkPolicy denies ingress by default (podSelector {}, policyTypes [Ingress], no rules)",
        "NetworkPolicy/predictor-from-ingress: ingress[2] has no `from`: every source",
        "Deployment/mlflow: no NetworkPolicy names who may reach it",
        "Service/mlflow: type LoadBalancer opens it outside the cluster",
        "Deployment/mlflow container mlflow: MLFLOW_AUTH_ADMIN_PASSWORD must come from a Secret (secretKeyRef)",
        "Deployment/mlflow container mlflow: default_permission = EDIT: every user could change runs and move "
        "@champion",
    ]
    for r in bad:
        if r["kind"] == "Deployment":
            r["spec"]["template"]["spec"]["containers"][0]["args"].remove("--app-name=basic-auth")
    assert "Deployment/mlflow container mlflow: MLflow runs without its authentication (--app-name=basic-auth)" in (
        mf.access_problems(bad)
    )


def test_the_istio_example_names_only_routes_the_predictor_answers():
    resources = mf.check_examples(ROOT / "manifests" / "examples").resources
    assert {r["kind"] for r in resources} == {"AuthorizationPolicy", "RequestAuthentication"}
    assert mf.example_problems(resources) == []
    policy = copy.deepcopy(next(r for r in resources if r["kind"] == "AuthorizationPolicy"))
    policy["spec"]["rules"][1]["to"][0]["operation"]["paths"].append("/v2/repository/models/plmrec/unload")
    policy["spec"]["rules"][0]["to"][0]["operation"]["methods"] = ["DELETE"]
    policy["spec"]["selector"]["matchLabels"] = {"app": "other"}
    assert mf.example_problems([policy]) == [
        "AuthorizationPolicy/plmrec-predictor: its selector does not name the predictor "
        "(serving.kserve.io/inferenceservice)",
        "AuthorizationPolicy/plmrec-predictor: rules[0]: /v2/health/live takes GET",
        "AuthorizationPolicy/plmrec-predictor: rules[0]: /v2/health/ready takes GET",
        "AuthorizationPolicy/plmrec-predictor: rules[0]: /v1/models/plmrec takes GET",
        "AuthorizationPolicy/plmrec-predictor: rules[0]: /v2/models/plmrec takes GET",
        "AuthorizationPolicy/plmrec-predictor: rules[0]: /v2/models/plmrec/ready takes GET",
        "AuthorizationPolicy/plmrec-predictor: rules[1]: the predictor has no route "
        "/v2/repository/models/plmrec/unload",
    ]


def test_every_step_and_training_node_logs_in_to_mlflow_with_the_pipelines_secret(tmp_path):
    from plmrec.cluster.trainjob import render_trainjob

    spec, executors = _compiled(tmp_path, "gpu-cluster")
    assert set(executors) == set(spec["deploymentSpec"]["executors"])  # every step
    for name, settings in executors.items():
        (login,) = settings["secretAsEnv"]
        assert login["secretName"] == "plmrec-mlflow-pipeline", name
        assert login["keyToEnv"] == [
            {"envVar": "MLFLOW_TRACKING_USERNAME", "secretKey": "username"},
            {"envVar": "MLFLOW_TRACKING_PASSWORD", "secretKey": "password"},
        ]
    params = load_params(ROOT / "params.yaml", patches=[overlay_params_file(ROOT / "manifests/overlays/gpu-cluster")])
    job = render_trainjob(params, "finetune", run_key="k", args=["stage", "finetune"])
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "plmrec-mlflow-pipeline",
        "key": "password",
    }


def test_a_broken_overlay_is_a_clear_error(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    result = _cli("manifests", "validate", tmp_path)
    assert result.exit_code == 2 and "kubectl kustomize failed" in result.output and "missing.yaml" in result.output


def test_references_inside_each_overlay_resolve(rendered):
    """Secrets, ConfigMaps and service accounts that pods use exist in the overlay (gpu-cluster: the two
    Secrets the runbook creates), with the keys they are read by."""
    external = {
        "gpu-cluster": {
            "plmrec-mlflow-db": {"username", "password"},
            "plmrec-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
            "plmrec-mlflow-admin": {"username", "password", "flask_secret_key"},
            "plmrec-mlflow-pipeline": {"username", "password"},
        }
    }
    for overlay, resources in rendered.items():
        if overlay == "base":
            continue
        assert all(r["metadata"].get("namespace") == "plmrec" for r in resources if r["kind"] != "Namespace"), overlay
        secrets = {r["metadata"]["name"]: set(r.get("data", {})) for r in resources if r["kind"] == "Secret"}
        secrets.update(external.get(overlay, {}))
        configmaps = {r["metadata"]["name"]: set(r.get("data", {})) for r in resources if r["kind"] == "ConfigMap"}
        accounts = {r["metadata"]["name"] for r in resources if r["kind"] == "ServiceAccount"}
        text = json.dumps(resources)
        for ref in re.finditer(r'"secretKeyRef": \{"name": "([^"]+)", "key": "([^"]+)"\}', text):
            assert ref.group(2) in secrets.get(ref.group(1), set()), f"{overlay}: secret {ref.group(1)}/{ref.group(2)}"
        for ref in re.finditer(r'"secretRef": \{"name": "([^"]+)"\}', text):
            assert ref.group(1) in secrets, f"{overlay}: secret {ref.group(1)}"
        for ref in re.finditer(r'"configMapRef": \{"name": "([^"]+)"\}', text):
            assert ref.group(1) in configmaps, f"{overlay}: configmap {ref.group(1)}"
        for ref in re.finditer(r'"configMap": \{"name": "([^"]+)"\}', text):
            assert ref.group(1) in configmaps, f"{overlay}: configmap volume {ref.group(1)}"
        steps = load_params(ROOT / "params.yaml", patches=[overlay_params_file(ROOT / "manifests/overlays" / overlay)])
        assert steps.tracking.credentials_secret in secrets, overlay  # the steps' MLflow login exists
        isvc = _one(resources, "InferenceService")
        assert isvc["spec"]["predictor"]["serviceAccountName"] in accounts
        serving_account = _one(resources, "ServiceAccount", isvc["spec"]["predictor"]["serviceAccountName"])
        assert [s["name"] for s in serving_account["secrets"]] == ["plmrec-s3"]
        runtime = _one(resources, "ServingRuntime")
        assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def test_the_pipeline_account_may_patch_exactly_the_inference_service(rendered):
    resources = rendered["gpu-cluster"]
    role, binding = _one(resources, "Role", "plmrec-promoter"), _one(resources, "RoleBinding", "plmrec-promoter")
    isvc = _one(resources, "InferenceService")
    patch_rules = [r for r in role["rules"] if "patch" in r["verbs"]]
    assert patch_rules == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": [isvc["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "plmrec-pipeline", "namespace": "plmrec"}]
    _one(resources, "ServiceAccount", "plmrec-pipeline")
    params = load_params(ROOT / "params.yaml", patches=[overlay_params_file(ROOT / "manifests/overlays/gpu-cluster")])
    assert params.serving.inference_service == isvc["metadata"]["name"]
    assert params.serving.namespace == isvc["metadata"]["namespace"]


def test_only_the_laptop_overlay_carries_credentials_and_they_are_marked_for_development(rendered):
    assert not [r for r in rendered["base"] + rendered["gpu-cluster"] if r["kind"] == "Secret"]
    for env_file in (ROOT / "manifests/overlays/local-kind").glob("*.env"):
        assert "Development-only" in env_file.read_text()
    s3 = _one(rendered["local-kind"], "Secret", "plmrec-s3")
    assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"].startswith("minio.plmrec.svc")


def _expand(arg: str, env: dict) -> str:
    """Kubernetes' $(VAR) expansion in container args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _dev_env(name: str) -> dict:
    text = (ROOT / "manifests/overlays/local-kind" / name).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def _login(user: str, password: str) -> None:
    """MLflow's client reads its login from the environment (as the pipeline's steps get it)."""
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password


@pytest.mark.integration
def test_the_mlflow_deployment_arguments_run_a_server_that_answers_in_cluster_names(rendered, tmp_path):
    """The Deployment's args and auth settings, expanded as Kubernetes would, start a real `mlflow server`
    (SQLite and a local artifact directory standing in for PostgreSQL and S3). Nobody gets in without a
    login; the admin comes from the Secret; the set-up Job's own script makes the pipeline's user, who can
    create the experiment and the registered model and move @champion; another user can do neither. It
    accepts the in-cluster service name as Host and refuses a foreign one."""
    import base64
    import subprocess

    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    resources = rendered["local-kind"]
    container = _one(resources, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = dict(_one(resources, "ConfigMap", "mlflow-config")["data"])
    args = [_expand(a, env) for a in container["args"]]
    assert "--backend-store-uri=postgresql+psycopg2://postgres:5432/mlflow" in args  # credentials: PGUSER/PGPASSWORD
    assert "--artifacts-destination=s3://mlflow-artifacts" in args and "--serve-artifacts" in args
    assert "--app-name=basic-auth" in args
    ini = _one(resources, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    stand_in = ini.replace("postgresql+psycopg2://postgres:5432/mlflow_auth", f"sqlite:///{tmp_path / 'auth.db'}")
    assert stand_in != ini
    (tmp_path / "basic_auth.ini").write_text(stand_in)
    secret = _one(resources, "Secret", "plmrec-mlflow-admin")["data"]
    admin = {k: base64.b64decode(v).decode() for k, v in secret.items()}
    port = free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
        "--workers": "1",
    }
    args = [f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a for a in args]
    server_env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": admin["username"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin["password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": admin["flask_secret_key"],
    }
    with ChildServer(
        "mlflow (deployment args)",
        [sys.executable, "-m", "mlflow", "server", *args],
        port,
        health_path="/health",
        cwd=tmp_path,
        env=server_env,
        timeout=120,
    ) as server:
        url = f"{server.url}/api/2.0/mlflow/experiments/search"
        login = (admin["username"], admin["password"])
        assert requests.post(url, json={"max_results": 1}, timeout=10).status_code == 401  # no login, no answer
        for host in ("mlflow.plmrec.svc.cluster.local:5000", "mlflow:5000", "mlflow.plmrec"):
            r = requests.post(url, json={"max_results": 1}, headers={"Host": host}, auth=login, timeout=10)
            assert r.status_code == 200, (host, r.status_code, r.text[:200])
        foreign = {"Host": "attacker.example.com"}
        r = requests.post(url, json={"max_results": 1}, headers=foreign, auth=login, timeout=10)
        assert r.status_code in (400, 403), r.status_code

        job = _one(resources, "Job", "mlflow-auth-setup")["spec"]["template"]["spec"]["containers"][0]
        script = job["args"][0].replace("http://mlflow:5000", server.url)
        pipeline = _dev_env("dev-mlflow-pipeline.env")
        job_env = {
            **os.environ,
            "MLFLOW_TRACKING_USERNAME": admin["username"],
            "MLFLOW_TRACKING_PASSWORD": admin["password"],
            "PIPELINE_USERNAME": pipeline["username"],
            "PIPELINE_PASSWORD": pipeline["password"],
        }
        for said in ("created", "password set"):  # the Job may run again: it only sets the password then
            out = subprocess.run(
                [sys.executable, "-c", script], env=job_env, capture_output=True, text=True, timeout=120
            )
            assert out.returncode == 0 and f"user {pipeline['username']}: {said}" in out.stdout, out.stderr[-2000:]
        try:
            _login(pipeline["username"], pipeline["password"])
            client = mlflow.MlflowClient(server.url)
            experiment = client.create_experiment("plmrec")
            run = client.create_run(experiment)
            client.create_registered_model("plmrec-recommender")
            version = client.create_model_version(
                "plmrec-recommender", f"{run.info.artifact_uri}/m", run_id=run.info.run_id
            ).version
            client.set_registered_model_alias("plmrec-recommender", "champion", version)
            _login(*login)
            get_app_client("basic-auth", tracking_uri=server.url).create_user("someone", "a-password-1")
            _login("someone", "a-password-1")
            other = mlflow.MlflowClient(server.url)
            for attempt in (
                lambda: other.set_registered_model_alias("plmrec-recommender", "champion", version),
                lambda: other.get_experiment(experiment),
            ):
                with pytest.raises(MlflowException, match="(?i)permission"):
                    attempt()
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
            os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


def _postgres_handshake(listener: socket.socket, seen: dict) -> None:
    """Accept one PostgreSQL client, record its startup parameters and the password it sends when asked
    for a cleartext one, then refuse it: only the protocol's first steps, no query is answered."""
    conn, _ = listener.accept()
    with conn:

        def read(n):
            data = b""
            while len(data) < n:
                data += conn.recv(n - len(data)) or b"\0" * (n - len(data))
            return data

        while True:
            length, code = struct.unpack("!ii", read(8))
            if code in (80877103, 80877104):  # SSL or GSS encryption request: not offered
                conn.sendall(b"N")
                continue
            fields = read(length - 8).split(b"\0")
            seen.update({k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2]) if k})
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind, length = struct.unpack("!ci", read(5))
        seen["password"] = read(length - 4).rstrip(b"\0").decode() if kind == b"p" else None
        body = b"SFATAL\0C28P01\0Mhandshake recorded\0\0"
        conn.sendall(b"E" + struct.pack("!i", len(body) + 4) + body)


def test_the_mlflow_server_gives_postgresql_any_password_through_the_environment(rendered, monkeypatch):
    """The backend URI carries no credentials; MLflow's driver (SQLAlchemy over psycopg2/libpq) takes them
    from PGUSER/PGPASSWORD, which the Deployment fills from the Secret. A password that would break a URI
    (@ : / # %) reaches the database intact."""
    pytest.importorskip("psycopg2")
    import sqlalchemy

    container = _one(rendered["gpu-cluster"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert from_secret["PGUSER"] == {"name": "plmrec-mlflow-db", "key": "username"}
    assert from_secret["PGPASSWORD"] == {"name": "plmrec-mlflow-db", "key": "password"}
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    env = {
        **_one(rendered["gpu-cluster"], "ConfigMap", "mlflow-config")["data"],
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(port),
    }
    uri = next(_expand(a, env) for a in container["args"] if a.startswith("--backend-store-uri="))
    uri = uri.split("=", 1)[1]
    seen: dict = {}
    thread = threading.Thread(target=_postgres_handshake, args=(listener, seen), daemon=True)
    thread.start()
    password = "p@ss:w/rd#50%"
    monkeypatch.setenv("PGUSER", "mlflow")
    monkeypatch.setenv("PGPASSWORD", password)
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match="handshake recorded"):
            sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10}).connect()
    finally:
        thread.join(10)
        listener.close()
    assert seen["user"] == "mlflow" and seen["database"] == env["DB_NAME"] and seen["password"] == password


# ------------------------------------------------------------------------------- compiled pipeline
def _compiled(tmp_path, overlay):
    out = tmp_path / f"{overlay}.yaml"
    result = _cli(
        "compile", "--params", ROOT / "params.yaml", "--overlay", ROOT / "manifests/overlays" / overlay, "-o", out
    )
    assert result.exit_code == 0, result.output
    spec, *platform = yaml.safe_load_all(out.read_text())  # the second document: kfp-kubernetes settings, if any
    return spec, platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}


GPU_STEPS = {
    "exec-pretrain",
    "exec-finetune",
    "exec-evaluate-retrieval",
    "exec-evaluate-search",
    "exec-train-user-model",
}


def test_the_gpu_overlay_puts_the_gpu_steps_on_the_gpu_pool_in_the_cuda_image(tmp_path):
    spec, k8s = _compiled(tmp_path, "gpu-cluster")
    executors = spec["deploymentSpec"]["executors"]
    assert GPU_STEPS < set(executors)
    for name, executor in executors.items():
        container = executor["container"]
        res = container["resources"]
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(res), (
            name
        )
        if name in GPU_STEPS:
            assert res["accelerator"] == {
                "count": "1",
                "resourceCount": "1",
                "resourceType": "nvidia.com/gpu",
                "type": "nvidia.com/gpu",
            }, name
            assert container["image"] == "ghcr.io/plmrec/plmrec-cuda:0.1.0"
            assert k8s[name]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert k8s[name]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in res and container["image"] == "ghcr.io/plmrec/plmrec:0.1.0", name
            assert name not in k8s or "tolerations" not in k8s[name]
    # caching: on for pure steps when enabled, never for the side-effect steps
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["register-model"]["cachingOptions"] == {}  # enableCache false is the proto default
    assert spec["root"]["dag"]["tasks"]["finish-tracking"]["cachingOptions"] == {}
    # parameter defaults: params.yaml with the overlay laid over it
    expected = load_params(ROOT / "params.yaml", patches=[ROOT / "manifests/overlays/gpu-cluster/pipeline-params.yaml"])
    defaults = spec["root"]["inputDefinitions"]["parameters"]["config"]["defaultValue"]
    assert defaults == expected.to_dict()
    assert defaults["tracking"]["uri"] == "http://mlflow.plmrec.svc.cluster.local:5000"


@pytest.mark.parametrize("overlay", ["gpu-cluster", "local-kind"])
def test_the_kfp_client_reads_the_package_submit_sends(tmp_path, overlay):
    """kfp.Client parses a package into the PipelineSpec and PlatformSpec protos before sending it: the
    image rewrite and the kfp-kubernetes document survive that parse."""
    from kfp.client.client import _extract_pipeline_yaml

    _compiled(tmp_path, overlay)
    doc = _extract_pipeline_yaml(str(tmp_path / f"{overlay}.yaml"))
    assert doc.pipeline_spec.pipeline_info.name == "plmrec-training"
    executors = doc.pipeline_spec.deployment_spec["executors"]
    assert executors["exec-pretrain"]["container"]["image"] in ("ghcr.io/plmrec/plmrec-cuda:0.1.0", "plmrec:dev")
    from google.protobuf.json_format import MessageToDict

    platform = MessageToDict(doc.platform_spec).get("platforms", {}).get("kubernetes", {})
    k8s = platform.get("deploymentSpec", {}).get("executors", {})
    if overlay == "gpu-cluster":
        assert k8s["exec-finetune"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    else:
        assert "nodeSelector" not in k8s["exec-finetune"]  # only the MLflow login
    assert k8s["exec-finetune"]["secretAsEnv"][0]["secretName"] == "plmrec-mlflow-pipeline"


def test_caching_follows_the_params_except_for_side_effects(tmp_path):
    out = tmp_path / "cached.yaml"
    assert (
        _cli("compile", "--params", ROOT / "params.yaml", "-S", "pipeline.enable_caching=true", "-o", out).exit_code
        == 0
    )
    spec, *_ = yaml.safe_load_all(out.read_text())
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert inner["pretrain"]["cachingOptions"] == {"enableCache": True}
    assert inner["register-model"]["cachingOptions"] == {}
    assert spec["root"]["dag"]["tasks"]["finish-tracking"]["cachingOptions"] == {}


def test_the_laptop_overlay_requests_no_gpu(tmp_path):
    spec, _ = _compiled(tmp_path, "local-kind")
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert "accelerator" not in executor["container"]["resources"], name
        assert executor["container"]["image"] == "plmrec:dev"


def test_a_bad_overlay_params_file_names_the_file_and_key(tmp_path):
    bad = tmp_path / "pipeline-params.yaml"
    bad.write_text("pretrain:\n  resources:\n    tolerations:\n      - {key: a, operator: Exists, value: b}\n")
    result = _cli("compile", "--overlay", tmp_path, "-o", tmp_path / "p.yaml")
    assert result.exit_code == 2 and "pipeline-params.yaml" in result.output and "tolerations" in result.output
    assert not (tmp_path / "p.yaml").exists()


# ------------------------------------------------------------------------------- submit and deploy
def test_submit_dry_run_compiles_and_shows_the_request(tmp_path):
    package = tmp_path / "pkg.yaml"
    result = _cli(
        "submit",
        "--overlay",
        ROOT / "manifests/overlays/gpu-cluster",
        "--dry-run",
        "--package",
        package,
        "--host",
        "https://kfp.example.com",
        "--run-name",
        "nightly",
        "--service-account",
        "plmrec-pipeline",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["host"] == "https://kfp.example.com" and plan["run_name"] == "nightly"
    assert plan["arguments"] == {"tracking_uri": "http://mlflow.plmrec.svc.cluster.local:5000"}
    assert plan["images"]["gpu"] == "ghcr.io/plmrec/plmrec-cuda:0.1.0" and plan["schedule"] is None
    spec, _platform = yaml.safe_load_all(package.read_text())
    assert spec["pipelineInfo"]["name"] == "plmrec-training"


def test_submit_refuses_bad_requests_before_contacting_anything(tmp_path, monkeypatch):
    for var in ("KFP_HOST", "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    result = _cli("submit", "--schedule", "every monday")
    assert result.exit_code == 2 and "expected a cron expression of 5 fields" in result.output
    result = _cli("submit", "--schedule", "0 3 * * 1", "--wait")
    assert result.exit_code == 2 and "--wait follows one run" in result.output
    result = _cli("submit", "--package", tmp_path / "p.yaml")
    assert result.exit_code == 2 and "no Kubeflow Pipelines endpoint: pass --host or set KFP_HOST" in result.output
    assert cron_expression("0 3 * * 1") == "0 0 3 * * 1" and cron_expression("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(SubmitError):
        cron_expression("0 3 * *")


def test_submit_to_an_endpoint_that_does_not_answer_is_one_clear_error(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("KFP_HOST", f"http://127.0.0.1:{port}")
    result = _cli("submit", "--package", tmp_path / "p.yaml")
    assert result.exit_code == 2, result.output
    assert f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output and (tmp_path / "p.yaml").exists()


def test_kfp_client_calls_keep_stdout_for_plmrec_and_fail_as_one_error(capsys):
    """kfp.Client prints its own "Run details: <link>" lines; they go to stderr so that scripts can
    read plmrec's `run <id>: <url>` from stdout. A refused call is one SubmitError naming the cause."""
    from plmrec.cluster.submit import _call

    def create_run(name):
        print(f"Run details: http://kfp/#/runs/details/{name}")
        return name.upper()

    assert _call("creating the run", "http://kfp", create_run, "r1") == "R1"
    printed = capsys.readouterr()
    assert printed.out == "" and "Run details: http://kfp/#/runs/details/r1" in printed.err

    class Forbidden(Exception):
        status, reason = 403, "Forbidden"

    def refuse():
        raise Forbidden()

    with pytest.raises(SubmitError, match=r"creating the run at http://kfp failed: HTTP 403: not authorised"):
        _call("creating the run", "http://kfp", refuse)


def test_storage_uri_maps_proxied_artifacts_to_the_bucket():
    assert (
        deploy.storage_uri("mlflow-artifacts:/1/models/m-abc/artifacts", "s3://mlflow-artifacts/")
        == "s3://mlflow-artifacts/1/models/m-abc/artifacts"
    )
    assert deploy.storage_uri("s3://bucket/1/models/m-abc/artifacts", "") == "s3://bucket/1/models/m-abc/artifacts"
    with pytest.raises(DeployError, match="set serving.artifacts_destination"):
        deploy.storage_uri("mlflow-artifacts:/1/models/m-abc/artifacts", "")
    with pytest.raises(DeployError, match="not an object-store location"):
        deploy.storage_uri("/home/me/mlruns/1/models/m-abc/artifacts", "")


def test_the_promotion_patch_keeps_the_inference_service_valid(rendered):
    isvc = copy.deepcopy(_one(rendered["gpu-cluster"], "InferenceService"))
    patch = deploy.storage_patch("s3://plmrec-mlflow-artifacts/1/models/m-new/artifacts")
    isvc["spec"]["predictor"]["model"].update(patch["spec"]["predictor"]["model"])
    assert mf.schema_problems(isvc) == []


def test_deploy_without_cluster_credentials_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DeployError, match="no Kubernetes credentials to patch InferenceService plmrec"):
        deploy.patch_inference_service("plmrec", "plmrec", "s3://b/1/models/m-x/artifacts")
