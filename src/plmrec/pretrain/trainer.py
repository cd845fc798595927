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
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from plmrec.ranks import world_size

CHECKPOINTS_KEPT = 2


class TrainingInterrupted(RuntimeError):
    """Stopped by SIGTERM after saving a checkpoint; rerunning resumes from it."""


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 32
    grad_accum: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    precision: str = "auto"      # auto | bf16 | fp32
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    compile: bool = False
    attention: str = "auto"      # auto | flash | cudnn | efficient | math: the SDPA kernel to use
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_settings(cls, settings, steps: int, seed: int, progress: bool = True) -> "TrainConfig":
        """From a params section with the shared training settings (plmrec.config.TrainingSettings)."""
        keys = ("batch_size", "grad_accum", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
                "precision", "device", "compile", "checkpoint_every", "log_every")
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
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 1),
                "samples_per_s": round(self.samples_per_s, 2)}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from plmrec.pretrain.models import PretrainConfigError

        raise PretrainConfigError(f"device '{name}' requested but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


class BatchPlan:
    """Micro-batches of example indices: a seeded shuffle per epoch, lengths grouped within windows
    of 50 batches (less padding), window order shuffled again. batch(i) depends only on (seed, i)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = np.asarray(lengths), batch_size, seed, window
        self.per_epoch = max(1, math.ceil(len(self.lengths) / batch_size))
        self._epoch, self._batches = -1, []

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start:start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: int) -> np.ndarray:
        epoch = index // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._plan(epoch)
        return self._batches[index % self.per_epoch]


def steps_for_epochs(n_examples: int, epochs: float, batch_size: int, grad_accum: int) -> int:
    micro = math.ceil(n_examples / batch_size)
    return max(1, math.ceil(epochs * micro / grad_accum))


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

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
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


def move_to(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, nested dicts, plain numbers) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); (world, rank)."""
    world = world_size()
    if world == 1:
        return 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size(), dist.get_rank()


class _ObjectiveModule(torch.nn.Module):
    """The objective's loss as a module forward, so DistributedDataParallel can wrap it."""

    def __init__(self, objective):
        super().__init__()
        self.inner = objective.module
        self._objective = objective

    def forward(self, batch, generator):
        return self._objective.loss(batch, generator)


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("step-*.pt")) if directory.exists() else []
    return found[-1] if found else None


