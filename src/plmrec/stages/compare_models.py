"""compare-models: the classifier ablation (XGBoost with and without PLM features) and the recommender
rows (plmrec.recsys.rows: popularity, ALS and its PLM variants, text neighbours, the user model, learning
to rank with and without it) over several seeds, with the encoder evaluate-retrieval chose on valid;
then the served recommender (registry.served_model) refitted on all purchases as the serving bundle.

Inputs: `prepared` (data/prepared.parquet), `encoder` (models/encoder), `user_model`
(models/user_model, optional: adds the user-model rows), `search` (models/search, optional: the
bundle's query mode; dense without it). Outputs: `bundle` (model, models/bundle), `metrics`
(metrics/compare.json), `reports` (reports/compare: tables, verdicts, pictures), `report` (KFP: the page).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.errors import StageError
from plmrec.stages.common import kfp_setup, log_figures, read_checked, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.evaluate_retrieval import ENCODER
from plmrec.stages.evaluate_search import SEARCH
from plmrec.stages.prepare import PREPARED
from plmrec.stages.train_user_model import USER_MODEL

STAGE = "compare-models"
BUNDLE = Port(
    "bundle", "model", "the served recommender's bundle, refitted on all purchases", "models/bundle", required=False
)
SPEC = Stage(
    STAGE,
    __name__,
    inputs=(
        PREPARED,
        ENCODER.reading("the encoder chosen by evaluate-retrieval (item_embeddings.parquet, sentence-transformer/)"),
        USER_MODEL.reading("train-user-model's folder: adds the user model's rows", required=False),
        SEARCH.reading("evaluate-search's folder: the bundle serves queries in the mode it chose", required=False),
    ),
    outputs=(
        BUNDLE,
        Port(
            "metrics", "metrics", "mean and std of every classifier and recommender row (JSON)", "metrics/compare.json"
        ),
        Port("reports", "folder", "tables, verdicts and pictures", "reports/compare", cache=False),
        Port(
            "plots",
            "plots",
            "the served model's and its no-text twin's precision@K on test (the table DVC draws)",
            "reports/plots",
            required=False,
            curves=(("precision_at_k.csv", "k", "precision"),),
        ),
        Port("report", "html", "the comparison tables and pictures"),
    ),
    params=("clean", "recommenders", "registry.served_model", "serving.catalogue_path"),
    code=(
        "src/plmrec/recsys",
        "src/plmrec/usermodel",
        "src/plmrec/features.py",
        "src/plmrec/serving/bundle.py",
        "src/plmrec/search/lexical.py",
    ),
)


def _user_models(user_model, prepared: pd.DataFrame, items: pd.DataFrame, *, params: Params):
    """train-user-model's per-seed models for the comparison, or None (not given, or none trained)."""
    from plmrec.usermodel.store import SavedUserModels

    if user_model is None:
        return None
    if not any(Path(user_model).glob("seeds/*/refit.pt")):
        say(STAGE, f"no user model in {user_model} (user_model.enabled: false?): its rows are left out")
        return None
    codes = items["StockCode"].astype(str).tolist()
    saved = SavedUserModels(user_model, prepared, codes, split_params=params.split)
    say(STAGE, f"user model from {user_model} (seeds {saved.seeds})")
    return saved


def _search_decision(search: str | Path | None) -> dict | None:
    """evaluate-search's decision.json, or None (no search stage: the bundle keeps the dense mode)."""
    if search is None:
        return None
    found = Path(search) / "decision.json"
    if not found.exists():
        raise StageError(f"{search} holds no decision.json: run evaluate-search first")
    return json.loads(found.read_text())


def encoder_name(encoder: str | Path) -> str:
    """Which encoder a folder holds: evaluate-retrieval's choice (selection.json), else the folder's name."""
    found = Path(encoder) / "selection.json"
    return json.loads(found.read_text())["chosen"] if found.exists() else Path(encoder).name


