"""evaluate-retrieval: next-item retrieval with full ranking for each encoder of retrieval.compare (base,
pretrained, fine-tuned), scored on the valid window, which chooses the encoder every later stage uses
(retrieval.encoder_selection), and once on the test window (and on a UniSRec/RecBole benchmark when
retrieval.seqrec.path is set).

Inputs: `prepared` (data/prepared.parquet), `pretrained` (models/pretrained), `finetuned`
(models/finetuned). Outputs: `encoder` (model, models/encoder: the chosen encoder's
sentence-transformer/, item_embeddings.parquet, user_embeddings.parquet, index.json, selection.json),
`metrics` (metrics/retrieval.json), `reports` (reports/retrieval: one table per benchmark and the valid
selection), `report` (KFP: the tables).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.errors import StageError
from plmrec.stages.common import ENCODER_COLUMNS, kfp_setup, log_figures, read_checked, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.finetune import FINETUNED
from plmrec.stages.prepare import PREPARED
from plmrec.stages.pretrain import PRETRAINED

if TYPE_CHECKING:
    from plmrec.selection import EncoderSelection

SHOP_TEST = "test"  # the shop's own test window, beside any seqrec_<name>_test benchmark
ENCODER = Port(
    "encoder",
    "model",
    "the encoder chosen on valid, with its item and user embeddings (sentence-transformer/, item_embeddings.parquet)",
    "models/encoder",
    required=False,
)
SPEC = Stage(
    "evaluate-retrieval",
    __name__,
    inputs=(PREPARED, PRETRAINED.reading(required=False), FINETUNED.reading(required=False)),
    outputs=(
        ENCODER,
        Port("metrics", "metrics", "every encoder's figures and the selection (JSON)", "metrics/retrieval.json"),
        Port("reports", "folder", "one table per benchmark and the valid selection", "reports/retrieval", cache=False),
        Port("report", "html", "the retrieval tables"),
    ),
    params=(
        "seed",
        "split",
        "retrieval",
        "finetune.history_length",
        "finetune.history_template",
        "finetune.pooling",
        "finetune.max_length",
    ),
    code=(
        "src/plmrec/finetune/retrieval.py",
        "src/plmrec/finetune/embed.py",
        "src/plmrec/finetune/schedule.py",
        "src/plmrec/selection.py",
        "src/plmrec/ranking.py",
        "src/plmrec/encoders.py",
    ),
)


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
    """benchmark name -> (item texts, queries, exclude history): the shop's test window, and the
    UniSRec/RecBole benchmark when retrieval.seqrec.path is set."""
    from plmrec.finetune.pairs import catalogue
    from plmrec.finetune.retrieval import seqrec_queries, temporal_queries

    retrieval = params.retrieval
    items = catalogue(prepared)
    queries = temporal_queries(
        prepared, {c: i for i, c in enumerate(items["StockCode"])}, "test", exclude_history=retrieval.exclude_history
    )
    benchmarks = {SHOP_TEST: (items["Description"].tolist(), queries, retrieval.exclude_history)}
    if retrieval.seqrec.path:
        from plmrec.data.seqrec import load_seqrec

        data = load_seqrec(retrieval.seqrec.path, retrieval.seqrec.name)
        benchmarks[f"seqrec_{data.name.lower()}_test"] = (
            data.items["text"].tolist(),
            seqrec_queries(data.splits["test"], retrieval.seqrec.max_users, params.seed),
            retrieval.seqrec.exclude_history,
        )
    return benchmarks


def _catalogue_vectors(model, texts: list[str], *, finetuned, table: pd.DataFrame, params: Params) -> tuple:
    """This model's vectors of the shop's catalogue (pairs.catalogue order), and whether the finetune stage
    had already written them (same weights, same table: finetune disabled exports the base unchanged)."""
    from plmrec.finetune.embed import encode_texts
    from plmrec.finetune.schedule import saved_item_vectors

    saved = saved_item_vectors(model, finetuned, table, params=params) if finetuned is not None else None
    if saved is not None:
        return saved, True
    return encode_texts(model, texts, params.retrieval.encode_batch_size), False


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
    selection: EncoderSelection,
    model,
    prepared: pd.DataFrame,
    *,
    params: Params,
    out_dir: str | Path,
    item_vectors=None,
) -> dict:
    """The chosen encoder as every later stage reads it: sentence-transformer/, item and user
    embeddings, index.json and selection.json under `out_dir`. Embeddings the encoder's own stage
    wrote for this table and these settings (the fine-tuned encoder's) are copied, not encoded again;
    `item_vectors` (the catalogue's, from these weights) are used rather than encoded again."""
    from plmrec.finetune.schedule import embed_catalogue, saved_embeddings_match

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
        embedded = embed_catalogue(model, prepared, params, out_dir=out, item_vectors=item_vectors)
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
    *,
    prepared: str | Path,
    metrics: str | Path,
    reports: str | Path,
    pretrained: str | Path | None = None,
    finetuned: str | Path | None = None,
    encoder: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Each encoder of retrieval.compare scored on the valid window (which chooses the encoder:
    retrieval.encoder_selection) and once on the test window, and on the UniSRec/RecBole benchmark when
    retrieval.seqrec.path is set; one comparable table each, under `reports`. With `encoder`, the chosen
    encoder and its item and user embeddings are written there for the later stages and the bundle."""
    from plmrec.encoders import load_encoder
    from plmrec.finetune.retrieval import results_table, score_encoder
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.selection import SCORES_FILE, EncoderSelection, ValidProbe, best_query
    from plmrec.training.device import resolve_device

    retrieval, tuning = params.retrieval, params.finetune
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    with tracking.stage_run(params, "evaluate-retrieval", **tracked):
        quiet_transformers()
        encoders = retrieval_encoders(params, pretrained, finetuned)
        device = str(resolve_device(tuning.device))
        table, _ = read_checked(prepared, "prepared", columns=ENCODER_COLUMNS)
        probe = ValidProbe.from_prepared(table, params)
        if finetuned is not None:  # the same probe's scores of the same weights, from the finetune stage
            probe.load_scores(Path(finetuned) / SCORES_FILE)
        benchmarks = _retrieval_benchmarks(params, table)
        results: dict = {bench: {} for bench in benchmarks}
        valid: dict = {}
        shop_vectors: dict = {}  # encoder -> its vectors of the shop's catalogue
        for name, path in encoders.items():  # each encoder is loaded once and scores every benchmark
            model = load_encoder(path, tuning.pooling, tuning.max_length, device=device)
            valid[name] = probe.score(model)
            kind, value = best_query(valid[name])
            say(
                "evaluate-retrieval",
                f"valid: {name} ndcg@10 {value:.4f} ({kind} query, {len(probe.queries):,} queries)",
            )
            for bench, (texts, queries, exclude) in benchmarks.items():
                vectors, saved = None, False
                if bench == SHOP_TEST:  # kept for the chosen encoder's embeddings: encoded once per encoder
                    vectors, saved = _catalogue_vectors(model, texts, finetuned=finetuned, table=table, params=params)
                    shop_vectors[name] = vectors
                results[bench][name] = score_encoder(
                    model,
                    texts,
                    queries,
                    item_vectors=vectors,
                    ks=retrieval.ks,
                    history_length=tuning.history_length,
                    half_life=retrieval.recency_half_life,
                    exclude_history=exclude,
                    batch_size=retrieval.encode_batch_size,
                    index_kind=retrieval.index,
                    template=tuning.history_template,
                    kinds=tuple(retrieval.query_kinds),
                )
                timing = results[bench][name]["_timing"]
                say(
                    "evaluate-retrieval",
                    f"{bench}: {name} scored {timing['queries']:,} queries over {timing['items']:,} items"
                    + (f" (item vectors the finetune stage wrote from these weights: {finetuned})" if saved else ""),
                )
        tracking.log_numeric({"valid_scores_reused": probe.reused})
        if probe.reused:
            say(
                "evaluate-retrieval",
                f"valid: {probe.reused} of {len(encoders)} encoders scored by the finetune stage on this very "
                f"probe (same weights; its {SCORES_FILE}), not encoded again",
            )
        selection = EncoderSelection(retrieval.encoder_selection, valid, paths=encoders)
        tables = Path(reports)
        tables.mkdir(parents=True, exist_ok=True)
        for bench in benchmarks:
            _log_retrieval_table(bench, results_table(results[bench], retrieval.ks), tables)
        test = results[SHOP_TEST]
        _log_selection(selection, test, tables_dir=tables, params=params, tracked=tracked)
        figures = {
            "retrieval": {
                bench: {
                    enc: {kind: m for kind, m in by_kind.items() if not kind.startswith("_")}
                    for enc, by_kind in by_enc.items()
                }
                for bench, by_enc in results.items()
            },
            "selection": {k: v for k, v in selection.to_dict().items() if k not in ("scores", "paths")},
        }
        write_json(metrics, figures)
        tracking.log_json({"test": results, "valid": valid}, "retrieval/results.json")
        if encoder is not None:
            model = load_encoder(selection.path, tuning.pooling, tuning.max_length, device=device)
            embedded = write_selected_encoder(
                selection, model, table, params=params, out_dir=encoder, item_vectors=shop_vectors[selection.chosen]
            )
            tracking.log_numeric(embedded, "selected_embed_")
        figure = test[selection.chosen][selection.query][f"ndcg@{retrieval.ks[0]}"]
        say(
            "evaluate-retrieval",
            f"{selection.line()}; test ndcg@{retrieval.ks[0]} {figure:.4f}"
            + (f" -> {encoder}" if encoder is not None else ""),
        )
        return {"benchmarks": results, "valid": valid, "selection": selection.to_dict()}


command = SPEC.command(
    evaluate_retrieval,
    help="Next-item retrieval (full ranking) of the base, pretrained and fine-tuned encoders; valid chooses one.",
)


def kfp(
    config: dict, tracking_uri: str, run_key: str, *, prepared, pretrained, finetuned, encoder, metrics, reports, report
) -> None:
    """The KFP component's body: the chosen encoder's metadata, the figures, the tables as a page."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    artifacts = {"prepared": prepared, "pretrained": pretrained, "finetuned": finetuned}
    artifacts.update(encoder=encoder, metrics=metrics, reports=reports)
    results = evaluate_retrieval(params, **SPEC.kfp_paths(artifacts), **tracked)
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
    log_figures(metrics, metrics.path)
    tables = Path(reports.path)
    sections = "".join(f"<h4>{p.stem}</h4><pre>{p.read_text()}</pre>" for p in sorted(tables.glob("*.md")))
    Path(report.path).write_text(
        f"<html><body><h3>Next-item retrieval, full ranking</h3><p>Encoder chosen on valid: "
        f"<b>{selection['chosen']}</b> ({selection['query']} query)</p>{sections}</body></html>"
    )
