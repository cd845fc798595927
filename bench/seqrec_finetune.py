"""Text-only sequential recommendation on a UniSRec/RecBole benchmark (default: Amazon Scientific).

Zero-shot scores the encoder, then fine-tunes it with plmrec's contrastive objective on the
benchmark's own training sequences (history sentence <-> next item text, in-batch InfoNCE), picks
the epoch by validation NDCG@10, and scores that epoch once on test. Full ranking over all items,
leave-one-out, history items not masked (RecBole's protocol). Prints one JSON object.

  python bench/seqrec_finetune.py --epochs 3 --batch-size 128 --max-length 256      # GPU
  python bench/seqrec_finetune.py --epochs 1 --max-steps 20 --eval-users 300        # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

from _report import emit  # noqa: E402

from plmrec.data.seqrec import load_seqrec  # noqa: E402
from plmrec.finetune.contrastive import Contrastive  # noqa: E402
from plmrec.finetune.pairs import render_history  # noqa: E402
from plmrec.finetune.retrieval import score_encoder, seqrec_queries  # noqa: E402
from plmrec.pretrain.models import quiet_transformers, resolve_base_model  # noqa: E402
from plmrec.training.batches import steps_for_epochs  # noqa: E402
from plmrec.training.device import resolve_device  # noqa: E402
from plmrec.training.loop import TrainConfig, train  # noqa: E402

KS = [10, 50]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "amazon-seqrec" / "scientific"))
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--history-length", type=int, default=20)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--eval-users", type=int, default=None, help="seeded sample of users to score")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    quiet_transformers()
    device = resolve_device(args.device)
    ds = load_seqrec(args.data)
    texts = ds.items["text"].tolist()
    valid_q = seqrec_queries(ds.splits["valid"], args.eval_users, args.seed)
    test_q = seqrec_queries(ds.splits["test"], args.eval_users, args.seed)
    train_rows = ds.splits["train"]
    pairs = [
        (render_history([texts[i] for i in h], args.history_length), texts[t])
        for h, t in zip(train_rows["history"], train_rows["target"])
    ]

    objective = Contrastive(resolve_base_model(args.model), args.max_length, args.pooling)
    model = objective.st

    def score(queries) -> dict:
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = score_encoder(
                model,
                texts,
                queries,
                ks=KS,
                history_length=args.history_length,
                half_life=5.0,
                exclude_history=False,
                batch_size=512 if device.type == "cuda" else 64,
            )
        model.train()
        return {
            kind: {k: round(v, 4) for k, v in m.items() if "@" in k and k.split("@")[0] in ("recall", "ndcg")}
            for kind, m in out.items()
            if not kind.startswith("_")
        }

    model.to(device)
    zero_valid, zero_test = score(valid_q), score(test_q)
    print(json.dumps({"zero_shot_valid": zero_valid["sentence"]}), file=sys.stderr, flush=True)
    examples = objective.encode(pairs)
    per_epoch = steps_for_epochs(len(examples), 1, args.batch_size, grad_accum=1)
    if args.max_steps:
        per_epoch = min(per_epoch, args.max_steps)
    cfg = TrainConfig(
        steps=per_epoch * args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_ratio=0.1,
        device=str(device),
        log_every=max(1, per_epoch // 5),
        seed=args.seed,
    )
    history, best = [], {"ndcg": -1.0}

    def on_step(done, result) -> None:
        if done % per_epoch == 0:
            v = score(valid_q)
            history.append({"epoch": done // per_epoch, "step": done, "valid": v["sentence"]})
            print(json.dumps(history[-1]), file=sys.stderr, flush=True)
            if v["sentence"]["ndcg@10"] > best["ndcg"]:
                best.update(
                    ndcg=v["sentence"]["ndcg@10"],
                    epoch=done // per_epoch,
                    state=copy.deepcopy(objective.module.state_dict()),
                )

    start = time.perf_counter()
    result = train(objective, examples, cfg, on_step=on_step, desc="seqrec-finetune")
    train_s = time.perf_counter() - start
    objective.module.load_state_dict(best["state"])
    out = {
        "bench": "seqrec_finetune",
        "data": ds.name,
        "items": ds.n_items,
        "model": args.model,
        "train_pairs": len(examples),
        "eval_users": len(test_q),
        "protocol": "leave-one-out, full ranking, "
        "history not masked; query = encoded history sentence (most recent first)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": result.precision,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "epochs": args.epochs,
        "steps": cfg.steps,
        "train_seconds_incl_valid_scoring": round(train_s, 1),
        "train_pairs_per_s": round(result.samples_per_s, 1),
        "zero_shot": {"valid": zero_valid, "test": zero_test},
        "valid_by_epoch": history,
        "chosen_epoch": best["epoch"],
        "finetuned_test": score(test_q),
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
