"""Scoring top-K lists: `ranking_metrics` (every query at once) against the per-query definitions it
replaced, side by side in one run, on the shape the pipeline scores (one row of K ids per user).

The default shape is Scientific's leave-one-out test: 8,442 users, one relevant item each, 4,385 items,
lists of 50, K in 10 and 50, the four metrics compare-models reports. The ranked ids and targets are
drawn at random (the work does not depend on which items hit). Both give the same floats (checked
here, and bit for bit in tests/test_ranking.py). Prints one JSON object.

  python bench/ranking_speed.py
  python bench/ranking_speed.py --users 2278 --items 3665 --relevant 38   # Online Retail's test window
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402

from plmrec.ranking import METRICS, ranking_metrics  # noqa: E402


def per_query(ranked: np.ndarray, relevant: list[set], ks: list[int]) -> dict[str, float]:
    """The pre-vectorised ranking_metrics: each metric's function on each query's list."""
    lists = ranked.tolist()
    out = {}
    for name, fn in METRICS.items():
        for k in ks:
            out[f"{name}@{k}"] = float(np.mean([fn(lists[i], relevant[i], k) for i in range(len(lists))]))
    return out


def timed(fn, repeat: int) -> tuple[float, dict]:
    seconds, result = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8442)
    ap.add_argument("--items", type=int, default=4385)
    ap.add_argument("--relevant", type=int, default=1, help="relevant items per user (at most)")
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    ranked = np.stack([rng.choice(args.items, size=args.length, replace=False) for _ in range(args.users)])
    relevant = [set(rng.integers(0, args.items, size=rng.integers(1, args.relevant + 1)).tolist()) for _ in ranked]
    for i in range(0, args.users, 7):  # some targets ranked, so that hits exist at every K
        relevant[i].add(int(ranked[i, rng.integers(0, args.length)]))
    ks = [10, args.length]
    names = tuple(METRICS)
    old_s, old = timed(lambda: per_query(ranked, relevant, ks), args.repeat)
    new_s, new = timed(lambda: ranking_metrics(ranked, relevant, ks, names=names), args.repeat)
    same = all(new[key] == value or (math.isnan(value) and math.isnan(new[key])) for key, value in old.items())
    emit(
        {
            "benchmark": "ranking_metrics",
            "shape": {"users": args.users, "items": args.items, "list_length": args.length, "ks": ks},
            "per_query_seconds": round(old_s, 4),
            "vectorised_seconds": round(new_s, 4),
            "speedup": round(old_s / new_s, 1),
            "same_floats": same,
            "ndcg@10": new["ndcg@10"],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
