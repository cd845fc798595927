"""The promotion gate on a real MLflow server, and the server serving whatever @champion is."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests

from helpers import plmrec_server
from plmrec import registry
from plmrec.config import Params, RegistryParams
from plmrec.errors import RegistryError
from plmrec.pipeline_runs import compare_runs
from plmrec.serving.bundle import Recommender

pytestmark = pytest.mark.integration


def test_the_rule_alone():
    rp = RegistryParams(min_improvement=0.01, guard_metrics=["recall@10"], guard_tolerance=0.005)
    champ = {"ndcg@10": 0.30, "recall@10": 0.40}
    assert registry.decide({"ndcg@10": 0.2}, None, rp)[0]  # first version
    assert not registry.decide({"ndcg@10": 0.305, "recall@10": 0.5}, champ, rp)[0]  # inside the margin
    promote, reason, primary, guards = registry.decide({"ndcg@10": 0.32, "recall@10": 0.39}, champ, rp)
    assert not promote and "recall@10 drops by 0.0100" in reason and guards["recall@10"]["drop"] == pytest.approx(0.01)
    promote, reason, primary, _ = registry.decide({"ndcg@10": 0.32, "recall@10": 0.397}, champ, rp)
    assert promote and primary["gain"] == pytest.approx(0.02)
    with pytest.raises(RegistryError, match="no 'ndcg@10' metric"):
        registry.decide({"map@5": 0.1}, champ, rp)


def _register(params, bundle, metrics, **tags):
    mlflow.set_tracking_uri(params.tracking.uri)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run():
        return registry.register_bundle(bundle, params.registry, metrics, tags={"data.md5": "test", **tags})


def _cli(params, *args):
    env = {**os.environ, "MLFLOW_TRACKING_URI": params.tracking.uri}
    overrides = ["-S", f"tracking.uri={params.tracking.uri}", "-S", f"registry.model_name={params.registry.model_name}"]
    return subprocess.run(
        [sys.executable, "-m", "plmrec.cli", args[0], *overrides, *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _served(server, customer):
    r = requests.post(
        f"{server.url}/v1/models/plmrec:predict", json={"instances": [{"customer_id": customer, "k": 5}]}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()["model_version"], [i["stock_code"] for i in r.json()["predictions"][0]["items"]]


def test_gate_promotes_only_a_better_challenger_and_rollback_restores(serving_bundles, mlflow_server, tmp_path):
    params = Params()
    params.tracking.uri = mlflow_server
    params.registry.model_name = "gate-test-recommender"
    client = mlflow.MlflowClient(mlflow_server)
    name = params.registry.model_name
    base = {"ndcg@10": 0.30, "recall@10": 0.40, "precision@5": 0.20}

    v1 = _register(params, serving_bundles["ltr"], base)
    first = registry.gate(client, params.registry, v1)
    assert first.promoted and first.champion_before is None
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1

    worse = _register(params, serving_bundles["popularity"], {**base, "ndcg@10": 0.25})
    decision = registry.gate(client, params.registry, worse)
    assert not decision.promoted and "does not beat" in decision.reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1  # a failed gate changes nothing
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse

    regressing = _register(params, serving_bundles["popularity"], {**base, "ndcg@10": 0.31, "recall@10": 0.30})
    assert not registry.gate(client, params.registry, regressing).promoted
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1

    better = _register(params, serving_bundles["popularity"], {**base, "ndcg@10": 0.33})
    assert registry.gate(client, params.registry, better).promoted
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == better and champion.tags[registry.PREVIOUS_TAG] == v1
    assert registry.version_metrics(client, champion)["ndcg@10"] == pytest.approx(0.33)
    assert not any(k.startswith("metric.") for k in champion.tags)  # the figures live on the logged model

    rec = Recommender(serving_bundles["ltr"], load_encoder=False)
    customer = next(iter(rec.customer_row))
    popular = rec.codes[rec.popularity.argsort(kind="stable")[::-1]]
    with plmrec_server(["-S", f"tracking.uri={mlflow_server}", "-S", f"registry.model_name={name}"], tmp_path) as s:
        version, items = _served(s, customer)
    assert version == better and set(items) <= set(popular[:40])  # the popularity champion
    ltr_items = rec.recommend_customer(customer, 5).stock_codes

    out = _cli(params, "promote", "--rollback")
    assert out.returncode == 0 and f"version {better} -> {v1} (rolled back)" in out.stdout, out.stderr
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    with plmrec_server(["-S", f"tracking.uri={mlflow_server}", "-S", f"registry.model_name={name}"], tmp_path) as s:
        assert _served(s, customer) == (v1, ltr_items)  # restarted: serves the restored champion

    out = _cli(params, "promote", "--rollback")  # v1 replaced nothing
    assert out.returncode == 2 and "nothing to roll back to" in out.stderr

    out = _cli(params, "promote", "--version", worse)
    assert out.returncode == 1 and "not promoted" in out.stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    rows = registry.versions_table(client, name)
    assert [r["version"] for r in rows][:2] == [better, regressing] and rows[-1]["aliases"] == "champion"

    out = _cli(params, "promote", "--version", v1)  # the current champion: nothing to do, not a failure
    assert out.returncode == 0 and f"version {v1} is already @champion" in out.stdout, out.stderr
    for args in (
        ["promote", "--version", "99"],
        ["promote", "--version", "99", "--force"],
        ["deploy", "--version", "99"],
    ):
        out = _cli(params, *args, "--print-only") if args[0] == "deploy" else _cli(params, *args)
        assert out.returncode == 2 and f"{name} has no version 99" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and f"its versions: {v1}," in out.stderr
    out = _cli(params, "deploy", "--version", "abc", "--print-only")
    assert out.returncode == 2 and "'abc' is not a valid integer" in out.stderr and "Traceback" not in out.stderr


def test_registry_commands_fail_within_seconds_when_the_tracking_server_does_not_answer():
    """tracking.command_retries and command_timeout_s bound what a person waits for (a stage keeps MLflow's
    patient retries: the test below)."""
    import time

    from helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_TRACKING_URI"] = uri
    for args in (
        ["promote"],
        ["deploy", "--print-only"],
        ["serve"],
        ["runs", "compare"],
        ["export", "embeddings", "--out", "x"],
    ):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "plmrec.cli", *args, "-S", f"tracking.uri={uri}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        took = time.monotonic() - started
        assert out.returncode == 2 and "the MLflow tracking server did not answer" in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and "has no @" not in out.stderr and took < 15, (args, took)


def test_serving_without_a_champion_says_so(mlflow_server):
    params = Params()
    params.tracking.uri = mlflow_server
    params.registry.model_name = "never-registered"
    out = _cli(params, "serve", "--port", "1")
    assert out.returncode == 2 and "has no @champion" in out.stderr
    overrides = ["-S", f"tracking.uri={mlflow_server}", "-S", "registry.model_name=never-registered"]
    out = subprocess.run(  # the same registry model, to export
        [sys.executable, "-m", "plmrec.cli", "export", "embeddings", "--out", "never-written", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "has no @champion" in out.stderr and "Traceback" not in out.stderr


def test_runs_compare_prints_pipeline_runs_side_by_side(mlflow_server):
    from plmrec.tracking import ENCODER_TAG, log_parent_metrics, set_parent_tags

    params = Params()
    params.tracking.uri = mlflow_server
    params.tracking.experiment = "runs-compare-test"
    log_parent_metrics(params, {"test_ndcg_at_10_ltr": 0.31}, run_key="key-a", tracking_uri=mlflow_server)
    log_parent_metrics(
        params, {"test_ndcg_at_10_ltr": 0.35, "registered_version": 2}, run_key="key-b", tracking_uri=mlflow_server
    )
    set_parent_tags(params, {ENCODER_TAG: "finetuned"}, run_key="key-b", tracking_uri=mlflow_server)
    table = compare_runs(mlflow.MlflowClient(mlflow_server), "runs-compare-test", 5)
    assert list(table.columns) == ["pipeline-key-b", "pipeline-key-a"]  # newest first
    assert table.loc["test_ndcg_at_10_ltr"].tolist() == ["0.35", "0.31"]
    assert table.loc["encoder"].tolist() == ["finetuned", "-"]  # the encoder each run chose on valid
    assert table.loc["registered_version", "pipeline-key-a"] == "-"
    env = {**os.environ}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "plmrec.cli",
            "runs",
            "compare",
            "-S",
            f"tracking.uri={mlflow_server}",
            "-S",
            "tracking.experiment=runs-compare-test",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0 and "pipeline-key-b" in out.stdout and "test_ndcg_at_10_ltr" in out.stdout


def test_gate_on_the_local_sqlite_store(serving_bundles, tmp_path):
    """The laptop default (SQLite, versions come back as integers there) behaves the same."""
    params = Params()
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.registry.model_name = "sqlite-gate-test"
    client = mlflow.MlflowClient(params.tracking.uri)
    v1 = _register(params, serving_bundles["popularity"], {"ndcg@10": 0.2, "recall@10": 0.3, "precision@5": 0.1})
    assert registry.gate(client, params.registry, v1).promoted
    with pytest.raises(RegistryError, match="already the champion"):
        registry.gate(client, params.registry, v1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(client, params.registry)
    v2 = _register(params, serving_bundles["popularity"], {"ndcg@10": 0.3, "recall@10": 0.3, "precision@5": 0.1})
    assert registry.gate(client, params.registry, v2).promoted
    assert registry.rollback(client, params.registry) == (v2, v1)


def test_the_gate_compares_only_versions_trained_on_the_same_data(serving_bundles, tmp_path):
    """A champion from the synthetic demo is no yardstick for a shop's model: the gate says so and names the fix."""
    params = Params()
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.registry.model_name = "data-gate-test"
    client = mlflow.MlflowClient(params.tracking.uri)
    figures = {"ndcg@10": 0.6, "recall@10": 0.3, "precision@5": 0.1}
    demo = _register(params, serving_bundles["popularity"], figures, **{registry.DATA_TAG: Params().data.dataset()})
    assert registry.gate(client, params.registry, demo).promoted
    shop = Params.model_validate({"data": {"source": "file", "path": "../shared/data/x/Magazine_5.json.gz"}})
    assert shop.data.dataset() == "Magazine_5.json.gz" and Params().data.dataset() == "synthetic"
    ours = _register(
        params, serving_bundles["popularity"], {**figures, "ndcg@10": 0.2}, **{registry.DATA_TAG: shop.data.dataset()}
    )
    decision = registry.gate(client, params.registry, ours)
    assert not decision.promoted and decision.champion_after == demo
    assert "trained on 'synthetic', this version on 'Magazine_5.json.gz'" in decision.reason
    assert "registry.model_name" in decision.reason and f"promote --version {ours} --force" in decision.reason
    assert str(client.get_model_version_by_alias("data-gate-test", "champion").version) == demo
    assert registry.force_promote(client, params.registry, ours).promoted  # the operator's way, as the reason says
    same_shop = _register(
        params, serving_bundles["popularity"], {**figures, "ndcg@10": 0.25}, **{registry.DATA_TAG: shop.data.dataset()}
    )
    assert registry.gate(client, params.registry, same_shop).promoted  # same data: compared as ever
    params.registry.model_name = "data-gate-legacy"  # a registry from before the tag: the old champion has none
    legacy = _register(params, serving_bundles["popularity"], figures)
    assert registry.gate(client, params.registry, legacy).promoted
    ours = _register(params, serving_bundles["popularity"], figures, **{registry.DATA_TAG: shop.data.dataset()})
    decision = registry.gate(client, params.registry, ours)
    assert not decision.promoted and "records no data name" in decision.reason


