"""Complex product search on review data (the BLaIR / Amazon-C4 protocol), every ranker in one run.

Queries are held-out reviews (title + text, at least search.min_query_chars), later in time than
every review BLaIR trains on; the target is the reviewed item; the pool is every item with text.
Rankers: BM25 (bm25s), the base encoder, BLaIR fine-tuned per seed, and their reciprocal-rank
fusions (weight chosen on valid). Test is scored once. One JSON object on stdout and under --out.

    python bench/search.py --reviews ../shared/data/amazon-search/amazon2023-ucsd-sample \\
        --name amazon2023_sample --seeds 0 1 2 --out bench/results/search_amazon2023_sample.json
    python bench/search.py --reviews ../shared/data/amazon2018/Magazine_Subscriptions_5.json.gz \\
        --meta ../shared/data/amazon2018/meta_Magazine_Subscriptions.json.gz \\
        --name magazine_subscriptions --seeds 0 1 2 --out bench/results/search_magazine_subscriptions.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviews", required=True, help="Amazon reviews jsonl(.gz), or a UCSD user-record sample")
    ap.add_argument("--meta", default=None, help="the matching item metadata (not for a UCSD sample)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="search.* settings come from here")
    ap.add_argument(
        "--selected", default=None, help="the chosen encoder: evaluate-retrieval's folder (models/encoder) or a model"
    )
    ap.add_argument("--work", default="/tmp/plmrec-search", help="BLaIR encoders (a rerun reuses them)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from plmrec.config import load_params
    from plmrec.encoders import encoder_folder
    from plmrec.reports import markdown_table
    from plmrec.search.benchmark import load_review_data, review_benchmark
    from plmrec.search.study import compare_rankers

    params = load_params(args.params)
    settings = params.search.model_copy(update={"seeds": args.seeds})
    started = time.perf_counter()
    reviews, items = load_review_data(args.reviews, args.meta)
    bench = review_benchmark(
        reviews,
        items,
        name=args.name,
        valid_fraction=settings.valid_fraction,
        test_fraction=settings.test_fraction,
        min_query_chars=settings.min_query_chars,
        max_query_chars=settings.max_query_chars,
    )
    print(bench.summary(), flush=True)
    run = compare_rankers(
        bench,
        settings,
        base_model=params.pretrain.base_model,
        selected=encoder_folder(args.selected) if args.selected else None,
        work_dir=Path(args.work) / args.name,
    )
    table = run.table("test")
    print(markdown_table(table), flush=True)
    verdicts = run.verdicts()
    for line in verdicts:
        print(line, flush=True)
    emit(
        {
            "benchmark": bench.summary(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "settings": settings.model_dump(mode="json", exclude={"resources"}),
            "per_seed": run.per_seed().to_dict("records"),
            "test_summary": table.to_dict("records"),
            "valid_summary": run.table("valid").to_dict("records"),
            "hybrid_weights": {k: {str(s): w for s, w in v.items()} for k, v in run.weights.items()},
            "categories": run.categories().to_dict("records"),
            "decision": run.decision(),
            "verdicts": [str(v) for v in verdicts],
            "facts": run.facts,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
