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
from plmrec.errors import PlmrecError


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
        tracking.log_parent_metrics(params, run_key, tracking_uri,
                                    {f"test_{k}": m[k] for k in ("accuracy", "f1_macro", "majority_class_accuracy")})
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
    from plmrec.ranks import is_main_process

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
            if is_main_process():
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
        if not is_main_process():
            return report
        mlflow.log_artifact(str(out / "loss_curve.png"), "pretrain")
        tracking.log_dir(out / "sentence-transformer", "pretrained_encoder")
        _say("pretrain", f"{len(report['phases'])} phases in {report['seconds']}s -> {out}")
        return report


def finetune_summary(report: dict) -> dict[str, dict]:
    return {ph["label"]: {"steps": ph["steps"], "seconds": round(ph["seconds"], 2), "pairs": ph["pairs"],
                          "samples_per_s": ph["samples_per_s"],
                          "final_loss": ph["losses"][-1][1] if ph["losses"] else None}
            for ph in report["phases"]}


def finetune_start_model(params: Params, pretrained_dir: str | Path | None) -> str:
    """The encoder fine-tuning starts from: the pretrain stage's output, or the untouched base model."""
    from plmrec.pretrain.models import check_base_model

    if params.finetune.start_from == "base":
        return check_base_model(params.pretrain.base_model)
    hf = Path(pretrained_dir or "") / "hf"
    if not (hf / "config.json").is_file():
        raise PlmrecError(f"finetune.start_from is 'pretrained' but {hf} holds no encoder "
                          f"(run the pretrain stage first, or set finetune.start_from: base)")
    return str(hf)


SENTENCE_TRANSFORMERS_REQUIREMENTS = ["sentence-transformers>=6", "transformers>=5", "torch>=2.4"]


