"""What the MLflow UI shows of plmrec's runs and registry, read from the page a browser renders: headless
Chromium loads the real `mlflow server`'s UI and the test reads the rendered text (and keeps a
screenshot of each page beside it). Skipped where no Chromium is installed (`apt install chromium`)."""

import os
import re
import shutil
import subprocess

import mlflow
import pytest

from plmrec import registry, tracking
from plmrec.config import Params

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered(url: str, screenshot) -> str:
    """The page's text once its scripts have run (and a screenshot of it at `screenshot`)."""
    browser = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"]
    browser.append("--virtual-time-budget=20000")
    subprocess.run([*browser, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", dom, flags=re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    text = text.replace("&nbsp;", " ").replace("&lt;", "<").replace("&#x27;", "'")
    return text.replace(" :", ":")  # `<b>data</b>: x` reads "data: x"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")
def test_the_ui_shows_the_run_description_stage_params_and_the_registry_descriptions(
    mlflow_server, serving_bundles, tmp_path
):
    params = Params()
    params.tracking.uri = mlflow_server
    params.registry.model_name = f"ui-test-{os.getpid()}"
    run_key = f"ui-{os.getpid()}"
    tracked = {"run_key": run_key, "tracking_uri": mlflow_server}
    with tracking.stage_run(params, "prepare", **tracked):
        tracking.log_numeric({"prepared_rows": 123.0})
    with tracking.stage_run(params, "register-model", **tracked):
        version = registry.register_bundle(
            serving_bundles["popularity"],
            params.registry,
            {"ndcg@10": 0.3, "recall@10": 0.4},
            tags={registry.DATA_TAG: params.data.dataset()},
        )
    client = mlflow.MlflowClient(mlflow_server)
    registry.describe(client, params.registry, version, text="popularity (test ndcg@10 0.3000) on the UI test's data")
    parent = tracking.finish_parent(mlflow_server, params, run_key, status="SUCCEEDED")
    experiment = client.get_run(parent).info.experiment_id
    stage = client.search_runs(
        [experiment], filter_string=f"tags.`plmrec.stage` = 'prepare' and tags.`{tracking.RUN_KEY_TAG}` = '{run_key}'"
    )[0]
    view = "?workflowType=machine_learning"  # the UI's Model training view (its GenAI view shows traces)

    page = rendered(f"{mlflow_server}/#/experiments/{experiment}/runs/{parent}{view}", tmp_path / "parent.png")
    assert f"pipeline-{run_key}" in page and "Description" in page and "data: synthetic" in page, page[-3000:]
    assert re.search(r"Parameters \(\d{3}\)", page) and "prepare" in page  # every param; the child run's link
    commit = tracking.code_version().get("mlflow.source.git.commit", "")
    assert "plmrec run" in page and commit[:7] in page  # Source: the command and the commit it ran

    page = rendered(
        f"{mlflow_server}/#/experiments/{experiment}/runs/{stage.info.run_id}{view}", tmp_path / "stage.png"
    )
    declared = len(tracking.declared_params(params, "prepare"))
    assert f"Parameters ({declared})" in page and "split.train_end" in page and "prepared_rows" in page
    assert "plmrec.stage: prepare" in page  # its own params, not the parent's 300
    assert "plmrec stage prepare" in page and commit[:7] in page

    page = rendered(f"{mlflow_server}/#/models/{params.registry.model_name}", tmp_path / "model.png")
    assert "served recommender: each version is one pipeline run" in page and "popularity (test ndcg@10" in page
    assert f"Version {version}" in page and "data.name: synthetic" in page
    assert "metric." not in page  # the figures are on the logged model, not copied into version tags
