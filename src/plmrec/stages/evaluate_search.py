"""evaluate-search: complex product search on review data (search.reviews_path): BM25, the base and
selected encoders, BLaIR per seed and the hybrids, chosen on valid and scored once on test. Without
review data the stage records a skip and serving keeps the dense query path.

Input: `encoder` (models/encoder, evaluate-retrieval's choice). Outputs: `search` (model, models/search:
decision.json, the served search mode compare-models puts in the bundle, and the tables), `metrics`
(metrics/search.json), `report` (KFP: the tables and the per-category picture).
"""

from __future__ import annotations

import time
from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.encoders import encoder_folder
from plmrec.stages.common import kfp_setup, log_figures, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.evaluate_retrieval import ENCODER

SEARCH = Port("search", "model", "the search decision (decision.json: the served mode) and its tables", "models/search")
SPEC = Stage(
    "evaluate-search",
    __name__,
    inputs=(
        ENCODER.reading("the encoder chosen by evaluate-retrieval, scored beside the base encoder", required=False),
    ),
    outputs=(
        SEARCH,
        Port("metrics", "metrics", "the benchmark, the decision and the test table (JSON)", "metrics/search.json"),
        Port("report", "html", "the search tables"),
    ),
    params=("seed", "search", "pretrain.base_model", "data"),
    code=("src/plmrec/search",),
    comment="skipped (decision: dense) while search.reviews_path is null",
)


def _log_search(study, decision: dict, out: Path, *, params: Params, tracked: dict) -> dict:
    """Tables, plot, verdicts and headline figures of a search run and its decision: files under
    `out`, the stage run, the parent run."""
    from plmrec.plots import plot_by_category
    from plmrec.reports import markdown_table
    from plmrec.search.metrics import metric_name

    settings = params.search
    per_seed = study.per_seed()
    per_seed.to_csv(out / "per_seed.csv", index=False)
    tables = {split: study.table(split) for split in ("valid", "test")}
    for split, table in tables.items():
        table.to_csv(out / f"{split}_summary.csv", index=False)
    categories = study.categories()
    categories.to_csv(out / "categories.csv", index=False)
    top = f"ndcg@{max(settings.ks)}"
    plot_by_category(categories, top, out / "categories.png", title=f"{study.benchmark.name}: test {top} by category")
    verdicts = study.verdicts()
    lines = [
        f"# Product search: {study.benchmark.name}",
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
    tracking.set_verdicts(verdicts, title=f"Product search ({study.benchmark.name}), test {settings.select}")
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


def shop_reviews(params: Params):
    """search.* with the shop's own reviews where search.reviews_path is not set and the shop's data is
    Amazon reviews (data.format amazon, with data.meta_path): the search is then over its own catalogue."""
    settings, data = params.search, params.data
    if settings.reviews_path or data.source != "file" or not data.meta_path:
        return settings
    from plmrec.data.adapters import data_format
    from plmrec.errors import DataLoadError

    try:
        amazon = data_format(params) == "amazon"
    except DataLoadError:  # the file is not here (another pod): the stage says search.reviews_path is unset
        return settings
    return settings.model_copy(update={"reviews_path": data.path, "meta_path": data.meta_path}) if amazon else settings


def evaluate_search(
    params: Params,
    *,
    search: str | Path,
    metrics: str | Path,
    encoder: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Complex product search on search.reviews_path: BM25, the base and selected (`encoder`)
    encoders, BLaIR per seed and the hybrids, chosen on valid and scored once on test. `search` gets
    decision.json (the served search mode, read by compare-models for the bundle) and the tables.
    Without review data the stage records a skip and the decision keeps the dense mode."""
    import tempfile

    from plmrec.search.study import compare_rankers, configured_benchmark, skipped_decision

    settings, out = shop_reviews(params), Path(search)
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    out.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(params, "evaluate-search", **tracked):
        if not (settings.enabled and settings.reviews_path):
            reason = "search.enabled is false" if not settings.enabled else "search.reviews_path is not set"
            decision = skipped_decision(reason, settings)
            write_json(out / "decision.json", decision)
            (out / "results.md").write_text(f"No product-search evaluation: {reason}.\n")
            write_json(metrics, {"search": {"evaluated": False, "reason": reason}})
            tracking.set_tags({"plmrec.search_mode": "dense", "plmrec.search": f"skipped: {reason}"})
            say("evaluate-search", f"skipped ({reason}); serving keeps the dense query path")
            return {"decision": decision}
        started = time.perf_counter()
        bench = configured_benchmark(settings)
        say("evaluate-search", "benchmark " + ", ".join(f"{k} {v}" for k, v in bench.summary().items()))
        tracking.log_numeric({k: v for k, v in bench.summary().items() if isinstance(v, int)}, "benchmark_")
        selected = encoder_folder(encoder) if encoder else None
        with tempfile.TemporaryDirectory(prefix="plmrec-blair-") as work:
            study = compare_rankers(
                bench, settings, base_model=params.pretrain.base_model, selected=selected, work_dir=work
            )
        decision = {**study.decision(), "evaluated": True}
        logged = _log_search(study, decision, out, params=params, tracked=tracked)
        write_json(out / "decision.json", decision)
        summary = {
            "benchmark": bench.summary(),
            "decision": decision,
            **logged,
            "hybrid_weights": study.weights,
            "facts": study.facts,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json(metrics, {"search": {k: summary[k] for k in ("benchmark", "decision", "test")}})
        figure = decision["valid"][decision["mode"]][settings.select]
        say(
            "evaluate-search",
            f"served mode {decision['mode']} ({decision['ranker']}, valid {settings.select} "
            f"{figure:.4f}) -> {out / 'decision.json'}",
        )
        return summary


command = SPEC.command(
    evaluate_search,
    help="Complex product search on review data: BM25, dense, BLaIR and hybrid rankers; valid picks the mode.",
)


def kfp(config: dict, tracking_uri: str, run_key: str, *, encoder, search, metrics, report) -> None:
    """The KFP component's body: the served mode on the `search` artifact, the tables as a page."""
    from plmrec.reports import image_html

    params, tracked = kfp_setup(config, tracking_uri, run_key)
    out = evaluate_search(
        params, **SPEC.kfp_paths({"encoder": encoder, "search": search, "metrics": metrics}), **tracked
    )
    decision = out["decision"]
    search.metadata.update({"framework": "plmrec-search", "mode": decision["mode"], "evaluated": decision["evaluated"]})
    log_figures(metrics, metrics.path)
    folder = Path(search.path)
    if not decision["evaluated"]:
        page = f"<html><body><p>No product-search evaluation: {decision['reason']}.</p></body></html>"
    else:
        page = image_html(
            "Product search", [folder / "categories.png"], f"<pre>{(folder / 'results.md').read_text()}</pre>"
        )
    Path(report.path).write_text(page)