def finetune(params: Params, prepared_path: str | Path, pretrained_dir: str | Path | None, out_dir: str | Path,
             run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    """Contrastive fine-tuning, then item/user embeddings, the index description and the embedding picture."""
    import mlflow

    from plmrec.finetune.objective import sentence_model
    from plmrec.finetune.retrieval import load_encoder
    from plmrec.finetune.run import embed_catalogue, finetune as run_finetune, plot_embedding_space
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.pretrain.trainer import resolve_device
    from plmrec.ranks import is_main_process

    ft, out = params.finetune, Path(out_dir)
    with tracking.stage_run(params, "finetune", run_key, tracking_uri):
        quiet_transformers()
        start = finetune_start_model(params, pretrained_dir)
        prepared, _ = read_table(prepared_path, columns=["CustomerID", "InvoiceNo", "InvoiceDate", "StockCode",
                                                         "Description", "split"])
        report: dict = {"start_model": start, "phases": []}
        if ft.enabled:
            def on_log(label: str, step: int, value: float) -> None:
                mlflow.log_metric(f"loss/{label}", value, step=step)

            report = run_finetune(params, prepared, start, out, on_log=on_log)
            if not is_main_process():  # under torchrun, rank 0 embeds, plots and logs
                return report
            for label, figures in finetune_summary(report).items():
                tracking.log_numeric(figures, f"{label}/")
            tracking.log_numeric({f"pairs_{k}": v for k, v in report["pairs"].items()})
            mlflow.log_artifact(str(out / "loss_curve.png"), "finetune")
            _say("finetune", f"{len(report['phases'])} phases in {report['seconds']}s from {start}")
        else:
            sentence_model(start, ft.pooling, ft.max_length).save(str(out / "sentence-transformer"))
            _say("finetune", f"disabled: {start} exported unchanged")
        device = str(resolve_device(ft.device))
        model = load_encoder(out / "sentence-transformer", ft.pooling, ft.max_length, device)
        emb = embed_catalogue(model, prepared, params, out)
        picture = plot_embedding_space(emb.pop("vectors"), params.retrieval.clusters, out / "embedding_pca.png",
                                       f"fine-tuned item embeddings: PCA, KMeans k={params.retrieval.clusters}",
                                       seed=params.seed)
        report["embeddings"] = {**emb, **picture}
        (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
        tracking.log_numeric(emb, "embed_")
        tracking.log_numeric(picture, "pca_")
        mlflow.set_tags({"finetune.start_model": start, "finetune.loss": ft.loss, "finetune.pooling": ft.pooling,
                         "finetune.schedule": " -> ".join(p.task for p in ft.phases) if ft.enabled else "disabled"})
        tracking.log_json(report, "finetune/finetune_report.json")
        tracking.log_json(ft.model_dump(mode="json"), "finetune/config.json")
        mlflow.log_artifact(str(out / "embedding_pca.png"), "finetune")
        for name in ("item_embeddings.parquet", "user_embeddings.parquet", "index.json"):
            mlflow.log_artifact(str(out / name), "embeddings")
        mlflow.sentence_transformers.log_model(model.to("cpu"), name="finetuned_encoder",
                                               pip_requirements=SENTENCE_TRANSFORMERS_REQUIREMENTS)
        _say("finetune", f"{emb['items']:,} item and {emb['users']:,} user embeddings -> {out}")
        return report


def retrieval_encoders(params: Params, pretrained_dir: str | Path | None, finetuned_dir: str | Path | None) -> dict:
    """name -> encoder directory for every encoder in retrieval.compare."""
    from plmrec.pretrain.models import check_base_model

    where = {"base": lambda: check_base_model(params.pretrain.base_model),
             "pretrained": lambda: Path(pretrained_dir or "") / "sentence-transformer",
             "finetuned": lambda: Path(finetuned_dir or "") / "sentence-transformer"}
    found = {}
    for name in params.retrieval.compare:
        path = Path(where[name]())
        if not (path / "config.json").exists():
            raise PlmrecError(f"retrieval.compare includes '{name}' but {path} holds no encoder")
        found[name] = str(path)
    return found


def evaluate_retrieval(params: Params, prepared_path: str | Path, pretrained_dir: str | Path | None,
                       finetuned_dir: str | Path | None, metrics_path: str | Path, plots_dir: str | Path,
                       run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    """Full-ranking next-item retrieval on the test split for each encoder, and on the UniSRec/RecBole
    benchmark when retrieval.seqrec.path is set; one comparable table each."""
    import mlflow

    from plmrec.finetune.pairs import catalogue
    from plmrec.finetune.retrieval import (load_encoder, markdown_table, results_table, score_encoder,
                                           seqrec_queries, temporal_queries)
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.pretrain.trainer import resolve_device

    r, ft = params.retrieval, params.finetune
    with tracking.stage_run(params, "evaluate-retrieval", run_key, tracking_uri):
        quiet_transformers()
        encoders = retrieval_encoders(params, pretrained_dir, finetuned_dir)
        device = str(resolve_device(ft.device))
        prepared, _ = read_table(prepared_path, columns=["CustomerID", "InvoiceNo", "InvoiceDate", "StockCode",
                                                         "Description", "split"])
        cat = catalogue(prepared)
        queries = temporal_queries(prepared, {c: i for i, c in enumerate(cat["StockCode"])}, "test",
                                   r.exclude_history)
        benchmarks = {"online_retail_test": (cat["Description"].tolist(), queries, r.exclude_history)}
        if r.seqrec.path:
            from plmrec.data.seqrec import load_seqrec

            ds = load_seqrec(r.seqrec.path, r.seqrec.name)
            benchmarks[f"seqrec_{ds.name.lower()}_test"] = (
                ds.items["text"].tolist(), seqrec_queries(ds.splits["test"], r.seqrec.max_users, params.seed),
                r.seqrec.exclude_history)
        results: dict = {bench: {} for bench in benchmarks}
        for name, path in encoders.items():  # each encoder is loaded once and scores every benchmark
            model = load_encoder(path, ft.pooling, ft.max_length, device)
            for bench, (texts, q, exclude) in benchmarks.items():
                results[bench][name] = score_encoder(model, texts, q, r.ks, ft.history_length, r.recency_half_life,
                                                     exclude, r.encode_batch_size, r.index)
                timing = results[bench][name]["_timing"]
                _say("evaluate-retrieval", f"{bench}: {name} scored {timing['queries']:,} queries over "
                                           f"{timing['items']:,} items")
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        for bench in benchmarks:
            table = results_table(results[bench], r.ks)
            table.to_csv(Path(plots_dir) / f"{bench}.csv", index=False)
            (Path(plots_dir) / f"{bench}.md").write_text(markdown_table(table))
            mlflow.log_table(table, f"retrieval/{bench}.json")
            mlflow.log_artifact(str(Path(plots_dir) / f"{bench}.md"), "retrieval")
            mlflow.log_artifact(str(Path(plots_dir) / f"{bench}.csv"), "retrieval")
            for row in table.to_dict("records"):
                tracking.log_numeric({f"{bench}/{row['encoder']}/{row['query']}/{k.replace('@', '_at_')}": v
                                      for k, v in row.items() if "@" in k})
            _say("evaluate-retrieval", f"{bench}\n{markdown_table(table)}")
        metrics = {"retrieval": {bench: {enc: {kind: m for kind, m in by_kind.items() if not kind.startswith("_")}
                                         for enc, by_kind in by_enc.items()}
                                 for bench, by_enc in results.items()}}
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        tracking.log_json(results, "retrieval/results.json")
        if "finetuned" in encoders:
            head = results["online_retail_test"]["finetuned"]["sentence"]
            tracking.log_parent_metrics(params, run_key, tracking_uri,
                                        {f"test_retrieval_{name}_at_{k}": head[f"{name}@{k}"]
                                         for k in r.ks for name in ("recall", "ndcg")})
        return results


def compare_models(params: Params, prepared_path: str | Path, finetuned_dir: str | Path, metrics_path: str | Path,
                   reports_dir: str | Path, run_key: str | None = None, tracking_uri: str | None = None,
                   bundle_dir: str | Path | None = None) -> dict:
    """The classifier ablation (XGBoost with and without PLM features) and the recommenders
    (popularity, ALS and its PLM variants, text neighbours, learning to rank), over several seeds.
    With `bundle_dir`, the served recommender (registry.served_model) is refitted on all purchases
    and written there as a serving bundle."""
    import mlflow

    from plmrec.finetune.retrieval import markdown_table
    from plmrec.recsys import experiment as E
    from plmrec.recsys.classify import plm_counterpart, run_ablation

    rp, out = params.recommenders, Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(params, "compare-models", run_key, tracking_uri):
        if not rp.enabled:
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
            Path(metrics_path).write_text(json.dumps({"compare": {}}))
            (out / "results.md").write_text("recommenders.enabled is false: no comparison run\n")
            _say("compare-models", "disabled (recommenders.enabled: false)")
            return {"classifier": {}, "recommenders": {}, "verdicts": []}
        start = time.perf_counter()
        prepared, _ = read_table(prepared_path)
        items = pd.read_parquet(Path(finetuned_dir) / "item_embeddings.parquet")
        say = lambda m: _say("compare-models", m)  # noqa: E731
        clf_rows, clf_detail = run_ablation(prepared, items, rp.classifier, params.clean.n_quantity_labels,
                                            rp.seeds, rp.clusters, progress=say)
        rec_rows, rec_detail = E.run_recommenders(prepared, items, rp, progress=say)
        ks, primary = sorted(set(rp.ks)), f"test_{rp.primary_metric}"
        rec_metrics = [f"test_{m}@{k}" for k in ks for m in ("precision", "recall", "f1", "map", "ndcg")]
        CLASSIFIER = E.CLASSIFIER_METRICS
        clf_sum = E.mean_std(clf_rows, "variant", CLASSIFIER)
        kept = clf_rows.groupby("variant", sort=False)[["features", "text_features"]].mean()
        rec_sum = E.mean_std(rec_rows, "model", rec_metrics)
        best_clf = clf_detail["best_variant"]
        text_rows = [v for v in kept.index if kept.loc[v, "text_features"] > 0]
        plm_clf = max(text_rows, key=lambda v: clf_rows[clf_rows["variant"] == v]["valid_accuracy"].mean()) \
            if text_rows else best_clf
        counterpart = plm_counterpart(rp.classifier)
        verdicts = [E.verdict(clf_sum, "test_accuracy", plm_clf, counterpart, "XGBoost quantity label")
                    if text_rows else "XGBoost quantity label: no variant kept a text feature (random-forest "
                                      "selection dropped them all)",
                    E.verdict(clf_sum, "test_accuracy", best_clf, "vanilla", "XGBoost, best variant on valid")
                    if best_clf != "vanilla" else "XGBoost: the variant chosen on valid accuracy is vanilla",
                    E.verdict(rec_sum, primary, "mf+similarity", "mf", "MF"),
                    E.verdict(rec_sum, primary, "mf+cluster", "mf", "MF"),
                    E.verdict(rec_sum, primary, "ltr", "popularity", "Learning to rank")
                    if "ltr" in rec_sum.index else None]
        verdicts = [v for v in verdicts if v]
        clf_table = E.format_table(clf_sum, CLASSIFIER)
        clf_table["features (text)"] = [f"{kept.loc[v, 'features']:.1f} ({kept.loc[v, 'text_features']:.1f})"
                                        for v in clf_table["variant"]]
        rec_table = E.format_table(rec_sum, rec_metrics)
        md = (f"## XGBoost, 5-level quantity label (test, %, mean ± std over seeds {rp.seeds})\n\n"
              + markdown_table(clf_table) + f"\nVariant chosen on valid accuracy: {best_clf}.\n\n"
              f"## Recommenders (test, %, mean ± std over seeds {rp.seeds}; "
              f"{rec_detail['test_customers']:,} customers)\n\n" + markdown_table(rec_table)
              + "\n## Verdicts\n\n" + "".join(f"- {v}\n" for v in verdicts))
        (out / "results.md").write_text(md)
        clf_rows.to_csv(out / "classifier_runs.csv", index=False)
        rec_rows.to_csv(out / "recommender_runs.csv", index=False)
        clf_table.to_csv(out / "classifier_table.csv", index=False)
        rec_table.to_csv(out / "recommender_table.csv", index=False)
        plot_confusion(clf_detail["confusion_matrix"], out / "confusion_matrix_best.png",
                       f"XGBoost {best_clf}, test")
        E.plot_importance(clf_detail["importance"], out / "feature_importance.png", f"XGBoost {best_clf}")
        E.plot_curves(rec_detail["precision_curves"], out / "precision_at_k.png")
        if rp.ltr.enabled:
            last = rec_detail["chosen"][rp.seeds[-1]]
            E.plot_importance(last["ltr_importance"], out / "ltr_feature_importance.png", "learning-to-rank features")
        summary = {"classifier": {v: {m.replace("test_", ""): {"mean": float(clf_sum.loc[v, ("mean", m)]),
                                                               "std": float(clf_sum.loc[v, ("std", m)])}
                                      for m in CLASSIFIER} for v in clf_sum.index},
                   "recommenders": {v: {m.replace("test_", ""): {"mean": float(rec_sum.loc[v, ("mean", m)]),
                                                                 "std": float(rec_sum.loc[v, ("std", m)])}
                                        for m in rec_metrics} for v in rec_sum.index},
                   "best_classifier_variant": best_clf, "chosen": rec_detail["chosen"], "verdicts": verdicts,
                   "test_customers": rec_detail["test_customers"], "seeds": rp.seeds,
                   "seconds": round(time.perf_counter() - start, 1)}
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps({"compare": {k: summary[k] for k in ("classifier", "recommenders")}},
                                                 indent=2))
        if bundle_dir is not None:
            summary["served"] = write_bundle(params, prepared, items, rec_rows, rec_detail,
                                             Path(finetuned_dir) / "sentence-transformer", bundle_dir)
            mlflow.set_tag("plmrec.served_model", summary["served"]["model"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        for v in clf_sum.index:
            tracking.log_numeric({f"{m.replace('test_', '')}_mean": clf_sum.loc[v, ("mean", m)] for m in CLASSIFIER},
                                 f"classifier/{v.lstrip('+')}/")
        for v in rec_sum.index:
            tracking.log_numeric({f"{m.replace('test_', '').replace('@', '_at_')}_mean": rec_sum.loc[v, ("mean", m)]
                                  for m in rec_metrics}, f"recommender/{v.replace('+', '_')}/")
        mlflow.log_table(clf_rows, "compare/classifier_runs.json")
        mlflow.log_table(rec_rows, "compare/recommender_runs.json")
        mlflow.log_artifacts(str(out), "compare")
        mlflow.set_tag("compare.verdicts", " | ".join(verdicts)[:5000])
        tracking.log_parent_metrics(params, run_key, tracking_uri, {
            f"test_{rp.primary_metric.replace('@', '_at_')}_ltr":
                rec_sum.loc["ltr", ("mean", primary)] if "ltr" in rec_sum.index else 0.0,
            "test_accuracy_plm_xgboost": clf_sum.loc[plm_clf, ("mean", "test_accuracy")],
            "test_accuracy_best_xgboost": clf_sum.loc[best_clf, ("mean", "test_accuracy")]})
        for v in verdicts:
            _say("compare-models", v)
        return summary


def write_bundle(params: Params, prepared: pd.DataFrame, items: pd.DataFrame, rec_rows: pd.DataFrame,
                 rec_detail: dict, encoder_dir: str | Path, bundle_dir: str | Path) -> dict:
    """The serving bundle of registry.served_model (auto: the recommender chosen on valid) from a
    comparison's rows and detail, with its test metrics (mean and std over seeds)."""
    from plmrec.recsys.experiment import served_model
    from plmrec.serving.bundle import build_bundle

    rp = params.recommenders
    model = params.registry.served_model
    why = "registry.served_model"
    if model == "auto":
        model, why = served_model(rec_rows, rp.primary_metric), f"best valid {rp.primary_metric}"
    if model not in set(rec_rows["model"]):
        raise PlmrecError(f"registry.served_model '{model}' was not evaluated (evaluated: "
                          f"{', '.join(rec_rows['model'].unique())}; ltr needs recommenders.ltr.enabled)")
    rows = rec_rows[rec_rows["model"] == model]
    metrics = {c.replace("test_", ""): float(rows[c].mean()) for c in rows.columns
               if c.startswith("test_") and "@" in c}
    metrics.update({f"{k}_std": float(rows[f"test_{k}"].std(ddof=1)) if len(rows) > 1 else 0.0
                    for k in list(metrics)})
    seed = rp.seeds[-1]
    start = time.perf_counter()
    build_bundle(prepared, items, encoder_dir, bundle_dir, rp, model, {**rec_detail["chosen"][seed], "seed": seed},
                 rec_detail["rankers"].get(seed), metrics, encoder_info={"source": str(encoder_dir)})
    _say("compare-models", f"serving bundle: {model} ({why}), refitted on all purchases "
                           f"in {time.perf_counter() - start:.1f} s -> {bundle_dir}")
    return {"model": model, "metrics": metrics, "bundle": str(bundle_dir)}


def _deploy_champion(params: Params, client, decision) -> str | None:
    """On a cluster (serving.inference_service set): point the InferenceService at the new champion."""
    from plmrec.cluster import deploy

    sp = params.serving
    if not sp.inference_service:
        return None
    uri = deploy.version_storage_uri(client, params.registry.model_name, decision.champion_after,
                                     sp.artifacts_destination)
    deploy.patch_inference_service(sp.inference_service, sp.namespace or None, uri)
    _say("register-model", f"InferenceService {sp.inference_service} -> {uri}")
    return uri


def register_model(params: Params, bundle_dir: str | Path, prepared_path: str | Path, decision_path: str | Path,
                   run_key: str | None = None, tracking_uri: str | None = None) -> dict:
    """Register the bundle as a new version (metrics and data version attached), make it the
    challenger and promote it to champion if it passes the gate."""
    import mlflow

    from plmrec import registry
    from plmrec.serving.bundle import read_meta

    rg = params.registry
    if not rg.enabled:
        decision = {"registered": False, "reason": "registry.enabled is false"}
        Path(decision_path).parent.mkdir(parents=True, exist_ok=True)
        Path(decision_path).write_text(json.dumps(decision))
        return decision
    meta = read_meta(bundle_dir)
    metrics = {k: v for k, v in meta["metrics"].items() if not k.endswith("_std")}
    tags = {"data.md5": file_digest(prepared_path, "md5"), "data.path": str(prepared_path),
            "served_model": meta["model"], "plmrec.run_key": run_key or ""}
    with tracking.stage_run(params, "register-model", run_key, tracking_uri):
        version = registry.register_bundle(bundle_dir, rg, metrics, tags)
        client = mlflow.MlflowClient()
        decision = registry.gate(client, rg, version)
        tracking.log_json(decision.to_dict(), "registry/decision.json")
        mlflow.log_metrics({"gate_promoted": float(decision.promoted), "registered_version": float(version)})
        mlflow.set_tags({"plmrec.registered_version": version, "plmrec.gate": decision.reason[:5000]})
        tracking.log_parent_metrics(params, run_key, tracking_uri, {"registered_version": float(version),
                                                                    "gate_promoted": float(decision.promoted)})
        deployed = _deploy_champion(params, client, decision) if decision.promoted else None
        if deployed:
            mlflow.set_tag("plmrec.deployed_storage_uri", deployed)
    out = {"registered": True, "model_name": rg.model_name, **decision.to_dict(), "deployed_storage_uri": deployed}
    Path(decision_path).parent.mkdir(parents=True, exist_ok=True)
    Path(decision_path).write_text(json.dumps(out, indent=2))
    _say("register-model", f"{rg.model_name} version {version} is @challenger; "
                           f"{'promoted to @champion' if decision.promoted else 'not promoted'}: {decision.reason}")
    return out
