"""GUIM (Yang et al., General User and Item embedding with Mixture of representation): a user is C
vectors, the outputs of C learnable CLS tokens prefixed to the purchase sequence; an item is one
vector from its id, category and language-model text. Retrieval scores an item by max_c cos(u_c, v_j).

Variants (`UserModelSpec.variant`):
  guim  C CLS tokens, C user vectors of size d (the paper's mixture of representation)
  edi   one CLS token, one user vector and item vectors of size C*d (the paper's GUI-EDI baseline)
  mh    one CLS token, then a multi-head attention layer whose C heads (each of size d) give the
        user vectors (the paper's GUIM-MH)
Inputs (`UserModelSpec.inputs`): id, text or id+text for the item token.

The text signal is usable from the first step: the item vector is a projection of the frozen text
embedding (started at its principal components, so cosines are nearly those of the text) plus a
learned correction started at zero, and each user vector adds a recency-pooled mean of the
history's item vectors (one learnable decay per c) to its transformer output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmrec.errors import TrainingConfigError

VARIANTS = ("guim", "edi", "mh")
INPUTS = ("id", "text", "id+text")
TEXT_STEP = 0.1


@dataclass(frozen=True)
class UserModelSpec:
    """The model's shape; `check` says what is wrong before any weights are built."""

    variant: str = "guim"
    vectors: int = 4  # C: CLS tokens (guim), the size factor (edi) or heads (mh)
    inputs: str = "id+text"
    dim: int = 128
    layers: int = 2
    heads: int = 2
    max_length: int = 50
    id_dim: int = 64
    category_dim: int = 16
    time_buckets: int = 0  # 0: no time embedding (data without dates)
    dropout: float = 0.1
    scale: float = 20.0  # alpha: cosine scores times scale in the softmax
    residual_pool: bool = True
    whiten: bool = False  # the text projection starts centred and whitened (equal variance per component)
    repeat_offset: bool = False  # a learned score offset (cosine units) for the items of the user's own sequence

    def check(self) -> UserModelSpec:
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant '{self.variant}' is not one of {', '.join(VARIANTS)}")
        if self.inputs not in INPUTS:
            problems.append(f"inputs '{self.inputs}' is not one of {', '.join(INPUTS)}")
        if self.vectors < 1:
            problems.append(f"vectors (C) is {self.vectors}; it must be at least 1")
        if self.dim < 1 or self.layers < 0 or self.heads < 1 or self.dim % self.heads:
            problems.append(f"dim {self.dim} must be positive and divisible by heads {self.heads}")
        if self.max_length < 1:
            problems.append(f"max_length is {self.max_length}; it must be at least 1")
        if problems:
            raise TrainingConfigError("user_model: " + "; ".join(problems))
        return self

    @property
    def width(self) -> int:
        """Size of the item vector and of each user vector."""
        return self.dim * self.vectors if self.variant == "edi" else self.dim

    @property
    def n_cls(self) -> int:
        return self.vectors if self.variant == "guim" else 1

    @property
    def n_user_vectors(self) -> int:
        return 1 if self.variant == "edi" else self.vectors

    @property
    def uses_text(self) -> bool:
        return "text" in self.inputs

    @property
    def uses_id(self) -> bool:
        return "id" in self.inputs.split("+")

    def to_dict(self) -> dict:
        return asdict(self)


def _principal_projection(text: np.ndarray, width: int, *, whiten: bool = False) -> torch.Tensor:
    """(width x text_dim): rows are the text matrix's leading principal directions (unit length),
    zero rows past its rank. `whiten`: each row divided by its singular value, then all rescaled to
    a geometric-mean length of 1, so every kept component has the same variance."""
    x = torch.as_tensor(text, dtype=torch.float64)
    centred = x - x.mean(0, keepdim=True)
    _, sv, vt = torch.linalg.svd(centred, full_matrices=False)
    out = torch.zeros(width, x.shape[1], dtype=torch.float64)
    k = min(width, vt.shape[0])
    out[:k] = vt[:k]
    if whiten:
        kept = sv[:k].clamp(min=sv[0] * 1e-6)
        out[:k] *= (kept.log().mean().exp() / kept)[:, None]
    return out.float()


