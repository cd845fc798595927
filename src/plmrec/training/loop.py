"""One training loop for every objective, on CUDA or CPU: bf16 autocast, fused AdamW, gradient
accumulation, optional torch.compile, and checkpoints that a killed run resumes from.

Under torchrun (WORLD_SIZE > 1) the loop is data parallel: DistributedDataParallel averages the
gradients, rank r takes micro-batches r, r + world, ..., rank 0 writes the checkpoints.

The batch order is a pure function of (seed, micro-batch index), and each micro-batch draws its
masks or noise from a generator seeded by that index, so a resumed run sees exactly the batches
the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmrec.distributed import barrier, init_distributed
from plmrec.errors import TrainingConfigError, TrainingInterrupted
from plmrec.training.batches import BatchPlan, move_to, steps_for_epochs
from plmrec.training.checkpoints import latest_checkpoint, save_checkpoint, save_phase
from plmrec.training.device import resolve_device, resolve_precision


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False
    attention: str = "auto"  # auto | flash | cudnn | efficient | math: the SDPA kernel to use
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_settings(cls, settings, steps: int, seed: int, *, progress: bool = True) -> TrainConfig:
        """From a params section with the shared training settings (plmrec.config.TrainingSettings)."""
        keys = (
            "batch_size",
            "grad_accum",
            "learning_rate",
            "weight_decay",
            "warmup_ratio",
            "max_grad_norm",
            "precision",
            "device",
            "compile",
            "checkpoint_every",
            "log_every",
        )
        return cls(steps=steps, seed=seed, progress=progress, **{k: getattr(settings, k) for k in keys})

    def signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (not logging or device settings)."""
        keys = ("steps", "batch_size", "grad_accum", "learning_rate", "weight_decay", "warmup_ratio", "seed")
        return {k: getattr(self, k) for k in keys}


