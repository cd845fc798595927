"""What does the text contribute to the recommenders? compare-models' recommender table run twice on
the same data and seeds: with the selected encoder's item vectors, and with random vectors in their
place (the same code, no language model), under both protocols (repurchases count / new items only).

A row that gains as much with random vectors is not helped by the text: with max similarity a bought
item scores 1 whatever the vectors are, so under the repurchase protocol part of mf+similarity's lift
is the bought-before signal (mf+repeat measures that part alone).

    python bench/text_ablation.py --prepared /tmp/plmrec-real/data/prepared.parquet \\
        --items /tmp/plmrec-real/seed-0/selected/item_embeddings.parquet --seeds 0 1 2 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from real_data import ROOT, _markdown, clear_win, mean_std

MODELS_JUDGED = ("mf+similarity", "mf+cluster", "text_neighbours", "ltr")


def random_vectors(items: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same items with Gaussian vectors of the same width instead of their text embeddings."""
    width = len(items["embedding"].iloc[0])
    rng = np.random.default_rng(seed)
    out = items.copy()
    out["embedding"] = [rng.standard_normal(width).astype(np.float32) for _ in range(len(items))]
    return out


def run(prepared: pd.DataFrame, items: pd.DataFrame, rp, *, metrics: list[str]) -> dict:
    from plmrec.recsys.experiment import run_recommenders

    rows, _ = run_recommenders(prepared, items, rp, progress=lambda m: print(f"[bench] {m}", flush=True))
    return {
        model: {m: mean_std(part[f"test_{m}"].astype(float).tolist()) for m in metrics}
        for model, part in rows.groupby("model", sort=False)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, help="a prepared table (plmrec stage prepare)")
    parser.add_argument("--items", required=True, help="item_embeddings.parquet of the selected encoder")
    parser.add_argument("--params", action="append", default=None, help="params files (default params.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-ltr", action="store_true", help="skip learning to rank (faster)")
    parser.add_argument("--out", default=None, help="write the JSON here (e.g. bench/results)")
    parser.add_argument("--name", default="text_ablation_online_retail")
    args = parser.parse_args()

    from plmrec.config import load_params

    params = load_params(args.params or [ROOT / "params.yaml"], [])
    prepared = pd.read_parquet(args.prepared)
    text_items = pd.read_parquet(args.items)
    metrics = ["ndcg@10", "recall@10"]
    tables, verdicts, seconds = {}, {}, {}
    for exclude in (False, True):
        protocol = "new items only" if exclude else "repurchases count"
        rp = params.recommenders.model_copy(
            update={"seeds": args.seeds, "exclude_history": exclude, "ltr": params.recommenders.ltr.model_copy()}
        )
        rp.ltr.enabled = not args.no_ltr
        for label, items in (("text", text_items), ("random vectors", random_vectors(text_items, seed=0))):
            start = time.perf_counter()
            tables[f"{protocol} / {label}"] = run(prepared, items, rp, metrics=metrics)
            seconds[f"{protocol} / {label}"] = round(time.perf_counter() - start, 1)
        text, control = tables[f"{protocol} / text"], tables[f"{protocol} / random vectors"]
        verdicts[protocol] = {
            "mf+similarity vs mf": clear_win(text["mf+similarity"]["ndcg@10"], text["mf"]["ndcg@10"]),
            "mf+similarity vs mf+repeat": clear_win(text["mf+similarity"]["ndcg@10"], text["mf+repeat"]["ndcg@10"]),
            **{
                f"{m}: text vs random vectors": clear_win(text[m]["ndcg@10"], control[m]["ndcg@10"])
                for m in MODELS_JUDGED
                if m in text
            },
        }
    lines = []
    for name, table in tables.items():
        lines.append(f"\n### {name}\n")
        lines.append(
            _markdown(
                [
                    {"model": model, **{m: f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in metrics}}
                    for model, v in table.items()
                ],
                ["model", *metrics],
            )
        )
    print("\n".join(lines))
    print(json.dumps(verdicts, indent=2))
    result = {
        "prepared": args.prepared,
        "items": args.items,
        "params": [str(p) for p in (args.params or ["params.yaml"])],
        "seeds": args.seeds,
        "tables": tables,
        "verdicts": verdicts,
        "seconds": seconds,
    }
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