def compare_models(
    params: Params,
    *,
    prepared: str | Path,
    encoder: str | Path,
    metrics: str | Path,
    reports: str | Path,
    bundle: str | Path | None = None,
    user_model: str | Path | None = None,
    search: str | Path | None = None,
    plots: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Both studies over seeds with the chosen encoder's item embeddings; with `bundle`, the served
    recommender written there."""
    from plmrec.recsys.comparison import Comparison, served_lists
    from plmrec.serving.bundle import read_catalogue, write_bundle

    out = Path(reports)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(params, STAGE, run_key=run_key, tracking_uri=tracking_uri):
        if not params.recommenders.enabled:
            write_json(metrics, {"compare": {}}, indent=None)
            (out / "results.md").write_text("recommenders.enabled is false: no comparison run\n")
            say(STAGE, "disabled (recommenders.enabled: false)")
            return {"classifier": {}, "recommenders": {}, "verdicts": []}
        start = time.perf_counter()
        table, _ = read_checked(prepared, "prepared")
        items = pd.read_parquet(Path(encoder) / "item_embeddings.parquet")
        name = encoder_name(encoder)
        say(STAGE, f"text features from the '{name}' encoder ({encoder})")
        tracking.set_tags({tracking.ENCODER_TAG: name})
        user_models = _user_models(user_model, table, items, params=params)
        comparison = Comparison.compute(
            params, table, items, user_models=user_models, progress=lambda message: say(STAGE, message)
        )
        verdicts = comparison.verdicts()
        comparison.write_reports(out, verdicts)
        if plots is not None:
            comparison.write_precision_curve(Path(plots) / "precision_at_k.csv")
        summary = {**comparison.summary(verdicts), "encoder": name, "seconds": round(time.perf_counter() - start, 1)}
        write_json(metrics, {"compare": {k: summary[k] for k in ("classifier", "recommenders", "views")}})
        if bundle is not None:
            started = time.perf_counter()
            served = write_bundle(
                params,
                table,
                items,
                recommender_rows=comparison.recommender_rows,
                recommender_detail=comparison.recommender_detail,
                encoder_dir=Path(encoder) / "sentence-transformer",
                bundle_dir=bundle,
                user_models=user_models,
                search=_search_decision(search),
                lifts=summary["lifts"],
                catalogue=read_catalogue(params.serving.catalogue_path) if params.serving.catalogue_path else None,
                lists=comparison.list_rows(),
            )
            say(
                STAGE,
                f"serving bundle: {served['model']} ({served['chosen_by']}; lists: {served_lists(served['lists'])}), "
                f"refitted on all purchases in {time.perf_counter() - started:.1f} s -> {bundle}",
            )
            summary["served"] = served
            tracking.set_tags({"plmrec.served_model": served["model"]})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        comparison.log(out, verdicts, run_key=run_key, tracking_uri=tracking_uri)
        for v in verdicts:
            say(STAGE, v)
        return summary


command = SPEC.command(
    compare_models,
    help="XGBoost with and without PLM features, ALS and its PLM variants, learning to rank, over seeds.",
)


def kfp(
    config: dict,
    tracking_uri: str,
    run_key: str,
    *,
    prepared,
    encoder,
    user_model,
    search,
    bundle,
    metrics,
    reports,
    report,
) -> None:
    """The KFP component's body: the served model on the bundle's metadata, the tables as a page."""
    from plmrec.reports import image_html

    params, tracked = kfp_setup(config, tracking_uri, run_key)
    artifacts = {"prepared": prepared, "encoder": encoder, "user_model": user_model, "search": search}
    artifacts.update(bundle=bundle, metrics=metrics, reports=reports)
    summary = compare_models(params, **SPEC.kfp_paths(artifacts), **tracked)
    if "served" in summary:
        bundle.metadata.update(
            {
                "served_model": summary["served"]["model"],
                "framework": "plmrec-bundle",
                "encoder": summary["encoder"],
                **{k: v for k, v in summary["served"]["metrics"].items() if not k.endswith("_std")},
            }
        )
    log_figures(metrics, metrics.path)
    folder = Path(reports.path)
    pictures = [folder / "precision_at_k.png", folder / "confusion_matrix_best.png", folder / "feature_importance.png"]
    Path(report.path).write_text(
        image_html("Model comparison", pictures, f"<pre>{(folder / 'results.md').read_text()}</pre>")
    )
