"""What the KFP components run inside their container: artifact paths in, `plmrec.stages` calls,
metrics out. One function per stage, named as the stage (and its component).

Kept outside `plmrec.components` so the executor never imports the component definitions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from plmrec import stages, tracking
from plmrec.config import Params, parse_params
from plmrec.reports import image_html
from plmrec.search import SEARCH_MODES


def _setup(config: dict, tracking_uri: str, run_key: str) -> tuple[Params, dict]:
    """The validated params, and the stage's tracking keywords (run key, MLflow URI: the pipeline
    parameter, else the params' default)."""
    params = parse_params(config, origin="pipeline parameter 'config'")
    return params, {"run_key": run_key, "tracking_uri": tracking_uri or tracking.resolve_tracking_uri(params)}


def _log(metrics_artifact, values: dict) -> None:
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics_artifact.log_metric(k, float(v))


def _distributed(params: Params, stage: str, tracked: dict, *, inputs: dict, out: str) -> dict:
    """The stage as a Kubeflow Trainer job (plmrec.cluster.trainjob): its model copied to `out`, its
    report returned. The job's rank 0 logs the stage's MLflow run under the pipeline's parent."""
    from plmrec.cluster import trainjob

    work = trainjob.run_distributed(
        params,
        stage,
        run_key=tracked["run_key"],
        tracking_uri=tracked["tracking_uri"],
        inputs=inputs,
        report=lambda message: stages.say(stage, message),
    )
    shutil.copytree(work / "model", out, dirs_exist_ok=True)
    return json.loads((work / "result.json").read_text())


def ingest(config: dict, tracking_uri: str, run_key: str, *, raw_data, ingest_metrics) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    out = stages.ingest(params, raw_data.path, **tracked)
    raw_data.metadata.update({"rows": out["rows"], "format": "parquet", "source": params.data.source})
    _log(ingest_metrics, {"rows": out["rows"], "invoices": out["invoices"]})


def validate(
    config: dict, tracking_uri: str, run_key: str, *, suite: str, table, report, report_files, validation_metrics
) -> None:
    """validate-raw or validate-prepared, by `suite`."""
    params, tracked = _setup(config, tracking_uri, run_key)
    report_dir = Path(report_files.path)
    run = stages.validate_raw if suite == "raw" else stages.validate_prepared
    try:
        outcome = run(params, table.path, report_dir, **tracked)
    finally:
        if (report_dir / "report.html").exists():
            shutil.copyfile(report_dir / "report.html", report.path)
    _log(
        validation_metrics, {"expectations_evaluated": outcome.evaluated, "expectations_failed": len(outcome.failures)}
    )


def prepare(config: dict, tracking_uri: str, run_key: str, *, raw_data, prepared_data, prepare_metrics) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    meta = stages.prepare(params, raw_data.path, prepared_data.path, **tracked)
    prepared_data.metadata.update(
        {
            "rows": meta["split"]["rows"],
            "label_thresholds": meta["label_thresholds"],
            "train_end": meta["split"]["train_end"],
            "valid_end": meta["split"]["valid_end"],
        }
    )
    _log(prepare_metrics, {f"rows_{k}": v for k, v in meta["split"]["rows"].items()})
    _log(prepare_metrics, {f"dropped_{k}": v for k, v in meta["cleaning"]["dropped"].items()})


def train_baseline(config: dict, tracking_uri: str, run_key: str, *, prepared_data, model, train_metrics) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    info = stages.train_baseline(params, prepared_data.path, model.path, **tracked)
    model.metadata.update({"framework": "xgboost", "features": info["features"]})
    _log(train_metrics, {f"valid_{k}": v for k, v in info["valid"].items()})


