"""In-batch InfoNCE over text pairs (sentence-transformers MultipleNegativesRankingLoss or its cached
variant), with an optional auxiliary MLM term (BLaIR), behind the pretraining trainer's objective
interface, so fine-tuning gets the same bf16, accumulation, checkpoint and resume behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmrec.encoders import sentence_model
from plmrec.errors import TrainingConfigError
from plmrec.pretrain.objectives import IGNORE, encoder_fingerprint, mask_tokens, mlm_head
from plmrec.training.batches import pad_sequences


class PairExample:
    """Token ids of one (anchor, positive) pair and the ids of its texts, for in-batch de-duplication."""

    __slots__ = ("anchor", "positive", "anchor_key", "positive_key")

    def __init__(self, anchor: np.ndarray, positive: np.ndarray, anchor_key: int, *, positive_key: int):
        self.anchor, self.positive, self.anchor_key, self.positive_key = anchor, positive, anchor_key, positive_key

    def __len__(self) -> int:
        return len(self.anchor) + len(self.positive)


class Contrastive:
    """Anchors and positives share one encoder; every other positive in the batch is a negative."""

    name = "contrastive"

    def __init__(
        self,
        model_dir: str,
        max_length: int,
        pooling: str = "mean",
        *,
        loss: str = "mnrl",
        scale: float = 20.0,
        mini_batch_size: int = 32,
        mlm_weight: float = 0.0,
        mlm_probability: float = 0.15,
    ):
        from sentence_transformers import losses

        self.model_dir, self.max_length, self.mlm_weight, self.mlm_probability = (
            model_dir,
            max_length,
            mlm_weight,
            mlm_probability,
        )
        self.st = sentence_model(model_dir, pooling, max_length)
        if loss == "mnrl":
            self.loss_fn = losses.MultipleNegativesRankingLoss(self.st, scale=scale)
        elif loss == "cached_mnrl":
            self.loss_fn = losses.CachedMultipleNegativesRankingLoss(
                self.st, scale=scale, mini_batch_size=mini_batch_size
            )
        else:
            raise TrainingConfigError(f"unknown contrastive loss '{loss}' (expected mnrl or cached_mnrl)")
        self.encoder = self.st.transformers_model
        self.tokenizer = self.st.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.head = None
        parts = {"contrastive": self.loss_fn}
        if mlm_weight > 0:
            self.head = self._tied_mlm_head(model_dir)
            parts["mlm_head"] = self.head
            self._special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        self.module = nn.ModuleDict(parts)
        self._texts: list[str] = []

    def _tied_mlm_head(self, model_dir: str) -> nn.Module:
        """The checkpoint's MLM head (freshly initialised if it has none), its decoder tied to the
        sentence encoder's input embeddings."""
        from transformers import AutoModelForMaskedLM

        if self.tokenizer.mask_token_id is None:
            raise TrainingConfigError(f"{model_dir}: the tokenizer has no mask token; set finetune.mlm_weight: 0")
        full = AutoModelForMaskedLM.from_pretrained(model_dir)
        head = mlm_head(full)
        if head is None:
            raise TrainingConfigError(f"{model_dir}: no separable MLM head; set finetune.mlm_weight: 0")
        full.get_output_embeddings().weight = self.encoder.get_input_embeddings().weight
        return head

    def compile(self) -> None:  # pair lengths vary per batch; compiling gains little here
        pass

    def to(self, device: torch.device) -> None:
        self.module.to(device)
        if self.head is not None:
            self._special = self._special.to(device)

    def encode(self, pairs: list[tuple[str, str]]) -> list[PairExample]:
        """Tokenise each distinct text once."""
        keys: dict[str, int] = {}
        for a, p in pairs:
            keys.setdefault(a, len(keys))
            keys.setdefault(p, len(keys))
        self._texts = list(keys)
        ids = self.tokenizer(self._texts, add_special_tokens=True, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        tokens = [np.asarray(x, dtype=np.int64) for x in ids]
        return [PairExample(tokens[keys[a]], tokens[keys[p]], keys[a], positive_key=keys[p]) for a, p in pairs]

    def collate(self, examples: list[PairExample], seed: int) -> dict[str, Any]:
        """Drop pairs whose anchor or positive text is already in the batch: a repeated positive would
        be scored as its own negative."""
        seen: set[int] = set()
        kept = []
        for e in examples:
            if e.anchor_key in seen or e.positive_key in seen:
                continue
            seen.update((e.anchor_key, e.positive_key))
            kept.append(e)
        a_ids, a_mask = pad_sequences([e.anchor for e in kept], self.pad_id)
        p_ids, p_mask = pad_sequences([e.positive for e in kept], self.pad_id)
        return {
            "anchor": {"input_ids": a_ids, "attention_mask": a_mask},
            "positive": {"input_ids": p_ids, "attention_mask": p_mask},
            "n_tokens": int(a_mask.sum() + p_mask.sum()),
            "n_samples": len(kept),
        }

    def _mlm_loss(self, features: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        ids, attn = features["input_ids"], features["attention_mask"]
        maskable = ~torch.isin(ids, self._special) & attn.bool()
        inputs, labels = mask_tokens(
            ids,
            maskable,
            self.mlm_probability,
            mask_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            generator=generator,
        )
        hidden = self.encoder(input_ids=inputs, attention_mask=attn).last_hidden_state
        flat = labels.view(-1)
        rows = flat.ne(IGNORE).nonzero().squeeze(1)
        if rows.numel() == 0:
            return hidden.sum() * 0.0
        logits = self.head(hidden.reshape(-1, hidden.shape[-1])[rows])
        return F.cross_entropy(logits.float(), flat[rows])

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        loss = self.loss_fn([batch["anchor"], batch["positive"]], labels=None)
        if self.head is not None:
            loss = loss + self.mlm_weight * self._mlm_loss(batch["anchor"], generator)
        return loss

    def start_fingerprint(self) -> str:
        return encoder_fingerprint(self.encoder)

    def save(self, out_dir: str | Path) -> str:
        self.st.save(str(out_dir))
        return encoder_fingerprint(self.encoder)
