"""A bounded soak of the KServe predictor: valid requests and hostile ones, no 5xx, bounded logs and memory.

Starts `plmrec serve` on a bundle (`--bundle`, or one built here as bench/serve_latency.py does) and
sends `--requests` requests drawn from a fixed mix of valid kinds (v1 customer, basket and query, v2
customer, an unknown customer's popular list) and client mistakes (wrong types, unknown fields, a v2
datatype or shape that does not match its data, malformed JSON, a GET on the predict URL) and hostile
bodies and routes (duplicate keys, lone surrogates, nesting 100,000 deep without a JSON content type,
bytes that are not UTF-8, NaN, KServe's binary tensor header with a malformed value, v2 fields the README
does not allow, the model-repository unload route, explain and versioned routes) from `--concurrency`
keep-alive clients. Then `--slow` slow-loris connections (headers a byte a second) and as many idle ones,
and `--disconnects` clients that leave mid-body. Reports, per kind, the statuses seen and p50/p99
latency; the 5xx count (the target: 0); the server log's tracebacks, ERROR and WARNING lines; how long the
server took to close the slow clients; and its resident memory after a warm-up and at the end. One JSON
object.

  python bench/serve_soak.py --requests 20000 --concurrency 8 --out bench/results/serve_soak_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402
from _report import emit  # noqa: E402
from serve_latency import given_or_built, percentile  # noqa: E402

V1, V2 = "/v1/models/plmrec:predict", "/v2/models/plmrec/infer"


def request_mix(customers: list[int], codes: list[str]) -> dict:
    """Each kind: (method, path, json body or raw bytes, the status it must get[, headers])."""
    c, code = customers[0], codes[0]

    def v2(name, datatype, data, *, shape=None, parameters=None, **extra):
        inp = {"name": name, "shape": shape or [len(data)], "datatype": datatype, "data": data}
        body = {"inputs": [inp], **extra}
        return {**body, **({"parameters": parameters} if parameters else {})}

    query = {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}
    return {
        "v1 customer": lambda r: ("POST", V1, {"instances": [{"customer_id": r.choice(customers), "k": 10}]}, 200),
        "v1 basket": lambda r: ("POST", V1, {"instances": [{"basket": r.sample(codes, 5), "k": 10}]}, 200),
        "v1 query": lambda r: ("POST", V1, {"instances": [{"query": f"red heart lantern {r.random()}"}]}, 200),
        "v2 customer": lambda r: (
            "POST",
            V2,
            v2("customer_id", "INT64", [r.choice(customers)], parameters={"k": 5}),
            200,
        ),
        "unknown customer: popular list": lambda r: ("POST", V1, {"instances": [{"customer_id": 1}]}, 200),
        "bad: id as a string": lambda r: ("POST", V1, {"instances": [{"customer_id": str(c)}]}, 400),
        "bad: k as a string": lambda r: ("POST", V1, {"instances": [{"query": "lamp", "k": "5"}]}, 400),
        "bad: unknown field": lambda r: ("POST", V1, {"instances": [{"customer_id": c}], "extra": 1}, 400),
        "bad: id beyond 64 bits": lambda r: (
            "POST",
            V1,
            {"instances": [{"customer_id": 2**70, "basket": [code]}]},
            400,
        ),
        "bad: v2 datatype": lambda r: ("POST", V2, v2("query", "WAT", ["lamp"]), 400),
        "bad: v2 shape": lambda r: ("POST", V2, v2("query", "BYTES", ["lamp", "cake"], shape=[3]), 400),
        "bad: malformed JSON": lambda r: ("POST", V1, b'{"instances": [{"customer_id": 1', 400),
        "bad: GET on predict": lambda r: ("GET", V1, None, 405),
        "hostile: duplicate keys": lambda r: ("POST", V1, b'{"instances": [{"query": "a", "query": "b"}]}', 400),
        "hostile: lone surrogate": lambda r: ("POST", V1, b'{"instances": [{"query": "\\ud800"}]}', 400),
        "hostile: deep nesting, text/plain": lambda r: (
            "POST",
            V1,
            b"[" * 100_000,
            400,
            {"content-type": "text/plain"},
        ),
        "hostile: not UTF-8": lambda r: ("POST", V2, b'{"inputs": "\xff\xfe"}', 400),
        "hostile: NaN": lambda r: ("POST", V1, b'{"instances": [{"query": "a", "k": NaN}]}', 400),
        "hostile: binary tensor header": lambda r: (
            "POST",
            V2,
            b"{}",
            415,
            {"inference-header-content-length": "-1"},
        ),
        "hostile: v2 outputs": lambda r: ("POST", V2, {"inputs": [query], "outputs": [{"name": "x"}]}, 400),
        "hostile: v2 lower-case datatype": lambda r: ("POST", V2, v2("query", "bytes", ["lamp"]), 400),
        "hostile: v2 nested data": lambda r: ("POST", V2, v2("query", "BYTES", [[["lamp"]]], shape=[1]), 400),
        "hostile: unload the model": lambda r: ("POST", "/v2/repository/models/plmrec/unload", {}, 404),
        "hostile: explain": lambda r: ("POST", "/v1/models/plmrec:explain", {"instances": []}, 404),
        "hostile: versioned infer": lambda r: ("POST", "/v2/models/plmrec/versions/1/infer", {}, 404),
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(url: str, mix: dict, *, n: int, concurrency: int, seed: int) -> dict:
    """Send n requests, kinds drawn uniformly, from `concurrency` keep-alive clients."""
    kinds = list(mix)
    plan = [random.Random(seed + i).choice(kinds) for i in range(n)]
    lock = threading.Lock()
    seen = collections.defaultdict(collections.Counter)
    latency = collections.defaultdict(list)
    wrong = collections.Counter()

    def worker(part: list[tuple[int, str]]):
        session = requests.Session()
        for i, kind in part:
            method, path, body, expected, *extra = mix[kind](random.Random(seed * 7919 + i))
            headers = {"content-type": "application/json", **(extra[0] if extra else {})}
            start = time.perf_counter()
            if isinstance(body, bytes):
                r = session.request(method, url + path, data=body, headers=headers, timeout=60)
            else:
                r = session.request(method, url + path, json=body, headers=headers, timeout=60)
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                seen[kind][r.status_code] += 1
                latency[kind].append(elapsed)
                if r.status_code != expected:
                    wrong[kind] += 1

    parts = [list(enumerate(plan))[w::concurrency] for w in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"seconds": wall, "requests": n, "seen": seen, "latency": latency, "wrong": wrong, "kinds": kinds}


def slow_clients(port: int, *, slow: int, idle: int, every_s: float = 1.0, give_up_s: float = 90.0) -> dict:
    """`slow` connections sending their headers a byte every `every_s`, `idle` ones sending nothing: how
    many the server closed, and after how long (its header timeout should do it)."""
    import select
    import socket

    head = b"POST /v1/models/plmrec:predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(slow + idle)]
    for sock in socks:
        sock.setblocking(False)
    opened, sent = time.monotonic(), dict.fromkeys(range(slow), 0)
    closed: dict[int, float] = {}
    while len(closed) < len(socks) and time.monotonic() - opened < give_up_s:
        for i in list(sent):
            if i in closed:
                continue
            try:
                socks[i].send(head[sent[i] : sent[i] + 1])
                sent[i] += 1
            except OSError:
                closed[i] = time.monotonic() - opened
        readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], every_s)
        for sock in readable:
            i = socks.index(sock)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data or b"408" in data:
                closed[i] = time.monotonic() - opened
    for sock in socks:
        sock.close()
    times = sorted(closed.values())
    return {
        "slow_headers": slow,
        "idle": idle,
        "closed_by_server": len(closed),
        "seconds_to_close": {"p50": round(percentile(times, 50), 1), "max": round(max(times), 1)} if times else {},
    }


def disconnects(port: int, n: int) -> int:
    """Clients that declare a body, send part of it and leave."""
    import socket

    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b'POST /v1/models/plmrec:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"inst')
            time.sleep(0.05)
    return n


def merged(parts: list[dict]) -> dict:
    """One summary of several soak parts: statuses, unexpected statuses and p50/p99 per kind."""
    kinds = parts[0]["kinds"]
    seen = collections.defaultdict(collections.Counter)
    latency = collections.defaultdict(list)
    wrong = collections.Counter()
    for part in parts:
        for kind in kinds:
            seen[kind].update(part["seen"][kind])
            latency[kind].extend(part["latency"][kind])
            wrong[kind] += part["wrong"][kind]
    wall, n = sum(p["seconds"] for p in parts), sum(p["requests"] for p in parts)
    per_kind = {
        kind: {
            "requests": len(latency[kind]),
            "statuses": {str(s): k for s, k in sorted(seen[kind].items())},
            "unexpected_status": wrong[kind],
            "p50_ms": round(percentile(latency[kind], 50), 2),
            "p99_ms": round(percentile(latency[kind], 99), 2),
        }
        for kind in kinds
        if latency[kind]
    }
    server_errors = sum(k for kind in seen.values() for s, k in kind.items() if s >= 500)
    return {
        "seconds": round(wall, 1),
        "requests_per_s": round(n / wall, 1),
        "server_errors": server_errors,
        "per_kind": per_kind,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", type=int, default=4, help="resident memory is read after each part")
    ap.add_argument("--slow", type=int, default=300, help="slow-loris connections (and as many idle ones)")
    ap.add_argument("--disconnects", type=int, default=200, help="clients that leave mid-body")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from helpers import plmrec_server
    from plmrec.serving.bundle import Recommender

    args.bundle, source, tmp = given_or_built(args.bundle, args.seed, prefix="plmrec-soak-")
    rec = Recommender(args.bundle, load_encoder=False)
    mix = request_mix(list(rec.customer_row), list(rec.codes))
    with plmrec_server(["--bundle", str(args.bundle)], tmp) as server:
        soak(server.url, mix, n=min(500, args.requests), concurrency=args.concurrency, seed=args.seed + 7)  # warm-up
        rss_start = rss_mib(server.proc.pid)
        parts, rss_path = [], []
        for part in range(args.parts):  # resident memory after each part: growth that levels off is bounded
            n = args.requests // args.parts + (part < args.requests % args.parts)
            parts.append(soak(server.url, mix, n=n, concurrency=args.concurrency, seed=args.seed + 1000 * part))
            rss_path.append(round(rss_mib(server.proc.pid), 1))
            print(f"  {sum(p['requests'] for p in parts):,} requests, RSS {rss_path[-1]} MiB", file=sys.stderr)
        result = merged(parts)
        print(f"  {args.slow} slow-loris and {args.slow} idle connections ...", file=sys.stderr)
        cut_off = slow_clients(server.port, slow=args.slow, idle=args.slow)
        left = disconnects(server.port, args.disconnects)
        time.sleep(1.0)
        rss_end = rss_mib(server.proc.pid)
        ready = requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        answers = requests.post(f"{server.url}{V1}", json={"instances": [{"query": "lamp"}]}, timeout=30).status_code
        counted = {
            line.split("{", 1)[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in requests.get(f"{server.url}/metrics", timeout=5).text.splitlines()
            if line.startswith("plmrec_client_errors_total{")
        }
        log = server.log_path.read_text()
    emit(
        {
            "benchmark": "serve_soak",
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "bundle": str(args.bundle),
            "data": source,
            "model": rec.meta["model"],
            "requests": args.requests,
            "concurrency": args.concurrency,
            **result,
            "rss_mib": {
                "after_warm_up": round(rss_start, 1),
                "after_each_part": rss_path,
                "end": round(rss_end, 1),
                "growth": round(rss_end - rss_start, 1),
            },
            "ready_after": ready,
            "answers_after": answers,
            "slow_clients": cut_off,
            "disconnects": left,
            "client_errors_counted": counted,
            "server_log": {
                "lines": len(log.splitlines()),
                "tracebacks": log.count("Traceback"),
                "error_lines": sum(" ERROR " in line for line in log.splitlines()),
                "warning_lines": sum("WARNING" in line for line in log.splitlines()),
                "disconnect_lines": sum("client_disconnect" in line for line in log.splitlines()),
                "access_lines": sum("uvicorn.access" in line for line in log.splitlines()),
            },
            "target": {
                "no_5xx": result["server_errors"] == 0,
                "every_status_as_expected": all(k["unexpected_status"] == 0 for k in result["per_kind"].values()),
                "no_traceback": "Traceback" not in log,
                "slow_clients_closed": cut_off["closed_by_server"] == 2 * args.slow,
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