def test_deploy_points_at_the_champions_files_in_the_artifact_store(serving_bundles, mlflow_server, mlflow_server_root):
    """The storageUri that `plmrec deploy` (and register-model on a cluster) gives KServe lies under the
    server's --artifacts-destination and holds the registered bundle."""
    from plmrec.cluster import deploy

    params = Params()
    params.tracking.uri = mlflow_server
    params.registry.model_name = "deploy-test-recommender"
    version = _register(params, serving_bundles["ltr"], {"ndcg@10": 0.3, "recall@10": 0.4, "precision@5": 0.2})
    destination = mlflow_server_root / "artifacts"
    uri = deploy.version_storage_uri(
        mlflow.MlflowClient(mlflow_server),
        params.registry.model_name,
        version,
        artifacts_destination=f"file://{destination}",
    )
    assert uri.startswith(f"file://{destination}/") and "/models/m-" in uri, uri
    files = list(Path(uri.removeprefix("file://")).rglob("bundle.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["model"] == "ltr"

    registry.gate(mlflow.MlflowClient(mlflow_server), params.registry, version)
    shown = _cli(params, "deploy", "--print-only", "-S", "serving.artifacts_destination=s3://mlflow-artifacts")
    assert shown.returncode == 0, shown.stderr
    relative = uri.removeprefix(f"file://{destination}/")
    assert f"version {version}: storageUri s3://mlflow-artifacts/{relative}" in shown.stdout
    assert "kubectl patch inferenceservice plmrec --type merge" in shown.stdout


RACER = """
import json, sys, time
from plmrec import registry
from plmrec.config import RegistryParams
from plmrec.tracking import mlflow_client

uri, start, step, version, *names = sys.argv[1:]
client = mlflow_client(uri)
out = []
for i, name in enumerate(names):
    time.sleep(max(0.0, float(start) + i * float(step) - time.time()))  # both racers leave together
    out.append(registry.gate(client, RegistryParams(model_name=name, guard_metrics=[]), version).to_dict())
print(json.dumps(out))
"""


def test_two_racing_registrations_leave_the_better_champion(mlflow_server):
    """Two processes gate a better and a worse challenger at the same instant against one real server:
    @champion always ends on the better one."""
    import time

    client = mlflow.MlflowClient(mlflow_server)
    names = [f"race-{os.getpid()}-{i}" for i in range(4)]
    experiment = client.get_experiment_by_name("race") or client.get_experiment(client.create_experiment("race"))
    run = client.create_run(experiment.experiment_id)
    for name in names:
        client.create_registered_model(name)
        for ndcg in (0.2, 0.4, 0.3):  # v1 the champion, v2 the better challenger, v3 the worse
            v = client.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/model",
                run_id=run.info.run_id,
                tags={registry.metric_tag("ndcg@10"): repr(ndcg)},
            )
        client.set_registered_model_alias(name, registry.CHAMPION, "1")
        assert v.version == "3"
    start = time.time() + 12  # after both interpreters have imported mlflow
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, mlflow_server, str(start), "4", version, *names],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("2", "3")
    ]
    outputs = [r.communicate(timeout=120) for r in racers]
    assert all(r.returncode == 0 for r in racers), [o[1][-2000:] for o in outputs]
    better, worse = (json.loads(o[0]) for o in outputs)
    for name, b, w in zip(names, better, worse):
        assert client.get_model_version_by_alias(name, registry.CHAMPION).version == "2", (name, b, w)
        assert b["promoted"] and b["champion_after"] == "2", (b, w)
        # the racers took turns: every champion in the history was promoted by a gate that says so
        history = registry.champion_history(client, name)
        assert history[-1]["version"] == "2" and len(history) <= 2, history
        for entry in history:
            record = json.loads(client.get_model_version(name, entry["version"]).tags[registry.GATE_TAG])
            assert record["promoted"] and entry["by"] == "gate", (entry, record)
        last = "3" if w["champion_before"] == "2" else "2"  # the worse one saw the better as champion: it went last
        assert client.get_model_version_by_alias(name, registry.CHALLENGER).version == last, (b, w)
        assert registry.LOCK_TAG not in client.get_registered_model(name).tags  # released


