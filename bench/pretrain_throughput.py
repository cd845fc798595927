"""Pretraining throughput of plmrec's own training loop: tokens/s, samples/s, peak memory and MFU.

Runs `plmrec.training.loop.train` (the code path the pipeline uses) on a randomly initialised
encoder over synthetic e-commerce text, and prints one JSON object. FLOPs per step are counted
with torch.utils.flop_counter on one eager step (forward + backward, what the step really
computes: MLM logits at the masked positions only), MFU = counted FLOP/s over the device's peak
dense bf16 FLOP/s.

  python bench/pretrain_throughput.py                          # CPU: tiny model
  python bench/pretrain_throughput.py --model base --compile   # GPU: roberta-base size, bf16
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402

from plmrec.data.synthetic import synthetic_catalogue  # noqa: E402  (needs only numpy/pandas)
from plmrec.pretrain.corpus import finish_corpus, synthetic_dapt_corpus  # noqa: E402
from plmrec.pretrain.models import build_tiny_roberta, quiet_transformers  # noqa: E402
from plmrec.pretrain.objectives import make_objective  # noqa: E402
from plmrec.training.batches import move_to  # noqa: E402
from plmrec.training.device import resolve_device, resolve_precision  # noqa: E402
from plmrec.training.loop import TrainConfig, train  # noqa: E402

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
]
SIZES = {
    "tiny": dict(hidden_size=64, layers=2, heads=2, intermediate_size=256),
    "small": dict(hidden_size=256, layers=4, heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, layers=12, heads=12, intermediate_size=3072),
}  # roberta-base


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return name, peak
    return name, None


def make_model(
    size: str, seq_len: int, vocab: int, *, workdir: Path, texts: list[str], attention_dropout: float | None = None
) -> Path:
    """A random RoBERTa of the given size; the tokenizer is a small BPE trained on `texts`, the
    embedding matrix has `vocab` rows (50,265 for roberta-base) so the head costs what it would."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    path = build_tiny_roberta(texts, workdir, vocab_size=4000, max_length=seq_len, **SIZES["tiny"])
    cfg = RobertaConfig.from_pretrained(path)
    s = SIZES[size]
    cfg.update(
        dict(
            vocab_size=max(vocab, cfg.vocab_size),
            hidden_size=s["hidden_size"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["intermediate_size"],
        )
    )
    if attention_dropout is not None:
        cfg.attention_probs_dropout_prob = attention_dropout
    torch.manual_seed(0)
    RobertaForMaskedLM(cfg).save_pretrained(path)
    return path


def count_flops(objective, examples, batch_size: int, *, device, precision: str) -> tuple[float, int]:
    """FLOPs of one eager forward+backward step and the tokens it processed."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = objective.collate(examples[:batch_size], seed=0)
    moved = move_to(batch, device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(device.type, enabled=False)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        with ctx:
            loss = objective.loss(moved, gen)
        loss.backward()
    objective.module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()), batch["n_tokens"]


def bench_one(objective_name: str, model_dir: Path, texts: list[str], *, args, device) -> dict:
    objective = make_objective(objective_name, str(model_dir), args.seq_len, packing=True)
    if objective_name == "tsdae" and not args.short_tsdae:
        # windows of seq_len tokens of running text, comparable per token with packed MLM
        stream = [t for e in objective.encode(texts) for t in e]
        w = args.seq_len - 2
        import numpy as np

        examples = [np.asarray(stream[i : i + w]) for i in range(0, len(stream) - w, w)]
    else:
        examples = objective.encode(texts)
    precision = resolve_precision(args.precision, device)
    objective.to(device)
    flops_step, tokens_counted = count_flops(objective, examples, args.batch_size, device=device, precision=precision)
    marks: dict[str, float] = {}

    def on_step(done, result):
        if done in (args.warmup, args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[f"t{done}"] = time.perf_counter()
            marks[f"tok{done}"] = result.tokens
            marks[f"smp{done}"] = result.samples

    cfg = TrainConfig(
        steps=args.warmup + args.steps,
        batch_size=args.batch_size,
        learning_rate=1e-4,
        precision=args.precision,
        device=str(device),
        compile=args.compile,
        attention=args.attention,
        checkpoint_every=10**9,
        log_every=10**9,
        seed=0,
        progress=False,
    )
    result = train(objective, examples, cfg, on_step=on_step, desc=f"bench-{objective_name}")
    a, b = args.warmup, args.warmup + args.steps
    seconds = marks[f"t{b}"] - marks[f"t{a}"]
    tokens, samples = marks[f"tok{b}"] - marks[f"tok{a}"], marks[f"smp{b}"] - marks[f"smp{a}"]
    flops_per_token = flops_step / tokens_counted
    achieved = flops_per_token * tokens / seconds
    name, peak = peak_flops(device)
    n_params = sum(p.numel() for p in objective.encoder.parameters())
    return {
        "objective": objective_name,
        "tokens_per_s": round(tokens / seconds, 1),
        "samples_per_s": round(samples / seconds, 1),
        "step_ms": round(1000 * seconds / args.steps, 2),
        "tokens_per_step": round(tokens / args.steps, 1),
        "flops_per_token": round(flops_per_token),
        "achieved_tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "encoder_parameters": n_params,
        "precision": precision,
        "final_loss": result.losses[-1][1],
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SIZES), default=None, help="default: base on CUDA, tiny on CPU")
    ap.add_argument("--objectives", nargs="+", default=["mlm", "tsdae"], choices=["mlm", "tsdae"])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on CUDA, 10 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on CUDA, 3 on CPU)")
    ap.add_argument("--vocab", type=int, default=50265)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    ap.add_argument("--short-tsdae", action="store_true", help="TSDAE on 50-character sentences, as the study")
    ap.add_argument(
        "--attention",
        default="auto",
        choices=["auto", "flash", "cudnn", "efficient", "math"],
        help="pin the SDPA kernel",
    )
    ap.add_argument(
        "--attention-dropout", type=float, default=None, help="override the config's attention dropout (RoBERTa: 0.1)"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.model = args.model or ("base" if gpu else "tiny")
    args.batch_size = args.batch_size or (256 if gpu else 32)
    args.steps = args.steps or (30 if gpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 3)
    quiet_transformers()
    texts = finish_corpus(list(synthetic_catalogue()["Description"]) + synthetic_dapt_corpus(40000), 200, 3)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(
            args.model,
            args.seq_len,
            args.vocab,
            workdir=Path(tmp),
            texts=texts,
            attention_dropout=args.attention_dropout,
        )
        runs = [bench_one(o, model_dir, texts, args=args, device=device) for o in args.objectives]
    name, peak = peak_flops(device)
    out = {
        "bench": "pretrain_throughput",
        "device": name,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "torch": torch.__version__,
        "model": args.model,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "compile": args.compile,
        "attention_dropout": args.attention_dropout,
        "attention": args.attention,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "threads": torch.get_num_threads(),
        "results": runs,
        "command": "python bench/pretrain_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    emit(out, args.out)
    return out


if __name__ == "__main__":
    main()
