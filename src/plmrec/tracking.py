"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

The parent run is found by its key (the KFP job id, or a key the CLI makes), so stages
running in separate processes or pods attach to the same parent without passing run ids.
Every call into MLflow's tracking API goes through this module (the registry and the pyfunc
flavour, which wrap MLflow's model API, live in `plmrec.registry` and `plmrec.serving.pyfunc`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from plmrec.config import Params
from plmrec.distributed import is_main_process, rank
from plmrec.errors import TrackingUnavailable

RUN_KEY_TAG = "plmrec.run_key"
ENCODER_TAG = "plmrec.encoder"  # which encoder the run chose on valid (parent run, evaluate-retrieval, compare-models)
MERGE_TAG = "plmrec.merge_alpha"  # the fine-tuned weights' interpolation with their start, chosen on valid (finetune)
STAGE_TAG = "plmrec.stage"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
logging.getLogger("alembic").setLevel(logging.WARNING)


def resolve_tracking_uri(params: Params, project_dir: str | Path | None = None) -> str:
    """params.tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite in the project directory."""
    if params.tracking.uri:
        return params.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(project_dir or os.getcwd()).resolve()
    uri = f"sqlite:///{root / DEFAULT_DB}"
    if uri not in _ANNOUNCED:  # a store nobody asked for is created here: say where, once per process
        _ANNOUNCED.add(uri)
        print(
            f"[plmrec] tracking: {uri}, artifacts in {root / DEFAULT_ARTIFACTS} "
            "(set tracking.uri or MLFLOW_TRACKING_URI to track elsewhere)",
            file=sys.stderr,
            flush=True,
        )
    return uri


_ANNOUNCED: set[str] = set()