def test_rollback_walks_back_the_champion_history_and_the_lock_is_held_by_one(serving_bundles, tmp_path):
    """gate, force, rollback each move @champion under the lock and record the move; rollback goes to the
    champion before the current one in that history, again and again; a lock left by a killed gate ends with
    its lease, and a gate that cannot get it names the holder."""
    params = Params()
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.registry.model_name = "history-test"
    params.registry.gate_settle_s = 0.05
    client = mlflow.MlflowClient(params.tracking.uri)
    figures = {"ndcg@10": 0.2, "recall@10": 0.3, "precision@5": 0.1}
    with pytest.raises(RegistryError, match="history-test is not a registered model in sqlite"):
        registry.rollback(client, params.registry)
    v1 = _register(params, serving_bundles["popularity"], figures)
    v2 = _register(params, serving_bundles["popularity"], {**figures, "ndcg@10": 0.3})
    v3 = _register(params, serving_bundles["popularity"], {**figures, "ndcg@10": 0.1})
    assert registry.gate(client, params.registry, v1).promoted
    assert registry.gate(client, params.registry, v2).promoted
    assert registry.force_promote(client, params.registry, v3).promoted
    assert [(e["version"], e["by"]) for e in registry.champion_history(client, "history-test")] == [
        (v1, "gate"),
        (v2, "gate"),
        (v3, "force"),
    ]
    assert registry.rollback(client, params.registry) == (v3, v2)
    assert registry.rollback(client, params.registry) == (v2, v1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(client, params.registry)
    assert [e["by"] for e in registry.champion_history(client, "history-test")][-2:] == ["rollback", "rollback"]
    assert str(client.get_model_version_by_alias("history-test", "champion").version) == v1

    # a gate killed while holding the lock: its lease is honoured, then taken over once it ends
    params.registry.gate_lease_s, params.registry.gate_lock_timeout_s = 1.5, 0.5
    client.set_registered_model_tag("history-test", registry.LOCK_TAG, f"dead-host:1:x {time.time() + 1.5:.3f}")
    with pytest.raises(RegistryError, match="another gate \\(dead-host:1:x\\) held the lock"):
        registry.gate(client, params.registry, v2)
    time.sleep(1.6)
    params.registry.gate_lock_timeout_s = 30
    assert registry.gate(client, params.registry, v2).promoted
    assert registry.LOCK_TAG not in client.get_registered_model("history-test").tags


def _own_mlflow_server(root: Path, port: int):
    from helpers import ChildServer

    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "a")]
    return ChildServer("mlflow server", [*cmd, "--workers", "1"], port, health_path="/health", cwd=root, timeout=90)


