"""The BLaIR ranker: a sentence encoder fine-tuned on (review, item text) pairs with in-batch
InfoNCE and BLaIR's auxiliary MLM term (`search.blair.mlm_weight`, 0.1), from the training reviews
of a search benchmark only (every one before the valid cut-off)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from plmrec.config import BlairParams, FinetunePhaseParams
from plmrec.errors import TrainingConfigError
from plmrec.finetune.contrastive import Contrastive
from plmrec.finetune.pairs import review_item_pairs
from plmrec.training.loop import run_phase

STAGE = "evaluate-search"


def blair_pairs(training: pd.DataFrame, settings: BlairParams, *, seed: int) -> list[tuple[str, str]]:
    """(review title + text, item text) for every training review of an item with text."""
    with_text = training[training["item_text"].fillna("").str.len() > 0]
    return review_item_pairs(with_text, settings.min_chars, settings.max_pairs, seed=seed)


def train_blair(
    training: pd.DataFrame, settings: BlairParams, start_model: str, *, out_dir: str | Path, seed: int
) -> tuple[Path, dict]:
    """Fine-tune from `start_model`; returns (the encoder's directory, its phase record). A finished
    run with the same record is reused, not trained again."""
    pairs = blair_pairs(training, settings, seed=seed)
    if not pairs:
        raise TrainingConfigError(
            f"BLaIR: no (review, item) pairs of at least {settings.min_chars} characters in "
            f"{len(training):,} training reviews; lower search.blair.min_chars or give more reviews"
        )
    out = Path(out_dir)
    phase_dir = out / "encoder"
    record = {
        "start_model": start_model,
        "seed": seed,
        "pairs": len(pairs),
        "settings": settings.model_dump(mode="json", exclude={"resources", "device", "log_every", "precision"}),
    }
    done = phase_dir / "phase.json"
    if done.exists() and json.loads(done.read_text()).get("record") == record:
        print(f"[plmrec] {STAGE}: BLaIR seed {seed} already trained, reused", flush=True)
        return phase_dir, json.loads(done.read_text())
    objective = Contrastive(
        start_model,
        settings.max_length,
        settings.pooling,
        scale=settings.scale,
        mlm_weight=settings.mlm_weight,
        mlm_probability=settings.mlm_probability,
    )
    entry = run_phase(
        objective,
        objective.encode(pairs),
        FinetunePhaseParams(task="review_item", epochs=settings.epochs),
        stage=STAGE,
        settings=settings,
        seed=seed,
        label=f"blair-seed{seed}",
        phase_dir=phase_dir,
        checkpoint_root=out / "checkpoints",
        facts={"record": record, "pairs": len(pairs), "start_fingerprint": objective.start_fingerprint()},
    )
    return phase_dir, entry
