"""What survives a killed run: step checkpoints inside a phase, and each finished phase's weights
with its phase.json (what a rerun compares to decide whether the phase is done)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from plmrec.distributed import barrier, is_main_process

CHECKPOINTS_KEPT = 2


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("step-*.pt")) if directory.exists() else []
    return found[-1] if found else None


def save_checkpoint(directory: Path, step: int, state: dict) -> Path:
    """Write step-<step>.pt atomically and keep the newest CHECKPOINTS_KEPT."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    tmp = final.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, final)  # a kill mid-write never leaves a half checkpoint under the real name
    for old in sorted(directory.glob("step-*.pt"))[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
    return final


def save_phase(objective, phase_dir: Path, checkpoint_dir: Path, *, entry: dict) -> dict:
    """A finished phase: its weights and phase.json (with the end fingerprint) written by rank 0,
    its checkpoints removed; under torchrun the other ranks wait until that is done."""
    main = is_main_process()
    if main:
        phase_dir.mkdir(parents=True, exist_ok=True)
    entry = {**entry, "end_fingerprint": objective.save(phase_dir) if main else objective.start_fingerprint()}
    if main:
        (phase_dir / "phase.json").write_text(json.dumps(entry, indent=2))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    barrier()
    return entry
