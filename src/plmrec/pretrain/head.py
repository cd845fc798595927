"""An informed start for an MLM head that a checkpoint does not ship (MiniLM and most
sentence-transformers checkpoints keep the encoder only).

A random head predicts nothing, so the first MLM steps send noise back into the encoder. Here the
head starts from what the frozen encoder already knows:
  - the output bias is the log unigram frequency of the corpus tokens;
  - the transform (dense -> GELU -> LayerNorm) starts as the ridge regression from the encoder's
    hidden state at masked positions to the input embedding of the masked token, which the tied
    decoder turns into logits; its bias shifts the GELU into its near-linear range, and the
    LayerNorm scale is the one (of a small grid) with the lowest loss on held-out rows.
`warm_up_head` then trains the head alone, the encoder frozen, before the encoder is touched.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmrec.pretrain.objectives import IGNORE, mask_tokens

SHIFT = 4.0  # pre-activation mean: GELU is close to linear around it, and bf16 still resolves a unit spread
SCALES = (1.0, 2.0, 4.0, 8.0)


def head_parts(head: nn.Module) -> tuple[nn.Linear, nn.LayerNorm, nn.Parameter] | None:
    """(dense, layer norm, output bias) of a BERT-style (cls) or RoBERTa-style (lm_head) MLM head."""
    predictions = getattr(head, "predictions", None)
    if predictions is not None and hasattr(predictions, "transform"):  # BERT, MiniLM, DistilBERT-like
        transform = predictions.transform
        return transform.dense, transform.LayerNorm, predictions.bias
    if all(hasattr(head, name) for name in ("dense", "layer_norm", "bias")):  # RoBERTa
        return head.dense, head.layer_norm, head.bias
    return None


def _masked_rows(objective, examples: list[np.ndarray], *, max_rows: int, seed: int):
    """Hidden states [R, H] at freshly masked positions and their target token ids [R], frozen encoder."""
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(examples))
    hidden, targets, count = [], [], 0
    with torch.no_grad():
        for start in range(0, len(order), 32):
            batch = objective.collate([examples[i] for i in order[start : start + 32]], seed=seed + start)
            ids, attn = batch["input_ids"], batch["attention_mask"]
            inputs, labels = mask_tokens(
                ids,
                ~torch.isin(ids, objective._special),
                objective.probability,
                mask_id=objective.tokenizer.mask_token_id,
                vocab_size=objective.vocab_size,
                generator=generator,
            )
            states = objective.encoder(input_ids=inputs, attention_mask=attn).last_hidden_state
            flat = labels.view(-1)
            keep = flat.ne(IGNORE)
            hidden.append(states.reshape(-1, states.shape[-1])[keep].float())
            targets.append(flat[keep])
            count += int(keep.sum())
            if count >= max_rows:
                break
    return torch.cat(hidden), torch.cat(targets)


def _loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(head(hidden).float(), targets).item()


def start_informed_head(objective, examples: list[np.ndarray], *, max_rows: int = 20_000, seed: int = 0) -> dict:
    """Set the fresh head of a MaskedLM objective as described above; returns the held-out loss of the
    random head and of the informed one (what the pretrain report shows)."""
    parts = head_parts(objective.head) if objective.head is not None else None
    if parts is None:
        return {"informed": False, "reason": "no BERT- or RoBERTa-style MLM head"}
    dense, norm, bias = parts
    objective.model.eval()
    hidden, targets = _masked_rows(objective, examples, max_rows=max_rows, seed=seed)
    if len(targets) < 2 * hidden.shape[1]:
        objective.model.train()
        return {"informed": False, "reason": f"only {len(targets)} masked rows: too few to fit the head"}
    cut = int(len(targets) * 0.9)
    fit_h, fit_t, held_h, held_t = hidden[:cut], targets[:cut], hidden[cut:], targets[cut:]
    random_loss = _loss(objective.head, held_h, held_t)
    embeddings = objective.model.get_input_embeddings().weight.detach().float()
    counts = torch.bincount(torch.from_numpy(np.concatenate(examples).astype(np.int64)), minlength=len(bias))
    log_freq = torch.log((counts[: len(bias)].float() + 0.5) / (counts.sum() + 0.5 * len(bias)))
    wanted = embeddings[fit_t]
    dim = hidden.shape[1]
    gram = fit_h.T @ fit_h
    ridge = 1e-3 * gram.diagonal().mean() * torch.eye(dim)
    weight = torch.linalg.solve(gram + ridge, fit_h.T @ wanted)  # [H, H]: hidden -> target embedding
    spread = (fit_h @ weight).std().clamp_min(1e-6)
    with torch.no_grad():
        dense.weight.copy_((weight / spread).T.to(dense.weight.dtype))
        dense.bias.fill_(SHIFT)
        norm.bias.copy_(wanted.mean(0).to(norm.bias.dtype))
        bias.copy_(log_freq.to(bias.dtype))
        row_std = wanted.std(1).mean()
        losses = {}
        for scale in SCALES:
            norm.weight.fill_(float(row_std * scale))
            losses[scale] = _loss(objective.head, held_h, held_t)
        best = min(losses, key=losses.get)
        norm.weight.fill_(float(row_std * best))
    objective.model.train()
    return {
        "informed": True,
        "rows": len(targets),
        "random_head_loss": round(random_loss, 4),
        "informed_head_loss": round(losses[best], 4),
        "layer_norm_scale": best,
    }


def freeze_encoder(objective, frozen: bool) -> None:
    """Freeze (or release) everything but the MLM head's own weights; the tied decoder is the input
    embedding matrix, so it stays frozen with the encoder."""
    for p in objective.encoder.parameters():
        p.requires_grad_(not frozen)


def warm_up_head(
    objective, examples: list[np.ndarray], *, steps: int, learning_rate: float, settings, seed: int
) -> dict:
    """Train the MLM head alone for `steps` (encoder frozen), so the encoder's first MLM gradients come
    through a head that already predicts; returns the loss curve's first and last values."""
    from plmrec.training.loop import TrainConfig, train

    cfg = TrainConfig.from_settings(settings, steps, seed=seed, progress=False)
    cfg.learning_rate, cfg.warmup_ratio, cfg.log_every = learning_rate, 0.0, max(1, steps // 10)
    freeze_encoder(objective, True)
    try:
        result = train(objective, examples, cfg, desc="mlm head warm-up")
    finally:
        freeze_encoder(objective, False)
    return {
        "steps": steps,
        "first_loss": round(result.losses[0][1], 4) if result.losses else None,
        "final_loss": round(result.final_loss, 4),
        "seconds": round(result.seconds, 2),
    }
