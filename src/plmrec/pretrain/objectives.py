"""Pretraining objectives behind one small interface: masked language modelling and TSDAE.

An objective turns texts into examples (token ids, once), examples into a CPU batch, and a
device batch into a loss. The trainer owns devices, precision, optimisation and checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmrec.errors import TrainingConfigError
from plmrec.training.batches import pad_sequences

IGNORE = -100
VOCAB_MULTIPLE = 64
ROWS_MULTIPLE = 64


def encoder_fingerprint(model: nn.Module) -> str:
    """A hash of an encoder's weights (pooler excluded), to check that phases hand weights on. The
    pooler is left out wherever it sits (an HF encoder's `pooler.`, a sentence-transformers model's
    `0.auto_model.pooler.`): nothing here reads it, and a checkpoint without one gets a random one."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".pooler." in f".{name}":
            continue
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def retention_loss(
    teacher: nn.Module, inputs: torch.Tensor, *, attn: torch.Tensor | None, hidden: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Learning without forgetting: mean 1 - cos between `hidden` (the encoder being trained, on
    `inputs`) and the frozen `teacher`'s outputs on the same inputs, over the positions in `keep`."""
    with torch.no_grad():
        start = teacher(input_ids=inputs, attention_mask=attn).last_hidden_state
    return (1 - F.cosine_similarity(hidden[keep].float(), start[keep].float(), dim=-1)).mean()


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    probability: float,
    *,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's dynamic masking: choose `probability` of the maskable positions; of those 80% become
    the mask token, 10% a random token and 10% stay; labels are IGNORE elsewhere."""
    shape, dev = input_ids.shape, input_ids.device
    chosen = (torch.rand(shape, generator=generator, device=dev) < probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(shape, generator=generator, device=dev)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=dev)
    out = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, out)
    return out, labels


def mlm_head(model: nn.Module) -> nn.Module | None:
    """The prediction head of a *ForMaskedLM model that maps hidden states [N, H] to logits [N, V]."""
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


class MaskedLM:
    """MLM with fresh masks every batch; logits only at the masked positions.

    `retain_weight` > 0 adds a learning-without-forgetting term: at every unmasked position, 1 - cos
    between the encoder's output and that of a frozen copy of the phase's starting encoder on the same
    input, averaged, times the weight. It keeps the token vectors (and so their mean-pooled sentence
    vectors) near where they started while the masked positions learn the shop's words.
    """

    name = "mlm"

    def __init__(
        self,
        model_dir: str,
        max_length: int,
        mlm_probability: float = 0.15,
        *,
        packing: bool = True,
        retain_weight: float = 0.0,
    ):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.model_dir, self.max_length, self.probability, self.packing = (
            model_dir,
            max_length,
            mlm_probability,
            packing,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.mask_token_id is None:
            raise TrainingConfigError(f"{model_dir}: the tokenizer has no mask token, so it cannot do MLM")
        self.model, info = AutoModelForMaskedLM.from_pretrained(
            model_dir, attn_implementation="sdpa", output_loading_info=True
        )
        fresh = [k for k in info.get("missing_keys", []) if not k.startswith(self.model.base_model_prefix + ".")]
        self.fresh_head = bool(fresh)  # e.g. sentence-transformers checkpoints: the encoder only
        if fresh:
            print(
                f"[plmrec] pretrain: {model_dir} has no trained MLM head ({len(fresh)} head weights are new; "
                f"pretrain.mlm_head decides how they start)",
                flush=True,
            )
        if self.model.config.vocab_size % VOCAB_MULTIPLE:  # e.g. RoBERTa's 50,265: unaligned GEMMs are slow
            real = self.model.config.vocab_size
            self.model.resize_token_embeddings(pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)
            with torch.no_grad():  # unused rows: deterministic zeros, not random draws
                self.model.get_input_embeddings().weight[real:] = 0
                bias = getattr(self.model.get_output_embeddings(), "bias", None)
                if bias is not None:
                    bias[real:] = 0
        self.module = self.model
        self.encoder = self.model.base_model
        self.head = mlm_head(self.model)
        self._encode_fn = self.encoder
        self._head_loss_fn = self._head_loss
        self._special = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
        self.vocab_size = len(self.tokenizer)  # random replacements come from real tokens only
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.retain_weight, self.teacher = retain_weight, None
        if retain_weight > 0:
            if self.head is None:
                raise TrainingConfigError(
                    f"{model_dir}: pretrain.retain_weight needs an MLM head that splits off the encoder; "
                    f"this architecture's does not (set pretrain.retain_weight: 0)"
                )
            self.teacher = copy.deepcopy(self.encoder).eval().requires_grad_(False)

    def compile(self) -> None:
        """Compile each transformer layer, not the whole encoder: traced whole, Hugging Face builds a
        dense attention mask even when there is no padding, which rules out flash attention."""
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList):
            for layer in layers:
                layer.compile(dynamic=not self.packing)
        else:
            self._encode_fn = torch.compile(self.encoder, dynamic=not self.packing)
        if self.head is not None:  # head, fp32 upcast and cross-entropy fused; the masked row count varies
            self._head_loss_fn = torch.compile(self._head_loss, dynamic=True)

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        self._special = self._special.to(device)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        if not self.packing:
            return [np.asarray(x, dtype=np.int32) for x in ids if len(x) > 2]
        stream = np.fromiter((t for seq in ids for t in seq), dtype=np.int32)
        n = len(stream) // self.max_length
        if n == 0:
            return [stream] if len(stream) > 2 else []
        return list(stream[: n * self.max_length].reshape(n, self.max_length))

    def collate(self, examples: list[np.ndarray], seed: int) -> dict[str, Any]:
        ids, mask = pad_sequences(examples, self.pad_id)
        full = bool(mask.all())
        return {
            "input_ids": ids,
            "attention_mask": None if full else mask,
            "n_tokens": int(mask.sum()),
            "n_samples": len(examples),
        }

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        maskable = ~torch.isin(ids, self._special)
        inputs, labels = mask_tokens(
            ids,
            maskable,
            self.probability,
            mask_id=self.tokenizer.mask_token_id,
            vocab_size=self.vocab_size,
            generator=generator,
        )
        if self.head is None:  # an architecture whose head we cannot split off: full logits
            return self.model(input_ids=inputs, attention_mask=attn, labels=labels).loss
        hidden = self._encode_fn(input_ids=inputs, attention_mask=attn).last_hidden_state
        flat_labels = labels.view(-1)
        positions = flat_labels.ne(IGNORE).nonzero().squeeze(1)
        count = positions.numel()
        pad = (-count) % ROWS_MULTIPLE  # aligned row counts keep the vocabulary GEMMs on fast kernels
        if pad:
            positions = torch.cat([positions, positions.new_zeros(pad)])
        targets = flat_labels[positions]
        if pad:
            targets[count:] = IGNORE
        total = self._head_loss_fn(hidden.reshape(-1, hidden.shape[-1])[positions], targets)
        loss = total / max(count, 1)
        if self.teacher is not None and hidden.requires_grad:  # not while the head warms up alone
            keep = labels.eq(IGNORE) if attn is None else labels.eq(IGNORE) & attn.bool()
            loss = loss + self.retain_weight * retention_loss(self.teacher, inputs, attn=attn, hidden=hidden, keep=keep)
        return loss

    def _head_loss(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the MLM head's logits for the masked rows [R, H]."""
        logits = self.head(rows)
        return F.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE)

    def start_fingerprint(self) -> str:
        return encoder_fingerprint(self.encoder)

    def save(self, out_dir: str | Path) -> str:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return encoder_fingerprint(self.encoder)


