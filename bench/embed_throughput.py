"""Catalogue encoding throughput: sentences/s and tokens/s for embedding every item text.

Encodes with `plmrec.finetune.embed.encode_texts` (the code path of the finetune and retrieval
stages: sentence-transformers, length-sorted batches, L2-normalised float32 output) and prints one
JSON object. Texts: the Online Retail descriptions when ../shared/data is present, else the
synthetic catalogue; `--texts scientific` uses the UniSRec Scientific item texts (~180 characters).
Each (precision, batch size) runs once to warm up, then `--repeat` timed passes (median kept).

  python bench/embed_throughput.py                                   # CPU, fp32
  python bench/embed_throughput.py --precision fp32,bf16 --batch-sizes 128,512,2048   # GPU
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

from _report import emit  # noqa: E402

from plmrec.encoders import load_encoder  # noqa: E402
from plmrec.finetune.embed import encode_texts  # noqa: E402
from plmrec.pretrain.models import quiet_transformers, resolve_base_model  # noqa: E402
from plmrec.training.device import resolve_device  # noqa: E402


def load_texts(name: str, repeat_to: int | None) -> tuple[str, list[str]]:
    if name == "scientific":
        from plmrec.data.seqrec import load_seqrec

        texts, source = load_seqrec(SHARED / "amazon-seqrec" / "scientific").items["text"].tolist(), "scientific"
    else:
        retail = SHARED / "online-retail" / "online_retail.parquet"
        if retail.exists():
            import pandas as pd

            texts = pd.read_parquet(retail, columns=["Description"])["Description"].dropna().astype(str)
            texts, source = sorted(set(t.strip() for t in texts if t.strip())), "online-retail descriptions"
        else:
            from plmrec.data.synthetic import synthetic_catalogue

            texts, source = synthetic_catalogue()["Description"].tolist(), "synthetic catalogue"
    if repeat_to and len(texts) < repeat_to:
        texts = (texts * (repeat_to // len(texts) + 1))[:repeat_to]
    return source, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--texts", choices=["catalogue", "scientific"], default="catalogue")
    ap.add_argument("--min-texts", type=int, default=None, help="repeat the texts up to this many")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", help="comma list of fp32, bf16 (bf16: GPU)")
    ap.add_argument("--batch-sizes", default="32,128")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    quiet_transformers()
    device = resolve_device(args.device)
    source, texts = load_texts(args.texts, args.min_texts)
    results = []
    for precision in args.precision.split(","):
        model = load_encoder(resolve_base_model(args.model), "mean", args.max_length, device=str(device))
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        tokens = sum(len(x) for x in model.tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"])
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            encode_texts(model, texts[: max(bs * 4, 256)], bs)  # warm-up
            times = []
            for _ in range(args.repeat):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                vecs = encode_texts(model, texts, bs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            sec = statistics.median(times)
            results.append(
                {
                    "precision": precision,
                    "batch_size": bs,
                    "seconds": round(sec, 4),
                    "sentences_per_s": round(len(texts) / sec, 1),
                    "tokens_per_s": round(tokens / sec, 1),
                    "dim": int(vecs.shape[1]),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {
        "bench": "embed_throughput",
        "model": args.model,
        "texts": source,
        "n_texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "max_length": args.max_length,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "results": results,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
