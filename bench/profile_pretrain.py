"""Where a pretraining step spends GPU time: torch.profiler over a few steps of the real loop.

  python bench/profile_pretrain.py --model base --batch-size 256 [--compile]
Prints the top CUDA kernels and the share of wall time the GPU was busy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_throughput as pt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="base")
    ap.add_argument("--objective", default="mlm")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args()
    pt.quiet_transformers()
    device = pt.resolve_device("auto")
    texts = pt.finish_corpus(list(pt.synthetic_catalogue()["Description"]) + pt.synthetic_dapt_corpus(40000), 200, 3)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = pt.make_model(a.model, a.seq_len, 50265, workdir=Path(tmp), texts=texts)
        obj = pt.make_objective(a.objective, str(model_dir), a.seq_len, packing=True)
        examples = obj.encode(texts)
        prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
            schedule=torch.profiler.schedule(wait=8, warmup=2, active=3),
        )

        def on_step(done, result):
            prof.step()

        cfg = pt.TrainConfig(
            steps=14,
            batch_size=a.batch_size,
            device=str(device),
            compile=a.compile,
            checkpoint_every=10**9,
            log_every=10**9,
            progress=False,
        )
        with prof:
            pt.train(obj, examples, cfg, None, on_step=on_step)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