def word_start_table(tokenizer) -> np.ndarray:
    """For each token id: does it begin a word? From the tokenizer's own marks (WordPiece '##',
    byte-level BPE 'Ġ', SentencePiece '▁'), so word deletion needs no external word splitter."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    vocab = [t or "" for t in vocab]
    if any(t.startswith("##") for t in vocab):
        return np.array([not t.startswith("##") for t in vocab])
    for mark in ("Ġ", "▁"):
        if any(t.startswith(mark) for t in vocab):
            return np.array([t.startswith(mark) for t in vocab])
    return np.ones(len(vocab), dtype=bool)


def delete_words(ids: np.ndarray, starts: np.ndarray, ratio: float, *, rng: np.random.Generator) -> np.ndarray:
    """TSDAE's noise: drop whole words with probability `ratio`, keeping at least one."""
    if len(ids) == 0 or ratio <= 0:
        return ids
    begins = starts[ids].copy()
    begins[0] = True
    word_of_token = np.cumsum(begins) - 1
    n_words = int(word_of_token[-1]) + 1
    keep = rng.random(n_words) >= ratio
    if not keep.any():
        keep[rng.integers(n_words)] = True
    return ids[keep[word_of_token]]


class Tsdae:
    """TSDAE through sentence-transformers: a pooled sentence vector of the noisy text must let a
    decoder tied to the encoder reconstruct the clean text. `retain_weight` as MaskedLM's, over every
    unpadded position of the noisy text."""

    name = "tsdae"

    def __init__(
        self,
        model_dir: str,
        max_length: int,
        pooling: str = "mean",
        *,
        deletion_ratio: float = 0.6,
        retain_weight: float = 0.0,
    ):
        from sentence_transformers import SentenceTransformer, losses, models
        from transformers import AutoConfig

        self.model_dir, self.max_length, self.ratio = model_dir, max_length, deletion_ratio
        hidden = AutoConfig.from_pretrained(model_dir).hidden_size
        word = models.Transformer(model_dir, max_seq_length=max_length)
        self.st = SentenceTransformer(modules=[word, models.Pooling(hidden, pooling)], device="cpu")
        self.loss_fn = losses.DenoisingAutoEncoderLoss(self.st, tie_encoder_decoder=True)
        self.module = self.loss_fn
        self.encoder = self.st.transformers_model
        self.tokenizer = self.st.tokenizer
        self._starts = word_start_table(self.tokenizer)
        if self.tokenizer.cls_token_id is None or self.tokenizer.sep_token_id is None:
            raise TrainingConfigError(f"{model_dir}: TSDAE needs a tokenizer with begin (cls) and end (sep) tokens")
        self.pad_id = self.tokenizer.pad_token_id
        self.retain_weight, self.teacher, self._tokens = retain_weight, None, {}
        if retain_weight > 0:
            self.teacher = copy.deepcopy(self.encoder).eval().requires_grad_(False)
            # the loss calls the encoder inside sentence-transformers: keep its token vectors
            self.st[0].register_forward_hook(lambda _m, _in, out: self._tokens.update(out=out["token_embeddings"]))

    def compile(self) -> None:  # the decoder's shapes vary per batch; compiling gains little here
        pass

    def to(self, device: torch.device) -> None:
        self.loss_fn.to(device)
        if self.teacher is not None:
            self.teacher.to(device)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length - 2)[
            "input_ids"
        ]
        return [np.asarray(x, dtype=np.int64) for x in ids if len(x) > 0]

    def collate(self, examples: list[np.ndarray], seed: int) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        wrap = lambda x: np.concatenate(([cls], x, [sep]))  # noqa: E731
        noisy = [wrap(delete_words(e, self._starts, self.ratio, rng=rng)) for e in examples]
        clean = [wrap(e) for e in examples]
        n_ids, n_mask = pad_sequences(noisy, self.pad_id)
        c_ids, c_mask = pad_sequences(clean, self.pad_id)
        return {
            "noisy": {"input_ids": n_ids, "attention_mask": n_mask},
            "target": {"input_ids": c_ids, "attention_mask": c_mask},
            "n_tokens": int(n_mask.sum() + c_mask.sum()),
            "n_samples": len(examples),
        }

    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        self._tokens.clear()
        loss = self.loss_fn([batch["noisy"], batch["target"]], labels=None)
        hidden = self._tokens.get("out")
        if self.teacher is not None and hidden is not None and hidden.requires_grad:
            noisy, attn = batch["noisy"], batch["noisy"]["attention_mask"]
            retain = retention_loss(self.teacher, noisy["input_ids"], attn=attn, hidden=hidden, keep=attn.bool())
            loss = loss + self.retain_weight * retain
        return loss

    def start_fingerprint(self) -> str:
        return encoder_fingerprint(self.encoder)

    def save(self, out_dir: str | Path) -> str:
        """Save as a *ForMaskedLM checkpoint: the trained encoder under the input's MLM head."""
        from transformers import AutoModelForMaskedLM

        full = AutoModelForMaskedLM.from_pretrained(self.model_dir)
        state = {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("pooler.")}
        missing, _ = full.base_model.load_state_dict(state, strict=False)
        if missing:
            raise RuntimeError(f"TSDAE encoder does not fit the MLM model of {self.model_dir}: missing {missing[:5]}")
        full.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return encoder_fingerprint(self.encoder)


def make_objective(
    objective: str,
    model_dir: str,
    max_length: int,
    *,
    mlm_probability: float = 0.15,
    packing: bool = True,
    pooling: str = "mean",
    deletion_ratio: float = 0.6,
    retain_weight: float = 0.0,
):
    if objective == "mlm":
        return MaskedLM(model_dir, max_length, mlm_probability, packing=packing, retain_weight=retain_weight)
    if objective == "tsdae":
        return Tsdae(model_dir, max_length, pooling, deletion_ratio=deletion_ratio, retain_weight=retain_weight)
    raise TrainingConfigError(f"unknown pretraining objective '{objective}' (expected mlm or tsdae)")
