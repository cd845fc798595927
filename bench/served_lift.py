"""The served recommender's lift over its no-text twin on every evaluation view (issue 37): compare-models'
recommender study (plmrec.recsys.experiment.run_recommenders, the same code, seeds and windows) on a
pipeline run's artifacts, summarised by plmrec.recsys.comparison (views table, choices on valid, lifts).
The classifier ablation is left out (it does not touch these rows). Prints one JSON object.

  python bench/served_lift.py --prepared <run>/prepare/prepared --encoder <run>/evaluate-retrieval/encoder \\
      --user-model <run>/train-user-model/user_model --out bench/results/served_lift_online_retail.json

Every choice is made on valid; test is scored once per seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402


def main() -> None:
    import pandas as pd

    from plmrec.config import load_params
    from plmrec.recsys.comparison import Comparison
    from plmrec.recsys.experiment import run_recommenders
    from plmrec.stages.common import read_checked
    from plmrec.stages.compare_models import _user_models, encoder_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--encoder", required=True, help="evaluate-retrieval's encoder folder (item_embeddings.parquet)")
    ap.add_argument("--user-model", help="train-user-model's folder (adds user_model and ltr+user_model)")
    ap.add_argument("--params", action="append", default=[], help="params files, laid over one another")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--out")
    args = ap.parse_args()
    params = load_params(args.params or None, args.overrides)
    table, _ = read_checked(args.prepared, "prepared")
    items = pd.read_parquet(Path(args.encoder) / "item_embeddings.parquet")
    user_models = _user_models(args.user_model, table, items, params=params) if args.user_model else None
    start = time.perf_counter()
    rows, detail = run_recommenders(
        table, items, params.recommenders, user_models=user_models, progress=lambda m: print(m, file=sys.stderr)
    )
    comparison = Comparison(params, pd.DataFrame(), {"skipped": "not part of this benchmark"}, rows, detail)
    verdicts = comparison.verdicts()
    summary = comparison.summary(verdicts)
    emit(
        {
            "benchmark": "served_lift",
            "prepared": str(args.prepared),
            "encoder": encoder_name(args.encoder),
            "user_model": str(args.user_model or ""),
            "overrides": args.overrides,
            "seeds": params.recommenders.seeds,
            "served_model": summary["served_model"],
            "twin": summary["twin"],
            "view_choices": summary["view_choices"],
            "list_rows": summary["list_rows"],  # the row that ranks each served list (its view's best on valid)
            "view_customers": summary["view_customers"],
            "lifts": summary["lifts"],
            "views": summary["views"],
            "all_purchases": summary["recommenders"],
            "importance_by_source": {
                k: v for k, v in detail["chosen"][params.recommenders.seeds[-1]].items() if k.endswith("_by_source")
            },
            "verdicts": [str(v) for v in verdicts],
            "view_table": comparison.view_table().to_dict(orient="records"),
            "seconds": round(time.perf_counter() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
