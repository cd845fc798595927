"""The real pipeline through kfp.local, logging to a real MLflow server on 127.0.0.1."""

import subprocess
import warnings
from pathlib import Path

import mlflow
import pytest

from helpers import (
    quick_recommenders_params,
    quick_user_model_params,
    small_review_file,
    tiny_finetune_params,
    tiny_pretrain_params,
    tiny_search_params,
)
from plmrec import registry, stages
from plmrec.data.online_retail import transactions_to_csv_bytes
from plmrec.local_pipeline import run_local
from plmrec.recsys import rows
from plmrec.tracking import RUN_KEY_TAG, STAGE_TAG

pytestmark = pytest.mark.integration
STAGES = set(stages.STAGES)  # one name per stage: the MLflow run names are the stage names


def _runs(uri, run_key):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("plmrec")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'")
    parent = [r for r in runs if r.data.tags.get("plmrec.kind") == "pipeline"]
    children = {r.data.tags[STAGE_TAG]: r for r in runs if STAGE_TAG in r.data.tags}
    return client, parent, children


def test_pipeline_runs_end_to_end(small_params, tiny_model_dir, mlflow_server, tmp_path, capsys):
    small_params.tracking.uri = mlflow_server
    small_params.pretrain = tiny_pretrain_params(tiny_model_dir)
    small_params.finetune = tiny_finetune_params(merge_alphas=[0.5, 1.0])
    small_params.recommenders = quick_recommenders_params()
    small_params.user_model = quick_user_model_params()
    small_params.search = tiny_search_params(small_review_file(tmp_path / "reviews.jsonl.gz"))
    small_params.registry.model_name = "pipeline-test-recommender"  # the MLflow server is shared by the session
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = run_local(small_params, run_dir=tmp_path / "run", project_dir=tmp_path)
    out = capsys.readouterr().out
    noise = [
        str(w.message) for w in seen if "local runner" in str(w.message) or "non-Python base image" in str(w.message)
    ]
    assert not noise, noise  # the local runner's two known notices are silenced
    assert result.succeeded, out
    for stage in STAGES:
        assert f"✓ {stage} success" in out  # one progress line per stage
    assert out.splitlines()[1] == f"full log: {result.log_path}"  # where the whole log goes, first
    assert f"▶ ingest (1/{len(STAGES) + 1}, 0:00 elapsed)" in out
    assert "serve it: plmrec serve --bundle " in out and '"customer_id": ' in out.split("then: curl")[1]
    # the UI link opens the run in the Model training view (the UI's GenAI default shows only traces)
    assert f"/runs/{result.parent_run_id}?workflowType=machine_learning" in out

    client, parent, children = _runs(mlflow_server, result.run_key)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].info.run_id == result.parent_run_id
    assert set(children) == STAGES
    assert {run.info.run_name for run in children.values()} == STAGES
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert all(c.data.tags["mlflow.parentRunId"] == result.parent_run_id for c in children.values())
    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
    for run in [*parent, *children.values()]:  # which code ran: the commit (the UI's source) and the version
        assert run.data.tags.get("mlflow.source.git.commit", "") == commit and run.data.tags["plmrec.version"]
    assert parent[0].data.params["data.synthetic.n_customers"] == "300"

    m = parent[0].data.metrics
    assert 0.2 < m["test_majority_class_accuracy"] < 0.35
    assert m["test_accuracy"] > m["test_majority_class_accuracy"] + 0.1  # sane: well above the floor
    assert 0 < m["test_f1_macro"] <= 1
    prep = children["prepare"].data.metrics
    assert prep["prepared_rows_train"] > prep["prepared_rows_valid"] > 0 and prep["prepared_rows_test"] > 0

    def listed(run, path):
        return {f.path for f in client.list_artifacts(run.info.run_id, path)}

    assert "validation_raw/report.html" in listed(children["validate-raw"], "validation_raw")
    assert "evaluation/confusion_matrix.png" in listed(children["evaluate-baseline"], "evaluation")
    assert "baseline_model/model.json" in listed(children["train-baseline"], "baseline_model")

    pre = children["pretrain"]  # each stage run logs the params its declaration names
    assert pre.data.params["pretrain.base_model"] == str(tiny_model_dir) and "split.train_end" in pre.data.params
    assert "recommenders.seeds" in children["compare-models"].data.params
    assert not any(k.startswith("pretrain.") for k in children["compare-models"].data.params)
    assert pre.data.tags["pretrain.schedule"] == "tapt-mlm -> tapt-tsdae"
    history = client.get_metric_history(pre.info.run_id, "loss/1-tapt-mlm")
    assert [m.step for m in history] == [2, 4, 6]  # live loss curve, every log_every steps
    assert pre.data.metrics["corpus_tapt_sentences"] > 50
    assert "pretrain/loss_curve.png" in listed(pre, "pretrain")

    def logged_models(run) -> dict:
        found = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            output_format="list",
            filter_string=f"source_run_id = '{run.info.run_id}'",
        )
        return {lm.name: lm for lm in found}

    pretrained = logged_models(pre)["pretrained_encoder"]  # MLflow's sentence-transformers flavour
    assert mlflow.sentence_transformers.load_model(pretrained.model_uri).encode(["LANTERN"]).shape == (1, 64)
    booster = mlflow.xgboost.load_model(logged_models(children["train-baseline"])["baseline_xgboost"].model_uri)
    assert booster.n_features_in_ > 0  # the baseline, by the xgboost flavour
    proxy = client.get_metric_history(pre.info.run_id, "valid_proxy_ndcg_at_10")
    assert [m.step for m in proxy] == [0, 1, 2]  # the base model, then each phase, on the valid window

    tuned = children["finetune"]
    assert tuned.data.tags["finetune.schedule"] == "item_context -> sequence_next"
    assert [m.step for m in client.get_metric_history(tuned.info.run_id, "loss/2-sequence_next")] == [2, 4]
    assert {
        "embeddings/item_embeddings.parquet",
        "embeddings/user_embeddings.parquet",
        "embeddings/index.json",
    } <= listed(tuned, "embeddings")
    assert "finetune/embedding_pca.png" in listed(tuned, "finetune")
    merged = tuned.data.tags["plmrec.merge_alpha"]  # chosen on valid among 0.5 and the weights as trained
    assert merged in {"0.5", "1"} and parent[0].data.tags["plmrec.merge_alpha"] == merged
    assert tuned.data.metrics["merge_alpha"] == float(merged) and "merge_valid_ndcg_at_10" in tuned.data.metrics
    assert "finetune/merge_selection.json" in listed(tuned, "finetune")
    logged = logged_models(tuned)
    assert list(logged) == ["finetuned_encoder"]
    encoder = mlflow.sentence_transformers.load_model(logged["finetuned_encoder"].model_uri)
    assert encoder.encode(["RED HEART LANTERN"], normalize_embeddings=True).shape == (1, 64)

    retrieval = children["evaluate-retrieval"]
    assert "retrieval/test.md" in listed(retrieval, "retrieval")
    for encoder_name in ("base", "pretrained", "finetuned"):
        assert 0 <= retrieval.data.metrics[f"test/{encoder_name}/sentence/recall_at_10"] <= 1
    assert 0 < m["test_retrieval_recall_at_50"] <= 1 and m["test_retrieval_ndcg_at_10"] > 0
    chosen = parent[0].data.tags["plmrec.encoder"]  # chosen on valid, handed to compare-models and the bundle
    assert chosen in {"base", "pretrained", "finetuned"} and retrieval.data.tags["plmrec.encoder"] == chosen
    valid = {name: m[f"valid_ndcg_at_10_{name}"] for name in ("base", "pretrained", "finetuned")}
    assert valid[chosen] == max(valid.values())
    assert "retrieval/selection.json" in listed(retrieval, "retrieval")
    assert f"encoder '{chosen}' (best on valid" in out  # the stage's one-line summary
    # the finetune stage scored all three on this very probe (start choice, merge): not encoded again
    assert retrieval.data.metrics["valid_scores_reused"] == 3

    compared = children["compare-models"]
    assert {
        "compare/results.md",
        "compare/precision_at_k.png",
        "compare/confusion_matrix_best.png",
        "compare/recommender_table.csv",
    } <= listed(compared, "compare")
    assert "ltr beats popularity" in compared.data.tags["mlflow.note.content"]  # the run's description
    assert compared.data.tags["ltr.vs.popularity"].startswith("+")  # short: the run page shows it whole
    assert compared.data.tags["plmrec.encoder"] == chosen
    assert (
        compared.data.metrics["recommender/ltr/ndcg_at_10_mean"]
        > compared.data.metrics["recommender/popularity/ndcg_at_10_mean"]
    )
    assert 0 < m["test_accuracy_plm_xgboost"] < 1
    # every row on every view, the twin beside the served model, and the lift over it where it reads text
    assert "compare/view_table.csv" in listed(compared, "compare")
    for view in ("all", "discovery", "new_items"):
        assert f"view/{view}/ltr-no-text/ndcg_at_10_mean" in compared.data.metrics
    served_row = compared.data.tags["plmrec.served_model"]
    twin = rows.twin_of(served_row)
    lists = [line for line in out.splitlines() if line.startswith("served: ")]
    assert len(lists) == 1, out
    if "lift over each list's no-text twin" in lists[0] or "no list's row reads item text" in lists[0]:
        assert lists[0].startswith(f"served: {served_row} (mixed, buy again")  # other rows rank other lists
    elif twin == served_row:
        assert f"served: {served_row}, which reads no item text" in out
    else:
        assert f"served: {served_row}; lift over its no-text twin {twin}: all ndcg@10 " in out
        assert "lift_over_twin_all_ndcg_at_10" in m and "its no-text twin" in compared.data.tags["mlflow.note.content"]

    searched = children["evaluate-search"]  # product search on the review sample; valid chose the mode
    if small_params.search.reviews_path:
        mode = searched.data.tags["plmrec.search_mode"]
        assert mode in {"dense", "lexical", "hybrid"} and parent[0].data.tags["plmrec.search_mode"] == mode
        assert 0 <= m["test_search_bm25_ndcg_at_100"] <= 1 and "blair.vs.bm25" in searched.data.tags
        assert "search/test_summary.json" in listed(searched, "search")
        bundle_meta = next(p for p in (tmp_path / "run" / "artifacts").rglob("bundle.json") if p.is_file())
        import json

        served_search = json.loads(bundle_meta.read_text())["search"]
        assert served_search["default_mode"] == mode and "evaluate-search" in served_search["chosen_by"]
    else:
        assert searched.data.tags["plmrec.search"].startswith("skipped")

    registered = children["register-model"]  # the served recommender, registered and (first version) promoted
    served = compared.data.tags["plmrec.served_model"]
    champion = client.get_model_version_by_alias("pipeline-test-recommender", "champion")
    assert champion.run_id == registered.info.run_id and registered.data.metrics["gate_promoted"] == 1.0
    assert registry.version_metrics(client, champion)["ndcg@10"] == pytest.approx(  # on the logged model
        compared.data.metrics[f"recommender/{served.replace('+', '_')}/ndcg_at_10_mean"]
    )
    assert m["registered_version"] == float(champion.version)
    assert f"{served} (test " in champion.description and "gate: promoted to @champion" in champion.description
    assert f"item text from the '{chosen}' encoder" in champion.description
    assert "@champion is what is served" in client.get_registered_model("pipeline-test-recommender").description
    info = mlflow.models.get_model_info(f"models:/pipeline-test-recommender/{champion.version}")
    assert info.signature is not None and "customer_id" in info.signature.inputs.input_names()
    model_uri = f"models:/pipeline-test-recommender/{champion.version}"
    example = mlflow.models.Model.load(model_uri).load_input_example(mlflow.artifacts.download_artifacts(model_uri))
    answered = mlflow.pyfunc.load_model(model_uri).predict(example)  # the logged example answers
    assert len(answered.loc[0, "items"]) == example.loc[0, "k"] and answered.loc[0, "kind"] == "customer"

    experiment = client.get_experiment(parent[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    from plmrec.data.files import file_digest

    prepared_file = next(p for p in (tmp_path / "run" / "artifacts").rglob("prepared") if p.is_file())
    datasets = {(i.dataset.name, i.dataset.digest) for i in children["train-baseline"].inputs.dataset_inputs}
    assert datasets == {(f"prepared-{s}", file_digest(prepared_file, "md5")) for s in ("train", "valid", "test")}
    assert {i.dataset.name for i in children["prepare"].inputs.dataset_inputs} == {"raw"}
    description = parent[0].data.tags["mlflow.note.content"]  # what the run concluded, in the runs table
    assert f"**encoder** (chosen on valid): encoder '{chosen}'" in description and "**gate** (version" in description
    assert "**served model**" in description and "**split**: train < " in description
    assert "**search mode** (free-text queries)" in description

    files = {p.name for p in (tmp_path / "run" / "artifacts").rglob("*") if p.is_file()}
    assert {
        "raw",
        "prepared",
        "model.json",
        "encoder.json",
        "report.html",
        "confusion_matrix.png",
        "report",
        "modules.json",
        "pretrain_report.json",
        "item_embeddings.parquet",
        "user_embeddings.parquet",
        "finetune_report.json",
        "selection.json",
        "bundle.json",
        "ranker.json",
        "decision.json",
    } <= files
    log = result.log_path.read_text()
    assert log.count("finished with status") >= 12
    assert "checking it with the raw suite" not in log  # prepare found validate-raw's record for its table


def test_bad_data_stops_before_training(small_params, small_raw, mlflow_server, tmp_path, capsys):
    bad = small_raw.copy()
    bad.loc[bad.index[:40], "UnitPrice"] = -2.0
    path = tmp_path / "bad.csv"
    path.write_bytes(transactions_to_csv_bytes(bad))
    small_params.tracking.uri = mlflow_server
    small_params.data.path = str(path)
    small_params.data.source = "file"
    result = run_local(small_params, run_dir=tmp_path / "run", project_dir=tmp_path)
    out = capsys.readouterr().out
    assert not result.succeeded
    assert "✗ validate-raw failure" in out and "'UnitPrice' must be >= 0" in out
    assert "train-baseline" not in out.split("✗ validate-raw")[1].split("finish-tracking")[0]

    client, parent, children = _runs(mlflow_server, result.run_key)
    assert parent[0].info.status == "FAILED"
    assert set(children) == {"ingest", "validate-raw"}
    assert children["validate-raw"].info.status == "FAILED"
    arts = {f.path for f in client.list_artifacts(children["validate-raw"].info.run_id, "validation_raw")}
    assert "validation_raw/report.json" in arts


def test_the_local_runner_silences_exactly_its_two_known_notices():
    from plmrec.local_pipeline import quiet_local_runner

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_local_runner():
            warnings.warn(
                "Task 'ingest': settings ['cpu_limit', 'accelerator'] have no effect in the current local "
                "runner and will be ignored.",
                stacklevel=1,
            )
            warnings.warn(
                "You may be attemping to run a task that uses custom or non-Python base image "
                '"ghcr.io/plmrec/plmrec:0.1.0" in a Python environment.',
                RuntimeWarning,
                stacklevel=1,
            )
            warnings.warn("Task 'ingest' failed to write its cache entry", stacklevel=1)
            warnings.warn("a different RuntimeWarning", RuntimeWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == [
        "Task 'ingest' failed to write its cache entry",
        "a different RuntimeWarning",
    ]


class _Console:
    def __init__(self, tty: bool):
        self.text, self.tty = "", tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def test_the_console_shows_each_stage_k_of_n_and_the_training_progress(monkeypatch):
    """A training loop's progress bar reaches the console: live on a terminal (one line, rewritten), a line
    every BAR_EVERY_S otherwise; the whole output still goes to the log."""
    import io

    from plmrec import local_pipeline

    bar = "    1-tapt-mlm:  45%|####5     | 9/20 [00:05<00:06,  1.80step/s]\n"
    for tty in (True, False):
        monkeypatch.setattr(local_pipeline, "BAR_EVERY_S", 0.0)
        log, console = io.StringIO(), _Console(tty)
        stream = local_pipeline.ProgressStream(log, console, total=14)
        stream.write("Executing task 'pretrain'\n" + bar + "[plmrec] pretrain: phase 1 done\n")
        stream.write("Task 'pretrain' finished with status SUCCESS\n")
        assert log.getvalue().count("9/20") == 1
        assert "▶ pretrain (1/14, 0:00 elapsed)" in console.text and "✓ pretrain success in" in console.text
        shown = "    1-tapt-mlm: 9/20 (45%), 00:05<00:06"
        if tty:  # written in place, then cleared before the next line
            assert f"\r\x1b[K{shown}\r\x1b[K    [plmrec] pretrain: phase 1 done" in console.text
        else:
            assert f"{shown}\n    [plmrec] pretrain: phase 1 done" in console.text and "\r" not in console.text
    monkeypatch.setattr(local_pipeline, "BAR_EVERY_S", 3600.0)  # not a terminal: not every update
    console = _Console(False)
    stream = local_pipeline.ProgressStream(io.StringIO(), console, total=14)
    stream.write("Executing task 'pretrain'\n" + bar * 50)
    assert "9/20" not in console.text
