"""The pipeline stages as plain functions: files in, files out, one MLflow run each.

Each stage has one name, used by DVC (`dvc.yaml`), the CLI (`plmrec stage <name>`), the KFP
component and its display name, and the MLflow run; the function is that name with underscores.
`STAGES` lists them in pipeline order. The CLI (and so DVC) and the KFP components call these
same functions.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.data.files import file_digest
from plmrec.data.tables import read_table, write_table
from plmrec.distributed import is_main_process, rank
from plmrec.errors import DataValidationFailed, StageError
from plmrec.ranking import RANKING_METRICS

if TYPE_CHECKING:
    from plmrec.selection import EncoderSelection

STAGES = (
    "ingest",
    "validate-raw",
    "prepare",
    "validate-prepared",
    "train-baseline",
    "evaluate-baseline",
    "pretrain",
    "finetune",
    "evaluate-retrieval",
    "evaluate-search",
    "train-user-model",
    "compare-models",
    "register-model",
)
FINISH_TRACKING = "finish-tracking"  # the pipeline's exit handler (KFP only): closes the MLflow parent run
ENCODER_COLUMNS = ["CustomerID", "InvoiceNo", "InvoiceDate", "StockCode", "Description", "split"]


def say(stage: str, message: str) -> None:
    """A stage's one-line progress report (the local runner shows these lines)."""
    print(f"[plmrec] {stage}: {message}", flush=True)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """A stage's JSON output (metrics, decisions), its folder created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=indent, default=str), encoding="utf-8")


# ---------------------------------------------------------------------------- data
def load_source(params: Params, download_dir: str | Path = "data/external") -> pd.DataFrame:
    source = params.data
    if source.source == "synthetic":
        from plmrec.data.synthetic import generate_transactions

        return generate_transactions(source.synthetic)
    from plmrec.data.online_retail import load_transactions

    if source.source == "file":
        return load_transactions(source.path, encoding=source.encoding)
    from plmrec.data.download import download

    return load_transactions(download(source.source, download_dir), encoding=source.encoding)


def ingest(
    params: Params, out_path: str | Path, *, run_key: str | None = None, tracking_uri: str | None = None
) -> dict:
    start = time.perf_counter()
    with tracking.stage_run(params, "ingest", run_key=run_key, tracking_uri=tracking_uri) as run:
        table = load_source(params)
        meta = {
            "source": params.data.source,
            "path": params.data.path,
            "rows": len(table),
            "columns": list(table.columns),
        }
        write_table(table, out_path, meta)
        stats = {
            "rows": len(table),
            "invoices": int(table["InvoiceNo"].nunique()) if "InvoiceNo" in table else 0,
            "seconds": round(time.perf_counter() - start, 3),
        }
        tracking.log_numeric(stats, "raw_")
        tracking.set_tags({"data.raw_md5": file_digest(out_path, "md5")})
        say("ingest", f"{stats['rows']:,} rows from {params.data.source} -> {out_path} ({stats['seconds']}s)")
        return {**stats, "mlflow_run_id": run.info.run_id}


def read_checked(path: str | Path, suite: str, *, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """A stage's input table, after checking it has the columns the stage reads, each of its type: a table
    that failed validation stops here with the rows that are wrong (exit 3), never deeper with a traceback."""
    import pyarrow.parquet as pq

    from plmrec.validation import check_columns, check_schema

    if not Path(path).is_file():
        raise StageError(f"{path} does not exist: run the stage that writes it first (dvc.yaml lists the order)")
    check_columns(pq.read_schema(path).names, suite, source=path, columns=columns)
    table, meta = read_table(path, columns=columns)
    check_schema(table, suite, source=path, columns=columns)
    tracking.log_input_table(table, path=path, name=suite, context=suite)
    return table, meta


def _validate(
    params: Params,
    suite: str,
    table_path: str | Path,
    *,
    report_dir: str | Path,
    run_key: str | None,
    tracking_uri: str | None,
):
    """Run a great-expectations suite; raises DataValidationFailed after writing and logging the report."""
    from plmrec.validation import validate_table

    stage, start = f"validate-{suite}", time.perf_counter()
    with tracking.stage_run(params, stage, run_key=run_key, tracking_uri=tracking_uri):
        table, _ = read_table(table_path)
        tracking.log_input_table(table, path=table_path, name=suite, context=suite)
        try:
            outcome = validate_table(table, suite, params, report_dir=report_dir, raise_on_failure=False)
        finally:
            if Path(report_dir).exists():
                tracking.log_dir(report_dir, f"validation_{suite}")
        tracking.log_numeric(
            {"success": int(outcome.success), "failed": len(outcome.failures), "evaluated": outcome.evaluated},
            f"validation_{suite}_",
        )
        say(stage, f"{outcome.summary} ({time.perf_counter() - start:.1f}s)")
        if not outcome.success:
            raise DataValidationFailed(outcome.summary, str(Path(report_dir) / "report.json"))
        return outcome


def validate_raw(
    params: Params,
    table_path: str | Path,
    report_dir: str | Path,
    *,
    run_key: str | None = None,
    tracking_uri: str | None = None,
):
    """The `raw` suite on the ingested table."""
    return _validate(params, "raw", table_path, report_dir=report_dir, run_key=run_key, tracking_uri=tracking_uri)


def validate_prepared(
    params: Params,
    table_path: str | Path,
    report_dir: str | Path,
    *,
    run_key: str | None = None,
    tracking_uri: str | None = None,
):
    """The `prepared` suite on the cleaned, split and labelled table."""
    return _validate(params, "prepared", table_path, report_dir=report_dir, run_key=run_key, tracking_uri=tracking_uri)


def prepare(
    params: Params,
    raw_path: str | Path,
    out_path: str | Path,
    *,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    from plmrec.data.prepare import prepare_transactions

    with tracking.stage_run(params, "prepare", run_key=run_key, tracking_uri=tracking_uri):
        raw, _ = read_checked(raw_path, "raw")
        prepared, meta = prepare_transactions(raw, params.clean, params.split)
        write_table(prepared, out_path, meta)
        tracking.log_json(meta, "prepare/summary.json")
        cleaning = meta["cleaning"]
        tracking.log_numeric(
            {
                **{f"dropped_{k}": v for k, v in cleaning["dropped"].items()},
                "rows": cleaning["rows_out"],
                "customers": cleaning["customers"],
                "stock_codes": cleaning["stock_codes"],
                **{f"rows_{k}": v for k, v in meta["split"]["rows"].items()},
            },
            "prepared_",
        )
        tracking.set_tags({"data.prepared_md5": file_digest(out_path, "md5")})
        say(
            "prepare",
            f"{cleaning['rows_out']:,} rows kept of {cleaning['rows_in']:,} "
            f"(dropped {cleaning['dropped']}); split {meta['split']['rows']}",
        )
        return meta


# ---------------------------------------------------------------------------- the baseline
def train_baseline(
    params: Params,
    prepared_path: str | Path,
    model_dir: str | Path,
    *,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    from plmrec.baseline import save_baseline
    from plmrec.baseline import train_baseline as fit

    with tracking.stage_run(params, "train-baseline", run_key=run_key, tracking_uri=tracking_uri):
        prepared, _ = read_checked(prepared_path, "prepared")
        model, encoder, info = fit(prepared, params)
        save_baseline(model, encoder, info, out_dir=model_dir)
        tracking.log_numeric(info["valid"], "valid_")
        tracking.log_numeric(
            {
                "train_seconds": info["train_seconds"],
                "best_iteration": info["best_iteration"],
                "valid_majority_accuracy": info["valid_majority_accuracy"],
            }
        )
        tracking.log_dir(model_dir, "baseline_model")
        say(
            "train-baseline",
            f"valid accuracy {info['valid']['accuracy']:.3f} "
            f"(majority class {info['valid_majority_accuracy']:.3f}) in {info['train_seconds']}s",
        )
        return info


def evaluate_baseline(
    params: Params,
    prepared_path: str | Path,
    model_dir: str | Path,
    *,
    metrics_path: str | Path,
    plots_dir: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    from plmrec.baseline import evaluate_baseline as score
    from plmrec.baseline import load_baseline
    from plmrec.plots import plot_confusion

    with tracking.stage_run(params, "evaluate-baseline", run_key=run_key, tracking_uri=tracking_uri):
        prepared, _ = read_checked(prepared_path, "prepared")
        model, encoder, _ = load_baseline(model_dir)
        metrics = score(model, encoder, prepared, params=params)
        flat = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        write_json(metrics_path, {"baseline_xgboost": {"test": flat}})
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        png = plot_confusion(
            metrics["confusion_matrix"],
            Path(plots_dir) / "confusion_matrix.png",
            f"baseline XGBoost, test (acc {metrics['accuracy']:.3f})",
        )
        tracking.log_numeric(flat, "test_")
        tracking.log_json(metrics, "evaluation/test_metrics.json")
        tracking.log_artifact(png, "evaluation")
        tracking.log_parent_metrics(
            params,
            {f"test_{k}": metrics[k] for k in ("accuracy", "f1_macro", "majority_class_accuracy")},
            run_key=run_key,
            tracking_uri=tracking_uri,
        )
        say(
            "evaluate-baseline",
            f"test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['f1_macro']:.3f} "
            f"(majority class {metrics['majority_class_accuracy']:.3f}) on {metrics['n']:,} rows",
        )
        return metrics


# ---------------------------------------------------------------------------- the language model
def build_corpora(params: Params, prepared: pd.DataFrame) -> dict[str, list[str]]:
    """The TAPT and DAPT corpora that the configured phases use."""
    from plmrec.pretrain.corpus import dapt_corpus, tapt_corpus

    pretraining, needed, corpora = params.pretrain, {ph.corpus for ph in params.pretrain.phases}, {}
    if "tapt" in needed:
        corpora["tapt"] = tapt_corpus(
            prepared, pretraining.tapt.splits, pretraining.tapt.max_chars, min_chars=pretraining.tapt.min_chars
        )
    if "dapt" in needed:
        dapt = pretraining.dapt
        corpora["dapt"] = dapt_corpus(
            dapt.source,
            dapt.path,
            dapt.max_chars,
            min_chars=dapt.min_chars,
            max_sentences=dapt.max_sentences,
            synthetic_sentences=dapt.synthetic_sentences,
            seed=params.seed,
        )
    return corpora


def _phase_figures(phase: dict, extra: str) -> dict:
    """One phase's headline figures, with the `extra` one the stage reports (tokens/s, pairs)."""
    return {
        "steps": phase["steps"],
        "seconds": round(phase["seconds"], 2),
        extra: phase[extra],
        "samples_per_s": phase["samples_per_s"],
        "final_loss": phase["losses"][-1][1] if phase["losses"] else None,
    }