def unavailable(exc: BaseException) -> TrackingUnavailable | None:
    """The clear error for a tracking server that stayed down through the client's retries (None: not that)."""
    import requests

    seen = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, requests.exceptions.ConnectionError) or (
            text.startswith("API request to") and "failed with exception" in text
        ):
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
            return TrackingUnavailable(
                f"the MLflow tracking server did not answer after {retries} retries with backoff "
                f"({text[:160]}{'...' if len(text) > 160 else ''}): check that it runs, or point tracking.uri / "
                "MLFLOW_TRACKING_URI at one that does (retries: tracking.command_retries for promote, deploy, serve "
                "and runs; MLFLOW_HTTP_REQUEST_MAX_RETRIES for everything else)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None  # a tracking server decides where artifacts go


def mlflow_client(uri: str | None = None):
    """An MlflowClient on `uri` (which also becomes the process's tracking URI), or on the current one."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


COMMAND_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


def command_client(params: Params):
    """(client, URI) for a command a person waits on (promote, deploy, serve, runs): requests bounded by
    tracking.command_retries and tracking.command_timeout_s (backoff factor 1), so a server that does not
    answer fails within seconds; what the environment sets for MLflow itself is kept."""
    settings = dict(
        zip(COMMAND_SETTINGS, (params.tracking.command_retries, params.tracking.command_timeout_s, 1), strict=True)
    )
    for name, value in settings.items():
        os.environ.setdefault(name, str(int(value) if float(value).is_integer() else value))
    uri = resolve_tracking_uri(params)
    return mlflow_client(uri), uri


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if new; marked as model training so the MLflow UI opens on its
    runs (not the GenAI traces view)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp = client.get_experiment(client.create_experiment(name, artifact_location=_artifact_root(uri)))
        except Exception:  # created meanwhile by a parallel stage
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def safe_name(label: str) -> str:
    """A model or variant label as MLflow metric and tag names allow it ('+' is not allowed)."""
    return label.replace("+", "_")


UI_VIEW = "workflowType=machine_learning"  # the MLflow 3.17 UI's "Model training" view


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where a run (or the experiment) opens in the MLflow UI, on its training runs. The installed UI
    keeps a GenAI / Model training switch per browser (default GenAI) and does not read the
    experiment's kind tag while that switch exists; the link's `workflowType` sets it. A file or
    SQLite store is read by `mlflow ui --backend-store-uri <uri>` (http://127.0.0.1:5000)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base}/{page}?{UI_VIEW}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


SOURCE_TAG = "mlflow.source.name"
GIT_COMMIT_ENV = "PLMREC_GIT_COMMIT"  # set in the images (docker build --build-arg GIT_COMMIT=...): no .git there


@functools.cache
def code_version() -> dict[str, str]:
    """Which code a run ran, as tags: the plmrec version and the git commit (MLflow's own tag, shown in
    the UI) of the checkout the package runs from, or PLMREC_GIT_COMMIT; `plmrec.git_dirty` when the
    checkout had uncommitted changes to tracked files."""
    import subprocess

    tags = {"plmrec.version": version("plmrec")}
    commit = os.environ.get(GIT_COMMIT_ENV, "")
    if not commit:
        here = Path(__file__).resolve().parent
        git = ["git", "-C", str(here)]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout
            changed = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):  # no git: an installed package
            commit, changed = "", ""
        if commit.strip() and changed.strip():
            tags["plmrec.git_dirty"] = "true"
    if commit.strip():
        tags["mlflow.source.git.commit"] = commit.strip()
    return tags


def parent_run(uri: str, params: Params, run_key: str, *, run_name: str | None = None) -> str:
    """The id of the parent run for `run_key`, created (with all params logged) on first use."""
    import mlflow

    exp_id = ensure_experiment(uri, params.tracking.experiment)
    client = mlflow.MlflowClient(uri)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=run_name or f"pipeline-{run_key}",
        tags={RUN_KEY_TAG: run_key, "plmrec.kind": "pipeline", SOURCE_TAG: "plmrec run", **code_version()},
    )
    batch = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(params.to_dict()).items()]
    for i in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[i : i + 100])
    return run.info.run_id


def run_description(client, params: Params, *, run_id: str, run_key: str) -> str:
    """What a pipeline run concluded, in a few lines (the run's description in the MLflow UI): data,
    split, the encoder valid chose, the search mode, the served model and the gate's decision."""
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=200
    )
    tags = {}
    for run in [*children, parent]:  # the parent's own tags win
        tags.update(run.data.tags)
    d, sp = params.data, params.split
    lines = [
        f"**data**: {d.source}{f' {d.path}' if d.path else ''}"
        + (f" ({tags['data.format']})" if tags.get("data.format", "online_retail") != "online_retail" else "")
        + (f" (prepared md5 {tags['data.prepared_md5']})" if "data.prepared_md5" in tags else ""),
        f"**split**: train < {sp.train_end} <= valid < {sp.valid_end} <= test"
        if tags.get("data.split_mode", "temporal") == "temporal"
        else "**split**: leave-one-out (each user's last interaction test, the one before it valid)",
    ]
    if ENCODER_TAG in tags:
        lines.append(f"**encoder** (chosen on valid): {tags.get('plmrec.encoder_selection', tags[ENCODER_TAG])}")
    if MERGE_TAG in tags:
        lines.append(
            f"**fine-tuned weights**: (1 - a) * start + a * fine-tuned at a = {tags[MERGE_TAG]} (best on valid)"
        )
    if "plmrec.search_mode" in tags:
        how = tags.get("plmrec.search", f"{tags.get('plmrec.search_ranker', '?')} best on valid")
        lines.append(f"**search mode** (free-text queries): {tags['plmrec.search_mode']} ({how})")
    if "plmrec.served_model" in tags:
        lines.append(f"**served model**: {tags['plmrec.served_model']}")
    if "plmrec.gate" in tags:
        version = tags.get("plmrec.registered_version", "?")
        lines.append(f"**gate** (version {version}): {tags['plmrec.gate']}")
    return "\n\n".join(lines)


def finish_parent(uri: str, params: Params, run_key: str, *, status: str, message: str = "") -> str:
    """Close the parent run with FINISHED, FAILED or KILLED (the pipeline's final state), its description
    saying what it concluded."""
    import mlflow

    run_id = parent_run(uri, params, run_key)
    client = mlflow.MlflowClient(uri)
    if message:
        client.set_tag(run_id, "plmrec.final_message", message[:5000])
    description = run_description(client, params, run_id=run_id, run_key=run_key)
    finished = status.upper() in ("SUCCEEDED", "FINISHED")
    killed = status.upper() == "KILLED"
    if message and not finished:
        description += f"\n\n**{'stopped' if killed else 'failed'}**: {message[:2000]}"
    client.set_tag(run_id, "mlflow.note.content", description)
    client.set_terminated(run_id, status="FINISHED" if finished else "KILLED" if killed else "FAILED")
    return run_id


RUN_KEY_ENV = "PLMREC_RUN_KEY"


def pipeline_run_key(run_key: str | None) -> str | None:
    """The pipeline run a stage belongs to: the key given, else PLMREC_RUN_KEY (set on a TrainJob's
    nodes by plmrec.cluster.trainjob), else None."""
    return run_key or os.environ.get(RUN_KEY_ENV) or None


def _parent_client(params: Params, *, run_key: str | None, tracking_uri: str | None):
    """(MlflowClient, parent run id) of the pipeline run `run_key` (or PLMREC_RUN_KEY: a distributed
    job's nodes), or None without one (a standalone stage has no parent) and on ranks other than 0."""
    run_key = pipeline_run_key(run_key)
    if not run_key or not is_main_process():
        return None
    import mlflow

    uri = tracking_uri or resolve_tracking_uri(params)
    return mlflow.MlflowClient(uri), parent_run(uri, params, run_key)


def log_parent_metrics(
    params: Params, metrics: dict[str, float], *, run_key: str | None, tracking_uri: str | None
) -> None:
    """Headline numbers on the pipeline's parent run, for side-by-side comparison in the UI;
    nothing without a run key."""
    found = _parent_client(params, run_key=run_key, tracking_uri=tracking_uri)
    if found:
        client, parent = found
        for name, value in metrics.items():
            client.log_metric(parent, name, float(value))


def set_parent_tags(params: Params, tags: dict[str, Any], *, run_key: str | None, tracking_uri: str | None) -> None:
    """Tags on the pipeline's parent run (e.g. which encoder the run chose); nothing without a run key."""
    found = _parent_client(params, run_key=run_key, tracking_uri=tracking_uri)
    if found:
        client, parent = found
        for name, value in tags.items():
            client.set_tag(parent, name, str(value)[:5000])


def parent_tags(params: Params, *, run_key: str | None, tracking_uri: str | None) -> dict[str, str]:
    """The pipeline's parent run's tags (what earlier stages recorded); empty without a run key."""
    found = _parent_client(params, run_key=run_key, tracking_uri=tracking_uri)
    if not found:
        return {}
    client, parent = found
    return dict(client.get_run(parent).data.tags)


@contextlib.contextmanager
def stage_run(
    params: Params, stage: str, *, run_key: str | None = None, tracking_uri: str | None = None
) -> Iterator[Any]:
    """A nested MLflow run for one stage under the parent of `run_key` (standalone if None and no
    PLMREC_RUN_KEY in the environment: a distributed job's nodes get the pipeline's key that way)."""
    import mlflow

    run_key = pipeline_run_key(run_key)

    uri = tracking_uri or resolve_tracking_uri(params)
    if not is_main_process():  # under torchrun only rank 0 tracks; the others write to a throwaway store
        import tempfile

        uri, run_key = f"sqlite:///{tempfile.gettempdir()}/plmrec-mlflow-rank{rank()}.db", None
    exp_id = ensure_experiment(uri, params.tracking.experiment)
    parent = parent_run(uri, params, run_key) if run_key else None
    tags = {STAGE_TAG: stage, **({RUN_KEY_TAG: run_key} if run_key else {}), **code_version()}
    tags[SOURCE_TAG] = f"plmrec stage {stage}"  # the UI's Source (not the KFP executor's script), with the commit
    from plmrec.errors import Interrupted, TrainingInterrupted

    with mlflow.start_run(experiment_id=exp_id, run_name=stage, parent_run_id=parent, tags=tags) as run:
        logged = flatten(params.to_dict()) if not parent else declared_params(params, stage)
        mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
        try:
            yield run
        except (Interrupted, TrainingInterrupted) as exc:  # killed, not failed: the run says so
            mlflow.set_tag("plmrec.stopped", str(exc)[:5000])
            mlflow.end_run("KILLED")
            raise


def declared_params(params: Params, stage: str) -> dict[str, Any]:
    """The params a stage declares it reads (its DVC `params:`), flattened: what its nested run logs, so
    two runs' stages compare side by side in the UI (the parent run holds every value)."""
    from plmrec import stages

    if stage not in stages.STAGES:
        return {}
    sections = stages.spec(stage).params
    return {
        k: v for k, v in flatten(params.to_dict()).items() if any(k == s or k.startswith(s + ".") for s in sections)
    }


SCHEMA_SAMPLE_ROWS = 1000


def _file_source(path: str):
    """A local file as an MLflow dataset source, resolved once: MLflow registers two equal local-file
    sources (schemes '' and 'file') and warns, for every dataset, that a path could be either."""
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

    found = [source for source in get_registered_sources() if source._can_resolve(path)]
    return resolve_dataset_source(path, candidate_sources=found[-1:]) if found else path


def log_input_table(table, *, path: str | Path, name: str, context: str | None = None) -> None:
    """A table a stage reads, as MLflow dataset inputs of the active run: its file as the source, the
    file's md5 (the digest dvc.lock records) as the digest; a split table as one input per split
    (`<name>-train`, ...), the split as the context."""
    import mlflow
    import mlflow.data

    if mlflow.active_run() is None:
        return
    from plmrec.data.files import file_digest

    digest = file_digest(path, "md5")
    splits = [s for s in ("train", "valid", "test") if "split" in table and (table["split"] == s).any()]
    source = _file_source(str(Path(path).resolve()))
    # the column types from a sample: MLflow would otherwise look at every value of every text column.
    # Its hint about integer columns and missing values concerns model signatures, not logged inputs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        schema = mlflow.data.from_pandas(table.head(SCHEMA_SAMPLE_ROWS), source=source).schema
    for split in splits or [None]:
        part = table if split is None else table[table["split"] == split]
        label = name if split is None else f"{name}-{split}"
        dataset = mlflow.data.from_pandas(part, source=source, name=label, digest=digest)
        dataset.__dict__["schema"] = schema  # fills the dataset's cached `schema` property
        mlflow.log_input(dataset, context=split or context)


def log_json(obj: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(obj if isinstance(obj, (dict, list)) else json.loads(json.dumps(obj, default=str)), artifact_file)


def log_dir(path: str | Path, artifact_path: str) -> None:
    import mlflow

    mlflow.log_artifacts(str(path), artifact_path=artifact_path)


def log_numeric(metrics: dict[str, Any], prefix: str = "") -> None:
    import mlflow

    clean = {
        f"{prefix}{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    }
    if clean:
        mlflow.log_metrics(clean)


def log_metric(name: str, value: float, step: int | None = None) -> None:
    import mlflow

    mlflow.log_metric(name, float(value), step=step)


def loss_logger(prefix: str = "loss") -> Callable[[str, int, float], None]:
    """A training callback (phase label, step, loss) that logs `<prefix>/<label>` at each step:
    live loss curves in the MLflow UI."""
    return lambda label, step, value: log_metric(f"{prefix}/{label}", value, step)


def set_tags(tags: dict[str, Any]) -> None:
    """Tags on the active run (values as strings, cut to MLflow's 5,000 characters)."""
    import mlflow

    mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items()})


def set_verdicts(verdicts: list[str], *, title: str) -> None:
    """The active run's verdicts: each as a short tag the run page shows whole (verdicts that carry
    `tag_name` / `tag_value`, see plmrec.recsys.experiment.Verdict), and all of them in full as the
    run's description (Markdown)."""
    tags = {v.tag_name: v.tag_value for v in verdicts if getattr(v, "tag_name", "")}
    description = f"## {title}\n\n" + "".join(f"- {v}\n" for v in verdicts)
    set_tags({**tags, "mlflow.note.content": description})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_table(table, artifact_file: str) -> None:
    """A DataFrame as an MLflow table (shown in the run's Artifacts and the Evaluation view)."""
    import mlflow

    mlflow.log_table(table, artifact_file)


def pinned_requirements(distributions: list[str]) -> list[str]:
    """`name==version` for each installed distribution (missing ones left out): a logged model's
    requirements, given explicitly so MLflow does not infer them."""
    pinned = []
    for name in distributions:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pinned


ENCODER_RUNTIME = ["sentence-transformers", "transformers", "torch"]


def log_xgboost(model, name: str) -> None:
    """An XGBoost scikit-learn model as an MLflow model of the xgboost flavour (loadable with
    mlflow.xgboost.load_model or as a pyfunc)."""
    import mlflow

    mlflow.xgboost.log_model(model, name=name, pip_requirements=pinned_requirements(["xgboost-cpu", "scikit-learn"]))


def log_sentence_encoder(model, name: str) -> None:
    """A sentence-transformers model as an MLflow model of the sentence_transformers flavour."""
    import mlflow

    mlflow.sentence_transformers.log_model(model, name=name, pip_requirements=pinned_requirements(ENCODER_RUNTIME))
