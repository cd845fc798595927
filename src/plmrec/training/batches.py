"""Micro-batches for the training loop: a resumable batch order, padding, moving to a device."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class BatchPlan:
    """Micro-batches of example indices: a seeded shuffle per epoch, lengths grouped within windows
    of 50 batches (less padding), window order shuffled again. batch(i) depends only on (seed, i)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, *, window: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = np.asarray(lengths), batch_size, seed, window
        self.per_epoch = max(1, math.ceil(len(self.lengths) / batch_size))
        self._epoch, self._batches = -1, []

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: int) -> np.ndarray:
        epoch = index // self.per_epoch
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._plan(epoch)
        return self._batches[index % self.per_epoch]


def steps_for_epochs(n_examples: int, epochs: float, batch_size: int, *, grad_accum: int) -> int:
    micro = math.ceil(n_examples / batch_size)
    return max(1, math.ceil(epochs * micro / grad_accum))


def pad_sequences(seqs: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id sequences right-padded to the longest: (input ids, attention mask)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def move_to(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, nested dicts, plain numbers) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch
