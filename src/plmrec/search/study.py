"""Every ranker of a search benchmark scored on valid and once on test, in one run.

Rankers: `bm25` (lexical), `base` (pretrain.base_model untouched), `selected` (the pipeline's chosen
encoder, when given), `blair` (fine-tuned on the training reviews, one per seed) and the hybrids
`hybrid` (BM25 fused with `blair`) and `hybrid-base` (BM25 fused with `base`), whose dense share is
chosen on valid. The served search mode (lexical, dense or hybrid) is the kind of the best ranker on
valid; the test figures are reported beside it and never choose anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plmrec.config import SearchParams
from plmrec.recsys.recommend import top_k
from plmrec.search import SEARCH_MODES
from plmrec.search.benchmark import SPLITS, SearchBenchmark
from plmrec.search.fusion import fused_ranks
from plmrec.search.lexical import Bm25Index
from plmrec.search.metrics import search_metrics, target_ranks

KINDS = {
    "bm25": "lexical",
    "base": "dense",
    "selected": "dense",
    "blair": "dense",
    "hybrid": "hybrid",
    "hybrid-base": "hybrid",
}
HYBRIDS = {"hybrid": "blair", "hybrid-base": "base"}  # hybrid -> its dense side (fused with bm25)


@dataclass
class Ranked:
    """One ranker's answers on one split: the target's rank and the top `depth` item rows."""

    ranks: np.ndarray
    top: np.ndarray


def rank_blocks(blocks, targets: np.ndarray, *, depth: int, drop_zero: bool = False) -> Ranked:
    """Ranks and top lists from score blocks [chunk, n_items] in query order. drop_zero: a score of 0
    is no match (BM25), so such items are not candidates."""
    ranks, tops, start = [], [], 0
    for block in blocks:
        t = targets[start : start + len(block)]
        ranks.append(target_ranks(block, t))
        best = top_k(block, min(depth, block.shape[1]))  # by score, ties by item row
        if drop_zero:
            best = np.where(np.take_along_axis(block, best, axis=1) > 0, best, -1)
        tops.append(best)
        start += len(block)
    return Ranked(np.concatenate(ranks), np.concatenate(tops))


def dense_blocks(queries: np.ndarray, items: np.ndarray, chunk: int = 256):
    for start in range(0, len(queries), chunk):
        yield queries[start : start + chunk] @ items.T


@dataclass
class SearchStudy:
    """Per ranker, per seed, per split: Ranked; the hybrids' chosen weights per seed."""

    benchmark: SearchBenchmark
    settings: SearchParams
    ranked: dict[str, dict[int, dict[str, Ranked]]] = field(default_factory=dict)
    weights: dict[str, dict[int, float]] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)

    def add(self, ranker: str, ranked: Ranked, *, seed: int, split: str) -> None:
        self.ranked.setdefault(ranker, {}).setdefault(seed, {})[split] = ranked

    def metrics(self, ranks: np.ndarray) -> dict[str, float]:
        return search_metrics(ranks, self.settings.ks, depth=self.settings.depth)

    def select_value(self, ranks: np.ndarray) -> float:
        return self.metrics(ranks)[self.settings.select]

    # ------------------------------------------------------------------ the rankers
    def score_lexical(self) -> Bm25Index:
        bench = self.benchmark
        index = Bm25Index(bench.items["text"].tolist())
        for split in SPLITS:
            queries = bench.queries[split]["query"].tolist()
            ranked = rank_blocks(index.scores(queries), bench.targets(split), depth=self.settings.depth, drop_zero=True)
            self.add("bm25", ranked, seed=0, split=split)
        return index

    def score_dense(self, ranker: str, model, *, seed: int = 0) -> None:
        from plmrec.finetune.embed import encode_texts

        bench, batch = self.benchmark, self.settings.encode_batch_size
        items = encode_texts(model, bench.items["text"].tolist(), batch)
        for split in SPLITS:
            queries = encode_texts(model, bench.queries[split]["query"].tolist(), batch)
            ranked = rank_blocks(dense_blocks(queries, items), bench.targets(split), depth=self.settings.depth)
            self.add(ranker, ranked, seed=seed, split=split)

    def fuse(self, hybrid: str) -> None:
        """Each seed of the dense side fused with BM25; the weight chosen on valid, then test once."""
        dense, lexical = self.ranked[HYBRIDS[hybrid]], self.ranked["bm25"][0]
        k = self.settings.rrf_k
        for seed, by_split in dense.items():
            targets = self.benchmark.targets("valid")
            on_valid = {
                w: fused_ranks(by_split["valid"].top, lexical["valid"].top, targets, weight=w, k=k)
                for w in self.settings.hybrid_weights
            }
            best = max(on_valid, key=lambda w: (self.select_value(on_valid[w]), -abs(w - 0.5)))
            self.weights.setdefault(hybrid, {})[seed] = best
            self.add(hybrid, Ranked(on_valid[best], np.zeros((0, 0), dtype=np.int64)), seed=seed, split="valid")
            test = fused_ranks(
                by_split["test"].top, lexical["test"].top, self.benchmark.targets("test"), weight=best, k=k
            )
            self.add(hybrid, Ranked(test, np.zeros((0, 0), dtype=np.int64)), seed=seed, split="test")

    # ------------------------------------------------------------------ the tables
    def per_seed(self) -> pd.DataFrame:
        rows = []
        for ranker, by_seed in self.ranked.items():
            for seed, by_split in by_seed.items():
                for split, ranked in by_split.items():
                    rows.append(
                        {
                            "ranker": ranker,
                            "kind": KINDS[ranker],
                            "seed": seed,
                            "split": split,
                            **self.metrics(ranked.ranks),
                        }
                    )
        return pd.DataFrame(rows)

    def categories(self) -> pd.DataFrame:
        """Test NDCG and recall at the largest K per category and ranker (mean over seeds)."""
        k = max(self.settings.ks)
        category = self.benchmark.queries["test"]["category"].to_numpy()
        rows = []
        for ranker, by_seed in self.ranked.items():
            for cat in sorted(set(category)):
                mask = category == cat
                figures = [self.metrics(r["test"].ranks[mask]) for r in by_seed.values()]
                rows.append(
                    {
                        "category": cat,
                        "ranker": ranker,
                        "queries": int(mask.sum()),
                        f"ndcg@{k}": float(np.mean([f[f"ndcg@{k}"] for f in figures])),
                        f"recall@{k}": float(np.mean([f[f"recall@{k}"] for f in figures])),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self, split: str = "test") -> pd.DataFrame:
        """mean and std over seeds per ranker (std 0 for the untrained rankers' one run)."""
        from plmrec.recsys.experiment import mean_std

        table = self.per_seed()
        metrics = [c for c in table.columns if "@" in c or c == "mrr"]
        return mean_std(table[table["split"] == split], "ranker", metrics)

    def table(self, split: str = "test") -> pd.DataFrame:
        """`summary` flat, one row per ranker: ranker, mean_<metric>, std_<metric> (files, MLflow, JSON)."""
        summary = self.summary(split)
        return summary.set_axis([f"{stat}_{m}" for stat, m in summary.columns], axis=1).reset_index()

    def verdicts(self) -> list:
        """The trained and fused rankers against BM25 and the base encoder on test `select`."""
        from plmrec.recsys.experiment import verdict

        summary, metric = self.summary("test"), self.settings.select
        pairs = [
            ("blair", "bm25"),
            ("blair", "base"),
            ("hybrid", "bm25"),
            ("hybrid", "base"),
            ("hybrid-base", "bm25"),
            ("selected", "base"),
        ]
        return [
            verdict(summary, metric, plm, vanilla=vanilla, label=f"search ({self.benchmark.name})")
            for plm, vanilla in pairs
            if plm in summary.index and vanilla in summary.index
        ]

    def decision(self) -> dict:
        """The served mode: the kind of the best ranker by mean valid `select`; its hybrid weight."""
        table = self.per_seed()
        valid = table[table["split"] == "valid"].groupby("ranker", sort=False)[self.settings.select].mean()
        best = {}
        for mode in SEARCH_MODES:
            names = [r for r in valid.index if KINDS[r] == mode]
            if names:
                name = max(names, key=lambda r: valid[r])
                best[mode] = (name, float(valid[name]))
        mode = max(best, key=lambda m: best[m][1])
        ranker = best[mode][0]
        weights = list(self.weights.get(ranker, {}).values())
        return {
            "mode": mode,
            "ranker": ranker,
            "metric": self.settings.select,
            "valid": {m: {"ranker": r, self.settings.select: v} for m, (r, v) in best.items()},
            "hybrid_weight": float(np.median(weights)) if weights else 0.5,
            "rrf_k": self.settings.rrf_k,
            "depth": self.settings.depth,
            "benchmark": self.benchmark.name,
        }


def compare_rankers(
    bench: SearchBenchmark,
    settings: SearchParams,
    *,
    base_model: str,
    selected: str | None = None,
    work_dir: str | Path,
) -> SearchStudy:
    """BM25, the base and selected encoders, BLaIR per seed (when the benchmark has training reviews)
    and the hybrids, all on the same queries. BLaIR encoders are kept under `work_dir`."""
    from plmrec.encoders import load_encoder
    from plmrec.pretrain.models import check_base_model, quiet_transformers
    from plmrec.search.blair import train_blair
    from plmrec.training.device import resolve_device

    quiet_transformers()
    blair, work = settings.blair, Path(work_dir)
    device = str(resolve_device(blair.device))
    run = SearchStudy(bench, settings)
    started = time.perf_counter()
    run.score_lexical()
    run.facts["seconds"] = {"bm25": round(time.perf_counter() - started, 2)}
    base = str(check_base_model(base_model))
    dense = {"base": base, **({"selected": str(selected)} if selected else {})}
    for name, path in dense.items():
        started = time.perf_counter()
        run.score_dense(name, load_encoder(path, blair.pooling, blair.max_length, device=device))
        run.facts["seconds"][name] = round(time.perf_counter() - started, 2)
        say(f"{bench.name}: {name} scored")
    if len(bench.training):
        start = dense["selected"] if blair.start_from == "selected" and selected else base
        for seed in settings.seeds:
            started = time.perf_counter()
            path, entry = train_blair(bench.training, blair, start, out_dir=work / f"blair-seed{seed}", seed=seed)
            run.score_dense("blair", load_encoder(path, blair.pooling, blair.max_length, device=device), seed=seed)
            run.facts.setdefault("blair", {})[seed] = {
                "pairs": entry.get("pairs"),
                "steps": entry.get("steps"),
                "final_loss": entry["losses"][-1][1] if entry.get("losses") else None,
                "train_seconds": entry.get("seconds"),  # of the training itself, also when reused
                "seconds": round(time.perf_counter() - started, 2),
            }
            say(f"{bench.name}: blair seed {seed} trained and scored")
    for hybrid, side in HYBRIDS.items():
        if side in run.ranked:
            run.fuse(hybrid)
    return run


def say(message: str) -> None:
    print(f"[plmrec] evaluate-search: {message}", flush=True)


def benchmark_name(reviews_path: str | Path) -> str:
    """A short name for a review source: its file or folder name without extensions."""
    return Path(reviews_path).name.split(".")[0]


def configured_benchmark(settings: SearchParams) -> SearchBenchmark:
    """The benchmark search.reviews_path (and meta_path) describe, split as search.* says."""
    from plmrec.search.benchmark import load_review_data, review_benchmark

    reviews, items = load_review_data(settings.reviews_path, settings.meta_path)
    return review_benchmark(
        reviews,
        items,
        name=benchmark_name(settings.reviews_path),
        valid_fraction=settings.valid_fraction,
        test_fraction=settings.test_fraction,
        min_query_chars=settings.min_query_chars,
        max_query_chars=settings.max_query_chars,
    )


def skipped_decision(reason: str, settings: SearchParams) -> dict:
    """What serving uses when no search benchmark ran: the dense encoder, as before."""
    return {
        "mode": "dense",
        "ranker": None,
        "evaluated": False,
        "reason": reason,
        "metric": settings.select,
        "hybrid_weight": 0.5,
        "rrf_k": settings.rrf_k,
        "depth": settings.depth,
    }
