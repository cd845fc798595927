"""Any shop's data through the real pipeline (kfp.local, a real MLflow server) and the real model server:
a RecBole atomic-file data set and a plain CSV with a column map, each a slice of real public data."""

import mlflow
import pytest
import requests

from helpers import (
    SHARED_DATA,
    magazine_as_recbole,
    plmrec_server,
    quick_recommenders_params,
    quick_user_model_params,
    retail_orders,
)
from plmrec.local_pipeline import run_local
from plmrec.tracking import RUN_KEY_TAG, STAGE_TAG

pytestmark = [pytest.mark.integration, pytest.mark.realdata]
MAGAZINE = SHARED_DATA / "amazon2018" / "Magazine_Subscriptions_5.json.gz"


def _quick(params, tiny_model_dir, mlflow_server, model_name: str):
    """Every stage, sized for seconds: the tiny encoder as the base (no pretraining or fine-tuning)."""
    params.tracking.uri = mlflow_server
    params.pretrain.base_model = str(tiny_model_dir)
    params.pretrain.enabled = False
    params.finetune.enabled = False
    params.retrieval.compare = ["base"]
    params.recommenders = quick_recommenders_params()
    params.user_model = quick_user_model_params()
    params.registry.model_name = model_name
    return params


def _stage_runs(uri: str, run_key: str) -> dict:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("plmrec")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'")
    return {r.data.tags.get(STAGE_TAG, "pipeline"): r for r in runs}


def _bundle(run_dir):
    return next(p.parent for p in run_dir.rglob("bundle.json") if p.parent.name == "bundle")


def test_a_recbole_slice_runs_end_to_end_and_serves_its_text_ids(tiny_model_dir, mlflow_server, tmp_path, capsys):
    """Magazine Subscriptions as RecBole atomic files: text user ids, no quantities, no baskets; the split
    is leave-one-out, the quantity classifiers skip with a line, and the server takes the ids as text."""
    from plmrec.config import parse_params

    if not MAGAZINE.exists():
        pytest.skip(f"{MAGAZINE} not present")
    folder = tmp_path / "magazine"
    inter = magazine_as_recbole(folder)
    params = parse_params({"data": {"source": "file", "path": str(folder)}})
    params = _quick(params, tiny_model_dir, mlflow_server, "recbole-slice-recommender")

    result = run_local(params, run_dir=tmp_path / "run", project_dir=tmp_path)
    out = capsys.readouterr().out
    assert result.succeeded, out
    assert "ingest: the data has no quantity" in out and "train-baseline: skipped: the data has no quantities" in out
    assert "classifier ablation skipped" in out
    runs = _stage_runs(mlflow_server, result.run_key)
    assert runs["ingest"].data.tags["data.format"] == "recbole" and "data.absent.quantity" in runs["ingest"].data.tags
    assert runs["prepare"].data.tags["data.split_mode"] == "leave_one_out"
    assert runs["train-baseline"].data.tags["skipped"].startswith("the data has no quantities")
    assert "leave-one-out" in runs["pipeline"].data.tags["mlflow.note.content"]
    assert 0 < runs["pipeline"].data.metrics["test_ndcg_at_10_user_model"] <= 1
    client = mlflow.MlflowClient(mlflow_server)
    registered = client.get_model_version_by_alias("recbole-slice-recommender", "challenger")
    assert registered.tags["data.name"] == "magazine"  # the gate compares versions of this data set only

    known = inter["user_id"].value_counts().index[0]  # a user with many reviews: in every split
    with plmrec_server(["--bundle", str(_bundle(tmp_path / "run"))], tmp_path) as server:
        url = f"{server.url}/v1/models/plmrec:predict"
        body = {
            "instances": [
                {"customer_id": known, "k": 3},
                {"basket": inter["item_id"].value_counts().index[:2].tolist(), "k": 3},
                {"query": "a magazine about cooking", "k": 3},
            ]
        }
        answer = requests.post(url, json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        kinds = [(p["kind"], len(p["items"])) for p in answer.json()["predictions"]]
        assert kinds == [("customer", 3), ("basket", 3), ("query", 3)]
        assert answer.json()["predictions"][0]["customer_id"] == known
        v2 = {"inputs": [{"name": "customer_id", "datatype": "BYTES", "shape": [1], "data": [known]}]}
        answer = requests.post(f"{server.url}/v2/models/plmrec/infer", json=v2, timeout=60)
        assert answer.status_code == 200, answer.text
        wrong = requests.post(url, json={"instances": [{"customer_id": 12, "k": 3}]}, timeout=60)
        assert wrong.status_code == 400 and "must be a string" in wrong.json()["error"]


def test_a_csv_with_a_column_map_runs_end_to_end(tiny_model_dir, mlflow_server, tmp_path, capsys):
    """An order export in a shape of its own (customer_id, sku, ordered_at, qty, ...) mapped by data.columns:
    numbers stay numbers, quantities label the classifiers, the split is leave-one-out (split.mode auto)."""
    from plmrec.config import parse_params

    orders = retail_orders(12_000)
    orders = orders[(orders["qty"] > 0) & ~orders["order_id"].str.startswith("C")]  # no returns in this export
    path = tmp_path / "orders.csv"
    orders.to_csv(path, index=False)
    columns = {
        "user": "customer_id",
        "item": "sku",
        "time": "ordered_at",
        "basket": "order_id",
        "quantity": "qty",
        "price": "unit_price",
        "title": "product_name",
    }
    params = parse_params({"data": {"source": "file", "path": str(path), "columns": columns}})
    params.clean.drop_exact_duplicates = True  # an export's repeated lines: merged, counted
    params = _quick(params, tiny_model_dir, mlflow_server, "csv-slice-recommender")

    result = run_local(params, run_dir=tmp_path / "run", project_dir=tmp_path)
    out = capsys.readouterr().out
    assert result.succeeded, out
    runs = _stage_runs(mlflow_server, result.run_key)
    assert runs["ingest"].data.tags["data.format"] == "table"
    assert {k for k in runs["ingest"].data.tags if k.startswith("data.absent.")} == {"data.absent.country"}
    assert runs["prepare"].data.tags["data.split_mode"] == "leave_one_out"
    assert (
        "skipped" not in runs["train-baseline"].data.tags
        and 0 < runs["evaluate-baseline"].data.metrics["test_accuracy"]
    )

    known = int(orders["customer_id"].value_counts().index[0])
    with plmrec_server(["--bundle", str(_bundle(tmp_path / "run"))], tmp_path) as server:
        url = f"{server.url}/v1/models/plmrec:predict"
        answer = requests.post(url, json={"instances": [{"customer_id": known, "k": 4}]}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert (
            answer.json()["predictions"][0]["customer_id"] == known
            and len(answer.json()["predictions"][0]["items"]) == 4
        )
        wrong = requests.post(url, json={"instances": [{"customer_id": str(known), "k": 4}]}, timeout=60)
        assert wrong.status_code == 400 and "must be an integer" in wrong.json()["error"]
