"""The user model (GUIM) on a UniSRec/RecBole benchmark (default: Amazon Scientific): leave-one-out,
full ranking over all items, history items not masked (RecBole's protocol), Recall and NDCG at 10
and 50. Each variant trains on the benchmark's training rows, its epoch is chosen on valid NDCG@10
and that epoch is scored once on test. Beside them: the zero-shot floor (the untrained text model's
recency-pooled history, and the encoded history sentence from bench/seqrec_finetune.py's protocol).
Prints one JSON object.

  python bench/user_model_scientific.py --variants guim-c1-id guim-c1-id+text guim-c4-id+text --epochs 10
  python bench/user_model_scientific.py --variants guim-c2-text --epochs 1 --eval-users 500   # smoke run
  python bench/user_model_scientific.py --merge seed0.json seed1.json seed2.json --out seeds.json
(--merge trains nothing: it gives each variant's mean and std over the runs, one per seed.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

from _report import emit, mean_std  # noqa: E402

from plmrec.data.seqrec import load_seqrec  # noqa: E402
from plmrec.encoders import load_encoder  # noqa: E402
from plmrec.finetune.embed import build_index, encode_texts  # noqa: E402
from plmrec.pretrain.models import quiet_transformers, resolve_base_model  # noqa: E402
from plmrec.ranking import ranking_metrics  # noqa: E402
from plmrec.training.device import resolve_device  # noqa: E402
from plmrec.usermodel.fit import FitSettings, fit  # noqa: E402
from plmrec.usermodel.model import UserModel, UserModelSpec  # noqa: E402
from plmrec.usermodel.retrieval import UserQueries, encode_items, encode_users, evaluate, search_max  # noqa: E402
from plmrec.usermodel.sequences import id_vocabulary, leave_one_out, training_purchases  # noqa: E402

KS = [10, 50]


def parse_variant(label: str) -> dict:
    """guim-c4-id+text -> {variant: guim, vectors: 4, inputs: id+text}."""
    variant, c, inputs = label.split("-", 2)
    return {"variant": variant, "vectors": int(c.lstrip("c")), "inputs": inputs}


def sample(queries: UserQueries, n: int | None, seed: int) -> UserQueries:
    if not n or n >= len(queries):
        return queries
    keep = np.sort(np.random.default_rng(seed).choice(len(queries), n, replace=False))
    return UserQueries(
        [queries.users[i] for i in keep],
        [queries.sequences[i] for i in keep],
        [queries.buckets[i] for i in keep],
        [queries.relevant[i] for i in keep],
    )


def ensemble_metrics(models: list, queries: UserQueries) -> dict:
    """Recall and NDCG of the sum of the models' scores (each max_c cos), ranked by the exact index as
    `evaluate` ranks one model: the sum of the maxima is the max over every choice of one vector per
    model of the concatenated vectors, so each user becomes those combinations."""
    items = np.concatenate([encode_items(m) for m in models], axis=1)
    users = None
    for m in models:
        u = encode_users(m, queries.sequences, queries.buckets)
        if users is not None:  # (U, C1, w1) x (U, C2, w2) -> (U, C1 * C2, w1 + w2)
            c1, c2 = users.shape[1], u.shape[1]
            u = np.concatenate([np.repeat(users, c2, axis=1), np.tile(u, (1, c1, 1))], axis=2)
        users = u
    top, _ = search_max(build_index(items, "exact"), users, max(KS))
    scored = ranking_metrics(top, queries.relevant, KS, names=("recall", "ndcg"))
    return {k: round(v, 4) for k, v in scored.items() if "@" in k}


def with_history_left_out(queries: UserQueries) -> UserQueries:
    """The same queries, each user's sequence items excluded from the ranking (repeats then count as misses)."""
    return dataclasses.replace(queries, exclude=[sorted({int(i) for i in s}) for s in queries.sequences])


def item_text_vectors(texts: list[str], model_name: str, *, cache: Path | None, device: str) -> np.ndarray:
    if cache and cache.exists():
        return np.load(cache)
    model = load_encoder(resolve_base_model(model_name), "mean", 128, device=device)
    vectors = encode_texts(model, texts, 256 if device.startswith("cuda") else 64)
    if cache:
        np.save(cache, vectors)
    return vectors


