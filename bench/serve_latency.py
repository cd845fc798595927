"""Latency and throughput of the KServe predictor under a bounded load on 127.0.0.1.

Starts `plmrec serve` on a bundle (`--bundle`, or one built here from the real Online Retail data,
synthetic without it, with the offline MiniLM and the learning-to-rank recommender), then sends
`--requests` requests of each kind (customer id, anonymous basket, free-text query in each search
mode: dense, lexical, hybrid) over v1 at
concurrency 1 and 8 from keep-alive clients, and reports p50/p95/p99 latency and requests/s.

The floor is measured in the same run: the same customer requests against a trivial KServe model
(bench/_trivial_model.py: what KServe itself costs per request here), bare and behind plmrec's HTTP
front (routes, the strict body parser, timeouts), and each plmrec path's ratio to the bare floor at
concurrency 8 (`--no-floor` skips it).

The naive path is measured in the same run, in-process beside the served one: customer scores by a
Python scan over the items (no vectorised matrix product), and a query by re-encoding the whole
catalogue for every request instead of using the precomputed item embeddings. Prints one JSON object.

  python bench/serve_latency.py --out bench/results/serve_cpu.json
  python bench/serve_latency.py --bundle models/bundle      # a bundle from `dvc repro` / the pipeline
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import requests  # noqa: E402
from _report import emit  # noqa: E402

from plmrec.config import Params  # noqa: E402


def build_bundle_here(out: Path, seed: int) -> tuple[Path, str]:
    from train_speed import load_prepared

    from helpers import comparison_bundles

    params = Params()
    prepared, source = load_prepared(params)
    rp = params.recommenders.model_copy(update={"seeds": [seed]})
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON result
        return comparison_bundles(prepared, rp, out, models=("ltr",))["ltr"], source


def given_or_built(bundle: Path | None, seed: int, *, prefix: str) -> tuple[Path, str, Path]:
    """(bundle, data source, scratch dir): the bundle given, or one built here from the real data."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    if bundle is not None:
        return bundle, "given", tmp
    print("building a bundle (embeddings, one comparison seed, refit) ...", file=sys.stderr, flush=True)
    built, source = build_bundle_here(tmp, seed)
    return built, source, tmp


