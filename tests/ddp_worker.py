"""Run under torchrun by test_pretrain_ddp: data-parallel MLM steps and a two-phase schedule."""

import json
import os
import sys
from pathlib import Path

from plmrec.data.synthetic import synthetic_catalogue
from plmrec.pretrain.objectives import encoder_fingerprint, make_objective
from plmrec.pretrain.schedule import run_schedule
from plmrec.training.loop import TrainConfig, train

model_dir, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])
texts = synthetic_catalogue()["Description"].tolist()

objective = make_objective("mlm", model_dir, 32)
start = encoder_fingerprint(objective.encoder)
result = train(
    objective,
    objective.encode(texts),
    TrainConfig(
        steps=6,
        batch_size=4,
        learning_rate=1e-3,
        warmup_ratio=0,
        log_every=2,
        checkpoint_every=3,
        progress=False,
        seed=1,
    ),
    checkpoint_dir=out / "ckpt",
)
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "start": start,
            "end": encoder_fingerprint(objective.encoder),
            "samples": result.samples,
            "device": result.device,
            "losses": result.losses,
        }
    )
)

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_pretrain_params  # noqa: E402

run_schedule(tiny_pretrain_params(model_dir), {"tapt": texts}, out / "schedule", seed=3, progress=False)
