"""Does the language model pay off on real data? The whole protocol, seed by seed, on an Online Retail file.

For each seed: pretrain -> finetune -> evaluate-retrieval (the valid window chooses the encoder; the
test window is scored once) -> compare-models with the chosen encoder (recommenders.seeds = [seed]),
the same stage functions the pipeline runs, with params.yaml and a profile laid over it. Then every
table is aggregated over the seeds (mean ± std) and written as JSON, one file per table, under --out;
the markdown tables go to stdout. Stages already done in --work are not run again (rerun to resume).
`--until evaluate-retrieval` stops each seed before compare-models (the encoder tables only), `--until
pretrain` after pretraining (the per-phase valid proxy only);
`--merge-with PREFIX` adds the seeds of earlier JSON files (PREFIX_<table>.json) to each table both have.

    python bench/real_data.py --data ../shared/data/online-retail/online_retail.parquet \\
        --profile params/real-data.yaml --seeds 0 1 2 --work /tmp/plmrec-real --out bench/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pandas as pd
from _report import mean_std

from plmrec.stages.evaluate_retrieval import SHOP_TEST

ROOT = Path(__file__).resolve().parents[1]
QUERY_KINDS = ("sentence", "mean", "recency")
RETRIEVAL_METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def _stage(work: Path, name: str, fn) -> dict:
    """Run `fn` once: its seconds are kept in <work>/<name>.done.json, and a later call skips it."""
    done = work / f"{name}.done.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    fn()
    record = {"stage": name, "seconds": round(time.perf_counter() - start, 1)}
    work.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record))
    return record


def run_seed(params, prepared: Path, work: Path, *, until: str = "compare-models") -> dict:
    from plmrec.stages.compare_models import compare_models
    from plmrec.stages.evaluate_retrieval import evaluate_retrieval
    from plmrec.stages.finetune import finetune
    from plmrec.stages.pretrain import pretrain

    timings = {}
    timings["pretrain"] = _stage(
        work, "pretrain", lambda: pretrain(params, prepared=prepared, pretrained=work / "pretrained")
    )
    if until == "pretrain":
        return {k: v["seconds"] for k, v in timings.items()}
    timings["finetune"] = _stage(
        work,
        "finetune",
        lambda: finetune(params, prepared=prepared, pretrained=work / "pretrained", finetuned=work / "finetuned"),
    )
    timings["evaluate-retrieval"] = _stage(
        work,
        "evaluate-retrieval",
        lambda: evaluate_retrieval(
            params,
            prepared=prepared,
            pretrained=work / "pretrained",
            finetuned=work / "finetuned",
            metrics=work / "retrieval.json",
            reports=work / "retrieval",
            encoder=work / "selected",
        ),
    )
    if until == "compare-models":
        timings["compare-models"] = _stage(
            work,
            "compare-models",
            lambda: compare_models(
                params,
                prepared=prepared,
                encoder=work / "selected",
                metrics=work / "compare.json",
                reports=work / "compare",
            ),
        )
    return {k: v["seconds"] for k, v in timings.items()}


def _cell(stat: dict, scale: float = 1.0, digits: int = 4) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _markdown(rows: list[dict], columns: list[str]) -> str:
    from plmrec.reports import markdown_table

    return markdown_table(pd.DataFrame(rows, columns=columns))


def clear_win(a: dict, b: dict) -> dict:
    """a - b, and whether it exceeds 2 standard deviations of the difference (sqrt(sa² + sb²))."""
    diff = a["mean"] - b["mean"]
    spread = math.sqrt(a["std"] ** 2 + b["std"] ** 2)
    return {"difference": diff, "two_std": 2 * spread, "beats_by_more_than_2_std": diff > 2 * spread}


def retrieval_table(seeds: dict[int, Path]) -> dict:
    """Test figures per (encoder, query kind) over seeds, and the valid-chosen encoder against the base
    model with its own valid-chosen query."""
    per_seed = {s: json.loads((w / "retrieval.json").read_text()) for s, w in seeds.items()}
    for found in per_seed.values():  # runs before the shop's test window was named "test"
        found["retrieval"].setdefault(SHOP_TEST, found["retrieval"].get("online_retail_test"))
    rows = {}
    for enc in ("base", "pretrained", "finetuned"):
        for kind in QUERY_KINDS:
            figures = [per_seed[s]["retrieval"][SHOP_TEST][enc][kind] for s in seeds]
            rows[f"{enc}/{kind}"] = {m: mean_std([f[m] for f in figures]) for m in RETRIEVAL_METRICS}
    chosen, base = [], []
    for s in seeds:
        found = per_seed[s]
        selection = found["selection"]
        chosen.append(found["retrieval"][SHOP_TEST][selection["chosen"]][selection["query"]])
        base_kind = selection["valid"]["base"]["query"]
        base.append(found["retrieval"][SHOP_TEST]["base"][base_kind])
    rows["selected (valid)"] = {m: mean_std([f[m] for f in chosen]) for m in RETRIEVAL_METRICS}
    rows["base (valid query)"] = {m: mean_std([f[m] for f in base]) for m in RETRIEVAL_METRICS}
    selections = {s: {k: per_seed[s]["selection"][k] for k in ("chosen", "query", "valid")} for s in seeds}
    return {"rows": rows, "selected_vs_base": selected_vs_base(rows), "selections": selections}


def selected_vs_base(rows: dict) -> dict:
    """The valid-chosen encoder against the base model, NDCG@10 and Recall@10."""
    return {m: clear_win(rows["selected (valid)"][m], rows["base (valid query)"][m]) for m in ("ndcg@10", "recall@10")}


def proxy_table(seeds: dict[int, Path]) -> dict:
    """The valid proxy (NDCG@10 of the mean/recency query) of the base model and after each phase."""
    reports = {s: json.loads((w / "pretrained" / "pretrain_report.json").read_text()) for s, w in seeds.items()}
    first = next(iter(reports.values()))
    labels = ["base"] + [p["label"] for p in first["phases"]]
    rows = {}
    for label in labels:
        values = []
        for report in reports.values():
            if label == "base":
                values.append(report["valid_proxy_base"]["ndcg@10"])
            else:
                values.append(next(p for p in report["phases"] if p["label"] == label)["valid_proxy"]["ndcg@10"])
        rows[label] = mean_std(values)
    head = {s: r["phases"][0].get("head_start") for s, r in reports.items()}
    return {"rows": rows, "head_start": head}


def runs_table(seeds: dict[int, Path], name: str, *, by: str, metrics: list[str]) -> dict:
    frames = [pd.read_csv(w / "compare" / f"{name}_runs.csv") for w in seeds.values()]
    table = pd.concat(frames, ignore_index=True)
    rows = {}
    for group, part in table.groupby(by, sort=False):
        rows[group] = {m.replace("test_", ""): mean_std(part[m].astype(float).tolist()) for m in metrics}
        if "text_features" in part:
            rows[group]["features"] = mean_std(part["features"].astype(float).tolist())
            rows[group]["text_features"] = mean_std(part["text_features"].astype(float).tolist())
        if "valid_accuracy" in part:
            rows[group]["valid_accuracy"] = mean_std(part["valid_accuracy"].astype(float).tolist())
    return {"rows": rows}


def _merge_stats(old, new):
    """Tables of the same shape: every {mean, std, values} cell gets both runs' values."""
    if isinstance(old, dict) and "values" in old and isinstance(new, dict) and "values" in new:
        return mean_std([*old["values"], *new["values"]])
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _merge_stats(old[k], new[k]) for k in old if k in new}
    return new