def kserve_floor(bodies: list[dict], concurrency: str, tmp: Path) -> dict:
    """The same customer request bodies against a trivial KServe model (bench/_trivial_model.py): bare
    KServe, and behind plmrec's HTTP front (`--gate`), so that each plmrec path has a floor beside it."""
    from helpers import ChildServer, free_port

    out = {}
    for name, extra in (("kserve", []), ("kserve_with_plmrec_front", ["--gate"])):
        port = free_port()
        cmd = [sys.executable, str(ROOT / "bench" / "_trivial_model.py"), "--port", str(port), *extra]
        with ChildServer(name, cmd, port, health_path="/v2/health/live", cwd=tmp, timeout=60) as server:
            url = f"{server.url}/v1/models/plmrec:predict"
            load(url, bodies[:20], 2)
            for c in [int(x) for x in concurrency.split(",")]:
                out[f"{name}_c{c}"] = load(url, bodies, c)
                print(f"{name} c={c}: {out[f'{name}_c{c}']}", file=sys.stderr, flush=True)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body once from `concurrency` keep-alive clients; latency per request in ms."""
    latencies: list[float] = []
    errors = []
    lock = threading.Lock()
    queue = list(bodies)

    def worker():
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            start = time.perf_counter()
            r = session.post(url, json=body, timeout=60)
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def naive_customer(rec, customer: int, k: int) -> list[str]:
    """Score every item by a Python loop over the ALS factors, then sort: no vectorised scoring."""
    u = rec.user_factors[rec.customer_row[customer]].tolist()
    scores = [(sum(a * b for a, b in zip(u, v)), i) for i, v in enumerate(rec.item_factors.tolist())]
    scores.sort(reverse=True)
    return [rec.codes[i] for _, i in scores[:k]]


def naive_query(rec, text: str, k: int) -> list[str]:
    """Encode the whole catalogue for every query (no precomputed item embeddings)."""
    items = rec.encoder.encode(rec.descriptions.tolist(), batch_size=128, normalize_embeddings=True)
    q = rec.encoder.encode([text], normalize_embeddings=True)[0]
    return rec.codes[np.argsort(-(items @ q))[:k]].tolist()


def timed_ms(fn, args_list) -> float:
    times = []
    for args in args_list:
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


QUERIES = [
    "red heart lantern for a wedding",
    "vintage christmas decoration",
    "cake stand for a party",
    "lunch box for children",
    "glass candle holder",
    "retro alarm clock",
    "paper napkins",
    "gift wrap",
    "hot water bottle",
    "garden bunting",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=400, help="per request kind and concurrency")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--naive-queries", type=int, default=3, help="catalogue re-encodings to time (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="skip the trivial-KServe floor")
    args = ap.parse_args()

    from helpers import plmrec_server
    from plmrec.serving.bundle import SEARCH_MODES, Recommender

    args.bundle, source, tmp = given_or_built(args.bundle, args.seed, prefix="plmrec-bench-")
    rec = Recommender(args.bundle)
    rng = random.Random(args.seed)
    customers = list(rec.customer_row)
    bodies = {
        "customer": [
            {"instances": [{"customer_id": rng.choice(customers), "k": args.k}]} for _ in range(args.requests)
        ],
        "basket": [
            {"instances": [{"basket": rng.sample(list(rec.codes), 5), "k": args.k}]} for _ in range(args.requests)
        ],
        **{
            f"query_{mode}": [
                {"instances": [{"query": rng.choice(QUERIES) + f" {i}", "k": args.k, "search_mode": mode}]}
                for i in range(args.requests)
            ]
            for mode in SEARCH_MODES
        },
    }
    result = {
        "benchmark": "serve_latency",
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "bundle": str(args.bundle),
        "data": source,
        "model": rec.meta["model"],
        "items": rec.n_items,
        "customers": len(customers),
        "k": args.k,
        "protocol": "v1",
        "load": {},
    }
    with plmrec_server(["--bundle", str(args.bundle)], tmp) as server:
        url = f"{server.url}/v1/models/plmrec:predict"
        for kind, kind_bodies in bodies.items():
            load(url, kind_bodies[:20], 2)  # warm-up
            for c in [int(x) for x in args.concurrency.split(",")]:
                result["load"][f"{kind}_c{c}"] = load(url, kind_bodies, c)
                print(f"{kind} c={c}: {result['load'][f'{kind}_c{c}']}", file=sys.stderr, flush=True)

    with plmrec_server(["--bundle", str(args.bundle), "-S", "serving.precompute_lists=false"], tmp) as server:
        url = f"{server.url}/v1/models/plmrec:predict"  # the same bundle, every list ranked per request
        load(url, bodies["customer"][:20], 2)
        for c in [int(x) for x in args.concurrency.split(",")]:
            result["load"][f"customer_ranked_per_request_c{c}"] = load(url, bodies["customer"], c)
            print(
                f"customer ranked per request c={c}: {result['load'][f'customer_ranked_per_request_c{c}']}",
                file=sys.stderr,
                flush=True,
            )

    if args.floor:
        result["floor"] = kserve_floor(bodies["customer"], args.concurrency, tmp)
        floor_c8 = result["floor"].get("kserve_c8")
        if floor_c8:
            result["ratio_to_floor_c8"] = {
                kind: {
                    "p99": round(result["load"][f"{kind}_c8"]["p99_ms"] / floor_c8["p99_ms"], 1),
                    "requests_per_s": round(
                        floor_c8["requests_per_s"] / result["load"][f"{kind}_c8"]["requests_per_s"], 1
                    ),
                }
                for kind in [*bodies, "customer_ranked_per_request"]
                if f"{kind}_c8" in result["load"]
            }
    sample = [(c, args.k) for c in customers[:50]]
    served_customer = timed_ms(rec.recommend_customer, sample)  # ranked per request
    started = time.perf_counter()
    rec.precompute(100, max_customers=10**7)
    precompute_s = time.perf_counter() - started
    read_customer = timed_ms(rec.recommend_customer, sample)
    scan_customer = timed_ms(lambda c, k: naive_customer(rec, c, k), sample)
    served_query = timed_ms(lambda q, k: rec.search([q], k, "dense"), [(q, args.k) for q in QUERIES])
    per_mode = {
        mode: round(timed_ms(lambda q, k, m=mode: rec.search([q], k, m), [(q, args.k) for q in QUERIES]), 3)
        for mode in SEARCH_MODES
    }
    naive = timed_ms(lambda q, k: naive_query(rec, q, k), [(q, args.k) for q in QUERIES[: args.naive_queries]])
    result["in_process_ms"] = {
        "customer_served_path": round(served_customer, 3),
        "customer_read_from_lists_ranked_at_load": round(read_customer, 4),
        "lists_ranked_at_load_s": round(precompute_s, 2),  # every customer, three lists, 100 deep
        "customer_python_scan": round(scan_customer, 3),
        "customer_speedup": round(scan_customer / served_customer, 1),
        "query_served_path": round(served_query, 3),
        "query_reencode_catalogue": round(naive, 1),
        "query_speedup": round(naive / served_query, 1),
        **{f"query_{mode}_served_path": ms for mode, ms in per_mode.items()},
    }
    result["search_default_mode"] = rec.search_settings["default_mode"]
    c8 = result["load"].get("customer_c8")
    if c8:
        result["target"] = {"customer_c8_p99_ms": c8["p99_ms"], "under_50_ms": c8["p99_ms"] < 50}
    emit(result, args.out)


if __name__ == "__main__":
    main()
