"""`params.yaml`: the one configuration read by the CLI, the DVC stages and the KFP pipeline."""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from plmrec.errors import ConfigError
from plmrec.ranking import RANKING_METRICS

DEFAULT_PARAMS_FILE = "params.yaml"
DEFAULT_IMAGE = "ghcr.io/plmrec/plmrec:0.1.0"  # the component image, also the KFP components' base_image


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticParams(_Section):
    seed: int = 7
    n_customers: int = Field(1200, ge=10)
    n_products: int = Field(800, ge=20)
    n_invoices: int = Field(12000, ge=50)
    start: dt.date = dt.date(2010, 12, 1)
    end: dt.date = dt.date(2011, 12, 9)
    guest_fraction: float = Field(0.22, ge=0, le=0.9, description="share of invoices with no customer id")
    cancel_fraction: float = Field(0.02, ge=0, le=0.5)

    @model_validator(mode="after")
    def _dates_ordered(self) -> SyntheticParams:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class DataParams(_Section):
    source: Literal["synthetic", "file", "online-retail"] = "synthetic"
    path: str | None = Field(None, description="the shop's file or folder for source=file")
    format: Literal["auto", "online_retail", "amazon", "recbole", "unisrec", "table"] = Field(
        "auto", description="the adapter that reads data.path (plmrec.data.adapters); auto: from its layout"
    )
    meta_path: str | None = Field(None, description="amazon: the item metadata file (meta_*.json.gz)")
    items_path: str | None = Field(None, description="table: the catalogue, a CSV or Parquet of items")
    columns: dict[str, str] = Field(
        {}, description="table: canonical column -> the file's column (user, item, time, quantity, price, ...)"
    )
    item_columns: dict[str, str] = Field({}, description="table: canonical item column -> the catalogue's column")
    item_template: str | None = Field(
        None, description="an item's sentence from its fields, e.g. '{title}. {description}' (default: those present)"
    )
    encoding: str = "utf-8"
    max_file_mb: float = Field(
        10_000, gt=0, description="source=file: a larger file (or folder) is refused before it is read"
    )
    max_rows: int = Field(100_000_000, ge=1, description="more interactions than this are refused (a CSV stops there)")
    name: str | None = Field(
        None,
        description="the shop's name; the promotion gate compares only versions trained on the same one "
        "(default: the source, 'synthetic' or 'online-retail', or the data file's name)",
    )
    synthetic: SyntheticParams = SyntheticParams()

    @field_validator("columns", "item_columns")
    @classmethod
    def _canonical_names(cls, value: dict[str, str]) -> dict[str, str]:
        known = {"user", "item", "time", "quantity", "price", "basket", "rating", "country"}
        known |= {"title", "description", "category", "brand"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown canonical column(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return value

    @model_validator(mode="after")
    def _path_for_file(self) -> DataParams:
        if self.source == "file" and not self.path:
            raise ValueError("source is 'file' but path is empty")
        return self

    def dataset(self) -> str:
        """What the registry's versions are trained on: data.name, else the source or the file's name
        (not its content: a shop's refreshed export is the same shop)."""
        if self.name:
            return self.name
        if self.source != "file":
            return self.source
        return Path(str(self.path)).name


class CleanParams(_Section):
    drop_zero_price: bool = False
    drop_exact_duplicates: bool = Field(
        False, description="merge lines identical in every column (counted as exact_duplicate); the study keeps them"
    )
    n_quantity_labels: int = Field(5, ge=2, le=20)


class SplitParams(_Section):
    mode: Literal["auto", "temporal", "leave_one_out"] = Field(
        "auto",
        description="temporal: by train_end/valid_end; leave_one_out: each user's last interaction is test, "
        "the one before valid (RecBole's); auto: temporal for Online Retail, leave_one_out for the other formats",
    )
    train_end: dt.date = dt.date(2011, 9, 1)
    valid_end: dt.date = dt.date(2011, 10, 15)

    @model_validator(mode="after")
    def _ordered(self) -> SplitParams:
        if self.valid_end <= self.train_end:
            raise ValueError(f"valid_end ({self.valid_end}) must be after train_end ({self.train_end})")
        return self


class ValidationParams(_Section):
    min_date: dt.date = dt.date(2000, 1, 1)
    max_date: dt.date | None = None
    max_negative_price_fraction: float = Field(1e-4, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.02, ge=0, le=1)
    max_missing_customer_fraction: float = Field(0.5, ge=0, le=1)
    max_missing_description_fraction: float = Field(0.01, ge=0, le=1)
    max_abs_quantity: int = Field(100_000, ge=1)
    example_rows: int = Field(5, ge=1, le=100)


class BoostingBackend(_Section):
    """Where an XGBoost model trains (plmrec.recsys.boosting)."""

    backend: Literal["local", "dask"] = Field(
        "local", description="local: in this process | dask: xgboost.dask on a Dask cluster (plmrec.recsys.boosting)"
    )
    dask_scheduler: str | None = Field(
        None, description="dask: a running scheduler's address (tcp://host:8786); null: a LocalCluster per fit"
    )
    dask_workers: int = Field(2, ge=1, description="dask: the LocalCluster's workers, and the data's partitions")


class BaselineParams(BoostingBackend):
    feature_groups: list[Literal["transaction", "customer", "basket", "item"]] = ["transaction", "customer", "basket"]
    n_estimators: int = Field(300, ge=1)
    max_depth: int = Field(6, ge=1, le=16)
    learning_rate: float = Field(0.1, gt=0, le=1)
    early_stopping_rounds: int = Field(20, ge=1)
    n_jobs: int = 0


class TaptParams(_Section):
    splits: list[Literal["train", "valid", "test"]] = Field(
        ["train"], min_length=1, description="descriptions of items sold in these splits"
    )
    max_chars: int = Field(50, ge=8, description="cap per sentence, cut at a word boundary (the study used 50)")
    min_chars: int = Field(3, ge=1)


class DaptParams(_Section):
    source: Literal["synthetic", "amazon"] = "synthetic"
    path: str | None = Field(
        None, description="for source=amazon: a directory or file(s) of Amazon 2018/2023 jsonl(.gz)"
    )
    max_chars: int = Field(50, ge=8)
    min_chars: int = Field(10, ge=1)
    max_sentences: int = Field(1_024_000, ge=1, description="the study: 512 batches of 2,000 sentences")
    synthetic_sentences: int = Field(20_000, ge=10)

    @model_validator(mode="after")
    def _path_for_amazon(self) -> DaptParams:
        if self.source == "amazon" and not self.path:
            raise ValueError("source is 'amazon' but path is empty")
        return self


class _PhaseLength(_Section):
    """How long a training phase runs: optimizer steps or epochs over its data, exactly one."""

    steps: int | None = Field(None, ge=1, description="optimizer steps; or give epochs")
    epochs: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_length(self) -> _PhaseLength:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        return self


class PhaseParams(_PhaseLength):
    corpus: Literal["dapt", "tapt"]
    objective: Literal["mlm", "tsdae"]

    @property
    def name(self) -> str:
        return f"{self.corpus}-{self.objective}"


class TolerationParams(_Section):
    """A Kubernetes toleration, e.g. {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}."""

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self):
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        return self


class DistributedParams(_Section):
    """Data-parallel training as a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) that the
    pipeline step renders, submits and waits for (plmrec.cluster.trainjob). workers 1: the step trains in
    its own pod, as without this section."""

    workers: int = Field(1, ge=1, description="nodes (pods) of the TrainJob; 1: no job, the step trains itself")
    gpus_per_worker: int = Field(1, ge=0, description="GPUs and torchrun processes per node; 0: one CPU process")
    runtime: str = Field("torch-distributed", description="the ClusterTrainingRuntime the job runs on")
    volume_claim: str | None = Field(
        None, description="a ReadWriteMany PVC mounted by the step and every node: inputs, checkpoints, the model"
    )
    mount_path: str = Field("/mnt/plmrec", description="where the claim is mounted, in the step and in the job")
    service_account: str | None = Field(None, description="the job's pods' service account (null: the runtime's)")
    active_deadline_s: int | None = Field(None, ge=1, description="the job fails after this long (null: no limit)")
    poll_s: float = Field(15.0, gt=0, description="how often the step reads the job's status")

    @model_validator(mode="after")
    def _volume_when_distributed(self) -> DistributedParams:
        if self.workers > 1 and not self.volume_claim:
            raise ValueError(
                "distributed.workers > 1 needs distributed.volume_claim: a ReadWriteMany PersistentVolumeClaim "
                "the pipeline step and the job's pods share (inputs, checkpoints and the trained model)"
            )
        if not self.mount_path.startswith("/"):
            raise ValueError(f"distributed.mount_path must be absolute, got {self.mount_path!r}")
        return self


class ResourceParams(_Section):
    """What a pipeline step asks the cluster for (the local runner ignores it)."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = Field(1, ge=0, description="0: no accelerator requested")
    cpu_request: str = "2"
    cpu_limit: str = "8"
    memory_request: str = "8G"
    memory_limit: str = "32G"
    node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. {nvidia.com/gpu.present: 'true'}")
    tolerations: list[TolerationParams] = Field(default_factory=list)
    distributed: DistributedParams = Field(
        default_factory=DistributedParams, description="pretrain, finetune, user_model: workers > 1 runs a TrainJob"
    )


class TrainingSettings(_Section):
    """Optimisation, device and checkpoint settings shared by the pretraining and fine-tuning loops."""

    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    compile: bool = False
    checkpoint_every: int = Field(200, ge=1, description="optimizer steps between checkpoints")
    checkpoint_dir: str | None = Field(None, description="persistent directory for resumable checkpoints")
    log_every: int = Field(10, ge=1)
    resources: ResourceParams = ResourceParams()


class PretrainParams(TrainingSettings):
    enabled: bool = True
    base_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2", description="Hugging Face id or local path of an encoder"
    )
    tapt: TaptParams = TaptParams()
    dapt: DaptParams = DaptParams()
    phases: list[PhaseParams] = [
        PhaseParams(corpus="dapt", objective="mlm", steps=20),
        PhaseParams(corpus="tapt", objective="mlm", steps=20),
        PhaseParams(corpus="dapt", objective="tsdae", steps=10),
        PhaseParams(corpus="tapt", objective="tsdae", steps=10),
    ]
    max_length: int = Field(64, ge=8, le=4096)
    packing: bool = Field(True, description="MLM: concatenate sentences into full blocks (no padding)")
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    tsdae_deletion_ratio: float = Field(0.6, ge=0, lt=1)
    pooling: Literal["mean", "cls"] = "mean"
    mlm_head: Literal["informed", "random"] = Field(
        "informed",
        description="a checkpoint without an MLM head: start the head from the frozen encoder "
        "(plmrec.pretrain.head) or at random",
    )
    head_warmup_steps: int = Field(
        0, ge=0, description="head-only MLM steps (encoder frozen) before a fresh head's phase"
    )
    head_learning_rate: float = Field(1e-3, gt=0, le=1, description="the head warm-up's learning rate")
    head_fit_rows: int = Field(
        8192, ge=64, description="mlm_head informed: masked positions the head's start is fitted (and held out) on"
    )
    retain_weight: float = Field(
        0.0,
        ge=0,
        description="MLM and TSDAE phases: weight of 1 - cos between the encoder's token vectors (unmasked, "
        "unpadded) and a frozen copy of the phase's start (learning without forgetting); 0 disables",
    )
    valid_proxy: bool = Field(True, description="score each phase's encoder on the valid window (retrieval proxy)")

    @model_validator(mode="after")
    def _has_phases(self) -> PretrainParams:
        if self.enabled and not self.phases:
            raise ValueError("enabled but no phases: give at least one {corpus, objective, steps|epochs}")
        return self


FinetuneTask = Literal["review_item", "item_context", "sequence_next", "sequence_sequence", "item_text"]


class FinetunePhaseParams(_PhaseLength):
    task: FinetuneTask


class FinetuneParams(TrainingSettings):
    enabled: bool = True
    start_from: Literal["auto", "pretrained", "base"] = Field(
        "auto",
        description="auto: whichever of base and pretrained scores higher on the valid window; "
        "pretrained: the pretrain stage's encoder; base: pretrain.base_model untouched",
    )
    phases: list[FinetunePhaseParams] = [
        FinetunePhaseParams(task="item_context", steps=20),
        FinetunePhaseParams(task="sequence_next", steps=20),
    ]
    pooling: Literal["mean", "cls"] = Field("mean", description="cls as BLaIR, mean as Sentence-T5")
    loss: Literal["mnrl", "cached_mnrl"] = "mnrl"
    scale: float = Field(20.0, gt=0, description="1 / InfoNCE temperature (20 = temperature 0.05)")
    mini_batch_size: int = Field(32, ge=1, description="cached_mnrl: sentences per forward pass")
    mlm_weight: float = Field(0.0, ge=0, description="auxiliary MLM loss weight (BLaIR: 0.1); 0 disables")
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    max_length: int = Field(128, ge=8, le=4096)
    history_length: int = Field(20, ge=1, description="purchases in a user's history sentence")
    history_template: Literal["plain", "structured"] = Field(
        "plain", description="plain: '<newest>; <older>; ...'; structured (Sentence-T5): '1: <newest>; 2: <older>; ...'"
    )
    pair_weighting: Literal["uniform", "count"] = Field(
        "uniform", description="item_context: each pair once, or drawn in proportion to the baskets holding both"
    )
    min_chars: int = Field(30, ge=1, description="review_item: both sides at least this long (BLaIR)")
    neighbours_per_item: int = Field(10, ge=1, description="item_context: most co-purchased items per item")
    pairs_per_user: int = Field(20, ge=1, description="sequence tasks: most recent positions per user")
    max_pairs: int = Field(200_000, ge=1, description="per phase, sampled when exceeded")
    reviews_path: str | None = Field(None, description="review_item: Amazon reviews jsonl(.gz) (2018 or 2023)")
    meta_path: str | None = Field(None, description="review_item: the matching Amazon metadata jsonl(.gz)")
    learning_rate: float = Field(5e-5, gt=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    log_every: int = Field(5, ge=1)
    merge_alphas: list[float] = Field(
        [0.5, 1.0],
        min_length=1,
        description="WiSE-FT: weights (1 - a) * start + a * fine-tuned for each a, the best on the valid window "
        "kept (a = 1, the fine-tuned model as trained, is always a candidate); [1.0]: no merging",
    )

    @field_validator("merge_alphas")
    @classmethod
    def _alphas_in_range(cls, alphas: list[float]) -> list[float]:
        wrong = [a for a in alphas if not 0 < a <= 1]
        if wrong:
            raise ValueError(f"each alpha must be in (0, 1]; got {wrong} (0 would be the start model unchanged)")
        return alphas

    @model_validator(mode="after")
    def _phases_have_data(self) -> FinetuneParams:
        if self.enabled and not self.phases:
            raise ValueError("enabled but no phases: give at least one {task, steps|epochs}")
        if any(p.task == "review_item" for p in self.phases) and not (self.reviews_path and self.meta_path):
            raise ValueError("a review_item phase needs reviews_path and meta_path")
        return self


class SeqrecParams(_Section):
    path: str | None = Field(
        None, description="a UniSRec/RecBole directory, e.g. ../shared/data/amazon-seqrec/scientific"
    )
    name: str | None = Field(None, description="file prefix (Scientific); null: inferred from *.test.inter")
    max_users: int | None = Field(None, ge=1, description="evaluate a seeded sample of test users")
    exclude_history: bool = Field(False, description="RecBole's sequential protocol ranks history items too")


class RetrievalParams(_Section):
    ks: list[int] = Field([10, 50], min_length=1)
    exclude_history: bool = Field(True, description="rank and score only items the user has not bought before")
    recency_half_life: float = Field(5.0, gt=0, description="purchases; weight halves every this many items back")
    index: Literal["exact", "faiss"] = Field("exact", description="faiss: HNSW index (pip install faiss-cpu)")
    encode_batch_size: int = Field(128, ge=1)
    clusters: int = Field(8, ge=2, description="KMeans clusters in the embedding picture")
    query_kinds: list[Literal["sentence", "mean", "recency"]] = Field(
        ["sentence", "mean", "recency"],
        min_length=1,
        description="user queries scored: the encoded history sentence (one encoding per user: the costly one), "
        "the mean and the recency-weighted mean of the history's item vectors",
    )
    compare: list[Literal["base", "pretrained", "finetuned"]] = ["base", "pretrained", "finetuned"]
    encoder_selection: Literal["auto", "base", "pretrained", "finetuned"] = Field(
        "auto",
        description="the encoder every later stage uses: auto = best valid NDCG@10 of retrieval.compare",
    )
    seqrec: SeqrecParams = SeqrecParams()

    @model_validator(mode="after")
    def _ks_positive(self) -> RetrievalParams:
        if any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive, got {self.ks}")
        return self


class UserModelVariantParams(_Section):
    """One user-model variant of the comparison (plmrec.usermodel.model)."""

    variant: Literal["guim", "edi", "mh"] = Field("guim", description="guim: C CLS tokens | edi: one C*d vector | mh")
    vectors: int = Field(1, ge=1, le=64, description="C: user vectors (guim, mh) or the size factor (edi)")
    inputs: Literal["id", "text", "id+text"] = "id+text"

    @property
    def label(self) -> str:
        return f"{self.variant}-c{self.vectors}-{self.inputs}"


class UserModelParams(_Section):
    """train-user-model: GUIM over the selected encoder's item text, on the temporal windows."""

    enabled: bool = True
    variants: list[UserModelVariantParams] = Field(
        default_factory=lambda: [
            UserModelVariantParams(vectors=1, inputs="id"),
            UserModelVariantParams(vectors=1, inputs="id+text"),
            UserModelVariantParams(vectors=4, inputs="id+text"),
        ],
        min_length=1,
        description="compared on the same data and seeds; the best by valid `select` is saved",
    )
    seeds: list[int] = Field([0], min_length=1)
    ks: list[int] = Field([10, 50, 100], min_length=1)
    select: str = Field("ndcg@10", description="recall@K | ndcg@K (K in ks): chooses epoch and variant on valid")
    exclude_history: bool = Field(True, description="true: only items the customer has not bought count")
    horizon_days: int | None = Field(None, ge=1, description="matching window; null: the valid window's length")
    cutoffs: int = Field(4, ge=1, description="training cut-offs, one horizon apart, before the window scored")
    dim: int = Field(128, ge=4)
    layers: int = Field(2, ge=0, le=12)
    heads: int = Field(2, ge=1)
    max_length: int = Field(50, ge=1, description="newest distinct items in a sequence")
    top_ids: int = Field(20_000, ge=1, description="items with their own id embedding (by training purchases)")
    id_dim: int = Field(64, ge=1)
    time_buckets: int = Field(12, ge=0, description="log2 day buckets before the cut-off; 0: no time embedding")
    dropout: float = Field(0.1, ge=0, lt=1)
    scale: float = Field(20.0, gt=0, description="alpha: 1 / temperature of the cosine scores")
    whiten: bool = Field(False, description="the item-text projection starts centred and whitened")
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=1, description="epochs without a valid gain before stopping")
    batch_size: int = Field(256, ge=2)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    mask_probability: float = Field(0.15, gt=0, lt=1)
    mlm_weight: float = Field(0.2, ge=0, description="masked item modelling's weight beside matching; 0: off")
    log_q: bool = Field(True, description="sampled-softmax correction for in-batch candidates")
    negatives: int = Field(0, ge=0, description="uniform catalogue items added to each batch's candidates")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(20, ge=1)
    resources: ResourceParams = ResourceParams()

    @model_validator(mode="after")
    def _select_is_computed(self) -> UserModelParams:
        name, _, k = self.select.partition("@")
        if name not in ("recall", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(f"user_model.select '{self.select}' must be recall@K or ndcg@K with K in ks {self.ks}")
        if self.dim % self.heads:
            raise ValueError(f"user_model.dim {self.dim} must be divisible by user_model.heads {self.heads}")
        return self


class BlairParams(TrainingSettings):
    """evaluate-search's BLaIR ranker: review <-> item contrastive fine-tuning on the training reviews."""

    start_from: Literal["base", "selected"] = Field(
        "base", description="base: pretrain.base_model | selected: the pipeline's selected encoder"
    )
    epochs: float = Field(1.0, gt=0)
    pooling: Literal["mean", "cls"] = Field("mean", description="cls as BLaIR; mean suits MiniLM")
    scale: float = Field(20.0, gt=0)
    mlm_weight: float = Field(0.1, ge=0, description="BLaIR's auxiliary MLM weight; 0 disables")
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    max_length: int = Field(128, ge=8, le=4096)
    min_chars: int = Field(30, ge=1, description="both sides of a pair at least this long")
    max_pairs: int = Field(200_000, ge=1)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    log_every: int = Field(10, ge=1)


class SearchParams(_Section):
    """evaluate-search: complex product search (BLaIR / Amazon-C4 protocol) on review data."""

    enabled: bool = Field(True, description="runs when reviews_path is set; otherwise the stage records a skip")
    reviews_path: str | None = Field(
        None, description="Amazon reviews jsonl(.gz), 2018 or 2023 schema, or a UCSD user-record sample"
    )
    meta_path: str | None = Field(None, description="the matching item metadata (not needed for a UCSD sample)")
    valid_fraction: float = Field(0.1, gt=0, lt=1, description="reviews, by time, whose queries choose on valid")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="the latest reviews: queries scored once")
    min_query_chars: int = Field(100, ge=1, description="a held-out review becomes a query when at least this long")
    max_query_chars: int = Field(1000, ge=1, description="longer queries are cut at a word boundary")
    ks: list[int] = Field([10, 100], min_length=1)
    select: str = Field("ndcg@100", description="ndcg@K | recall@K | mrr: chooses the served mode and fusion weight")
    depth: int = Field(1000, ge=1, description="candidates per ranker for fusion; MRR counts ranks up to this")
    rrf_k: int = Field(60, ge=1, description="reciprocal rank fusion: 1 / (rrf_k + rank)")
    hybrid_weights: list[float] = Field(
        [0.2, 0.35, 0.5, 0.65, 0.8], min_length=1, description="dense share of the fusion, chosen on valid"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds of the trained ranker (BLaIR)")
    blair: BlairParams = BlairParams()
    encode_batch_size: int = Field(64, ge=1)
    resources: ResourceParams = ResourceParams()

    @model_validator(mode="after")
    def _checks(self) -> SearchParams:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("search.valid_fraction + search.test_fraction must leave training reviews (< 1)")
        name, _, k = self.select.partition("@")
        if not (self.select == "mrr" or (name in ("ndcg", "recall") and k.isdigit() and int(k) in self.ks)):
            raise ValueError(f"search.select '{self.select}' must be mrr, ndcg@K or recall@K with K in ks {self.ks}")
        if any(not 0 <= w <= 1 for w in self.hybrid_weights):
            raise ValueError(f"search.hybrid_weights must lie in [0, 1], got {self.hybrid_weights}")
        if max(self.ks) > self.depth:
            raise ValueError(f"search.depth {self.depth} must be at least max(ks) {max(self.ks)}")
        return self


class XGBoostParams(BoostingBackend):
    n_estimators: int = Field(300, ge=1)
    max_depth: int = Field(6, ge=1, le=16)
    learning_rate: float = Field(0.1, gt=0, le=1)
    subsample: float = Field(0.8, gt=0, le=1, description="row sampling: what makes seeds differ")
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    early_stopping_rounds: int = Field(20, ge=1)
    n_jobs: int = Field(0, description="0: all cores")
    device: str = Field("cpu", description="cpu | cuda (XGBoost on GPU)")

    def booster_settings(self) -> dict:
        """The keyword arguments every plmrec XGBoost model (classifier or ranker) takes from these settings."""
        return dict(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            tree_method="hist",
            device=self.device,
            early_stopping_rounds=self.early_stopping_rounds,
            n_jobs=self.n_jobs or None,
        )


ClassifierStep = Literal[
    "rf_selection", "text_cluster", "text_pca10", "text_pca2", "stock_code", "invoice", "rfm", "item"
]


class ClassifierParams(_Section):
    base_groups: list[Literal["transaction", "customer", "basket", "item", "rfm", "invoice", "stock_code"]] = [
        "transaction",
        "customer",
        "basket",
    ]
    ablation: list[ClassifierStep] = Field(
        ["rf_selection", "text_cluster", "text_pca10", "text_pca2", "stock_code", "invoice"],
        description="added one at a time, cumulatively, after the vanilla model (the study's Tables II-VI)",
    )
    rf_threshold: float = Field(0.04, ge=0, lt=1, description="drop features below this random-forest importance")
    selection_after_text: bool = Field(
        True, description="also the row text groups -> random-forest selection, threshold chosen on valid"
    )
    rf_thresholds: list[float] = Field(
        [0.005, 0.01, 0.02, 0.04], min_length=1, description="the text+rf_selection row's thresholds, chosen on valid"
    )
    rf_trees: int = Field(100, ge=1)
    rf_sample_rows: int = Field(20_000, ge=100)
    xgboost: XGBoostParams = XGBoostParams()


class MatrixFactorizationParams(_Section):
    """ALS and its blends. Besides these keys: the weight grid of each blend row registered in
    plmrec.recsys.rows that keeps it here (`grid="recommenders.mf.<key>"`); any other key is unknown."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # extra keys: the rows' grids only

    factors: list[int] = Field([32, 64], min_length=1, description="chosen on valid")
    regularization: float = Field(0.05, ge=0)
    alpha: float = Field(10.0, gt=0, description="confidence = 1 + alpha * log1p(purchase count)")
    iterations: int = Field(15, ge=1)
    similarity: Literal["max", "mean"] = Field(
        "max",
        description="the customer-item text score: max = cosine to the most similar item the customer bought "
        "(item-to-item neighbours over text); mean = cosine to the normalised mean of their items",
    )
    similarity_weights: list[float] = Field(
        [0.25, 0.5, 0.75], min_length=1, description="MF + embedding similarity blend, chosen on valid"
    )
    repeat_weights: list[float] = Field(
        [0.25, 0.5, 0.75],
        min_length=1,
        description="MF + bought-before blend (mf+repeat, the text-free counterpart), chosen on valid",
    )
    cluster_weights: list[float] = Field(
        [0.25, 0.5, 1.0], min_length=1, description="MF + cluster label boost, chosen on valid"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _with_row_grids(cls, data: Any, handler):
        """A registered row's grid is read as a weight grid (its default where left out, else required); any
        other extra key is unknown."""
        if not isinstance(data, dict):
            return handler(data)
        grids = _row_grids(cls)
        errors: list[InitErrorDetails] = [
            InitErrorDetails(type="extra_forbidden", loc=(key,), input=value)
            for key, value in data.items()
            if key not in cls.model_fields and key not in grids
        ]
        checked = {}
        for key, row in grids.items():
            if key not in data and row.default_grid is None:
                errors.append(InitErrorDetails(type="missing", loc=(key,), input=data))
                continue
            try:
                checked[key] = _WEIGHT_GRID.validate_python(data.get(key, list(row.default_grid or ())))
            except ValidationError as err:
                errors += [
                    InitErrorDetails(type=e["type"], loc=(key, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                    for e in err.errors()
                ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return handler({**data, **checked})

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in type(self).model_fields:
            if name not in _row_grids(type(self)):
                raise ValueError(f'"{type(self).__name__}" object has no field "{name}"')  # as extra="forbid"
            value = _WEIGHT_GRID.validate_python(value)
        super().__setattr__(name, value)


_WEIGHT_GRID: TypeAdapter[list[float]] = TypeAdapter(Annotated[list[float], Field(min_length=1)])


def _row_grids(model: type[BaseModel]) -> dict:
    """The registered rows' weight grids (recommenders.mf keys) beyond the section's fields: key -> its row."""
    from plmrec.recsys import rows

    return {key: row for key, row in rows.grids().items() if key not in model.model_fields}


class LearningToRankParams(_Section):
    enabled: bool = True
    mf_candidates: int = Field(100, ge=1)
    neighbour_candidates: int = Field(100, ge=1)
    recent_neighbour_candidates: int = Field(
        50, ge=0, description="top items by text similarity to the customer's last basket (0: none)"
    )
    popular_candidates: int = Field(50, ge=0)
    user_model_candidates: int = Field(
        100, ge=0, description="top items by the user model's max-over-C score (the ltr+user_model row)"
    )
    xgboost: XGBoostParams = XGBoostParams(n_estimators=200)


class RecommendersParams(_Section):
    enabled: bool = True
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    clusters: int = Field(8, ge=2, description="KMeans k on training items' embeddings")
    ks: list[int] = Field([5, 10], min_length=1)
    exclude_history: bool = Field(
        False, description="false: repurchases count as hits (wholesale customers reorder); true: new items only"
    )
    primary_metric: str = Field("ndcg@10", description="<metric>@<k> for the verdict, e.g. ndcg@10, map@5")
    new_item_slots: list[Annotated[int, Field(ge=0, le=10)]] = Field(
        [0, 1, 2],
        min_length=1,
        description="places in a discover list's top 10 for the best-fitting items nobody bought yet (by text); "
        "chosen per row on valid",
    )
    classifier: ClassifierParams = ClassifierParams()
    mf: MatrixFactorizationParams = MatrixFactorizationParams()
    ltr: LearningToRankParams = LearningToRankParams()

    @model_validator(mode="after")
    def _primary_is_computed(self) -> RecommendersParams:
        name, _, k = self.primary_metric.partition("@")
        if name not in RANKING_METRICS or not k.isdigit() or int(k) not in self.ks:
            raise ValueError(
                f"primary_metric '{self.primary_metric}' must be <precision|recall|f1|map|ndcg>@<k> "
                f"with k in ks {self.ks}"
            )
        return self


def served_models() -> tuple[str, ...]:
    """registry.served_model's choices: auto, or a recommender row of plmrec.recsys.rows."""
    from plmrec.recsys import rows

    return ("auto", *rows.names())


class RegistryParams(_Section):
    enabled: bool = True
    model_name: str = Field("plmrec-recommender", min_length=1, description="registered model in MLflow")
    served_model: str = Field("auto", description="auto: the recommender with the best valid primary metric")
    primary_metric: str = Field("ndcg@10", description="test metric the promotion gate compares")
    min_improvement: float = Field(0.0, ge=0.0, description="absolute: challenger must exceed champion by more")
    guard_metrics: list[str] = Field(
        ["recall@10", "precision@5"], description="must not drop by more than guard_tolerance"
    )
    guard_tolerance: float = Field(0.005, ge=0.0)
    gate_settle_s: float = Field(
        1.0, ge=0.0, description="the gate lock: after writing its lease, wait this long and read it back"
    )
    gate_lease_s: float = Field(60.0, gt=0.0, description="the gate lock's lease: a killed holder blocks no longer")
    gate_lock_timeout_s: float = Field(120.0, gt=0.0, description="how long a gate waits for the lock")

    @model_validator(mode="after")
    def _known_model(self) -> RegistryParams:
        if self.served_model not in served_models():
            raise ValueError(f"served_model '{self.served_model}' must be one of {', '.join(served_models())}")
        return self


class ServingParams(_Section):
    model_name: str = Field(
        "plmrec", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="the name in /v1/models/<name>:predict"
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    precompute_lists: bool = Field(
        True,
        description="rank every known customer's lists (to max_k) when the model loads: a request for a known "
        "customer without a basket reads its list instead of ranking it",
    )
    precompute_max_customers: int = Field(
        20_000,
        ge=0,
        description="above this many customers the lists are ranked per request (at load: ~6.5 ms and ~3.6 kB each)",
    )
    max_instances: int = Field(64, ge=1, description="instances (v1) or batch rows (v2) per request")
    max_basket: int = Field(500, ge=1)
    max_query_chars: int = Field(500, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    body_timeout_s: float = Field(10.0, gt=0, description="a request body must arrive within this (408 otherwise)")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's headers must arrive within this of its first byte (408, closed)"
    )
    keep_alive_s: int = Field(15, ge=1, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(1000, ge=1, description="connections and requests in flight at once (503 beyond)")
    mistake_log_every_s: float = Field(
        10.0, ge=0, description="client mistakes: each reason logged once, then at most a line per this (all counted)"
    )
    catalogue_path: str | None = Field(
        None,
        description="the shop's products (CSV/Parquet: StockCode, Description): those nobody bought yet go in "
        "the bundle, reachable through a discover list's new-item places",
    )
    inference_service: str = Field(
        "", description="KServe InferenceService the register step points at a new @champion ('' = none: local runs)"
    )
    namespace: str = Field("", description="its namespace ('' = the pipeline pod's own)")
    artifacts_destination: str = Field(
        "",
        description="the tracking server's --artifacts-destination "
        "(maps proxied mlflow-artifacts:/ locations to s3://)",
    )


class TrackingParams(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI, then local SQLite, if unset")
    experiment: str = "plmrec"
    credentials_secret: str = Field(
        "",
        description="on a cluster: the Secret (keys username, password) whose values every pipeline step and "
        "training node gets as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD ('' = none)",
    )
    command_retries: int = Field(
        2, ge=0, le=20, description="registry commands (promote, deploy, serve, runs): retries of a request"
    )
    command_timeout_s: float = Field(
        5.0, gt=0, le=600, description="registry commands: seconds a request to the tracking server may take"
    )


def _cpu_step_resources() -> ResourceParams:
    return ResourceParams(accelerator_limit=0, cpu_request="1", cpu_limit="4", memory_request="4G", memory_limit="16G")


class PipelineParams(_Section):
    name: str = "plmrec-training"
    image: str = Field(DEFAULT_IMAGE, description="component image (docker/Dockerfile)")
    gpu_image: str = Field(
        "ghcr.io/plmrec/plmrec-cuda:0.1.0",
        description="image of the steps that request an accelerator (docker/Dockerfile.cuda)",
    )
    image_pull_secrets: list[str] = Field(default_factory=list)
    enable_caching: bool = False
    step_resources: ResourceParams = Field(
        default_factory=_cpu_step_resources, description="requests and limits of every step without its own"
    )


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    clean: CleanParams = CleanParams()
    split: SplitParams = SplitParams()
    validation: ValidationParams = ValidationParams()
    baseline: BaselineParams = BaselineParams()
    pretrain: PretrainParams = PretrainParams()
    finetune: FinetuneParams = FinetuneParams()
    retrieval: RetrievalParams = RetrievalParams()
    user_model: UserModelParams = UserModelParams()
    search: SearchParams = SearchParams()
    recommenders: RecommendersParams = RecommendersParams()
    registry: RegistryParams = RegistryParams()
    serving: ServingParams = ServingParams()
    tracking: TrackingParams = TrackingParams()
    pipeline: PipelineParams = PipelineParams()

    @model_validator(mode="after")
    def _gate_metrics_are_computed(self) -> Params:
        ks = self.recommenders.ks
        for metric in [self.registry.primary_metric, *self.registry.guard_metrics]:
            name, _, k = metric.partition("@")
            if name not in RANKING_METRICS or not k.isdigit() or int(k) not in ks:
                raise ValueError(
                    f"registry metric '{metric}' must be <precision|recall|f1|map|ndcg>@<k> with k in "
                    f"recommenders.ks {ks}"
                )
        single_process = {"search": self.search.resources, "pipeline.step_resources": self.pipeline.step_resources}
        for section, resources in single_process.items():
            if resources.distributed.workers > 1:
                raise ValueError(
                    f"{section}: distributed.workers > 1 is for pretrain, finetune and user_model (their loop is "
                    f"data parallel under torchrun); this step trains in one process"
                )
        if self.serving.default_k > self.serving.max_k:
            raise ValueError(f"serving.default_k {self.serving.default_k} exceeds serving.max_k {self.serving.max_k}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)  # None = default; KFP structs reject None


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    pending_list_item: type[BaseModel] | None = None
    for part in loc:
        if pending_list_item is not None and str(part).isdigit():  # an index into a list of sections
            model, pending_list_item = pending_list_item, None
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        item = next(iter(typing.get_args(ann)), None) if typing.get_origin(ann) is list else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif isinstance(item, type) and issubclass(item, BaseModel):
            pending_list_item = item
        else:
            return None
    return None if pending_list_item is not None else model


def _source_of(key: str, sources: dict[str, str]) -> str | None:
    """Which layer set `key` (or the section or leaf nearest to it): a file, or an override."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:n]))
        if found:
            return found
    below = [v for k, v in sources.items() if k.startswith(key + ".")]
    return below[-1] if below else None


def _describe(err: ValidationError, origin: str, sources: dict[str, str] | None = None) -> str:
    lines, overridden = [], []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc) or "(top level)"
        source = _source_of(key, sources or {})
        overridden.append(bool(source and source.startswith("-S ")))
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            hint = ""
            if parent is not None:
                close = difflib.get_close_matches(loc[-1], _known_keys(parent), n=1)
                hint = f" (did you mean '{'.'.join(loc[:-1] + (close[0],))}'?)" if close else ""
                hint += f"; allowed: {', '.join(_known_keys(parent))}"
            lines.append(f"unknown key '{key}'{hint}")
        elif e["type"] == "missing":
            lines.append(f"missing key '{key}'")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"invalid value for '{key}': {e['msg']}{shown}")
        if overridden[-1]:
            lines[-1] += f" (set by {source})"
    if overridden and all(overridden):  # every fault is an override's: the files are not to blame
        return "; ".join(lines)
    return f"{origin}: " + "; ".join(lines)


def parse_params(raw: dict[str, Any] | None, origin: str = "params", sources: dict[str, str] | None = None) -> Params:
    """Validated params; `sources` (dotted key -> the file or override that set it) names the culprit."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_describe(err, origin, sources)) from None


def _leaves(raw: dict[str, Any], prefix: str = "") -> list[str]:
    """Every leaf's dotted key (a list is a leaf)."""
    out = []
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out += _leaves(value, name) if isinstance(value, dict) and value else [name]
    return out


def _coerce_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `-S key.sub=value` overrides (DVC's syntax) to a raw params dict."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = _coerce_scalar(value)
    return out


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` laid over `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML itself keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in one mapping (first on "
                    f"line {seen[key] + 1}); YAML would keep only the second: keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeys) or {}  # noqa: S506 - a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def overlay_params_file(overlay: str | Path) -> Path:
    """The params patch of a deployment overlay: the file itself, or `<dir>/pipeline-params.yaml`."""
    path = Path(overlay)
    if path.is_dir():
        path = path / "pipeline-params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: overlay params file not found")
    return path


def load_params(
    path: str | Path | list | tuple | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    patches: list[str | Path] | tuple[str | Path, ...] = (),
) -> Params:
    """Read `params.yaml` (or defaults when the default file is absent), lay each patch file over it
    (e.g. a deployment overlay's pipeline-params.yaml, or a profile such as params/real-data.yaml), then
    apply -S overrides. A list of paths is the first file and patches (the CLI's repeated --params)."""
    if isinstance(path, (list, tuple)):
        path, patches = (path[0], [*path[1:], *patches]) if path else (None, patches)
    explicit = path is not None
    path = Path(path or DEFAULT_PARAMS_FILE)
    raw: dict[str, Any] = {}
    if path.exists():
        raw = _read_mapping(path)
    elif explicit:
        raise ConfigError(f"{path}: params file not found")
    return parse_params(*_layered(raw, path, patches=patches, overrides=overrides))


def _layered(raw: dict[str, Any], path: Path, *, patches, overrides) -> tuple[dict[str, Any], str, dict[str, str]]:
    """The params file, each patch and the overrides laid in order: (raw params, origin, key -> source)."""
    origin, sources = str(path), dict.fromkeys(_leaves(raw), str(path))
    for patch in patches:
        patch_path = Path(patch)
        if not patch_path.is_file():
            raise ConfigError(f"{patch_path}: params patch file not found")
        layer = _read_mapping(patch_path)
        raw = deep_merge(raw, layer)
        sources.update(dict.fromkeys(_leaves(layer), str(patch_path)))
        origin += f" + {patch_path}"
    for item in overrides:
        sources[item.split("=", 1)[0].strip()] = f"-S {item}"
    return apply_overrides(raw, overrides), origin, sources


def params_sources(
    path: str | Path | list | tuple | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    patches: list[str | Path] | tuple[str | Path, ...] = (),
) -> dict[str, str]:
    """Which layer set each value of the effective params: dotted key -> a file, `-S key=value`, or
    `default` (what `plmrec params show --origin` prints)."""
    if isinstance(path, (list, tuple)):
        path, patches = (path[0], [*path[1:], *patches]) if path else (None, patches)
    path = Path(path or DEFAULT_PARAMS_FILE)
    raw = _read_mapping(path) if path.exists() else {}
    _, _, sources = _layered(raw, path, patches=patches, overrides=overrides)
    effective = load_params(path if path.exists() else None, overrides, patches).to_dict()
    return {key: _source_of(key, sources) or "default" for key in _leaves(effective)}
