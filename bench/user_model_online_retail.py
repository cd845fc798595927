"""The user model on real Online Retail data: its variants, its recommender row and learning to rank with it.

Ingest and prepare the file (params.yaml's split), take the item text vectors of an encoder (`--encoder`:
a folder evaluate-retrieval wrote with --encoder; default: the base MiniLM, embedded here), run
`train-user-model` with `user_model.seeds` = --seeds (variants from params.yaml: C = 1 id only, C = 1
id + text, C = 4 id + text), then the recommenders of compare-models over the same seeds with the user
model (its row, ltr and ltr+user_model side by side). Every choice is made on the valid window; the
test window is scored once. Writes one JSON under --out and prints the tables with 2-std verdicts.

    python bench/user_model_online_retail.py --data ../shared/data/online-retail/online_retail.parquet \\
        --seeds 0 1 2 --work /tmp/plmrec-um --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from real_data import _cell, _markdown, _stage, clear_win, mean_std  # noqa: E402

COMPARISONS = (  # (table, metric, better, worse)
    ("user_model", "test_recall@100", "guim-c4-id+text", "guim-c1-id+text"),
    ("user_model", "test_ndcg@10", "guim-c1-id+text", "guim-c1-id"),
    ("user_model", "test_ndcg@10", "guim-c4-id+text", "guim-c1-id"),
    ("recommenders", "test_ndcg@10", "ltr+user_model", "ltr"),
    ("recommenders", "test_ndcg@10", "user_model", "mf"),
)


def base_items(prepared: pd.DataFrame, out: Path) -> Path:
    """item_embeddings.parquet of the base MiniLM over the catalogue's descriptions, in `out`."""
    from plmrec.encoders import load_encoder
    from plmrec.finetune.embed import encode_texts, item_table
    from plmrec.finetune.pairs import catalogue
    from plmrec.pretrain.models import resolve_base_model

    cat = catalogue(prepared)
    model = load_encoder(resolve_base_model("sentence-transformers/all-MiniLM-L6-v2"), "mean", 64)
    table = item_table(
        cat["StockCode"].tolist(), cat["Description"].tolist(), encode_texts(model, cat["Description"].tolist())
    )
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "item_embeddings.parquet", index=False)
    return out


def summarise(runs: pd.DataFrame, by: str, metrics: list[str]) -> dict:
    return {
        name: {m: mean_std(part[m].astype(float).tolist()) for m in metrics}
        for name, part in runs.groupby(by, sort=False)
    }


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--encoder", default=None, help="evaluate-retrieval's --encoder folder (default: base MiniLM)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/plmrec-um")
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default="user_model_online_retail")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from plmrec.config import load_params
    from plmrec.recsys.experiment import run_recommenders
    from plmrec.stages.ingest import ingest
    from plmrec.stages.prepare import prepare
    from plmrec.stages.train_user_model import train_user_model
    from plmrec.usermodel.store import SavedUserModels

    work = Path(args.work)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    seeds = "[" + ", ".join(map(str, args.seeds)) + "]"
    overrides = [
        "data.source=file",
        f"data.path={args.data}",
        f"user_model.seeds={seeds}",
        f"recommenders.seeds={seeds}",
        *args.overrides,
    ]
    params = load_params([ROOT / "params.yaml"], overrides)
    raw, prepared_path = work / "data" / "raw.parquet", work / "data" / "prepared.parquet"
    timings = {"ingest": _stage(work / "data", "ingest", lambda: ingest(params, raw=raw))["seconds"]}
    timings["prepare"] = _stage(work / "data", "prepare", lambda: prepare(params, raw=raw, prepared=prepared_path))[
        "seconds"
    ]
    prepared = pd.read_parquet(prepared_path)
    encoder = Path(args.encoder) if args.encoder else work / "base-encoder"
    if not args.encoder:
        timings["embed"] = _stage(work, "embed", lambda: base_items(prepared, encoder))["seconds"]
    timings["train-user-model"] = _stage(
        work,
        "train-user-model",
        lambda: train_user_model(
            params,
            prepared=prepared_path,
            encoder=encoder,
            user_model=work / "user_model",
            metrics=work / "user_model.json",
        ),
    )["seconds"]
    items = pd.read_parquet(encoder / "item_embeddings.parquet")
    saved = SavedUserModels(
        work / "user_model", prepared, items["StockCode"].astype(str).tolist(), split_params=params.split
    )
    start = time.perf_counter()
    rows, _ = run_recommenders(
        prepared, items, params.recommenders, user_models=saved, progress=lambda m: print(f"[bench] {m}", flush=True)
    )
    timings["recommenders"] = round(time.perf_counter() - start, 1)

    um_runs = pd.read_csv(work / "user_model" / "runs.csv")
    um_metrics = [c for c in um_runs.columns if c.startswith("test_")]
    rec_metrics = [c for c in rows.columns if c.startswith("test_") and "@" in c]
    tables = {
        "user_model": summarise(um_runs, "variant", [*um_metrics, "epoch", "sequences_per_s"]),
        "recommenders": summarise(rows, "model", rec_metrics),
    }
    verdicts = []
    for table, metric, better, worse in COMPARISONS:
        found = tables[table]
        if better in found and worse in found:
            verdicts.append(
                {
                    "metric": metric,
                    "better": better,
                    "worse": worse,
                    **clear_win(found[better][metric], found[worse][metric]),
                }
            )
    probe = json.loads((work / "user_model.json").read_text())["user_model"].get("profile_probe", [])
    result = {
        "benchmark": "user_model_online_retail",
        "data": args.data,
        "encoder": str(args.encoder or "base MiniLM (sentence-transformers/all-MiniLM-L6-v2)"),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "user_model": tables["user_model"],
        "recommenders": tables["recommenders"],
        "verdicts": verdicts,
        "profile_probe": probe,
        "seconds": timings,
        "cpus": os.cpu_count(),
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, f"{args.name}.json").write_text(json.dumps(result, indent=2))
    for table, metrics in (("user_model", um_metrics), ("recommenders", ["test_recall@10", "test_ndcg@10"])):
        print(f"\n## {table} (test, mean ± std over seeds {args.seeds})\n")
        print(
            _markdown(
                [{"variant": k, **{m: _cell(v[m]) for m in metrics if m in v}} for k, v in tables[table].items()],
                ["variant", *metrics],
            )
        )
    print("\n## verdicts (difference vs 2 std of the difference)\n")
    for v in verdicts:
        print(
            f"- {v['better']} vs {v['worse']} on {v['metric']}: {v['difference']:+.4f} (2 std {v['two_std']:.4f}): "
            f"{'exceeds' if v['beats_by_more_than_2_std'] else 'does not exceed'} 2 std"
        )
    if probe:
        print("\n## consumer-profile probe\n")
        print(_markdown(probe, list(probe[0])))
    print("\nseconds:", json.dumps(timings))


if __name__ == "__main__":
    main()