class ItemTower(nn.Module):
    """Item vectors from id (top items by purchases; the rest share id 0), category and frozen text."""

    def __init__(
        self,
        spec: UserModelSpec,
        *,
        item_text: np.ndarray | None,
        item_ids: np.ndarray,
        item_categories: np.ndarray | None,
    ):
        super().__init__()
        width = spec.width
        self.spec = spec
        self.register_buffer("id_of", torch.as_tensor(item_ids, dtype=torch.long), persistent=True)
        parts = 0
        self.id_embedding = self.category_embedding = None
        if spec.uses_id:
            self.id_embedding = nn.Embedding(int(item_ids.max()) + 1, spec.id_dim)
            nn.init.normal_(self.id_embedding.weight, std=0.1)
            parts += spec.id_dim
        if item_categories is not None:
            self.register_buffer("category_of", torch.as_tensor(item_categories, dtype=torch.long))
            self.category_embedding = nn.Embedding(int(item_categories.max()) + 1, spec.category_dim)
            nn.init.normal_(self.category_embedding.weight, std=0.1)
            parts += spec.category_dim
        if spec.uses_text:
            if item_text is None:
                raise TrainingConfigError(
                    f"user_model.inputs '{spec.inputs}' needs item text embeddings; none were given "
                    f"(run the embed stage first, or set user_model.inputs: id)"
                )
            self.register_buffer("text", torch.as_tensor(item_text, dtype=torch.float32))
            self.register_buffer("text_basis", _principal_projection(item_text, width, whiten=spec.whiten))
            if spec.whiten:
                self.register_buffer("text_mean", torch.as_tensor(item_text.mean(0), dtype=torch.float32))
            # the projection is basis + TEXT_STEP * delta: Adam moves delta by ~lr per step, so the
            # basis (entries ~ 1/sqrt(text dim)) drifts TEXT_STEP times slower than other weights
            self.text_delta = nn.Parameter(torch.zeros(width, item_text.shape[1]))
            parts += item_text.shape[1]
        self.ffn = nn.Sequential(nn.Linear(parts, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        if spec.uses_text:  # the text projection carries the signal at first; the FFN learns a correction
            nn.init.zeros_(self.ffn[2].weight)
            nn.init.zeros_(self.ffn[2].bias)

    @property
    def n_items(self) -> int:
        return len(self.id_of)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Unnormalised vectors for item indices of any shape."""
        pieces = []
        if self.id_embedding is not None:
            pieces.append(self.id_embedding(self.id_of[items]))
        if self.category_embedding is not None:
            pieces.append(self.category_embedding(self.category_of[items]))
        if self.spec.uses_text:
            text = self.text[items]
            pieces.append(text)
        out = self.ffn(torch.cat(pieces, dim=-1))
        if self.spec.uses_text:
            centred = text - self.text_mean if self.spec.whiten else text
            out = out + F.linear(centred, self.text_basis + TEXT_STEP * self.text_delta)
        return out


class MultiHeadUser(nn.Module):
    """GUIM-MH: one attention layer over the encoder's outputs whose H heads (each of size d) read
    from the CLS position; head h's output is user vector h."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.query = nn.Linear(dim, heads * dim)
        self.key = nn.Linear(dim, heads * dim)
        self.value = nn.Linear(dim, heads * dim)

    def forward(self, cls: torch.Tensor, hidden: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden.shape
        q = self.query(cls).view(b, self.heads, 1, self.dim)
        k = self.key(hidden).view(b, n, self.heads, self.dim).transpose(1, 2)
        v = self.value(hidden).view(b, n, self.heads, self.dim).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dim)
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        return (scores.softmax(-1) @ v).squeeze(2)  # (b, heads, dim)


class UserModel(nn.Module):
    """Sequence of item indices (pad = n_items, mask = n_items + 1) -> user vectors (b, C', width)
    and per-position outputs for masked item modelling."""

    def __init__(
        self,
        spec: UserModelSpec,
        *,
        item_text: np.ndarray | None,
        item_ids: np.ndarray,
        item_categories: np.ndarray | None = None,
    ):
        super().__init__()
        self.spec = spec.check()
        width = spec.width
        self.items = ItemTower(spec, item_text=item_text, item_ids=item_ids, item_categories=item_categories)
        self.pad_index, self.mask_index = self.items.n_items, self.items.n_items + 1
        self.cls = nn.Parameter(torch.randn(spec.n_cls, width) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(width) * 0.02)
        self.position = nn.Embedding(spec.n_cls + spec.max_length, width)
        nn.init.normal_(self.position.weight, std=0.02)
        self.time = nn.Embedding(spec.time_buckets + 1, width) if spec.time_buckets else None
        if self.time is not None:
            nn.init.normal_(self.time.weight, std=0.02)
        self.input_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(spec.dropout)
        heads = spec.heads * (spec.vectors if spec.variant == "edi" else 1)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, spec.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False) if spec.layers else None
        self.final_norm = nn.LayerNorm(width)
        self.multi_head = MultiHeadUser(width, spec.vectors) if spec.variant == "mh" else None
        # learned from the training targets: how much more (or less) an item the user already has is
        # worth than its cosine says; the user's own items are always among the matching candidates
        self.repeat = nn.Parameter(torch.zeros(())) if spec.repeat_offset else None
        self.user_out = nn.Linear(width, width)  # f_u
        self.item_out = nn.Linear(width, width)  # f_o, for masked positions
        if spec.residual_pool:  # user vectors start as the pooled history; f_u learns a correction
            nn.init.zeros_(self.user_out.weight)
            nn.init.zeros_(self.user_out.bias)
            # one recency decay per user vector: half-lives 1, 2, 4, ... items
            half = torch.pow(2.0, torch.arange(spec.n_user_vectors, dtype=torch.float32))
            self.decay = nn.Parameter(torch.log(torch.expm1(math.log(2.0) / half)))

    # ------------------------------------------------------------------ items
    def item_vectors(self, items: torch.Tensor | None = None, *, chunk: int = 8192) -> torch.Tensor:
        """L2-normalised item vectors (all items when `items` is None)."""
        if items is None:
            items = torch.arange(self.items.n_items, device=self.cls.device)
        flat = items.reshape(-1)
        out = torch.cat([self.items(flat[i : i + chunk]) for i in range(0, max(1, len(flat)), chunk)])
        return F.normalize(out, dim=-1).view(*items.shape, -1)

    # ------------------------------------------------------------------ users
    def _inputs(
        self, seq: torch.Tensor, buckets: torch.Tensor | None, tower: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder inputs from the tower's vectors of `seq` (pad and mask rows are placeholders)."""
        pad = seq.eq(self.pad_index)
        masked = seq.eq(self.mask_index)
        x = torch.where(masked[..., None], self.mask_token.expand_as(tower), tower)
        b, n = seq.shape
        positions = torch.arange(self.spec.n_cls, self.spec.n_cls + n, device=seq.device)
        x = x + self.position(positions)[None]
        if self.time is not None and buckets is not None:
            x = x + self.time(buckets.clamp(0, self.spec.time_buckets))
        cls = self.cls[None].expand(b, -1, -1) + self.position.weight[None, : self.spec.n_cls]
        if self.time is not None:
            cls = cls + self.time.weight[0]
        return torch.cat([cls, x], dim=1), pad

    def _pooled(self, seq: torch.Tensor, tower: torch.Tensor) -> torch.Tensor:
        """(b, C', width): per user vector, the history's normalised item vectors (`tower`, unnormalised)
        pooled with recency weights (its own decay); pad and masked positions weigh nothing."""
        visible = seq.lt(self.items.n_items)
        n = seq.shape[1]
        # age 0 is the newest visible position (sequences are oldest first, right-padded)
        index = torch.arange(n, device=seq.device)[None].expand_as(seq)
        newest = torch.where(visible, index, torch.full_like(index, -1)).max(1, keepdim=True).values
        age = (newest - index).clamp(min=0).float()
        rate = F.softplus(self.decay)[None, :, None]  # (1, C', 1)
        logits = (-rate * age[:, None, :]).masked_fill(~visible[:, None, :], float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with nothing visible pools to 0
        return weights @ F.normalize(tower, dim=-1)

    def forward(self, seq: torch.Tensor, buckets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors (b, C', width), per-position outputs (b, n, width)), both unnormalised."""
        tower = self.items(seq.clamp(max=self.items.n_items - 1))  # pad and mask rows are replaced or ignored
        x, pad = self._inputs(seq, buckets, tower)
        full_pad = torch.cat([pad.new_zeros(pad.shape[0], self.spec.n_cls), pad], dim=1)
        h = self.dropout(self.input_norm(x))
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=full_pad)
        h = self.final_norm(h)
        cls, positions = h[:, : self.spec.n_cls], h[:, self.spec.n_cls :]
        if self.multi_head is not None:
            cls = self.multi_head(cls, positions, pad)
        users = self.user_out(cls)
        outputs = self.item_out(positions)
        if self.spec.residual_pool:
            users = users + self._pooled(seq, tower)
        return users, outputs

    def user_vectors(self, seq: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        users, _ = self.forward(seq, buckets)
        return F.normalize(users, dim=-1)


def mixture_scores(users: torch.Tensor, items: torch.Tensor, scale: float) -> torch.Tensor:
    """The paper's training score s(i, j) = alpha * sum_c pi_c cos(u_c, v_j), pi = softmax over c of
    alpha * cos: users (b, C, w) and items (k, w), both normalised -> (b, k)."""
    cos = torch.einsum("bcw,kw->bck", users, items)
    if cos.shape[1] == 1:
        return scale * cos[:, 0]
    weights = torch.softmax(scale * cos, dim=1)
    return scale * (weights * cos).sum(1)