def test_a_stage_rides_out_a_tracking_server_restart_and_says_when_it_stays_down(tmp_path):
    """The server goes down between two stages of a run: the next stage, started while it is down, retries
    (the MLflow client's backoff) and finishes once it is back, its run and metrics recorded; a server that
    never comes back is one clear line and exit 2, not a traceback."""
    import time

    from helpers import free_port

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    small = ["-S", "data.synthetic.n_customers=60", "-S", "data.synthetic.n_invoices=600", "-S", f"tracking.uri={uri}"]
    stage = [sys.executable, "-m", "plmrec.cli", "stage"]
    with _own_mlflow_server(tmp_path, port):
        done = subprocess.run(
            [*stage, "ingest", *small, "--raw", str(tmp_path / "raw.parquet")], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
    # down now: prepare starts against nothing, and the server comes back 4 s later on the same store
    prepare = subprocess.Popen(
        [*stage, "prepare", *small, "--raw", str(tmp_path / "raw.parquet"), "--prepared", str(tmp_path / "p.parquet")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    with _own_mlflow_server(tmp_path, port):
        out, err = prepare.communicate(timeout=240)
        assert prepare.returncode == 0, err[-3000:]
        runs = mlflow.MlflowClient(uri).search_runs(
            [mlflow.MlflowClient(uri).get_experiment_by_name("plmrec").experiment_id],
            filter_string="tags.`plmrec.stage` = 'prepare'",
        )
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.metrics["prepared_rows"] > 0
    never = subprocess.run(
        [*stage, "prepare", *small, "--raw", str(tmp_path / "raw.parquet"), "--prepared", str(tmp_path / "q.parquet")],
        env={**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert never.returncode == 2 and "Traceback" not in never.stderr, never.stderr[-3000:]
    assert "the MLflow tracking server did not answer after 1 retries" in never.stderr