def evaluate_baseline(
    config: dict, tracking_uri: str, run_key: str, *, prepared_data, model, test_metrics, confusion
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    plots = Path(test_metrics.path).parent / "plots"
    metrics = stages.evaluate_baseline(
        params, prepared_data.path, model.path, metrics_path=plots / "metrics.json", plots_dir=plots, **tracked
    )
    _log(test_metrics, {f"test_{k}": v for k, v in metrics.items()})
    confusion.log_confusion_matrix([str(i) for i in range(params.clean.n_quantity_labels)], metrics["confusion_matrix"])


def pretrain(
    config: dict, tracking_uri: str, run_key: str, *, prepared_data, model, pretrain_metrics, loss_curve
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    if params.pretrain.resources.distributed.workers > 1:
        report = _distributed(params, "pretrain", tracked, inputs={"--prepared": prepared_data.path}, out=model.path)
    else:
        report = stages.pretrain(params, prepared_data.path, model.path, **tracked)
    model.metadata.update(
        {
            "framework": "sentence-transformers",
            "base_model": params.pretrain.base_model,
            "schedule": [p["label"] for p in report["phases"]],
            "hf_dir": "hf",
            "sentence_transformer_dir": "sentence-transformer",
        }
    )
    for label, figures in stages.pretrain_summary(report)["pretrain"].items():
        _log(pretrain_metrics, {f"{label}_{k}": v for k, v in figures.items()})
    png = Path(model.path) / "loss_curve.png"
    extra = "" if png.exists() else "<p>pretraining disabled: base model exported unchanged</p>"
    Path(loss_curve.path).write_text(image_html("Pretraining loss per phase", [png], extra))


def finetune(
    config: dict, tracking_uri: str, run_key: str, *, prepared_data, pretrained, model, finetune_metrics, plots
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    if params.finetune.resources.distributed.workers > 1:
        inputs = {"--prepared": prepared_data.path, "--pretrained": pretrained.path}
        report = _distributed(params, "finetune", tracked, inputs=inputs, out=model.path)
    else:
        report = stages.finetune(params, prepared_data.path, pretrained.path, out_dir=model.path, **tracked)
    model.metadata.update(
        {
            "framework": "sentence-transformers",
            "start_model": report["start_model"],
            "schedule": [p["label"] for p in report["phases"]],
            "sentence_transformer_dir": "sentence-transformer",
            "item_embeddings": "item_embeddings.parquet",
            "user_embeddings": "user_embeddings.parquet",
            "index": params.retrieval.index,
        }
    )
    for label, figures in stages.finetune_summary(report).items():
        _log(finetune_metrics, {f"{label}_{k}": v for k, v in figures.items()})
    _log(finetune_metrics, {f"embed_{k}": v for k, v in report["embeddings"].items()})
    _log(finetune_metrics, stages.merge_summary(report))
    out = Path(model.path)
    Path(plots.path).write_text(
        image_html("Fine-tuning loss and item embedding space", [out / "loss_curve.png", out / "embedding_pca.png"])
    )


def evaluate_retrieval(
    config: dict,
    tracking_uri: str,
    run_key: str,
    *,
    prepared_data,
    pretrained,
    finetuned,
    retrieval_metrics,
    table,
    encoder,
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    tables_dir = Path(table.path).parent / "tables"
    results = stages.evaluate_retrieval(
        params,
        prepared_data.path,
        pretrained.path,
        finetuned_dir=finetuned.path,
        metrics_path=tables_dir / "metrics.json",
        tables_dir=tables_dir,
        selected_dir=encoder.path,
        **tracked,
    )
    selection = results["selection"]
    encoder.metadata.update(
        {
            "framework": "sentence-transformers",
            "encoder": selection["chosen"],
            "query": selection["query"],
            "chosen_by": f"valid {selection['metric']}" if selection["mode"] == "auto" else "encoder_selection",
            "sentence_transformer_dir": "sentence-transformer",
            "item_embeddings": "item_embeddings.parquet",
            "user_embeddings": "user_embeddings.parquet",
        }
    )
    for name, figures in selection["valid"].items():
        _log(
            retrieval_metrics,
            {f"valid_{name}_{selection['metric'].replace('@', '_at_')}": figures[selection["metric"]]},
        )
    _log(retrieval_metrics, {f"selected_{name}": int(name == selection["chosen"]) for name in selection["valid"]})
    for bench, by_encoder in results["benchmarks"].items():
        for name, by_kind in by_encoder.items():
            for kind, m in by_kind.items():
                if not kind.startswith("_"):
                    _log(
                        retrieval_metrics,
                        {f"{bench}_{name}_{kind}_{k.replace('@', '_at_')}": v for k, v in m.items() if "@" in k},
                    )
    sections = "".join(f"<h4>{p.stem}</h4><pre>{p.read_text()}</pre>" for p in sorted(tables_dir.glob("*.md")))
    Path(table.path).write_text(
        f"<html><body><h3>Next-item retrieval, full ranking</h3><p>Encoder chosen on valid: "
        f"<b>{selection['chosen']}</b> ({selection['query']} query)</p>{sections}</body></html>"
    )


def evaluate_search(config: dict, tracking_uri: str, run_key: str, *, encoder, search, search_metrics, results) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    out = stages.evaluate_search(
        params, encoder.path, out_dir=search.path, metrics_path=Path(search.path) / "metrics.json", **tracked
    )
    decision = out["decision"]
    search.metadata.update({"framework": "plmrec-search", "mode": decision["mode"], "evaluated": decision["evaluated"]})
    if not decision["evaluated"]:
        Path(results.path).write_text(
            f"<html><body><p>No product-search evaluation: {decision['reason']}.</p></body></html>"
        )
        return
    for row in out["test"]:
        label = tracking.safe_name(row["ranker"])
        _log(
            search_metrics,
            {
                f"test_{label}_{k.removeprefix('mean_').replace('@', '_at_')}": v
                for k, v in row.items()
                if k.startswith("mean_")
            },
        )
    _log(search_metrics, {f"served_{mode}": int(mode == decision["mode"]) for mode in SEARCH_MODES})
    body = image_html(
        "Product search",
        [Path(search.path) / "categories.png"],
        f"<pre>{(Path(search.path) / 'results.md').read_text()}</pre>",
    )
    Path(results.path).write_text(body)


def train_user_model(
    config: dict, tracking_uri: str, run_key: str, *, prepared_data, encoder, user_model, user_model_metrics
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    if params.user_model.resources.distributed.workers > 1:
        inputs = {"--prepared": prepared_data.path, "--encoder": encoder.path}
        out = _distributed(params, "train-user-model", tracked, inputs=inputs, out=user_model.path)["user_model"]
    else:
        out = stages.train_user_model(
            params,
            prepared_data.path,
            encoder.path,
            out_dir=user_model.path,
            metrics_path=Path(user_model.path) / "metrics.json",
            **tracked,
        )["user_model"]
    if not out.get("chosen"):
        return
    user_model.metadata.update({"framework": "plmrec-user-model", "variant": out["chosen"], "select": out["select"]})
    for variant, figures in out["variants"].items():
        label = tracking.safe_name(variant)
        _log(user_model_metrics, {f"{label}_{m.replace('@', '_at_')}": v for m, v in figures.items()})


def compare_models(
    config: dict,
    tracking_uri: str,
    run_key: str,
    *,
    prepared_data,
    encoder,
    user_model,
    search,
    compare_metrics,
    results,
    bundle,
) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    reports = Path(results.path).parent / "reports"
    summary = stages.compare_models(
        params,
        prepared_data.path,
        encoder.path,
        metrics_path=reports / "metrics.json",
        reports_dir=reports,
        bundle_dir=bundle.path,
        user_model_dir=user_model.path,
        search_dir=search.path,
        **tracked,
    )
    bundle.metadata.update(
        {
            "served_model": summary["served"]["model"],
            "framework": "plmrec-bundle",
            "encoder": summary["encoder"],
            **{k: v for k, v in summary["served"]["metrics"].items() if not k.endswith("_std")},
        }
    )
    for section in ("classifier", "recommenders"):
        for variant, figures in summary[section].items():
            _log(
                compare_metrics,
                {f"{section}_{variant}_{m.replace('@', '_at_')}_mean": v["mean"] for m, v in figures.items()},
            )
    tables = (reports / "results.md").read_text()
    body = image_html(
        "Model comparison",
        [reports / "precision_at_k.png", reports / "confusion_matrix_best.png", reports / "feature_importance.png"],
        f"<pre>{tables}</pre>",
    )
    Path(results.path).write_text(body)


def register_model(config: dict, tracking_uri: str, run_key: str, *, prepared_data, bundle, decision) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    out = stages.register_model(
        params, bundle.path, prepared_data.path, decision_path=Path(decision.path).parent / "decision.json", **tracked
    )
    if out.get("registered"):
        _log(
            decision,
            {
                "registered_version": int(out["version"]),
                "promoted": int(out["promoted"]),
                **{f"challenger_{k}": v for k, v in out["primary"].items() if isinstance(v, float)},
            },
        )


def finish_tracking(config: dict, tracking_uri: str, run_key: str, *, state: str, message: str) -> None:
    params, tracked = _setup(config, tracking_uri, run_key)
    run_id = tracking.finish_parent(tracked["tracking_uri"], params, tracked["run_key"], status=state, message=message)
    print(json.dumps({"mlflow_parent_run": run_id, "state": state}))