def merge_tables(earlier: dict, table: dict, name: str) -> dict:
    """`table` (this run's seeds) joined to `earlier` (a JSON this bench wrote for other seeds)."""
    if set(earlier["seeds"]) & set(table["seeds"]):
        raise SystemExit(f"--merge-with: seeds {earlier['seeds']} and {table['seeds']} overlap")
    merged = {**table, "seeds": [*earlier["seeds"], *table["seeds"]], "merged_from": earlier.get("source")}
    if name == "timings":
        merged["per_seed_seconds"] = {**earlier["per_seed_seconds"], **table["per_seed_seconds"]}
        return merged
    merged["rows"] = _merge_stats(earlier["rows"], table["rows"])
    if name == "retrieval":
        merged["selections"] = {**earlier["selections"], **table["selections"]}
        merged["selected_vs_base"] = selected_vs_base(merged["rows"])
    if name == "pretrain_proxy":
        merged["head_start"] = {**earlier["head_start"], **table["head_start"]}
    return merged


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an Online Retail file (.xlsx, .csv(.gz), .parquet)")
    parser.add_argument("--profile", default=str(ROOT / "params" / "real-data.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/plmrec-real")
    parser.add_argument("--out", default=None, help="write one JSON per table here (e.g. bench/results)")
    parser.add_argument("--name", default="real_online_retail", help="prefix of the JSON files")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="key=value, as plmrec -S")
    parser.add_argument(
        "--until", choices=["compare-models", "evaluate-retrieval", "pretrain"], default="compare-models"
    )
    parser.add_argument("--merge-with", default=None, help="prefix of earlier JSON files to add (other seeds)")
    args = parser.parse_args()

    from plmrec.config import load_params
    from plmrec.stages.ingest import ingest
    from plmrec.stages.prepare import prepare

    work = Path(args.work)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    base_overrides = ["data.source=file", f"data.path={args.data}", *args.overrides]
    files = [ROOT / "params.yaml", args.profile]
    params = load_params(files, base_overrides)
    raw, prepared = work / "data" / "raw.parquet", work / "data" / "prepared.parquet"
    data_seconds = _stage(work / "data", "ingest", lambda: ingest(params, raw=raw))["seconds"]
    data_seconds += _stage(work / "data", "prepare", lambda: prepare(params, raw=raw, prepared=prepared))["seconds"]
    timings, dirs = {}, {}
    for seed in args.seeds:
        seeded = load_params(files, [*base_overrides, f"seed={seed}", f"recommenders.seeds=[{seed}]"])
        dirs[seed] = work / f"seed-{seed}"
        print(f"[bench] seed {seed} -> {dirs[seed]}", flush=True)
        timings[seed] = run_seed(seeded, prepared, dirs[seed], until=args.until)

    from plmrec.ranking import RANKING_METRICS
    from plmrec.recsys.experiment import CLASSIFIER_METRICS

    ks = sorted(set(params.recommenders.ks))
    tables = {
        "pretrain_proxy": proxy_table(dirs),
        "timings": {"data_seconds": data_seconds, "per_seed_seconds": timings},
    }
    if args.until != "pretrain":
        tables["retrieval"] = retrieval_table(dirs)
    if args.until == "compare-models":
        tables["classifier"] = runs_table(dirs, "classifier", by="variant", metrics=CLASSIFIER_METRICS)
        tables["recommenders"] = runs_table(
            dirs, "recommender", by="model", metrics=[f"test_{m}@{k}" for k in ks for m in RANKING_METRICS]
        )
    common = {"data": args.data, "profile": str(args.profile), "overrides": args.overrides, "seeds": args.seeds}
    tables = {name: {**common, **table} for name, table in tables.items()}
    if args.merge_with:
        for name in list(tables):
            earlier = Path(f"{args.merge_with}_{name}.json")
            if earlier.exists():
                earlier_table = {**json.loads(earlier.read_text()), "source": str(earlier)}
                tables[name] = merge_tables(earlier_table, tables[name], name)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            Path(args.out, f"{args.name}_{name}.json").write_text(json.dumps(table, indent=2))

    if "retrieval" in tables:
        retrieval = tables["retrieval"]["rows"]
        print("\n## Next-item retrieval, test (mean ± std over seeds)\n")
        print(
            _markdown(
                [{"encoder / query": k, **{m: _cell(v[m]) for m in RETRIEVAL_METRICS}} for k, v in retrieval.items()],
                ["encoder / query", *RETRIEVAL_METRICS],
            )
        )
        print("\nselected vs base:", json.dumps(tables["retrieval"]["selected_vs_base"]))
        print("selections:", json.dumps(tables["retrieval"]["selections"]))
    print("\n## Valid proxy per pretraining phase (NDCG@10)\n")
    proxy = tables["pretrain_proxy"]["rows"]
    print(_markdown([{"phase": k, "valid ndcg@10": _cell(v)} for k, v in proxy.items()], ["phase", "valid ndcg@10"]))
    for section, metrics in (("classifier", CLASSIFIER_METRICS), ("recommenders", None)):
        if section not in tables:
            continue
        rows = tables[section]["rows"]
        names = [m.replace("test_", "") for m in metrics] if metrics else list(next(iter(rows.values())))
        print(f"\n## {section} (test, %, mean ± std over seeds)\n")
        print(
            _markdown(
                [{"variant": k, **{m: _cell(v[m], 100, 1) for m in names if m in v}} for k, v in rows.items()],
                ["variant", *names],
            )
        )
    print("\ntimings:", json.dumps(tables["timings"]))


if __name__ == "__main__":
    main()
