"""Training speed of the feature-based models on the real Online Retail data (synthetic without it).

XGBoost `hist` on the quantity label with the vanilla feature groups (seconds per 100 boosting
rounds, fixed rounds, no early stopping), and implicit ALS (seconds per iteration on the
customer x item matrix of the training split). `--xgb-devices cpu,cuda` adds XGBoost on a GPU.
Each timing is the median of `--repeat` runs after one warm-up. Prints one JSON object.

  python bench/train_speed.py
  python bench/train_speed.py --xgb-devices cpu,cuda      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))


from _report import emit  # noqa: E402

from plmrec.config import Params, XGBoostParams  # noqa: E402
from plmrec.data.prepare import prepare_transactions  # noqa: E402
from plmrec.features import TabularEncoder  # noqa: E402
from plmrec.recsys.classify import classifier  # noqa: E402
from plmrec.recsys.recommend import fit_als, make_window  # noqa: E402


def load_prepared(params: Params):
    path = SHARED / "online-retail" / "online_retail.parquet"
    if path.exists():
        from plmrec.data.online_retail import load_transactions

        raw, source = load_transactions(path), "online-retail (real)"
    else:
        from plmrec.data.synthetic import generate_transactions

        raw, source = generate_transactions(params.data.synthetic), "synthetic"
    prepared, _ = prepare_transactions(raw, params.clean, params.split)
    return prepared, source


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--xgb-devices", default="cpu")
    ap.add_argument("--als-factors", default="32,64,128")
    ap.add_argument("--als-iterations", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    params = Params()
    prepared, source = load_prepared(params)
    train = prepared[prepared["split"] == "train"]
    enc = TabularEncoder.fit(train, params.recommenders.classifier.base_groups)
    x, y = enc.transform(train), train["label"]
    results = {"xgboost": [], "als": []}
    for device in args.xgb_devices.split(","):
        xp = XGBoostParams(n_estimators=args.rounds, device=device, early_stopping_rounds=1)

        def fit_xgb(xp=xp):
            model = classifier(xp, params.clean.n_quantity_labels, 0)
            model.set_params(early_stopping_rounds=None)
            model.fit(x, y, verbose=False)

        sec = timed(fit_xgb, args.repeat)
        results["xgboost"].append(
            {
                "device": device,
                "rows": len(x),
                "features": x.shape[1],
                "rounds": args.rounds,
                "seconds": round(sec, 3),
                "seconds_per_100_rounds": round(sec * 100 / args.rounds, 3),
            }
        )
        print(json.dumps(results["xgboost"][-1]), file=sys.stderr, flush=True)
    codes = sorted(prepared["StockCode"].astype(str).unique())
    window = make_window(prepared, {c: i for i, c in enumerate(codes)}, "valid", exclude_history=False)
    for factors in (int(f) for f in args.als_factors.split(",")):
        sec = timed(
            lambda factors=factors: fit_als(
                window.counts, factors, 0.05, alpha=10.0, iterations=args.als_iterations, seed=0
            ),
            args.repeat,
        )
        results["als"].append(
            {
                "factors": factors,
                "matrix": list(window.counts.shape),
                "nonzeros": window.counts.nnz,
                "iterations": args.als_iterations,
                "seconds": round(sec, 3),
                "seconds_per_iteration": round(sec / args.als_iterations, 4),
            }
        )
        print(json.dumps(results["als"][-1]), file=sys.stderr, flush=True)
    import torch
    import xgboost

    out = {
        "bench": "train_speed",
        "data": source,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "xgboost_version": xgboost.__version__,
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