def _save_checkpoint(directory: Path, step: int, state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    tmp = final.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, final)  # a kill mid-write never leaves a half checkpoint under the real name
    for old in sorted(directory.glob("step-*.pt"))[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
    return final


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


def train(objective, examples: list[np.ndarray], cfg: TrainConfig, checkpoint_dir: str | Path | None = None,
          on_log: Callable[[int, float], None] | None = None,
          on_step: Callable[[int, PhaseResult], None] | None = None, desc: str = "train") -> PhaseResult:
    """Run `cfg.steps` optimizer steps of `objective` over `examples`, resuming from the newest
    checkpoint in `checkpoint_dir` when one exists."""
    if not examples:
        from plmrec.pretrain.models import PretrainConfigError

        raise PretrainConfigError(f"{desc}: no training examples")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    objective.to(device)
    if cfg.compile:
        objective.compile()
    module = objective.module
    module.train()
    world, rank = init_distributed(device)
    compute, ddp = objective.loss, None
    if world > 1:  # data parallel: each rank takes every world-th micro-batch; gradients averaged
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(_ObjectiveModule(objective), device_ids=[device] if device.type == "cuda"
                                      else None, find_unused_parameters=True)
        compute = ddp
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(module, cfg.weight_decay), lr=cfg.learning_rate, fused=fused)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(cfg.steps, warmup))
    plan = BatchPlan(np.array([len(e) for e in examples]), cfg.batch_size, cfg.seed)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    result = PhaseResult(steps=cfg.steps, device=str(device) if world == 1 else f"{device} x{world} ranks",
                         precision=precision)

    start_step = 0
    if ckpt_dir and (found := latest_checkpoint(ckpt_dir)):
        state = torch.load(found, map_location="cpu", weights_only=False)
        if state["signature"] != cfg.signature():
            from plmrec.pretrain.models import PretrainConfigError

            raise PretrainConfigError(
                f"checkpoint {found} was written with {json.dumps(state['signature'])}, not "
                f"{json.dumps(cfg.signature())}; delete {ckpt_dir} or use another checkpoint_dir")
        if state.get("world", 1) != world:
            from plmrec.pretrain.models import PretrainConfigError

            raise PretrainConfigError(f"checkpoint {found} was written by {state.get('world', 1)} process(es), this run "
                                      f"has {world}: the batch order would differ; resume with the same world size")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start_step = state["step"]
        result.losses = [tuple(x) for x in state["losses"]]
        result.seconds, result.tokens, result.samples = state["seconds"], state["tokens"], state["samples"]
        result.resumed_from_step = start_step
    else:
        torch.manual_seed(cfg.seed)

    def snapshot(step: int) -> dict:
        return {"step": step, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "losses": result.losses, "seconds": result.seconds, "tokens": result.tokens,
                "samples": result.samples, "signature": cfg.signature(), "world": world}

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    attention = _attention_context(cfg.attention)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    progress = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.steps, initial=start_step, desc=desc, unit="step", mininterval=2.0)
    clock = time.perf_counter()
    step = start_step
    try:
        with _sigterm_flag() as stop:
            for step in range(start_step, cfg.steps):
                for micro in range(cfg.grad_accum):
                    index = (step * cfg.grad_accum + micro) * world + rank
                    chosen = plan.batch(index)
                    batch = objective.collate([examples[i] for i in chosen], seed=cfg.seed * 1_000_003 + index)
                    result.tokens += batch["n_tokens"]
                    result.samples += batch["n_samples"]
                    if cfg.compile and device.type == "cuda":  # a new step for CUDA graphs (TORCHINDUCTOR_CUDAGRAPHS=1)
                        torch.compiler.cudagraph_mark_step_begin()
                    generator = torch.Generator(device=device)
                    generator.manual_seed(cfg.seed * 1_000_003 + index)
                    sync = ddp.no_sync() if ddp is not None and micro < cfg.grad_accum - 1 \
                        else contextlib.nullcontext()  # all-reduce once per optimizer step
                    with sync:
                        with autocast, attention:
                            loss = compute(move_to(batch, device), generator)
                        (loss / cfg.grad_accum).backward()
                    loss_sum += loss.detach()
                    loss_count += 1
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done = step + 1
                if world > 1:  # a SIGTERM on any rank stops every rank at the same step
                    flag = torch.tensor([float(stop.is_set())], device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    if flag.item() > 0:
                        stop.set()
                if done % cfg.log_every == 0 or done == cfg.steps:
                    if world > 1:
                        torch.distributed.all_reduce(loss_sum)
                        loss_sum /= world
                    value = (loss_sum / max(1, loss_count)).item()  # the only host sync per log interval
                    loss_sum.zero_()
                    loss_count = 0
                    result.losses.append((done, value))
                    if progress:
                        progress.set_postfix(loss=f"{value:.4f}")
                    if on_log and rank == 0:
                        on_log(done, value)
                if progress:
                    progress.update(1)
                if ckpt_dir and (done % cfg.checkpoint_every == 0 or stop.is_set()) and done < cfg.steps:
                    result.seconds += time.perf_counter() - clock
                    clock = time.perf_counter()
                    if rank == 0:
                        _save_checkpoint(ckpt_dir, done, snapshot(done))
                    barrier()
                if stop.is_set():
                    raise TrainingInterrupted(f"{desc}: stopped by SIGTERM after step {done}; "
                                              f"rerun to resume from {ckpt_dir}")
                if on_step:
                    on_step(done, result)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        if world > 1:  # throughput of the whole job
            totals = torch.tensor([result.tokens, result.samples], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(totals)
            result.tokens, result.samples = int(totals[0].item()), int(totals[1].item())
    finally:
        result.seconds += time.perf_counter() - clock
        if progress:
            progress.close()
    return result
