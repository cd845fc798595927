"""Transfer of the text-only user model across shops: pre-train on Amazon Scientific, score on Online Retail.

The text-only variant has no item ids, so its weights apply to any catalogue embedded by the same
encoder (the base MiniLM here, on both sides). Source: the UniSRec/RecBole Scientific benchmark
(leave-one-out, epoch chosen on its valid users). Target: the Online Retail windows of
train-user-model (params.yaml's split; sequences before a cut-off, matched with the next window).
For each seed, on the target's test window (scored once):
  floor       the untrained text model (recency-pooled history in the text space)
  scratch     trained on the target only (epoch on the target's valid window, refit on train + valid)
  zero-shot   the source model as it is
  fine-tuned  the source model trained further on the target (epoch on valid, refit on train + valid)
The source's text projection is kept (both catalogues live in the same text space); only the item
table changes. One JSON object on stdout and under --out.

    python bench/user_model_transfer.py --data ../shared/data/online-retail/online_retail.parquet \\
        --seeds 0 1 2 --source-epochs 8 --out bench/results/user_model_transfer_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

from _report import emit  # noqa: E402
from real_data import _stage, mean_std  # noqa: E402
from user_model_online_retail import base_items  # noqa: E402
from user_model_scientific import item_text_vectors  # noqa: E402

KS = [10, 50, 100]
PER_ITEM = ("items.text", "items.id_of")  # buffers that belong to a catalogue, not to the model


def transferred(source, spec, text: np.ndarray):
    """A model for the target catalogue (`text`) with every weight of `source` but its item table."""
    from plmrec.usermodel.model import UserModel

    model = UserModel(spec, item_text=text, item_ids=np.zeros(len(text), dtype=np.int64))
    state = {k: v for k, v in source.state_dict().items() if k not in PER_ITEM}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != set(PER_ITEM) or unexpected:
        raise RuntimeError(f"transfer: missing {missing}, unexpected {unexpected}")
    return model


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an Online Retail file")
    ap.add_argument("--source", default=str(SHARED / "amazon-seqrec" / "scientific"))
    ap.add_argument("--vectors", type=int, default=1, help="C of the text-only model")
    ap.add_argument("--source-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=12, help="target epochs (scratch and fine-tuned)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="/tmp/plmrec-transfer")
    ap.add_argument("--text-cache", default=None, help="an .npy of Scientific's item text vectors")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from plmrec.config import load_params
    from plmrec.data.seqrec import load_seqrec
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.stages.ingest import ingest
    from plmrec.stages.prepare import prepare
    from plmrec.usermodel.fit import FitSettings, fit
    from plmrec.usermodel.model import UserModel, UserModelSpec
    from plmrec.usermodel.retrieval import evaluate
    from plmrec.usermodel.sequences import leave_one_out
    from plmrec.usermodel.variants import refit, window_data

    quiet_transformers()
    work = Path(args.work)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    params = load_params([ROOT / "params.yaml"], ["data.source=file", f"data.path={args.data}"])
    um = params.user_model
    # the source's shape everywhere: no time embedding (Scientific has no dates), no ids
    spec = UserModelSpec(
        variant="guim",
        vectors=args.vectors,
        inputs="text",
        dim=um.dim,
        layers=um.layers,
        heads=um.heads,
        max_length=um.max_length,
        time_buckets=0,
        dropout=um.dropout,
        scale=um.scale,
    ).check()
    settings = FitSettings(
        epochs=args.source_epochs,
        patience=3,
        batch_size=um.batch_size,
        learning_rate=um.learning_rate,
        mlm_weight=um.mlm_weight,
        select="ndcg@10",
        progress=False,
    )

    # -- source: Scientific, leave-one-out
    ds = load_seqrec(args.source)
    cache = Path(args.text_cache) if args.text_cache else None
    source_text = item_text_vectors(
        ds.items["text"].tolist(), "sentence-transformers/all-MiniLM-L6-v2", cache=cache, device="cpu"
    )
    examples, valid, _ = leave_one_out(ds, max_length=um.max_length)
    seconds = {}

    # -- target: Online Retail windows, the same encoder
    raw, prepared_path = work / "data" / "raw.parquet", work / "data" / "prepared.parquet"
    _stage(work / "data", "ingest", lambda: ingest(params, raw=raw))
    _stage(work / "data", "prepare", lambda: prepare(params, raw=raw, prepared=prepared_path))
    prepared = pd.read_parquet(prepared_path)
    _stage(work, "embed", lambda: base_items(prepared, work / "base-encoder"))
    items = pd.read_parquet(work / "base-encoder" / "item_embeddings.parquet")
    data = window_data(prepared, items, params)
    target_text = data.text
    zero_ids = np.zeros(len(data.codes), dtype=np.int64)
    target_settings = FitSettings(**{**settings.__dict__, "epochs": args.epochs, "patience": um.patience})

    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        source = UserModel(spec, item_text=source_text, item_ids=np.zeros(ds.n_items, dtype=np.int64))
        start = time.perf_counter()
        source_fit = fit(source, examples, valid, settings=settings, ks=[10, 50], seed=seed, desc="source")
        seconds[f"source_seed{seed}"] = round(time.perf_counter() - start, 1)
        print(f"[bench] seed {seed}: source epoch {source_fit.chosen_epoch}, valid {source_fit.valid}", flush=True)

        def test_of(model):
            return {k: round(v, 4) for k, v in evaluate(model, data.test, KS).items() if "@" in k}

        floor = UserModel(spec, item_text=target_text, item_ids=zero_ids)
        arms = {"floor": test_of(floor), "zero-shot": test_of(transferred(source, spec, target_text))}
        for arm, start_model in (("scratch", None), ("fine-tuned", source)):

            def fresh(start_model=start_model, seed=seed):
                torch.manual_seed(seed)
                if start_model is None:
                    return UserModel(spec, item_text=target_text, item_ids=zero_ids)
                return transferred(start_model, spec, target_text)

            chosen = fit(fresh(), data.train, data.valid, settings=target_settings, ks=KS, seed=seed, desc=arm)
            final = fresh()
            refit(final, data.refit, settings=target_settings, epochs=chosen.chosen_epoch, seed=seed)
            arms[arm] = {**test_of(final), "epoch": chosen.chosen_epoch, "valid_ndcg@10": chosen.valid["ndcg@10"]}
        for arm, figures in arms.items():
            rows.append({"seed": seed, "arm": arm, **figures})
            print(f"[bench] seed {seed} {arm}: {figures}", flush=True)

    table = pd.DataFrame(rows)
    metrics = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg") if f"{m}@{k}" in table]
    summary = {arm: {m: mean_std(part[m].tolist()) for m in metrics} for arm, part in table.groupby("arm", sort=False)}
    emit(
        {
            "bench": "user_model_transfer",
            "source": ds.name,
            "encoder": "sentence-transformers/all-MiniLM-L6-v2 (base, both catalogues)",
            "spec": spec.to_dict(),
            "source_epochs": args.source_epochs,
            "target_epochs": args.epochs,
            "target": {**data.facts(), "data": args.data},
            "seeds": args.seeds,
            "runs": rows,
            "summary": summary,
            "seconds": seconds,
            "cpus": os.cpu_count(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