def merge(paths: list[str]) -> dict:
    """Mean and sample std over runs of this bench (one seed each, same settings but the seed)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"--merge: no such file: {', '.join(missing)}")
    runs = [json.loads(Path(p).read_text()) for p in paths]
    # a setting a run does not record (written before the flag existed) has the flag's default
    defaults = vars(parser().parse_args([]))
    keys = {k for r in runs for k in r["settings"]} - {"seed", "merge"}
    compared = [{k: r["settings"].get(k, defaults.get(k)) for k in sorted(keys)} for r in runs]
    if any(c != compared[0] for c in compared):
        raise SystemExit(f"--merge: the runs differ in more than the seed: {compared}")
    seeds = [r["settings"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: seeds repeat: {seeds}")

    variants = {}
    for label in runs[0]["variants"]:
        rows = [r["variants"][label] for r in runs]
        metrics = rows[0]["test"]
        variants[label] = {
            split: {k: mean_std([row[split][k] for row in rows]) for k in metrics} for split in ("valid", "test")
        }
        variants[label]["chosen_epochs"] = [row.get("chosen_epoch") for row in rows]
    chosen = [r["chosen_on_valid"] for r in runs]
    return {
        "bench": "user_model_scientific",
        "merged": [str(p) for p in paths],
        "seeds": seeds,
        "settings": {k: v for k, v in runs[-1]["settings"].items() if k != "seed"},
        "protocol": runs[0]["protocol"],
        "chosen_on_valid_per_seed": chosen,
        "variants": variants,
        "zero_shot_pooled_text": runs[0]["zero_shot_pooled_text"],
        "published_reference_test": runs[0]["published_reference_test"],
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "amazon-seqrec" / "scientific"))
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--variants", nargs="+", default=["guim-c1-id", "guim-c1-id+text", "guim-c4-id+text"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--mlm-weight", type=float, default=0.2)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--id-dim", type=int, default=64)
    ap.add_argument("--whiten", action="store_true", help="the text projection starts whitened")
    ap.add_argument(
        "--repeat-offset", action="store_true", help="learn a score offset for the items of the user's own sequence"
    )
    ap.add_argument("--max-length", type=int, default=50)
    ap.add_argument("--no-log-q", action="store_true")
    ap.add_argument("--negatives", type=int, default=0, help="uniform catalogue negatives per batch")
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--eval-users", type=int, default=None, help="seeded sample of valid and test users")
    ap.add_argument("--text-cache", default=None, help="an .npy of the item text vectors, reused when present")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--ensemble", action="store_true", help="also score the sum of every pair of variants")
    ap.add_argument(
        "--mask-history",
        action="store_true",
        help="also score each variant with the items of the user's own sequence left out of its answer "
        "(a choice of the recommender, made on valid like any row: the evaluator still counts repeats)",
    )
    ap.add_argument("--merge", nargs="+", default=None, help="summarise these per-seed outputs instead")
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.merge:
        emit(merge(args.merge), args.out)
        return

    quiet_transformers()
    device = resolve_device(args.device)
    ds = load_seqrec(args.data)
    start = time.perf_counter()
    text = item_text_vectors(
        ds.items["text"].tolist(),
        args.model,
        cache=Path(args.text_cache) if args.text_cache else None,
        device=str(device),
    )
    encode_s = time.perf_counter() - start
    examples, valid, test = leave_one_out(ds, max_length=args.max_length)
    valid, test = sample(valid, args.eval_users, args.seed), sample(test, args.eval_users, args.seed)
    ids = id_vocabulary(training_purchases(ds), ds.n_items, 1_000_000)
    settings = FitSettings(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        mlm_weight=args.mlm_weight,
        log_q=not args.no_log_q,
        negatives=args.negatives,
        weight_decay=args.weight_decay,
        device=str(device),
        progress=False,
    )
    shape = {
        "dim": args.dim,
        "layers": args.layers,
        "dropout": args.dropout,
        "max_length": args.max_length,
        "scale": args.scale,
        "id_dim": args.id_dim,
        "whiten": args.whiten,
        "repeat_offset": args.repeat_offset,
    }
    floor_model = UserModel(UserModelSpec(inputs="text", **shape), item_text=text, item_ids=ids)
    floor = {
        split: {k: round(v, 4) for k, v in evaluate(floor_model, q, KS).items() if "@" in k}
        for split, q in (("valid", valid), ("test", test))
    }
    print(f"zero-shot (pooled text, untrained): {floor}", file=sys.stderr, flush=True)
    rows, models = {}, {}
    for label in args.variants:
        torch.manual_seed(args.seed)
        spec = UserModelSpec(**parse_variant(label), **shape)
        model = UserModel(spec, item_text=text if spec.uses_text else None, item_ids=ids)
        result = fit(
            model,
            examples,
            valid,
            settings=settings,
            ks=KS,
            seed=args.seed,
            on_epoch=lambda row, label=label: print(label, row, file=sys.stderr, flush=True),
            desc=label,
        )
        scored = evaluate(model, test, KS)
        rows[label] = {
            **result.to_dict(),
            "test": {k: round(v, 4) for k, v in scored.items() if "@" in k},
            "parameters": sum(p.numel() for p in model.parameters()),
            **({"learned_repeat_offset": round(float(model.repeat.detach()), 4)} if model.repeat is not None else {}),
        }
        print(label, "test", rows[label]["test"], file=sys.stderr, flush=True)
        models[label] = model
        if args.mask_history:
            masked = {
                split: {k: round(v, 4) for k, v in evaluate(model, with_history_left_out(q), KS).items() if "@" in k}
                for split, q in (("valid", valid), ("test", test))
            }
            rows[f"{label}/history-masked"] = {"of": label, "chosen_epoch": result.chosen_epoch, **masked}
            print(f"{label}/history-masked", masked, file=sys.stderr, flush=True)
    if args.ensemble:
        labels = list(models)
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                pair = [models[a], models[b]]
                rows[f"{a}+{b}"] = {"ensemble": [a, b], "valid": ensemble_metrics(pair, valid)}
                rows[f"{a}+{b}"]["test"] = ensemble_metrics(pair, test)
                print(f"{a}+{b}", rows[f"{a}+{b}"], file=sys.stderr, flush=True)
    best = max(rows, key=lambda v: rows[v]["valid"]["ndcg@10"])
    emit(
        {
            "bench": "user_model_scientific",
            "data": ds.name,
            "items": ds.n_items,
            "train_sequences": len(examples),
            "valid_users": len(valid),
            "test_users": len(test),
            "protocol": "leave-one-out, full ranking over all items, history not masked; epoch chosen on "
            "valid ndcg@10, test scored once",
            "text_model": args.model,
            "text_encode_seconds": round(encode_s, 1),
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu x{torch.get_num_threads()}",
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "data", "variants", "merge")},
            "zero_shot_pooled_text": floor,
            "variants": rows,
            "chosen_on_valid": best,
            "chosen_test": rows[best]["test"],
            "published_reference_test": {"VQ-Rec": {"recall@10": 0.1211, "ndcg@10": 0.0643}},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
