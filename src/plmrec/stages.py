"""The pipeline stages as plain functions: files in, files out, one MLflow run each.

The CLI (and so DVC) and the KFP components call these same functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.data.tables import read_table, write_table


def _say(stage: str, message: str) -> None:
    print(f"[plmrec] {stage}: {message}", flush=True)


def load_source(params: Params, download_dir: str | Path = "data/external") -> pd.DataFrame:
    d = params.data
    if d.source == "synthetic":
        from plmrec.data.synthetic import generate_transactions

        return generate_transactions(d.synthetic)
    from plmrec.data.online_retail import load_transactions

    if d.source == "file":
        return load_transactions(d.path, encoding=d.encoding)
    from plmrec.data.download import download

    return load_transactions(download(d.source, download_dir), encoding=d.encoding)


def ingest(params: Params, out_path: str | Path, run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    start = time.perf_counter()
    with tracking.stage_run(params, "ingest", run_key, tracking_uri) as run:
        df = load_source(params)
        meta = {"source": params.data.source, "path": params.data.path, "rows": len(df),
                "columns": list(df.columns)}
        write_table(df, out_path, meta)
        stats = {"rows": len(df), "invoices": int(df["InvoiceNo"].nunique()) if "InvoiceNo" in df else 0,
                 "seconds": round(time.perf_counter() - start, 3)}
        tracking.log_numeric(stats, "raw_")
        import mlflow

        mlflow.set_tag("data.raw_md5", file_digest(out_path, "md5"))
        _say("ingest", f"{stats['rows']:,} rows from {params.data.source} -> {out_path} ({stats['seconds']}s)")
        return {**stats, "mlflow_run_id": run.info.run_id}


def validate(params: Params, suite: str, table_path: str | Path, report_dir: str | Path,
             run_key: str | None = None, tracking_uri: str | None = None):
    """Run a great-expectations suite; raises DataValidationFailed after writing and logging the report."""
    from plmrec.errors import DataValidationFailed
    from plmrec.validation import validate_table

    start = time.perf_counter()
    with tracking.stage_run(params, f"validate-{suite}", run_key, tracking_uri):
        df, _ = read_table(table_path)
        try:
            outcome = validate_table(df, suite, params, report_dir, raise_on_failure=False)
        finally:
            if Path(report_dir).exists():
                tracking.log_dir(report_dir, f"validation_{suite}")
        tracking.log_numeric({"success": int(outcome.success), "failed": len(outcome.failures),
                              "evaluated": outcome.evaluated}, f"validation_{suite}_")
        _say(f"validate-{suite}", f"{outcome.summary} ({time.perf_counter() - start:.1f}s)")
        if not outcome.success:
            raise DataValidationFailed(outcome.summary, str(Path(report_dir) / "report.json"))
        return outcome


def prepare(params: Params, raw_path: str | Path, out_path: str | Path,
            run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    from plmrec.data.prepare import prepare_transactions

    with tracking.stage_run(params, "prepare", run_key, tracking_uri):
        raw, _ = read_table(raw_path)
        prepared, meta = prepare_transactions(raw, params.clean, params.split)
        write_table(prepared, out_path, meta)
        tracking.log_json(meta, "prepare/summary.json")
        c = meta["cleaning"]
        tracking.log_numeric({**{f"dropped_{k}": v for k, v in c["dropped"].items()}, "rows": c["rows_out"],
                              "customers": c["customers"], "stock_codes": c["stock_codes"],
                              **{f"rows_{k}": v for k, v in meta["split"]["rows"].items()}}, "prepared_")
        import mlflow

        mlflow.set_tag("data.prepared_md5", file_digest(out_path, "md5"))
        _say("prepare", f"{c['rows_out']:,} rows kept of {c['rows_in']:,} (dropped {c['dropped']}); "
                        f"split {meta['split']['rows']}")
        return meta


def train_baseline(params: Params, prepared_path: str | Path, model_dir: str | Path,
                   run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    from plmrec.baseline import save_baseline, train_baseline as fit

    with tracking.stage_run(params, "train-baseline", run_key, tracking_uri):
        prepared, _ = read_table(prepared_path)
        model, enc, info = fit(prepared, params)
        save_baseline(model, enc, info, model_dir)
        tracking.log_numeric(info["valid"], "valid_")
        tracking.log_numeric({"train_seconds": info["train_seconds"], "best_iteration": info["best_iteration"],
                              "valid_majority_accuracy": info["valid_majority_accuracy"]})
        tracking.log_dir(model_dir, "baseline_model")
        _say("train-baseline", f"valid accuracy {info['valid']['accuracy']:.3f} "
                               f"(majority class {info['valid_majority_accuracy']:.3f}) in {info['train_seconds']}s")
        return info


def plot_confusion(cm: list[list[int]], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, f"{v}", ha="center", va="center", fontsize=8, color="black" if v < arr.max() / 2 else "white")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def evaluate_baseline(params: Params, prepared_path: str | Path, model_dir: str | Path, metrics_path: str | Path,
                      plots_dir: str | Path, run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    from plmrec.baseline import evaluate_baseline as score, load_baseline

    with tracking.stage_run(params, "evaluate", run_key, tracking_uri):
        prepared, _ = read_table(prepared_path)
        model, enc, _ = load_baseline(model_dir)
        m = score(model, enc, prepared, params)
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        flat = {k: v for k, v in m.items() if not isinstance(v, list)}
        Path(metrics_path).write_text(json.dumps({"baseline_xgboost": {"test": flat}}, indent=2), encoding="utf-8")
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        png = plot_confusion(m["confusion_matrix"], Path(plots_dir) / "confusion_matrix.png",
                             f"baseline XGBoost, test (acc {m['accuracy']:.3f})")
        tracking.log_numeric(flat, "test_")
        tracking.log_json(m, "evaluation/test_metrics.json")
        import mlflow

        mlflow.log_artifact(str(png), "evaluation")
        if run_key:  # headline numbers on the parent too, for side-by-side comparison in the UI
            uri = tracking_uri or tracking.resolve_tracking_uri(params)
            parent = tracking.parent_run(uri, params, run_key)
            client = mlflow.MlflowClient(uri)
            for k in ("accuracy", "f1_macro", "majority_class_accuracy"):
                client.log_metric(parent, f"test_{k}", float(m[k]))
        _say("evaluate", f"test accuracy {m['accuracy']:.3f}, macro F1 {m['f1_macro']:.3f} "
                         f"(majority class {m['majority_class_accuracy']:.3f}) on {m['n']:,} rows")
        return m


def build_corpora(params: Params, prepared: pd.DataFrame) -> dict[str, list[str]]:
    """The TAPT and DAPT corpora that the configured phases use."""
    from plmrec.pretrain.corpus import dapt_corpus, tapt_corpus

    pp, needed, corpora = params.pretrain, {ph.corpus for ph in params.pretrain.phases}, {}
    if "tapt" in needed:
        corpora["tapt"] = tapt_corpus(prepared, pp.tapt.splits, pp.tapt.max_chars, pp.tapt.min_chars)
    if "dapt" in needed:
        d = pp.dapt
        corpora["dapt"] = dapt_corpus(d.source, d.path, d.max_chars, d.min_chars, d.max_sentences,
                                      d.synthetic_sentences, seed=params.seed)
    return corpora


def pretrain_summary(report: dict) -> dict:
    """Per-phase headline figures: DVC metrics, the KFP Metrics artifact and the MLflow stage run."""
    return {"pretrain": {ph["label"]: {"steps": ph["steps"], "seconds": round(ph["seconds"], 2),
                                       "tokens_per_s": ph["tokens_per_s"], "samples_per_s": ph["samples_per_s"],
                                       "final_loss": ph["losses"][-1][1] if ph["losses"] else None}
                         for ph in report["phases"]}}


def pretrain(params: Params, prepared_path: str | Path, out_dir: str | Path,
             run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    """DAPT/TAPT with MLM and TSDAE in the configured order; the encoder goes to out_dir and MLflow."""
    import mlflow

    from plmrec.pretrain.corpus import write_corpus
    from plmrec.pretrain.models import check_base_model, quiet_transformers
    from plmrec.pretrain.schedule import export, run_schedule

    out, pp = Path(out_dir), params.pretrain
    with tracking.stage_run(params, "pretrain", run_key, tracking_uri):
        quiet_transformers()
        if not pp.enabled:
            export(check_base_model(pp.base_model), out, pp.pooling, pp.max_length)
            _say("pretrain", f"disabled: exported {pp.base_model} unchanged -> {out}")
            return {"phases": []}
        check_base_model(pp.base_model)  # fail on a bad model before reading any data
        prepared, _ = read_table(prepared_path, columns=["Description", "split"])
        corpora = build_corpora(params, prepared)
        for name, sentences in corpora.items():
            write_corpus(sentences, out / "corpora" / f"{name}.txt")
        tracking.log_numeric({f"{k}_sentences": len(v) for k, v in corpora.items()}, "corpus_")
        _say("pretrain", "corpora: " + ", ".join(f"{k.upper()} {len(v):,} sentences" for k, v in corpora.items()))

        def on_log(label: str, step: int, value: float) -> None:
            mlflow.log_metric(f"loss/{label}", value, step=step)  # live loss curves in the MLflow UI

        report = run_schedule(pp, corpora, out, seed=params.seed, on_log=on_log)
        for label, figures in pretrain_summary(report)["pretrain"].items():
            tracking.log_numeric(figures, f"{label}/")
        tracking.log_numeric({"pretrain_seconds": report["seconds"]})
        mlflow.set_tags({"pretrain.device": report["phases"][-1]["device"],
                         "pretrain.precision": report["phases"][-1]["precision"],
                         "pretrain.base_model": pp.base_model,
                         "pretrain.schedule": " -> ".join(ph.name for ph in pp.phases)})
        tracking.log_json(report, "pretrain/pretrain_report.json")
        tracking.log_json(pp.model_dump(mode="json"), "pretrain/config.json")
        mlflow.log_artifact(str(out / "loss_curve.png"), "pretrain")
        tracking.log_dir(out / "sentence-transformer", "pretrained_encoder")
        _say("pretrain", f"{len(report['phases'])} phases in {report['seconds']}s -> {out}")
        return report