def pretrain_summary(report: dict) -> dict:
    """Per-phase headline figures: DVC metrics, the KFP Metrics artifact and the MLflow stage run; with
    the valid proxy, `valid_ndcg_at_10` per phase and for the base model."""
    phases = {}
    if report.get("valid_proxy_base"):
        phases["base"] = {"valid_ndcg_at_10": report["valid_proxy_base"]["ndcg@10"]}
    for ph in report["phases"]:
        phases[ph["label"]] = _phase_figures(ph, "tokens_per_s")
        if ph.get("valid_proxy"):
            phases[ph["label"]]["valid_ndcg_at_10"] = ph["valid_proxy"]["ndcg@10"]
    return {"pretrain": phases}


def _pretrain_probe(params: Params, prepared: pd.DataFrame):
    """The valid-window probe for the per-phase proxy, or None (switched off, or no valid customers)."""
    from plmrec.selection import ValidProbe

    if not params.pretrain.valid_proxy:
        return None
    try:
        return ValidProbe.from_prepared(prepared, params)
    except StageError as exc:
        say("pretrain", f"no valid proxy: {exc}")
        return None


def pretrain(
    params: Params,
    prepared_path: str | Path,
    out_dir: str | Path,
    *,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """DAPT/TAPT with MLM and TSDAE in the configured order; the encoder goes to out_dir and MLflow."""
    from plmrec.distributed import is_main_process
    from plmrec.pretrain.corpus import write_corpus
    from plmrec.pretrain.models import check_base_model, quiet_transformers
    from plmrec.pretrain.schedule import export, run_schedule

    out, pretraining = Path(out_dir), params.pretrain
    with tracking.stage_run(params, "pretrain", run_key=run_key, tracking_uri=tracking_uri):
        quiet_transformers()
        if not pretraining.enabled:
            export(
                check_base_model(pretraining.base_model), out, pretraining.pooling, max_length=pretraining.max_length
            )
            say("pretrain", f"disabled: exported {pretraining.base_model} unchanged -> {out}")
            return {"phases": []}
        check_base_model(pretraining.base_model)  # fail on a bad model before reading any data
        prepared, _ = read_checked(prepared_path, "prepared", columns=ENCODER_COLUMNS)
        corpora = build_corpora(params, prepared)
        probe = _pretrain_probe(params, prepared)
        for name, sentences in corpora.items():
            if is_main_process():
                write_corpus(sentences, out / "corpora" / f"{name}.txt")
        tracking.log_numeric({f"{k}_sentences": len(v) for k, v in corpora.items()}, "corpus_")
        say("pretrain", "corpora: " + ", ".join(f"{k.upper()} {len(v):,} sentences" for k, v in corpora.items()))
        report = run_schedule(
            pretraining,
            corpora,
            out,
            seed=params.seed,
            on_log=tracking.loss_logger(),
            probe=probe,
            on_proxy=lambda index, figures: tracking.log_metric(
                "valid_proxy_ndcg_at_10", figures["ndcg@10"], step=index
            ),
        )
        for label, figures in pretrain_summary(report)["pretrain"].items():
            tracking.log_numeric(figures, f"{label}/")
        tracking.log_numeric({"pretrain_seconds": report["seconds"]})
        tracking.set_tags(
            {
                "pretrain.device": report["phases"][-1]["device"],
                "pretrain.precision": report["phases"][-1]["precision"],
                "pretrain.base_model": pretraining.base_model,
                "pretrain.schedule": " -> ".join(ph.name for ph in pretraining.phases),
            }
        )
        tracking.log_json(report, "pretrain/pretrain_report.json")
        tracking.log_json(pretraining.model_dump(mode="json"), "pretrain/config.json")
        if not is_main_process():
            return report
        tracking.log_artifact(out / "loss_curve.png", "pretrain")
        tracking.log_dir(out / "sentence-transformer", "pretrained_encoder")
        say("pretrain", f"{len(report['phases'])} phases in {report['seconds']}s -> {out}")
        return report


def finetune_summary(report: dict) -> dict[str, dict]:
    return {ph["label"]: _phase_figures(ph, "pairs") for ph in report["phases"]}


def merge_summary(report: dict) -> dict[str, float]:
    """finetune.merge_alphas' outcome as metrics: the kept alpha and its valid figure (empty: no merging)."""
    merge = report.get("merge")
    if not merge:
        return {}
    metric = merge["metric"]
    return {
        "merge_alpha": merge["alpha"],
        f"merge_valid_{metric.replace('@', '_at_')}": merge["valid"][merge["chosen"]][metric],
    }


def finetune_start_model(
    params: Params,
    pretrained_dir: str | Path | None,
    prepared: pd.DataFrame | None = None,
    *,
    scores_file: str | Path | None = None,
) -> tuple[str, EncoderSelection | None]:
    """The encoder fine-tuning starts from: the pretrain stage's output, the untouched base model, or
    (start_from: auto) whichever of the two scores higher on the valid window; and that selection.
    The valid scores are also written to `scores_file` (selection.SCORES_FILE) for later stages."""
    from plmrec.pretrain.models import check_base_model
    from plmrec.selection import ValidProbe, select_encoder
    from plmrec.training.device import resolve_device

    tuning = params.finetune
    base = check_base_model(params.pretrain.base_model)
    if tuning.start_from == "base" or (tuning.start_from == "auto" and not params.pretrain.enabled):
        return base, None
    hf = Path(pretrained_dir or "") / "hf"
    if not (hf / "config.json").is_file():
        raise StageError(
            f"finetune.start_from is '{tuning.start_from}' but {hf} holds no encoder "
            f"(run the pretrain stage first, or set finetune.start_from: base)"
        )
    if tuning.start_from == "pretrained":
        return str(hf), None
    if prepared is None:
        raise StageError("finetune.start_from is 'auto': the prepared table is needed to score on the valid window")
    probe = ValidProbe.from_prepared(prepared, params)
    selection = select_encoder(
        {"base": base, "pretrained": str(hf)},
        probe,
        mode="auto",
        pooling=tuning.pooling,
        max_length=tuning.max_length,
        device=str(resolve_device(tuning.device)),
        progress=lambda message: say("finetune", f"start_from auto: {message}"),
    )
    if scores_file is not None:
        probe.save_scores(scores_file)
    return selection.path, selection


def _log_merge(merge: dict, *, params: Params, tracked: dict) -> None:
    """finetune.merge_alphas' choice: the valid table, the kept alpha (metric, and tag on the stage and
    the parent run) and one line."""
    from plmrec.selection import EncoderSelection

    selection = EncoderSelection("auto", merge["scores"])
    tracking.log_table(selection.table().rename(columns={"encoder": "merge"}), "finetune/merge_selection.json")
    tracking.log_numeric(merge_summary({"merge": merge}))
    tags = {tracking.MERGE_TAG: f"{merge['alpha']:g}"}
    tracking.set_tags(tags)
    tracking.set_parent_tags(params, tags, **tracked)
    kept = "kept as trained" if merge["alpha"] == 1 else f"merged with the start at alpha={merge['alpha']:g}"
    say("finetune", f"fine-tuned weights {kept}: {selection.line()}")


def finetune(
    params: Params,
    prepared_path: str | Path,
    pretrained_dir: str | Path | None,
    *,
    out_dir: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Contrastive fine-tuning, then item/user embeddings, the index description and the embedding picture."""
    from plmrec.distributed import is_main_process
    from plmrec.encoders import load_encoder, sentence_model
    from plmrec.finetune.run import embed_catalogue
    from plmrec.finetune.run import finetune as run_finetune
    from plmrec.plots import plot_embedding_space
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.selection import SCORES_FILE
    from plmrec.training.device import resolve_device

    tuning, out = params.finetune, Path(out_dir)
    with tracking.stage_run(params, "finetune", run_key=run_key, tracking_uri=tracking_uri):
        quiet_transformers()
        prepared, _ = read_checked(prepared_path, "prepared", columns=ENCODER_COLUMNS)
        out.mkdir(parents=True, exist_ok=True)
        scores_file = out / SCORES_FILE if is_main_process() else None  # one writer under torchrun
        start, start_selection = finetune_start_model(params, pretrained_dir, prepared, scores_file=scores_file)
        if start_selection is not None:
            say("finetune", f"start_from auto: {start_selection.line()}")
            tracking.log_table(start_selection.table(), "finetune/start_selection.json")
            tracking.set_tags({"finetune.start_from_chosen": start_selection.chosen})
        report: dict = {"start_model": start, "phases": []}
        if tuning.enabled:
            report = run_finetune(params, prepared, start, out_dir=out, on_log=tracking.loss_logger())
            if not is_main_process():  # under torchrun, rank 0 embeds, plots and logs
                return report
            for label, figures in finetune_summary(report).items():
                tracking.log_numeric(figures, f"{label}/")
            tracking.log_numeric({f"pairs_{k}": v for k, v in report["pairs"].items()})
            tracking.log_artifact(out / "loss_curve.png", "finetune")
            say("finetune", f"{len(report['phases'])} phases in {report['seconds']}s from {start}")
            if "merge" in report:
                _log_merge(report["merge"], params=params, tracked={"run_key": run_key, "tracking_uri": tracking_uri})
        else:
            sentence_model(start, tuning.pooling, tuning.max_length).save(str(out / "sentence-transformer"))
            say("finetune", f"disabled: {start} exported unchanged")
        model = load_encoder(
            out / "sentence-transformer", tuning.pooling, tuning.max_length, device=str(resolve_device(tuning.device))
        )
        embedded = embed_catalogue(model, prepared, params, out_dir=out)
        picture = plot_embedding_space(
            embedded.pop("vectors"),
            params.retrieval.clusters,
            out / "embedding_pca.png",
            title=f"fine-tuned item embeddings: PCA, KMeans k={params.retrieval.clusters}",
            seed=params.seed,
        )
        report["embeddings"] = {**embedded, **picture}
        if start_selection is not None:
            report["start_selection"] = start_selection.to_dict()
        (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
        tracking.log_numeric(embedded, "embed_")
        tracking.log_numeric(picture, "pca_")
        tracking.set_tags(
            {
                "finetune.start_model": start,
                "finetune.loss": tuning.loss,
                "finetune.pooling": tuning.pooling,
                "finetune.schedule": " -> ".join(p.task for p in tuning.phases) if tuning.enabled else "disabled",
            }
        )
        tracking.log_json(report, "finetune/finetune_report.json")
        tracking.log_json(tuning.model_dump(mode="json"), "finetune/config.json")
        tracking.log_artifact(out / "embedding_pca.png", "finetune")
        for name in ("item_embeddings.parquet", "user_embeddings.parquet", "index.json"):
            tracking.log_artifact(out / name, "embeddings")
        tracking.log_sentence_encoder(model.to("cpu"), "finetuned_encoder")
        say("finetune", f"{embedded['items']:,} item and {embedded['users']:,} user embeddings -> {out}")
        return report


def retrieval_encoders(params: Params, pretrained_dir: str | Path | None, finetuned_dir: str | Path | None) -> dict:
    """name -> encoder directory for every encoder in retrieval.compare."""
    from plmrec.pretrain.models import check_base_model

    where = {
        "base": lambda: check_base_model(params.pretrain.base_model),
        "pretrained": lambda: Path(pretrained_dir or "") / "sentence-transformer",
        "finetuned": lambda: Path(finetuned_dir or "") / "sentence-transformer",
    }
    found = {}
    for name in params.retrieval.compare:
        path = Path(where[name]())
        if not (path / "config.json").exists():
            raise StageError(f"retrieval.compare includes '{name}' but {path} holds no encoder")
        found[name] = str(path)
    return found


def _retrieval_benchmarks(params: Params, prepared: pd.DataFrame) -> dict:
    """benchmark name -> (item texts, queries, exclude history): the Online Retail test window, and the
    UniSRec/RecBole benchmark when retrieval.seqrec.path is set."""
    from plmrec.finetune.pairs import catalogue
    from plmrec.finetune.retrieval import seqrec_queries, temporal_queries

    retrieval = params.retrieval
    items = catalogue(prepared)
    queries = temporal_queries(
        prepared, {c: i for i, c in enumerate(items["StockCode"])}, "test", exclude_history=retrieval.exclude_history
    )
    benchmarks = {"online_retail_test": (items["Description"].tolist(), queries, retrieval.exclude_history)}
    if retrieval.seqrec.path:
        from plmrec.data.seqrec import load_seqrec

        data = load_seqrec(retrieval.seqrec.path, retrieval.seqrec.name)
        benchmarks[f"seqrec_{data.name.lower()}_test"] = (
            data.items["text"].tolist(),
            seqrec_queries(data.splits["test"], retrieval.seqrec.max_users, params.seed),
            retrieval.seqrec.exclude_history,
        )
    return benchmarks


def _log_retrieval_table(bench: str, table: pd.DataFrame, tables_dir: Path) -> None:
    from plmrec.reports import markdown_table

    table.to_csv(tables_dir / f"{bench}.csv", index=False)
    (tables_dir / f"{bench}.md").write_text(markdown_table(table))
    tracking.log_table(table, f"retrieval/{bench}.json")
    tracking.log_artifact(tables_dir / f"{bench}.md", "retrieval")
    tracking.log_artifact(tables_dir / f"{bench}.csv", "retrieval")
    for row in table.to_dict("records"):
        tracking.log_numeric(
            {f"{bench}/{row['encoder']}/{row['query']}/{k.replace('@', '_at_')}": v for k, v in row.items() if "@" in k}
        )
    say("evaluate-retrieval", f"{bench}\n{markdown_table(table)}")


def write_selected_encoder(
    selection: EncoderSelection, model, prepared: pd.DataFrame, *, params: Params, out_dir: str | Path
) -> dict:
    """The chosen encoder as every later stage reads it: sentence-transformer/, item and user
    embeddings, index.json and selection.json under `out_dir`. Embeddings the encoder's own stage
    wrote for this table and these settings (the fine-tuned encoder's) are copied, not encoded again."""
    from plmrec.finetune.run import embed_catalogue, saved_embeddings_match

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "sentence-transformer"))
    source = Path(selection.path).parent
    if Path(selection.path).is_dir() and saved_embeddings_match(source, prepared, params):
        for name in ("item_embeddings.parquet", "user_embeddings.parquet", "index.json"):
            shutil.copyfile(source / name, out / name)
        index = json.loads((out / "index.json").read_text())
        users = len(pd.read_parquet(out / "user_embeddings.parquet", columns=["CustomerID"]))
        embedded = {"items": index["items"], "users": users, "copied": 1}
        say("evaluate-retrieval", f"item and user embeddings copied from {source} (written there for this table)")
    else:
        embedded = embed_catalogue(model, prepared, params, out_dir=out)
        embedded.pop("vectors")
    write_json(out / "selection.json", selection.to_dict())
    return embedded


def _log_selection(selection: EncoderSelection, test: dict, *, tables_dir: Path, params: Params, tracked: dict) -> None:
    """The decision and its valid figures: the stage run (table, metrics, tags), the parent run (tag and
    the chosen encoder's test figures) and a markdown table next to the test tables."""
    from plmrec.finetune.retrieval import REPORTED
    from plmrec.reports import markdown_table

    table = selection.table()
    table.to_csv(tables_dir / "valid_selection.csv", index=False)
    (tables_dir / "valid_selection.md").write_text(markdown_table(table))
    tracking.log_table(table, "retrieval/selection.json")
    tracking.log_artifact(tables_dir / "valid_selection.md", "retrieval")
    for name, (_, value) in selection.best.items():
        tracking.log_numeric({f"valid/{name}/{selection.metric.replace('@', '_at_')}": value})
    tags = {tracking.ENCODER_TAG: selection.chosen, "plmrec.encoder_query": selection.query}
    tracking.set_tags({**tags, "plmrec.encoder_selection": selection.line()})
    chosen = test[selection.chosen][selection.query]
    tracking.log_parent_metrics(
        params,
        {
            **{f"valid_ndcg_at_10_{name}": value for name, (_, value) in selection.best.items()},
            **{
                f"test_retrieval_{name}_at_{k}": chosen[f"{name}@{k}"] for k in params.retrieval.ks for name in REPORTED
            },
        },
        **tracked,
    )
    tracking.set_parent_tags(params, tags, **tracked)


def evaluate_retrieval(
    params: Params,
    prepared_path: str | Path,
    pretrained_dir: str | Path | None,
    *,
    finetuned_dir: str | Path | None,
    metrics_path: str | Path,
    tables_dir: str | Path,
    selected_dir: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Each encoder of retrieval.compare scored on the valid window (which chooses the encoder:
    retrieval.encoder_selection) and once on the test window, and on the UniSRec/RecBole benchmark when
    retrieval.seqrec.path is set; one comparable table each. With `selected_dir`, the chosen encoder and
    its item and user embeddings are written there for compare-models and the serving bundle."""
    from plmrec.encoders import load_encoder
    from plmrec.finetune.retrieval import results_table, score_encoder
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.selection import SCORES_FILE, EncoderSelection, ValidProbe, best_query
    from plmrec.training.device import resolve_device

    retrieval, tuning = params.retrieval, params.finetune
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    with tracking.stage_run(params, "evaluate-retrieval", **tracked):
        quiet_transformers()
        encoders = retrieval_encoders(params, pretrained_dir, finetuned_dir)
        device = str(resolve_device(tuning.device))
        prepared, _ = read_checked(prepared_path, "prepared", columns=ENCODER_COLUMNS)
        probe = ValidProbe.from_prepared(prepared, params)
        if finetuned_dir is not None:  # the same probe's scores of the same weights, from the finetune stage
            probe.load_scores(Path(finetuned_dir) / SCORES_FILE)
        benchmarks = _retrieval_benchmarks(params, prepared)
        results: dict = {bench: {} for bench in benchmarks}
        valid: dict = {}
        for name, path in encoders.items():  # each encoder is loaded once and scores every benchmark
            model = load_encoder(path, tuning.pooling, tuning.max_length, device=device)
            valid[name] = probe.score(model)
            kind, value = best_query(valid[name])
            say(
                "evaluate-retrieval",
                f"valid: {name} ndcg@10 {value:.4f} ({kind} query, {len(probe.queries):,} queries)",
            )
            for bench, (texts, queries, exclude) in benchmarks.items():
                results[bench][name] = score_encoder(
                    model,
                    texts,
                    queries,
                    ks=retrieval.ks,
                    history_length=tuning.history_length,
                    half_life=retrieval.recency_half_life,
                    exclude_history=exclude,
                    batch_size=retrieval.encode_batch_size,
                    index_kind=retrieval.index,
                    template=tuning.history_template,
                )
                timing = results[bench][name]["_timing"]
                say(
                    "evaluate-retrieval",
                    f"{bench}: {name} scored {timing['queries']:,} queries over {timing['items']:,} items",
                )
        tracking.log_numeric({"valid_scores_reused": probe.reused})
        if probe.reused:
            say(
                "evaluate-retrieval",
                f"valid: {probe.reused} of {len(encoders)} encoders scored by the finetune stage on this very "
                f"probe (same weights; its {SCORES_FILE}), not encoded again",
            )
        selection = EncoderSelection(retrieval.encoder_selection, valid, paths=encoders)
        tables = Path(tables_dir)
        tables.mkdir(parents=True, exist_ok=True)
        for bench in benchmarks:
            _log_retrieval_table(bench, results_table(results[bench], retrieval.ks), tables)
        test = results["online_retail_test"]
        _log_selection(selection, test, tables_dir=tables, params=params, tracked=tracked)
        metrics = {
            "retrieval": {
                bench: {
                    enc: {kind: m for kind, m in by_kind.items() if not kind.startswith("_")}
                    for enc, by_kind in by_enc.items()
                }
                for bench, by_enc in results.items()
            },
            "selection": {k: v for k, v in selection.to_dict().items() if k not in ("scores", "paths")},
        }
        write_json(metrics_path, metrics)
        tracking.log_json({"test": results, "valid": valid}, "retrieval/results.json")
        if selected_dir is not None:
            model = load_encoder(selection.path, tuning.pooling, tuning.max_length, device=device)
            embedded = write_selected_encoder(selection, model, prepared, params=params, out_dir=selected_dir)
            tracking.log_numeric(embedded, "selected_embed_")
        figure = test[selection.chosen][selection.query][f"ndcg@{retrieval.ks[0]}"]
        say(
            "evaluate-retrieval",
            f"{selection.line()}; test ndcg@{retrieval.ks[0]} {figure:.4f}"
            + (f" -> {selected_dir}" if selected_dir is not None else ""),
        )
        return {"benchmarks": results, "valid": valid, "selection": selection.to_dict()}


# ---------------------------------------------------------------------------- product search
def _log_search(run, decision: dict, out: Path, *, params: Params, tracked: dict) -> dict:
    """Tables, plot, verdicts and headline figures of a search run and its decision: files under
    `out`, the stage run, the parent run."""
    from plmrec.plots import plot_by_category
    from plmrec.reports import markdown_table
    from plmrec.search.metrics import metric_name

    settings = params.search
    per_seed = run.per_seed()
    per_seed.to_csv(out / "per_seed.csv", index=False)
    tables = {split: run.table(split) for split in ("valid", "test")}
    for split, table in tables.items():
        table.to_csv(out / f"{split}_summary.csv", index=False)
    categories = run.categories()
    categories.to_csv(out / "categories.csv", index=False)
    top = f"ndcg@{max(settings.ks)}"
    plot_by_category(categories, top, out / "categories.png", title=f"{run.benchmark.name}: test {top} by category")
    verdicts = run.verdicts()
    lines = [
        f"# Product search: {run.benchmark.name}",
        "",
        f"Test, mean ± std over seeds {settings.seeds} for trained rankers; served mode chosen on valid "
        f"{settings.select}: **{decision['mode']}** ({decision['ranker']}).",
        "",
        markdown_table(tables["test"]),
        "",
        *[f"- {v}" for v in verdicts],
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    tracking.log_table(tables["test"], "search/test_summary.json")
    tracking.log_table(tables["valid"], "search/valid_summary.json")
    tracking.log_table(categories, "search/categories.json")
    for name in ("results.md", "per_seed.csv", "categories.csv", "categories.png"):
        tracking.log_artifact(out / name, "search")
    test = tables["test"].set_index("ranker")
    for ranker, row in test.iterrows():
        tracking.log_numeric(
            {
                f"test/{tracking.safe_name(ranker)}/{metric_name(k.removeprefix('mean_'))}": v
                for k, v in row.items()
                if k.startswith("mean_")
            }
        )
    tracking.set_verdicts(verdicts, title=f"Product search ({run.benchmark.name}), test {settings.select}")
    tracking.set_tags({"plmrec.search_mode": decision["mode"], "plmrec.search_ranker": decision["ranker"]})
    tracking.log_parent_metrics(
        params,
        {
            f"test_search_{tracking.safe_name(r)}_{metric_name(settings.select)}": value
            for r, value in test[f"mean_{settings.select}"].items()
        },
        **tracked,
    )
    tracking.set_parent_tags(params, {"plmrec.search_mode": decision["mode"]}, **tracked)
    for v in verdicts:
        say("evaluate-search", v)
    return {"test": tables["test"].to_dict("records"), "verdicts": [str(v) for v in verdicts]}


def evaluate_search(
    params: Params,
    encoder_dir: str | Path | None,
    *,
    out_dir: str | Path,
    metrics_path: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Complex product search on search.reviews_path: BM25, the base and selected (`encoder_dir`)
    encoders, BLaIR per seed and the hybrids, chosen on valid and scored once on test. `out_dir` gets
    decision.json (the served search mode, read by compare-models for the bundle) and the tables.
    Without review data the stage records a skip and the decision keeps the dense mode."""
    import tempfile

    from plmrec.search.run import configured_benchmark, run_search, skipped_decision

    settings, out = params.search, Path(out_dir)
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(params, "evaluate-search", **tracked):
        if not (settings.enabled and settings.reviews_path):
            reason = "search.enabled is false" if not settings.enabled else "search.reviews_path is not set"
            decision = skipped_decision(reason, settings)
            write_json(out / "decision.json", decision)
            (out / "results.md").write_text(f"No product-search evaluation: {reason}.\n")
            write_json(metrics_path, {"search": {"evaluated": False, "reason": reason}})
            tracking.set_tags({"plmrec.search_mode": "dense", "plmrec.search": f"skipped: {reason}"})
            say("evaluate-search", f"skipped ({reason}); serving keeps the dense query path")
            return {"decision": decision}
        started = time.perf_counter()
        bench = configured_benchmark(settings)
        say("evaluate-search", "benchmark " + ", ".join(f"{k} {v}" for k, v in bench.summary().items()))
        tracking.log_numeric({k: v for k, v in bench.summary().items() if isinstance(v, int)}, "benchmark_")
        selected = Path(encoder_dir) / "sentence-transformer" if encoder_dir else None
        if selected is not None and not (selected / "config.json").exists():
            raise StageError(f"{selected} holds no encoder: run evaluate-retrieval first")
        with tempfile.TemporaryDirectory(prefix="plmrec-blair-") as work:
            run = run_search(bench, settings, base_model=params.pretrain.base_model, selected=selected, work_dir=work)
        decision = {**run.decision(), "evaluated": True}
        logged = _log_search(run, decision, out, params=params, tracked=tracked)
        write_json(out / "decision.json", decision)
        summary = {
            "benchmark": bench.summary(),
            "decision": decision,
            **logged,
            "hybrid_weights": run.weights,
            "facts": run.facts,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json(metrics_path, {"search": {k: summary[k] for k in ("benchmark", "decision", "test")}})
        figure = decision["valid"][decision["mode"]][settings.select]
        say(
            "evaluate-search",
            f"served mode {decision['mode']} ({decision['ranker']}, valid {settings.select} "
            f"{figure:.4f}) -> {out / 'decision.json'}",
        )
        return summary


# ---------------------------------------------------------------------------- the user model
USER_MODEL_VERDICTS = (  # (metric, better, worse): the questions the user-model table answers
    ("recall@100", "guim-c4-id+text", "guim-c1-id+text"),
    ("ndcg@10", "guim-c1-id+text", "guim-c1-id"),
    ("ndcg@10", "guim-c4-id+text", "guim-c1-id"),
)


def user_model_summary(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Mean ± std per variant (valid and test) and the verdicts among the variants that ran."""
    from plmrec.recsys.experiment import mean_std, verdict

    metrics = [c for c in rows.columns if c.startswith(("valid_", "test_"))]
    summary = mean_std(rows, "variant", metrics)
    seeds = rows.groupby("variant")["seed"].nunique()
    verdicts = []
    for metric, better, worse in USER_MODEL_VERDICTS:
        column = f"test_{metric}"
        if better in summary.index and worse in summary.index and column in metrics:
            line = verdict(summary, column, better, vanilla=worse, label="user model")
            gap = summary.loc[better, ("mean", column)] - summary.loc[worse, ("mean", column)]
            spread = 2 * max(summary.loc[better, ("std", column)], summary.loc[worse, ("std", column)])
            if seeds[[better, worse]].min() < 2:
                verdicts.append(line.extended("; one seed: no spread to judge the gap by", ", 1 seed"))
            elif abs(gap) > spread:
                verdicts.append(line.extended("; exceeds 2 std", ", > 2 std"))
            else:
                verdicts.append(line.extended("; within 2 std", ", < 2 std"))
    return summary, verdicts


PROBE_COLUMNS = ["Country", "Quantity", "UnitPrice"]  # the consumer-profile probe's labels


def _profile_probe(runs: list[dict], data, prepared: pd.DataFrame, *, params: Params) -> pd.DataFrame:
    """The consumer-profile probe per seed on the refitted model's vectors from purchases before the
    test window (labels: home country, spend tercile in the test window), against the mean of item
    text vectors; one row per (seed, task, vectors)."""
    from plmrec.data.prepare import _cutoffs
    from plmrec.usermodel.probe import customer_labels, probe_user_model

    cutoff = _cutoffs(params.split)[1]
    labels = customer_labels(prepared, cutoff=cutoff)
    rows = []
    for run in runs:
        found = probe_user_model(run["model"], data.rows, data.text, cutoff=cutoff, labels=labels, seed=run["seed"])
        for task, by_vectors in found.items():
            for vectors, figures in by_vectors.items():
                rows.append({"seed": run["seed"], "task": task, "vectors": vectors, **figures})
    return pd.DataFrame(rows)


def _save_user_model(runs: list[dict], data, out: Path, *, params: Params) -> dict:
    """The chosen variant, per seed: the model fitted on the training windows (`seeds/<seed>/valid.pt`,
    what compare-models scores the valid window with) and the one refitted on train + valid
    (`seeds/<seed>/refit.pt`, for the test window and serving); the best seed's refit as
    `user_model.pt` with `user_model.json`, and every customer's C vectors from all purchases."""
    import numpy as np

    from plmrec.usermodel import store
    from plmrec.usermodel.retrieval import customer_sequences, customer_vectors

    um = params.user_model
    best = max(runs, key=lambda r: r["valid"][um.select])
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        seed_dir = out / "seeds" / str(run["seed"])
        facts = {"variant": run["variant"], "seed": run["seed"], "valid": run["valid"], "test": run["test"]}
        store.save(run["fit_model"], seed_dir / "valid.pt", codes=data.codes, window="train", **facts)
        store.save(run["model"], seed_dir / "refit.pt", codes=data.codes, window="train+valid", **facts)
    model = best["model"]
    store.save(model, out / "user_model.pt", codes=data.codes, variant=best["variant"], seed=best["seed"])
    write_json(
        out / "user_model.json",
        {
            "variant": best["variant"],
            "seed": best["seed"],
            "seeds": [r["seed"] for r in runs],
            "spec": model.spec.to_dict(),
            "items": data.codes,
            "valid": best["valid"],
            "test": best["test"],
        },
    )
    start = time.perf_counter()
    customers, vectors = customer_vectors(model, customer_sequences(model, data.rows, cutoff=data.end))
    seconds = time.perf_counter() - start
    pd.DataFrame({"CustomerID": customers, "vectors": [v.astype(np.float32).ravel() for v in vectors]}).to_parquet(
        out / "user_vectors.parquet", index=False
    )
    return {"customers": len(customers), "user_vectors_seconds": round(seconds, 2), "vectors": int(vectors.shape[1])}


def train_user_model(
    params: Params,
    prepared_path: str | Path,
    encoder_dir: str | Path,
    *,
    out_dir: str | Path,
    metrics_path: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """GUIM variants (user_model.variants) over the selected encoder's item text on the temporal
    windows, each seed: epoch chosen on valid, refit on train + valid, test scored once; the variant
    with the best mean valid `user_model.select` is saved with every customer's vectors."""
    from plmrec.reports import markdown_table
    from plmrec.usermodel.run import run_variant, window_data

    um, out = params.user_model, Path(out_dir)
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    with tracking.stage_run(params, "train-user-model", **tracked):
        out.mkdir(parents=True, exist_ok=True)
        if not um.enabled:
            write_json(metrics_path, {"user_model": {"enabled": False}})
            say("train-user-model", "disabled (user_model.enabled: false)")
            return {"enabled": False}
        prepared, _ = read_checked(prepared_path, "prepared", columns=[*ENCODER_COLUMNS, *PROBE_COLUMNS])
        items_path = Path(encoder_dir) / "item_embeddings.parquet"
        if not items_path.is_file():
            raise StageError(
                f"train-user-model: {items_path} is missing; pass the directory evaluate-retrieval wrote "
                f"with --selected (its item_embeddings.parquet holds the item text vectors)"
            )
        data = window_data(prepared, pd.read_parquet(items_path), params)
        say("train-user-model", ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in data.facts().items()))
        runs, rows = [], []
        for variant in um.variants:
            for seed in um.seeds:
                run = run_variant(
                    data,
                    params,
                    variant,
                    seed=seed,
                    progress=False,
                    on_epoch=lambda row, label=variant.label, seed=seed: say(
                        "train-user-model",
                        f"{label} seed {seed} epoch {row['epoch']}/{um.epochs}: loss {row['loss']}, "
                        f"valid {um.select} {row[um.select]:.4f}",
                    ),
                )
                for row in run["fit"].by_epoch:
                    for key, value in row.items():
                        if key != "epoch":
                            name = f"{tracking.safe_name(run['variant'])}/s{seed}/valid_{key.replace('@', '_at_')}"
                            tracking.log_metric(name, value, step=row["epoch"])
                rows.append(
                    {
                        "variant": run["variant"],
                        "seed": seed,
                        "epoch": run["fit"].chosen_epoch,
                        "sequences_per_s": round(run["fit"].sequences_per_s, 1),
                        **{f"valid_{k}": v for k, v in run["valid"].items()},
                        **{f"test_{k}": v for k, v in run["test"].items()},
                    }
                )
                runs.append(run)
                say(
                    "train-user-model",
                    f"{run['variant']} seed {seed}: epoch {run['fit'].chosen_epoch}, valid {um.select} "
                    f"{run['valid'][um.select]:.4f}, test {um.select} {run['test'][um.select]:.4f}",
                )
        table = pd.DataFrame(rows)
        summary, verdicts = user_model_summary(table)
        chosen = summary[("mean", f"valid_{um.select}")].idxmax()
        if not is_main_process():  # under torchrun (a TrainJob) rank 0 writes the model and the reports
            return {"user_model": {"chosen": chosen, "rank": rank()}}
        chosen_runs = [r for r in runs if r["variant"] == chosen]
        saved = _save_user_model(chosen_runs, data, out, params=params)
        probe = _profile_probe(chosen_runs, data, prepared, params=params)
        table.to_csv(out / "runs.csv", index=False)
        flat = summary.copy()
        flat.columns = [f"{m}_{stat}" for stat, m in flat.columns]
        (out / "results.md").write_text(
            markdown_table(flat.reset_index().round(4))
            + "\n\n"
            + "\n".join(f"- {v}" for v in verdicts)
            + "\n\n## Consumer-profile probe (chosen variant vs mean of item text vectors)\n\n"
            + (markdown_table(probe.round(4)) if len(probe) else "no task had 10 customers in each class\n")
        )
        if len(probe):
            tracking.log_table(probe, "user_model/profile_probe.json")
        tracking.log_table(table, "user_model/runs.json")
        tracking.log_table(flat.reset_index(), "user_model/summary.json")
        tracking.log_artifact(out / "results.md", "user_model")
        for variant in summary.index:
            tracking.log_numeric(
                {
                    f"{tracking.safe_name(variant)}/{m.replace('@', '_at_')}_mean": summary.loc[variant, ("mean", m)]
                    for m in summary["mean"].columns
                }
            )
        tracking.set_tags({"plmrec.user_model.chosen": chosen})
        tracking.set_verdicts(verdicts, title="User model verdicts (test, mean ± std over seeds)")
        tracking.log_parent_metrics(
            params,
            {f"test_{um.select.replace('@', '_at_')}_user_model": summary.loc[chosen, ("mean", f"test_{um.select}")]},
            **tracked,
        )
        metrics = {
            "user_model": {
                "chosen": chosen,
                "select": um.select,
                "data": data.facts(),
                "saved": saved,
                "variants": {
                    v: {m: round(float(summary.loc[v, ("mean", m)]), 4) for m in summary["mean"].columns}
                    for v in summary.index
                },
                "verdicts": verdicts,
                "profile_probe": probe.to_dict(orient="records"),
            }
        }
        write_json(metrics_path, metrics)
        for line in verdicts:
            say("train-user-model", line)
        if len(probe):
            from plmrec.usermodel.probe import TASK_FIGURE

            means = probe.groupby(["task", "vectors"]).mean(numeric_only=True)
            found = [(task, TASK_FIGURE[task]) for task in probe["task"].unique()]
            say(
                "train-user-model",
                "profile probe: "
                + "; ".join(
                    f"{task} {figure} user model {means.loc[(task, 'user_model'), figure]:.3f} "
                    f"vs mean of items {means.loc[(task, 'mean_of_items'), figure]:.3f}"
                    for task, figure in found
                ),
            )
        say(
            "train-user-model",
            f"chosen on valid: {chosen} ({um.select} {summary.loc[chosen, ('mean', f'valid_{um.select}')]:.4f}); "
            f"{saved['customers']:,} customers' vectors in {saved['user_vectors_seconds']}s -> {out}",
        )
        return metrics


# ---------------------------------------------------------------------------- the comparison
@dataclass
class Comparison:
    """The classifier ablation and the recommenders over seeds, summarised: per-run rows, mean ± std
    per variant, the variants chosen on valid and one verdict per PLM-vs-vanilla comparison."""

    params: Params
    classifier_rows: pd.DataFrame
    classifier_detail: dict
    recommender_rows: pd.DataFrame
    recommender_detail: dict

    @classmethod
    def run(cls, params: Params, prepared: pd.DataFrame, items: pd.DataFrame, *, user_models=None) -> Comparison:
        from plmrec.recsys.classify import run_ablation
        from plmrec.recsys.experiment import run_recommenders

        recommenders = params.recommenders

        def progress(message: str) -> None:
            say("compare-models", message)

        clf_rows, clf_detail = run_ablation(
            prepared,
            items,
            recommenders.classifier,
            n_labels=params.clean.n_quantity_labels,
            seeds=recommenders.seeds,
            clusters=recommenders.clusters,
            progress=progress,
        )
        rec_rows, rec_detail = run_recommenders(
            prepared, items, recommenders, user_models=user_models, progress=progress
        )
        return cls(params, clf_rows, clf_detail, rec_rows, rec_detail)

    def __post_init__(self) -> None:
        from plmrec.recsys.experiment import CLASSIFIER_METRICS, mean_std

        recommenders = self.params.recommenders
        self.classifier_metrics = CLASSIFIER_METRICS
        self.recommender_metrics = [f"test_{m}@{k}" for k in sorted(set(recommenders.ks)) for m in RANKING_METRICS]
        self.primary = f"test_{recommenders.primary_metric}"
        self.classifier_summary = mean_std(self.classifier_rows, "variant", CLASSIFIER_METRICS)
        self.recommender_summary = mean_std(self.recommender_rows, "model", self.recommender_metrics)
        self.kept_features = self.classifier_rows.groupby("variant", sort=False)[["features", "text_features"]].mean()
        self.best_classifier = self.classifier_detail["best_variant"]
        self.text_variants = [v for v in self.kept_features.index if self.kept_features.loc[v, "text_features"] > 0]
        self.plm_classifier = (
            max(self.text_variants, key=self._valid_accuracy) if self.text_variants else self.best_classifier
        )

    def _valid_accuracy(self, variant: str) -> float:
        rows = self.classifier_rows
        return rows[rows["variant"] == variant]["valid_accuracy"].mean()

    def verdicts(self) -> list[str]:
        from plmrec.recsys.classify import TEXT_THEN_SELECTION, plm_counterpart
        from plmrec.recsys.experiment import verdict

        classifier, recommender, primary = self.classifier_summary, self.recommender_summary, self.primary
        counterpart = (  # the text-then-selection row starts from vanilla; the cumulative rows from the row before
            "vanilla"
            if self.plm_classifier == TEXT_THEN_SELECTION
            else plm_counterpart(self.params.recommenders.classifier)
        )
        found = [
            verdict(
                classifier, "test_accuracy", self.plm_classifier, vanilla=counterpart, label="XGBoost quantity label"
            )
            if self.text_variants
            else "XGBoost quantity label: no variant kept a text feature (random-forest selection dropped them all)",
            verdict(
                classifier,
                "test_accuracy",
                self.best_classifier,
                vanilla="vanilla",
                label="XGBoost, best variant on valid",
            )
            if self.best_classifier != "vanilla"
            else "XGBoost: the variant chosen on valid accuracy is vanilla",
            verdict(recommender, primary, "mf+similarity", vanilla="mf", label="MF"),
            verdict(recommender, primary, "mf+similarity", vanilla="mf+repeat", label="MF, text vs bought-before"),
            verdict(recommender, primary, "mf+cluster", vanilla="mf", label="MF"),
            verdict(recommender, primary, "ltr", vanilla="popularity", label="Learning to rank")
            if "ltr" in recommender.index
            else None,
            verdict(recommender, primary, "user_model", vanilla="mf", label="User model (GUIM)")
            if "user_model" in recommender.index
            else None,
            verdict(recommender, primary, "ltr+user_model", vanilla="ltr", label="Learning to rank with the user model")
            if {"ltr", "ltr+user_model"} <= set(recommender.index)
            else None,
        ]
        return [v for v in found if v]

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The classifier and recommender tables in the study's layout ('mean ± std' in %)."""
        from plmrec.recsys.experiment import format_table

        kept = self.kept_features
        classifier = format_table(self.classifier_summary, self.classifier_metrics)
        classifier["features (text)"] = [
            f"{kept.loc[v, 'features']:.1f} ({kept.loc[v, 'text_features']:.1f})" for v in classifier["variant"]
        ]
        return classifier, format_table(self.recommender_summary, self.recommender_metrics)

    def write_reports(self, out: Path, verdicts: list[str]) -> None:
        """results.md, the per-run and summary CSVs, and the pictures, under `out`."""
        from plmrec.plots import plot_confusion, plot_curves, plot_importance
        from plmrec.recsys.experiment import CURVE_KS
        from plmrec.reports import markdown_table

        recommenders, (clf_table, rec_table) = self.params.recommenders, self.tables()
        (out / "results.md").write_text(
            f"## XGBoost, 5-level quantity label (test, %, mean ± std over seeds {recommenders.seeds})\n\n"
            + markdown_table(clf_table)
            + f"\nVariant chosen on valid accuracy: {self.best_classifier}.\n\n"
            f"## Recommenders (test, %, mean ± std over seeds {recommenders.seeds}; "
            f"{self.recommender_detail['test_customers']:,} customers)\n\n"
            + markdown_table(rec_table)
            + "\n## Verdicts\n\n"
            + "".join(f"- {v}\n" for v in verdicts)
        )
        self.classifier_rows.to_csv(out / "classifier_runs.csv", index=False)
        self.recommender_rows.to_csv(out / "recommender_runs.csv", index=False)
        clf_table.to_csv(out / "classifier_table.csv", index=False)
        rec_table.to_csv(out / "recommender_table.csv", index=False)
        plot_confusion(
            self.classifier_detail["confusion_matrix"],
            out / "confusion_matrix_best.png",
            f"XGBoost {self.best_classifier}, test",
        )
        plot_importance(
            self.classifier_detail["importance"], out / "feature_importance.png", f"XGBoost {self.best_classifier}"
        )
        plot_curves(self.recommender_detail["precision_curves"], out / "precision_at_k.png", ks=CURVE_KS)
        last = self.recommender_detail["chosen"][recommenders.seeds[-1]]
        for name, picture in (("ltr", "ltr"), ("ltr+user_model", "ltr_user_model")):
            if f"{name}_importance" in last:
                plot_importance(
                    last[f"{name}_importance"], out / f"{picture}_feature_importance.png", f"{name} features"
                )

    @staticmethod
    def _mean_std(summary: pd.DataFrame, metrics: list[str]) -> dict:
        return {
            v: {
                m.replace("test_", ""): {
                    "mean": float(summary.loc[v, ("mean", m)]),
                    "std": float(summary.loc[v, ("std", m)]),
                }
                for m in metrics
            }
            for v in summary.index
        }

    def summary(self, verdicts: list[str]) -> dict:
        return {
            "classifier": self._mean_std(self.classifier_summary, self.classifier_metrics),
            "recommenders": self._mean_std(self.recommender_summary, self.recommender_metrics),
            "best_classifier_variant": self.best_classifier,
            "chosen": self.recommender_detail["chosen"],
            "verdicts": verdicts,
            "test_customers": self.recommender_detail["test_customers"],
            "seeds": self.params.recommenders.seeds,
        }

    def log(self, out: Path, verdicts: list[str], *, run_key: str | None, tracking_uri: str | None) -> None:
        """Means per variant on the stage run, the run tables and reports, headline metrics on the parent."""
        from plmrec.recsys.experiment import CURVE_KS

        classifier, recommender, recommenders = (
            self.classifier_summary,
            self.recommender_summary,
            self.params.recommenders,
        )
        for v in classifier.index:
            tracking.log_numeric(
                {f"{m.replace('test_', '')}_mean": classifier.loc[v, ("mean", m)] for m in self.classifier_metrics},
                f"classifier/{tracking.safe_name(v.lstrip('+'))}/",
            )
        for v in recommender.index:
            tracking.log_numeric(
                {
                    f"{m.replace('test_', '').replace('@', '_at_')}_mean": recommender.loc[v, ("mean", m)]
                    for m in self.recommender_metrics
                },
                f"recommender/{tracking.safe_name(v)}/",
            )
        for model, curve in self.recommender_detail["precision_curves"].items():  # K as the step: runs overlay
            for k, value in zip(CURVE_KS, curve):
                tracking.log_metric(f"precision_at_k/{tracking.safe_name(model)}", value, step=k)
        tracking.log_table(self.classifier_rows, "compare/classifier_runs.json")
        tracking.log_table(self.recommender_rows, "compare/recommender_runs.json")
        tracking.log_dir(out, "compare")
        tracking.set_verdicts(verdicts, title="Verdicts (test, mean ± std over seeds)")
        tracking.log_parent_metrics(
            params=self.params,
            run_key=run_key,
            tracking_uri=tracking_uri,
            metrics={
                f"test_{recommenders.primary_metric.replace('@', '_at_')}_ltr": recommender.loc[
                    "ltr", ("mean", self.primary)
                ]
                if "ltr" in recommender.index
                else 0.0,
                "test_accuracy_plm_xgboost": classifier.loc[self.plm_classifier, ("mean", "test_accuracy")],
                "test_accuracy_best_xgboost": classifier.loc[self.best_classifier, ("mean", "test_accuracy")],
            },
        )


def _user_models(user_model_dir, prepared: pd.DataFrame, items: pd.DataFrame, *, params: Params):
    """train-user-model's per-seed models for the comparison, or None (not given, or none trained)."""
    from plmrec.usermodel.store import SavedUserModels

    if user_model_dir is None:
        return None
    if not any(Path(user_model_dir).glob("seeds/*/refit.pt")):
        say("compare-models", f"no user model in {user_model_dir} (user_model.enabled: false?): its rows are left out")
        return None
    codes = items["StockCode"].astype(str).tolist()
    saved = SavedUserModels(user_model_dir, prepared, codes, split_params=params.split)
    say("compare-models", f"user model from {user_model_dir} (seeds {saved.seeds})")
    return saved


def _search_decision(search_dir: str | Path | None) -> dict | None:
    """evaluate-search's decision.json, or None (no search stage: the bundle keeps the dense mode)."""
    if search_dir is None:
        return None
    found = Path(search_dir) / "decision.json"
    if not found.exists():
        raise StageError(f"{search_dir} holds no decision.json: run evaluate-search first")
    return json.loads(found.read_text())


def _selected_encoder_name(encoder_dir: str | Path) -> str:
    """Which encoder a directory holds: selection.json's choice (evaluate-retrieval), else 'finetuned'."""
    found = Path(encoder_dir) / "selection.json"
    return json.loads(found.read_text())["chosen"] if found.exists() else "finetuned"


def compare_models(
    params: Params,
    prepared_path: str | Path,
    encoder_dir: str | Path,
    *,
    metrics_path: str | Path,
    reports_dir: str | Path,
    bundle_dir: str | Path | None = None,
    user_model_dir: str | Path | None = None,
    search_dir: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """The classifier ablation (XGBoost with and without PLM features) and the recommenders
    (popularity, ALS and its PLM variants, text neighbours, learning to rank), over several seeds, with
    the encoder evaluate-retrieval chose on valid (`encoder_dir`: its item embeddings and model).
    With `user_model_dir` (train-user-model's output, when it trained one) also the user model's row
    and learning to rank with it. With `bundle_dir`, the served recommender (registry.served_model) is
    refitted on all purchases and written there as a serving bundle, its query path in the search mode
    evaluate-search chose (`search_dir`; dense without it)."""
    from plmrec.serving.bundle import write_bundle

    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(params, "compare-models", run_key=run_key, tracking_uri=tracking_uri):
        if not params.recommenders.enabled:
            write_json(metrics_path, {"compare": {}}, indent=None)
            (out / "results.md").write_text("recommenders.enabled is false: no comparison run\n")
            say("compare-models", "disabled (recommenders.enabled: false)")
            return {"classifier": {}, "recommenders": {}, "verdicts": []}
        start = time.perf_counter()
        prepared, _ = read_checked(prepared_path, "prepared")
        items = pd.read_parquet(Path(encoder_dir) / "item_embeddings.parquet")
        encoder = _selected_encoder_name(encoder_dir)
        say("compare-models", f"text features from the '{encoder}' encoder ({encoder_dir})")
        tracking.set_tags({tracking.ENCODER_TAG: encoder})
        user_models = _user_models(user_model_dir, prepared, items, params=params)
        comparison = Comparison.run(params, prepared, items, user_models=user_models)
        verdicts = comparison.verdicts()
        comparison.write_reports(out, verdicts)
        summary = {
            **comparison.summary(verdicts),
            "encoder": encoder,
            "seconds": round(time.perf_counter() - start, 1),
        }
        write_json(metrics_path, {"compare": {k: summary[k] for k in ("classifier", "recommenders")}})
        if bundle_dir is not None:
            started = time.perf_counter()
            served = write_bundle(
                params,
                prepared,
                items,
                recommender_rows=comparison.recommender_rows,
                recommender_detail=comparison.recommender_detail,
                encoder_dir=Path(encoder_dir) / "sentence-transformer",
                bundle_dir=bundle_dir,
                user_models=user_models,
                search=_search_decision(search_dir),
            )
            say(
                "compare-models",
                f"serving bundle: {served['model']} ({served['chosen_by']}), refitted on all "
                f"purchases in {time.perf_counter() - started:.1f} s -> {bundle_dir}",
            )
            summary["served"] = served
            tracking.set_tags({"plmrec.served_model": summary["served"]["model"]})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        comparison.log(out, verdicts, run_key=run_key, tracking_uri=tracking_uri)
        for v in verdicts:
            say("compare-models", v)
        return summary


# ---------------------------------------------------------------------------- the registry
def _deploy_champion(params: Params, client, decision) -> str | None:
    """On a cluster (serving.inference_service set): point the InferenceService at the new champion."""
    from plmrec.cluster import deploy

    serving = params.serving
    if not serving.inference_service:
        return None
    uri = deploy.version_storage_uri(
        client, params.registry.model_name, decision.champion_after, artifacts_destination=serving.artifacts_destination
    )
    deploy.patch_inference_service(serving.inference_service, serving.namespace or None, uri)
    say("register-model", f"InferenceService {serving.inference_service} -> {uri}")
    return uri


def register_model(
    params: Params,
    bundle_dir: str | Path,
    prepared_path: str | Path,
    *,
    decision_path: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Register the bundle as a new version (metrics and data version attached), make it the
    challenger and promote it to champion if it passes the gate."""
    from plmrec import registry
    from plmrec.serving.bundle import read_meta

    registry_params = params.registry
    if not registry_params.enabled:
        decision = {"registered": False, "reason": "registry.enabled is false"}
        write_json(decision_path, decision, indent=None)
        return decision
    meta = read_meta(bundle_dir)
    metrics = {k: v for k, v in meta["metrics"].items() if not k.endswith("_std")}
    tags = {
        "data.md5": file_digest(prepared_path, "md5"),
        "data.path": str(prepared_path),
        "served_model": meta["model"],
        "plmrec.run_key": run_key or "",
    }
    with tracking.stage_run(params, "register-model", run_key=run_key, tracking_uri=tracking_uri):
        version = registry.register_bundle(bundle_dir, registry_params, metrics, tags=tags)
        client = tracking.mlflow_client()
        decision = registry.gate(client, registry_params, version)
        tracking.log_json(decision.to_dict(), "registry/decision.json")
        outcome = {"gate_promoted": float(decision.promoted), "registered_version": float(version)}
        tracking.log_numeric(outcome)
        tracking.set_tags({"plmrec.registered_version": version, "plmrec.gate": decision.reason})
        tracking.log_parent_metrics(params, outcome, run_key=run_key, tracking_uri=tracking_uri)
        deployed = _deploy_champion(params, client, decision) if decision.promoted else None
        if deployed:
            tracking.set_tags({"plmrec.deployed_storage_uri": deployed})
    out = {
        "registered": True,
        "model_name": registry_params.model_name,
        **decision.to_dict(),
        "deployed_storage_uri": deployed,
    }
    write_json(decision_path, out)
    say(
        "register-model",
        f"{registry_params.model_name} version {version} is @challenger; "
        f"{'promoted to @champion' if decision.promoted else 'not promoted'}: {decision.reason}",
    )
    return out
