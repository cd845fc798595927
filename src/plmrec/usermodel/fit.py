"""Training the user model: the shared training loop (CUDA or CPU, bf16 on GPU, checkpoints and
resume, progress), scored on the valid queries after every epoch; the best epoch by the chosen
metric is kept, and training stops after `patience` epochs without a gain. Test is never read here.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from plmrec.distributed import is_main_process
from plmrec.errors import EarlyStop, TrainingConfigError
from plmrec.training.batches import steps_for_epochs
from plmrec.training.loop import TrainConfig, Trainer
from plmrec.usermodel.model import UserModel
from plmrec.usermodel.objective import UserModelObjective, inclusion_log_q
from plmrec.usermodel.retrieval import UserQueries, evaluate


@dataclass
class FitSettings:
    epochs: int = 30
    patience: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    mask_probability: float = 0.15
    mlm_weight: float = 1.0
    log_q: bool = True
    negatives: int = 0
    select: str = "ndcg@10"
    device: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 20
    progress: bool = True


@dataclass
class FitResult:
    chosen_epoch: int
    valid: dict[str, float]
    by_epoch: list[dict] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    sequences_per_s: float = 0.0
    steps: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return {
            "chosen_epoch": self.chosen_epoch,
            "valid": self.valid,
            "by_epoch": self.by_epoch,
            "seconds": round(self.seconds, 1),
            "sequences_per_s": round(self.sequences_per_s, 1),
            "steps": self.steps,
            "device": self.device,
            "precision": self.precision,
        }


class UserModelTrainer:
    """`fit` trains `model` on `examples`, scores `valid` each epoch, and leaves the best epoch's
    weights in the model."""

    def __init__(
        self,
        model: UserModel,
        examples: list[np.ndarray],
        valid: UserQueries,
        *,
        settings: FitSettings,
        ks: list[int],
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        on_epoch: Callable[[dict], None] | None = None,
        desc: str = "user-model",
    ):
        metric = settings.select.split("@")
        if len(metric) != 2 or metric[0] not in ("recall", "ndcg") or int(metric[1]) not in ks:
            raise TrainingConfigError(
                f"user_model.select '{settings.select}' must be recall@K or ndcg@K with K in {ks}"
            )
        if not examples:
            raise TrainingConfigError(f"{desc}: no training sequences (every user lacks a target after its cut-off)")
        if not len(valid):
            raise TrainingConfigError(f"{desc}: no valid queries to choose the epoch on")
        self.model, self.examples, self.valid, self.settings = model, examples, valid, settings
        self.ks, self.seed, self.on_epoch, self.desc = ks, seed, on_epoch, desc
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.per_epoch = steps_for_epochs(len(examples), 1, settings.batch_size, grad_accum=1)
        self.by_epoch: list[dict] = []
        self.best: dict = {"score": -np.inf, "epoch": 0, "state": None}
        self.eval_seconds = 0.0

    # ------------------------------------------------------------------ per epoch
    def _best_file(self) -> Path | None:
        return self.checkpoint_dir / "best.pt" if self.checkpoint_dir else None

    def _restore_best(self) -> None:
        """After a resume: the epochs scored before the kill and the best weights so far."""
        path = self._best_file()
        if path and path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            self.best, self.by_epoch = saved["best"], saved["by_epoch"]

    def _valid_epoch(self, epoch: int, loss: float) -> None:
        clock = time.perf_counter()
        metrics = evaluate(self.model, self.valid, self.ks)
        self.eval_seconds += time.perf_counter() - clock
        score = metrics[self.settings.select]
        row = {"epoch": epoch, "loss": round(loss, 4), **{k: round(v, 4) for k, v in metrics.items() if "@" in k}}
        self.by_epoch.append(row)
        if score > self.best["score"]:
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            self.best = {"score": score, "epoch": epoch, "state": state, "metrics": row}
        if self.on_epoch:
            self.on_epoch(row)
        path = self._best_file()
        if path and is_main_process():  # under torchrun every rank scores the same replica; one writes
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"best": self.best, "by_epoch": self.by_epoch}, path)
        if epoch - self.best["epoch"] >= self.settings.patience:
            raise EarlyStop(f"{self.desc}: no valid gain for {self.settings.patience} epochs")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        self._restore_best()
        last_loss = {"value": float("nan")}

        def on_log(step: int, value: float) -> None:
            last_loss["value"] = value

        def on_step(done: int, result) -> None:
            if done % self.per_epoch == 0:
                self._valid_epoch(done // self.per_epoch, last_loss["value"])

        config = train_config(self.settings, steps=self.per_epoch * self.settings.epochs, seed=self.seed)
        # a log at least once an epoch, so each epoch's row carries that epoch's loss
        config = dataclasses.replace(config, log_every=min(config.log_every, self.per_epoch))
        trainer = Trainer(
            objective_for(self.model, self.examples, self.settings),
            self.examples,
            config,
            checkpoint_dir=self.checkpoint_dir / "steps" if self.checkpoint_dir else None,
            on_log=on_log,
            on_step=on_step,
            desc=self.desc,
        )
        start = time.perf_counter()
        try:
            trainer.fit()
        except EarlyStop:  # valid stopped improving: the best epoch is kept
            pass
        seconds = time.perf_counter() - start
        if self.best["state"] is None:
            raise TrainingConfigError(f"{self.desc}: no epoch finished; raise user_model.epochs")
        self.model.load_state_dict(self.best["state"])
        if self.checkpoint_dir:
            shutil.rmtree(self.checkpoint_dir / "steps", ignore_errors=True)
        result = trainer.result
        return FitResult(
            chosen_epoch=self.best["epoch"],
            valid=self.best["metrics"],
            by_epoch=self.by_epoch,
            losses=result.losses,
            seconds=seconds,
            sequences_per_s=result.samples / max(1e-9, result.seconds - self.eval_seconds),
            steps=len(self.by_epoch) * self.per_epoch,
            device=result.device,
            precision=result.precision,
        )


def fit(model, examples, valid, **options) -> FitResult:
    """`UserModelTrainer(model, examples, valid, **options).fit()`."""
    return UserModelTrainer(model, examples, valid, **options).fit()


def train_config(settings: FitSettings, *, steps: int, seed: int) -> TrainConfig:
    """The shared training loop's settings for `steps` optimizer steps."""
    keys = (
        "batch_size",
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "precision",
        "device",
        "checkpoint_every",
        "log_every",
        "progress",
    )
    return TrainConfig(steps=steps, seed=seed, **{k: getattr(settings, k) for k in keys})


def objective_for(model: UserModel, examples: list[np.ndarray], settings: FitSettings) -> UserModelObjective:
    """The two tasks over `model`, with the log-q correction measured on `examples` when asked for."""
    log_q = (
        inclusion_log_q(examples, model.items.n_items, settings.batch_size, negatives=settings.negatives)
        if settings.log_q
        else None
    )
    return UserModelObjective(
        model,
        mask_probability=settings.mask_probability,
        mlm_weight=settings.mlm_weight,
        log_q=log_q,
        negatives=settings.negatives,
    )
