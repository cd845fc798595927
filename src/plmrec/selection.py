"""Choosing the encoder on the valid window, so that a language-model stage is used only where it helps.

Every candidate encoder (base, pretrained, fine-tuned) is scored on next-item retrieval over the
valid window, and the best by valid NDCG@10 (over its query kinds) is handed to every later
consumer: compare-models' text features, the serving bundle and the item embeddings.

The probe reads train and valid rows only: the catalogue holds the items sold before valid_end,
the histories are the training window, the relevant items are those bought in the valid window.
The test window is scored once, by evaluate-retrieval, and never chooses anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from plmrec.config import Params
from plmrec.errors import StageError
from plmrec.finetune.pairs import catalogue
from plmrec.finetune.retrieval import QUERY_KINDS, Queries, score_encoder, temporal_queries

CANDIDATES = ("base", "pretrained", "finetuned")  # ties go to the earlier: the simpler model wins a tie
SELECTION_K = 10
SELECTION_METRIC = f"ndcg@{SELECTION_K}"
PROXY_KINDS = ("mean", "recency")  # no history sentences to encode: cheap enough to run after every phase
SCORES_FILE = "valid_scores.json"  # a stage's probe scores, by model digest, for a later stage's same probe


def model_digest(model) -> str:
    """A digest of a sentence-transformers model's modules (pooling, length), weight layout, device
    and weights (encoder_fingerprint, pooler left out): two models with the same digest give the same
    embeddings."""
    from plmrec.pretrain.objectives import encoder_fingerprint

    layout = ",".join(f"{n}:{t.dtype}:{tuple(t.shape)}:{t.device.type}" for n, t in model.state_dict().items())
    described = f"{model!r} max_seq_length={getattr(model, 'max_seq_length', None)} {layout}"
    return hashlib.blake2b(f"{described} {encoder_fingerprint(model)}".encode(), digest_size=16).hexdigest()


@dataclass
class ValidProbe:
    """Next-item retrieval on the valid window, for scoring encoders without touching the test window."""

    item_texts: list[str]
    queries: Queries
    ks: list[int]
    history_length: int
    half_life: float
    exclude_history: bool
    history_template: str = "plain"
    batch_size: int = 128
    index_kind: str = "exact"
    kinds: tuple[str, ...] = QUERY_KINDS  # retrieval.query_kinds
    scored: dict = field(default_factory=dict, repr=False)  # model digest -> query kind -> metrics
    reused: int = 0  # scores answered from `scored` (this stage's or an earlier stage's) instead of encoding

    @classmethod
    def from_prepared(cls, prepared: pd.DataFrame, params: Params) -> ValidProbe:
        """The probe of `params` over a prepared table; test rows are dropped before anything is read."""
        seen = prepared[prepared["split"] != "test"]
        items = catalogue(seen)
        retrieval = params.retrieval
        queries = temporal_queries(
            seen,
            {c: i for i, c in enumerate(items["StockCode"])},
            "valid",
            exclude_history=retrieval.exclude_history,
        )
        if not len(queries):
            raise StageError(
                f"the valid window [{params.split.train_end}, {params.split.valid_end}) has no customer with a "
                f"history and a new purchase: nothing to choose an encoder on (move split.train_end earlier)"
            )
        return cls(
            item_texts=items["Description"].tolist(),
            queries=queries,
            ks=[SELECTION_K],  # the choice reads NDCG@10 only, whatever retrieval.ks reports
            history_length=params.finetune.history_length,
            half_life=retrieval.recency_half_life,
            exclude_history=retrieval.exclude_history,
            history_template=params.finetune.history_template,
            batch_size=retrieval.encode_batch_size,
            index_kind=retrieval.index,
            kinds=tuple(retrieval.query_kinds),
        )

    def key(self) -> str:
        """A digest of everything the scores depend on besides the model."""
        content = {
            "items": self.item_texts,
            "users": self.queries.users,
            "histories": self.queries.histories,
            "relevant": [sorted(r) for r in self.queries.relevant],
            "settings": [self.ks, self.history_length, self.half_life, self.exclude_history, self.history_template],
            "encoding": [self.batch_size, self.index_kind],
        }
        return hashlib.blake2b(json.dumps(content, default=str).encode(), digest_size=16).hexdigest()

    def score(self, model, kinds: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
        """Metrics per query kind (valid window; default the probe's) for one sentence-transformers model; a
        model this probe (or a loaded SCORES_FILE of the same probe) has already scored is not encoded again."""
        kinds = self.kinds if kinds is None else kinds
        known = self.scored.setdefault(model_digest(model), {})
        missing = tuple(k for k in kinds if k not in known)
        if missing:
            scores = score_encoder(
                model,
                self.item_texts,
                self.queries,
                ks=self.ks,
                history_length=self.history_length,
                half_life=self.half_life,
                exclude_history=self.exclude_history,
                batch_size=self.batch_size,
                index_kind=self.index_kind,
                kinds=missing,
                template=self.history_template,
            )
            scores.pop("_timing", None)
            known.update(scores)
        else:
            self.reused += 1
        return {k: known[k] for k in kinds}

    def save_scores(self, path: str | Path) -> None:
        """Write every score given so far (with those already in the file for this probe) to `path`."""
        self.load_scores(path)
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps({"probe": self.key(), "scores": self.scored}, indent=1))
        partial.replace(path)  # a reader sees the old file or the new one, never half of one

    def load_scores(self, path: str | Path) -> int:
        """Take the scores in `path` when it was written by the same probe; how many models it held."""
        path = Path(path)
        if not path.is_file():
            return 0
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:  # not ours, or damaged: score again
            return 0
        if not isinstance(saved, dict) or saved.get("probe") != self.key():
            return 0
        for digest, by_kind in saved["scores"].items():
            known = self.scored.setdefault(digest, {})
            for kind, metrics in by_kind.items():
                known.setdefault(kind, metrics)
        return len(saved["scores"])


def best_query(scores: dict[str, dict[str, float]], metric: str = SELECTION_METRIC) -> tuple[str, float]:
    """The query kind with the highest `metric`, and that value (ties: the earlier kind)."""
    kinds = [k for k in QUERY_KINDS if k in scores]
    kind = max(kinds, key=lambda k: (scores[k][metric], -kinds.index(k)))
    return kind, scores[kind][metric]


@dataclass
class EncoderSelection:
    """Which encoder the pipeline uses from here on, why, and the valid figures it was chosen on."""

    mode: str  # auto | base | pretrained | finetuned
    scores: dict[str, dict[str, dict[str, float]]]  # candidate -> query kind -> valid metrics
    paths: dict[str, str] = field(default_factory=dict)
    metric: str = SELECTION_METRIC

    def __post_init__(self) -> None:
        if not self.scores:
            raise StageError("no candidate encoder to choose from")
        self.best = {name: best_query(by_kind, self.metric) for name, by_kind in self.scores.items()}
        if self.mode == "auto":
            order = [c for c in CANDIDATES if c in self.scores] + [c for c in self.scores if c not in CANDIDATES]
            self.chosen = max(order, key=lambda c: (self.best[c][1], -order.index(c)))
        elif self.mode in self.scores:
            self.chosen = self.mode
        else:
            raise StageError(
                f"encoder_selection is '{self.mode}' but the candidates are {sorted(self.scores)} "
                f"(add it to retrieval.compare, or set encoder_selection: auto)"
            )
        self.query = self.best[self.chosen][0]

    @property
    def path(self) -> str | None:
        return self.paths.get(self.chosen)

    def line(self) -> str:
        """The decision in one line, with each candidate's valid figure."""
        figures = ", ".join(f"{name} {value:.4f} ({kind})" for name, (kind, value) in self.best.items())
        how = "best on valid" if self.mode == "auto" else f"fixed by encoder_selection: {self.mode}"
        return f"encoder '{self.chosen}' ({how}; valid {self.metric}: {figures})"

    def table(self) -> pd.DataFrame:
        """One row per (candidate, query kind): the valid metrics, and which row was chosen."""
        rows = []
        for name, by_kind in self.scores.items():
            for kind, metrics in by_kind.items():
                rows.append(
                    {
                        "encoder": name,
                        "query": kind,
                        **{k: round(v, 4) for k, v in metrics.items() if "@" in k},
                        "chosen": name == self.chosen and kind == self.query,
                    }
                )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "metric": self.metric,
            "chosen": self.chosen,
            "query": self.query,
            "valid": {name: {"query": kind, self.metric: value} for name, (kind, value) in self.best.items()},
            "scores": self.scores,
            "paths": self.paths,
        }


def select_encoder(
    candidates: dict[str, str],
    probe: ValidProbe,
    *,
    mode: str,
    pooling: str,
    max_length: int,
    device: str = "cpu",
    progress=None,
) -> EncoderSelection:
    """Score each candidate (name -> encoder directory) on the valid window and choose by `mode`."""
    from plmrec.encoders import load_encoder

    scores = {}
    for name, path in candidates.items():
        scores[name] = probe.score(load_encoder(path, pooling, max_length, device=device))
        if progress:
            kind, value = best_query(scores[name])
            progress(f"valid {SELECTION_METRIC} of '{name}': {value:.4f} ({kind} query)")
    return EncoderSelection(mode, scores, paths=dict(candidates))
