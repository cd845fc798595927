"""GUIM's two pre-training tasks behind the training loop's objective interface.

An example is an int64 array of rows (item, time bucket, is_target), oldest first: the rows with
is_target 0 are the sequence before the cut-off, those with 1 the items bought after it.

- Masked item modelling: 15% of the sequence's positions are replaced by the mask token (their
  item, id, category and text never reach the encoder); each is predicted by InfoNCE over the
  batch's items.
- Matching: each item bought after the cut-off against the user's C vectors with the mixture score
  alpha * sum_c pi_c cos(u_c, v_j), InfoNCE over the batch's items (the items in every sequence and
  target of the mini-batch, as the paper samples negatives from the other users' sequences). A
  user's other targets are not counted as its negatives. With `repeat_offset`, the items of the
  user's own sequence get a learned offset on their score (retrieval adds the same).
`negatives` > 0 adds that many catalogue items, drawn uniformly once per batch, to the candidates
(mixed negative sampling): more and less popular negatives than the batch alone offers. A softmax
over the whole catalogue only when `negatives` reaches its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from plmrec.pretrain.objectives import encoder_fingerprint
from plmrec.usermodel.model import UserModel, mixture_scores

ITEM, BUCKET, TARGET = 0, 1, 2


def example(items, *, buckets=None, targets=()) -> np.ndarray:
    """One training example: the sequence `items` (oldest first; `buckets` the time bucket of each)
    and the items bought after the cut-off."""
    items = np.asarray(items, dtype=np.int64)
    b = np.zeros(len(items), dtype=np.int64) if buckets is None else np.asarray(buckets, dtype=np.int64)
    t = np.asarray(list(targets), dtype=np.int64)
    seq = np.stack([items, b, np.zeros(len(items), dtype=np.int64)], axis=1)
    tgt = np.stack([t, np.zeros(len(t), dtype=np.int64), np.ones(len(t), dtype=np.int64)], axis=1)
    return np.concatenate([seq, tgt]).reshape(-1, 3)


def pad_batch(sequences: list[np.ndarray], buckets: list[np.ndarray], *, pad_index: int, max_length: int):
    """Right-padded (b, n) item and bucket tensors, each sequence cut to its newest `max_length`."""
    sequences = [s[-max_length:] for s in sequences]
    buckets = [b[-max_length:] for b in buckets]
    width = max(1, max(len(s) for s in sequences))
    seq = np.full((len(sequences), width), pad_index, dtype=np.int64)
    buck = np.zeros_like(seq)
    for i, (s, b) in enumerate(zip(sequences, buckets)):
        seq[i, : len(s)] = s
        buck[i, : len(b)] = b
    return torch.from_numpy(seq), torch.from_numpy(buck)


class UserModelObjective:
    """Masked item modelling + matching; `mlm_weight` 0 trains matching alone."""

    name = "user_model"

    def __init__(
        self,
        model: UserModel,
        *,
        mask_probability: float = 0.15,
        mlm_weight: float = 1.0,
        log_q: np.ndarray | None = None,
        negatives: int = 0,
    ):
        self.model = self.module = model
        self.mask_probability, self.mlm_weight = mask_probability, mlm_weight
        self.negatives = min(int(negatives), model.items.n_items)
        self.log_q = None if log_q is None else torch.as_tensor(log_q, dtype=torch.float32)

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        if self.log_q is not None:
            self.log_q = self.log_q.to(device)

    def compile(self) -> None:  # sequence lengths vary per batch
        pass

    def collate(self, examples: list[np.ndarray], seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        spec, pad, mask = self.model.spec, self.model.pad_index, self.model.mask_index
        seqs, bucks, targets = [], [], []
        for e in examples:
            rows = e[e[:, TARGET] == 0][-spec.max_length :]
            seqs.append(rows[:, ITEM])
            bucks.append(rows[:, BUCKET])
            targets.append(e[e[:, TARGET] == 1, ITEM])
        seq, buckets = pad_batch(seqs, bucks, pad_index=pad, max_length=spec.max_length)
        original = seq.clone()
        # masked item modelling: 15% of real positions, at least one in a sequence of two or more
        real = seq.ne(pad).numpy()
        draw = rng.random(seq.shape) < self.mask_probability
        for i, s in enumerate(seqs):
            if len(s) >= 2 and not draw[i, : len(s)].any():
                draw[i, rng.integers(len(s))] = True
        chosen = torch.from_numpy(draw & real)
        if self.mlm_weight <= 0:
            chosen[:] = False
        seq[chosen] = mask
        n_items = self.model.items.n_items
        drawn = rng.choice(n_items, self.negatives, replace=False) if self.negatives else np.empty(0, np.int64)
        candidates = np.unique(np.concatenate([original[original.ne(pad)].numpy(), *targets, drawn]))
        lookup = {int(c): i for i, c in enumerate(candidates)}
        match_rows, match_cols = [], []
        for i, t in enumerate(targets):
            for item in dict.fromkeys(int(x) for x in t):
                match_rows.append(i)
                match_cols.append(lookup[item])
        positives = torch.zeros((len(examples), len(candidates)), dtype=torch.bool)
        positives[match_rows, match_cols] = True
        own = None  # each user's own sequence items among the candidates, for the learned repeat offset
        if self.model.repeat is not None:
            own = torch.zeros_like(positives)
            for i, s in enumerate(seqs):
                own[i, [lookup[int(x)] for x in s]] = True
        mlm_rows, mlm_pos = chosen.nonzero(as_tuple=True)
        mlm_cols = torch.tensor([lookup[int(x)] for x in original[mlm_rows, mlm_pos]], dtype=torch.long)
        return {
            "seq": seq,
            "buckets": buckets,
            "candidates": torch.from_numpy(candidates.astype(np.int64)),
            "positives": positives,
            "own": own,
            "match_rows": torch.tensor(match_rows, dtype=torch.long),
            "match_cols": torch.tensor(match_cols, dtype=torch.long),
            "mlm_rows": mlm_rows,
            "mlm_pos": mlm_pos,
            "mlm_cols": mlm_cols,
            "n_tokens": int(real.sum()),
            "n_samples": len(examples),
        }

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        model, scale = self.model, self.model.spec.scale
        users, outputs = model(batch["seq"], batch["buckets"])
        users = F.normalize(users, dim=-1)
        items = model.item_vectors(batch["candidates"])
        # sampled softmax: subtracting log q (the chance an item is among the candidates) keeps
        # popular items, which are negatives more often, from being pushed down for it
        correction = 0.0 if self.log_q is None else self.log_q[batch["candidates"]][None]
        loss = users.sum() * 0.0
        if len(batch["match_rows"]):
            rows, cols = batch["match_rows"], batch["match_cols"]
            scores = mixture_scores(users, items, scale)[rows] - correction
            if model.repeat is not None:
                scores = scores + scale * model.repeat * batch["own"][rows]
            others = batch["positives"][rows].clone()
            others[torch.arange(len(rows), device=rows.device), cols] = False
            loss = loss + F.cross_entropy(scores.float().masked_fill(others, float("-inf")), cols)
        if self.mlm_weight > 0 and len(batch["mlm_rows"]):
            predicted = F.normalize(outputs[batch["mlm_rows"], batch["mlm_pos"]], dim=-1)
            logits = scale * predicted @ items.T - correction
            loss = loss + self.mlm_weight * F.cross_entropy(logits.float(), batch["mlm_cols"])
        return loss

    def start_fingerprint(self) -> str:
        return encoder_fingerprint(self.model)

    def save(self, out_dir: str | Path) -> str:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), out / "user_model.pt")
        return encoder_fingerprint(self.model)


def inclusion_log_q(examples: list[np.ndarray], n_items: int, batch_size: int, *, negatives: int = 0) -> np.ndarray:
    """log of the chance that each item is among a batch's candidates: 1 - exp(-m f) for an item
    with share f of the m item rows a batch holds on average, or drawn as one of `negatives`
    uniform negatives (floored for unseen items)."""
    counts = np.bincount(np.concatenate([e[:, ITEM] for e in examples]), minlength=n_items)[:n_items]
    share = counts / max(1, counts.sum())
    rows = batch_size * counts.sum() / max(1, len(examples))
    in_batch = -np.expm1(-rows * share)
    drawn = min(negatives, n_items) / n_items
    return np.log(np.clip(1.0 - (1.0 - in_batch) * (1.0 - drawn), 1e-6, 1.0)).astype(np.float32)