@dataclass
class PhaseResult:
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    samples: int = 0
    resumed_from_step: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    peak_memory_bytes: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1] if self.losses else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "samples_per_s": round(self.samples_per_s, 2),
        }


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay, seen = [], [], set()
    for name, p in module.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _attention_context(name: str):
    """Pin scaled-dot-product attention to one kernel (torch.compile may otherwise pick math)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return _Reusable(lambda: sdpa_kernel([backends[name]]))


class _Reusable:
    """A context manager made fresh on each entry (sdpa_kernel's cannot be re-entered)."""

    def __init__(self, factory):
        self.factory, self.stack = factory, []

    def __enter__(self):
        cm = self.factory()
        self.stack.append(cm)
        return cm.__enter__()

    def __exit__(self, *exc):
        return self.stack.pop().__exit__(*exc)


class _ObjectiveModule(torch.nn.Module):
    """The objective's loss as a module forward, so DistributedDataParallel can wrap it."""

    def __init__(self, objective):
        super().__init__()
        self.inner = objective.module
        self._objective = objective

    def forward(self, batch, generator):
        return self._objective.loss(batch, generator)


@contextlib.contextmanager
def _sigterm_flag():
    """Turn SIGTERM (pod eviction, preemption) into a flag checked at step boundaries."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


class Trainer:
    """Runs `cfg.steps` optimizer steps of `objective` over `examples`, resuming from the newest
    checkpoint in `checkpoint_dir` when one exists. `fit` is the loop; each part of a step is a
    named method."""

    def __init__(
        self,
        objective,
        examples: list[np.ndarray],
        cfg: TrainConfig,
        *,
        checkpoint_dir: str | Path | None = None,
        on_log: Callable[[int, float], None] | None = None,
        on_step: Callable[[int, PhaseResult], None] | None = None,
        desc: str = "train",
    ):
        if not examples:
            raise TrainingConfigError(f"{desc}: no training examples")
        self.objective, self.examples, self.cfg, self.desc = objective, examples, cfg, desc
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_log, self.on_step = on_log, on_step

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, objective = self.cfg, self.objective
        self.device = device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, device)
        objective.to(device)
        if cfg.compile:
            objective.compile()
        self.module = module = objective.module
        module.train()
        self.world, self.rank = init_distributed(device)
        self.compute, self.ddp = objective.loss, None
        if self.world > 1:  # data parallel: each rank takes every world-th micro-batch; gradients averaged
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                _ObjectiveModule(objective),
                find_unused_parameters=True,
                device_ids=[device] if device.type == "cuda" else None,
            )
            self.compute = self.ddp
        self.optimizer = torch.optim.AdamW(
            _param_groups(module, cfg.weight_decay), lr=cfg.learning_rate, fused=device.type == "cuda"
        )
        warmup = int(cfg.warmup_ratio * cfg.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(cfg.steps, warmup))
        self.plan = BatchPlan(np.array([len(e) for e in self.examples]), cfg.batch_size, cfg.seed)
        self.result = PhaseResult(
            steps=cfg.steps,
            precision=self.precision,
            device=str(device) if self.world == 1 else f"{device} x{self.world} ranks",
        )
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        )
        self.attention = _attention_context(cfg.attention)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0

    def _resume(self) -> int:
        """The step to start from: the newest checkpoint's, restored in full, or 0."""
        cfg, found = self.cfg, self.checkpoint_dir and latest_checkpoint(self.checkpoint_dir)
        if not found:
            torch.manual_seed(cfg.seed)
            return 0
        state = torch.load(found, map_location="cpu", weights_only=False)
        if state["signature"] != cfg.signature():
            raise TrainingConfigError(
                f"checkpoint {found} was written with {json.dumps(state['signature'])}, not "
                f"{json.dumps(cfg.signature())}; delete {self.checkpoint_dir} or use another checkpoint_dir"
            )
        if state.get("world", 1) != self.world:
            raise TrainingConfigError(
                f"checkpoint {found} was written by {state.get('world', 1)} process(es), this "
                f"run has {self.world}: the batch order would differ; resume with the same "
                f"world size"
            )
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        result = self.result
        result.losses = [tuple(x) for x in state["losses"]]
        result.seconds, result.tokens, result.samples = state["seconds"], state["tokens"], state["samples"]
        result.resumed_from_step = state["step"]
        return state["step"]

    # ------------------------------------------------------------------ one step
    def _micro_batch(self, index: int, last: bool) -> None:
        """Forward and backward of micro-batch `index`; gradients all-reduced only on the `last`."""
        cfg, device, result = self.cfg, self.device, self.result
        chosen = self.plan.batch(index)
        batch = self.objective.collate([self.examples[i] for i in chosen], seed=cfg.seed * 1_000_003 + index)
        result.tokens += batch["n_tokens"]
        result.samples += batch["n_samples"]
        if cfg.compile and device.type == "cuda":  # a new step for CUDA graphs (TORCHINDUCTOR_CUDAGRAPHS=1)
            torch.compiler.cudagraph_mark_step_begin()
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed * 1_000_003 + index)
        sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with self.autocast, self.attention:
                loss = self.compute(move_to(batch, device), generator)
            (loss / cfg.grad_accum).backward()
        self.loss_sum += loss.detach()
        self.loss_count += 1

    def _train_step(self, step: int) -> None:
        cfg = self.cfg
        for micro in range(cfg.grad_accum):
            self._micro_batch((step * cfg.grad_accum + micro) * self.world + self.rank, micro == cfg.grad_accum - 1)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _agree_on_stop(self, stop: threading.Event) -> None:
        """A SIGTERM on any rank stops every rank at the same step."""
        if self.world > 1:
            flag = torch.tensor([float(stop.is_set())], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0:
                stop.set()

    def _log_loss(self, done: int, progress) -> None:
        """The mean loss since the last log: one host sync per log interval."""
        if self.world > 1:
            torch.distributed.all_reduce(self.loss_sum)
            self.loss_sum /= self.world
        value = (self.loss_sum / max(1, self.loss_count)).item()
        self.loss_sum.zero_()
        self.loss_count = 0
        self.result.losses.append((done, value))
        if progress:
            progress.set_postfix(loss=f"{value:.4f}")
        if self.on_log and self.rank == 0:
            self.on_log(done, value)

    def _snapshot(self, step: int) -> dict:
        result, device = self.result, self.device
        return {
            "step": step,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "losses": result.losses,
            "seconds": result.seconds,
            "tokens": result.tokens,
            "samples": result.samples,
            "signature": self.cfg.signature(),
            "world": self.world,
        }

    def _save_checkpoint(self, done: int) -> None:
        now = time.perf_counter()
        self.result.seconds += now - self._clock
        self._clock = now
        if self.rank == 0:
            save_checkpoint(self.checkpoint_dir, done, self._snapshot(done))
        barrier()

    def _finish(self) -> None:
        """Peak memory on CUDA; under torchrun, the throughput of the whole job."""
        result, device = self.result, self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        if self.world > 1:
            totals = torch.tensor([result.tokens, result.samples], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(totals)
            result.tokens, result.samples = int(totals[0].item()), int(totals[1].item())

    # ------------------------------------------------------------------ the loop
    def fit(self) -> PhaseResult:
        self._setup()
        cfg, result = self.cfg, self.result
        start_step = self._resume()
        progress = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.steps, initial=start_step, desc=self.desc, unit="step", mininterval=2.0)
        self._clock = time.perf_counter()
        try:
            with _sigterm_flag() as stop:
                for step in range(start_step, cfg.steps):
                    self._train_step(step)
                    done = step + 1
                    self._agree_on_stop(stop)
                    if done % cfg.log_every == 0 or done == cfg.steps:
                        self._log_loss(done, progress)
                    if progress:
                        progress.update(1)
                    if self.checkpoint_dir and (done % cfg.checkpoint_every == 0 or stop.is_set()) and done < cfg.steps:
                        self._save_checkpoint(done)
                    if stop.is_set():
                        raise TrainingInterrupted(
                            f"{self.desc}: stopped by SIGTERM after step {done}; "
                            f"rerun to resume from {self.checkpoint_dir}"
                        )
                    if self.on_step:
                        self.on_step(done, result)
            self._finish()
        finally:
            result.seconds += time.perf_counter() - self._clock
            if progress:
                progress.close()
        return result


def train(objective, examples: list[np.ndarray], cfg: TrainConfig, **options) -> PhaseResult:
    """`Trainer(objective, examples, cfg, **options).fit()`; the options are the Trainer's keywords
    (checkpoint_dir, on_log, on_step, desc)."""
    return Trainer(objective, examples, cfg, **options).fit()


def run_phase(
    objective,
    examples: list,
    phase,
    *,
    stage: str,
    settings,
    seed: int,
    label: str,
    phase_dir: Path,
    checkpoint_root: Path,
    facts: dict,
    on_log: Callable[[str, int, float], None] | None = None,
    progress: bool = True,
) -> dict:
    """One phase of a schedule (pretraining or fine-tuning): `phase.steps` optimizer steps, or
    `phase.epochs` over the examples, with the section's training `settings`, resuming from the phase's
    checkpoints; then the phase is saved and reported in one `[plmrec] <stage>:` line. Returns the phase's
    entry (phase.json: label, `facts`, the training result)."""
    steps = phase.steps or steps_for_epochs(
        len(examples), phase.epochs, settings.batch_size, grad_accum=settings.grad_accum
    )
    cfg = TrainConfig.from_settings(settings, steps, seed=seed, progress=progress)
    result = train(
        objective,
        examples,
        cfg,
        checkpoint_dir=checkpoint_root / label,
        on_log=(lambda step, value: on_log(label, step, value)) if on_log else None,
        desc=label,
    )
    entry = save_phase(
        objective, phase_dir, checkpoint_root / label, entry={"label": label, **facts, **result.to_dict()}
    )
    print(
        f"[plmrec] {stage}: phase {label} {result.steps} steps on {len(examples):,} examples in {result.seconds:.1f}s "
        f"on {result.device} ({result.precision}), {result.tokens_per_s:,.0f} tokens/s, "
        f"final loss {result.final_loss:.4f}",
        flush=True,
    )
    return entry
