"""Helpers the tests import: paths, the small synthetic sizes, quick settings, bundles built the
pipeline's way, and servers in child processes. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from plmrec.config import Params

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLMREC_SHARED_DATA", ROOT.parent / "shared" / "data"))

SMALL = dict(n_customers=300, n_products=200, n_invoices=2500)


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (see ../shared/data/README.md)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pretrain_params(model_dir, **overrides):
    """Pretraining settings that run in seconds on a CPU."""
    from plmrec.config import PhaseParams, PretrainParams

    base = dict(
        base_model=str(model_dir),
        batch_size=8,
        max_length=32,
        log_every=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        checkpoint_every=1000,
        phases=[
            PhaseParams(corpus="tapt", objective="mlm", steps=6),
            PhaseParams(corpus="tapt", objective="tsdae", steps=4),
        ],
    )
    return PretrainParams(**{**base, **overrides})


def tiny_finetune_params(**overrides):
    """Fine-tuning settings that run in seconds on a CPU with the tiny model."""
    from plmrec.config import FinetuneParams, FinetunePhaseParams

    base = dict(
        batch_size=16,
        max_length=64,
        log_every=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        checkpoint_every=1000,
        history_length=10,
        merge_alphas=[1.0],
        phases=[FinetunePhaseParams(task="item_context", steps=4), FinetunePhaseParams(task="sequence_next", steps=4)],
    )
    return FinetuneParams(**{**base, **overrides})


def quick_recommenders_params():
    """One seed, no hyperparameter grids: the comparison in seconds."""
    from plmrec.config import RecommendersParams

    return RecommendersParams(
        seeds=[0],
        classifier=dict(ablation=["rf_selection", "text_cluster"]),
        mf=dict(factors=[16], similarity_weights=[0.5], cluster_weights=[0.5]),
    )


QUICK_USER_MODEL = {
    "variants": [{"vectors": 1, "inputs": "id"}, {"vectors": 2, "inputs": "id+text"}],
    "dim": 32,
    "layers": 1,
    "id_dim": 16,
    "epochs": 2,
    "batch_size": 64,
}


def quick_user_model_params(**overrides):
    """Two small variants, two epochs: the user-model stage in seconds."""
    from plmrec.config import UserModelParams

    return UserModelParams(**{**QUICK_USER_MODEL, **overrides})


def train_user_model_stage(root: Path, prepared, items, *, user_model) -> dict:
    """train-user-model on files laid out as the pipeline does (root/prepared.parquet, root/encoder/
    item_embeddings.parquet), tracking to root/mlflow.db; writes root/user_model and root/metrics.json."""
    from plmrec.stages.train_user_model import train_user_model

    (root / "encoder").mkdir(exist_ok=True)
    items.to_parquet(root / "encoder" / "item_embeddings.parquet", index=False)
    prepared.to_parquet(root / "prepared.parquet", index=False)
    params = Params(user_model=user_model)
    params.tracking.uri = f"sqlite:///{root / 'mlflow.db'}"
    return train_user_model(
        params,
        prepared=root / "prepared.parquet",
        encoder=root / "encoder",
        user_model=root / "user_model",
        metrics=root / "metrics.json",
    )


def minilm_items(prepared):
    """Item embeddings from the offline MiniLM (the default base model), and the model's directory."""
    from plmrec.encoders import load_encoder
    from plmrec.finetune.embed import encode_texts, item_table
    from plmrec.finetune.pairs import catalogue
    from plmrec.pretrain.models import resolve_base_model

    encoder = resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
    cat = catalogue(prepared)
    return item_table(
        cat["StockCode"].tolist(),
        cat["Description"].tolist(),
        encode_texts(load_encoder(encoder, "mean", 64), cat["Description"].tolist()),
    ), encoder


def comparison_bundles(prepared, recommenders, root: Path, *, models: tuple[str, ...]) -> dict:
    """Bundles written as compare-models writes them, from one comparison with the offline MiniLM."""
    from plmrec.recsys import experiment
    from plmrec.serving.bundle import write_bundle

    items, encoder = minilm_items(prepared)
    rows, detail = experiment.run_recommenders(prepared, items, recommenders)
    params = Params(recommenders=recommenders)
    out = {"rows": rows, "detail": detail, "items": items, "encoder": encoder}
    for model in models:
        params.registry.served_model = model
        write_bundle(
            params,
            prepared,
            items,
            recommender_rows=rows,
            recommender_detail=detail,
            encoder_dir=encoder,
            bundle_dir=root / model,
        )
        out[model] = root / model
    return out


class ChildServer:
    """A server in a child process (its own process group), ready once `health_path` answers 200."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        *,
        health_path: str,
        cwd: Path,
        env: dict | None = None,
        timeout: float = 120,
    ):
        self.name, self.cmd, self.port, self.health_path, self.cwd, self.timeout = (
            name,
            cmd,
            port,
            health_path,
            cwd,
            timeout,
        )
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(cwd) / f"{name.replace(' ', '-')}-{port}.log"
        self.env = {**os.environ, **(env or {})}

    def __enter__(self) -> ChildServer:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env, start_new_session=True
        )
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}{self.health_path}", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"{self.name} not ready in {self.timeout:.0f} s: {self.log_path.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # servers spawn workers: stop the whole group
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def plmrec_server(args: list[str], cwd: Path, env: dict | None = None) -> ChildServer:
    """`plmrec serve` on a free loopback port."""
    port = free_port()
    return ChildServer(
        "plmrec serve",
        [sys.executable, "-m", "plmrec.cli", "serve", "--port", str(port), *args],
        port,
        health_path="/v2/health/ready",
        cwd=cwd,
        env={"HF_HUB_OFFLINE": "1", **(env or {})},
    )


def small_review_file(out: Path, records: int = 150) -> Path | None:
    """The first `records` user records of the real UCSD review sample as a file of their own (None when
    ../shared/data is absent)."""
    import gzip

    src = SHARED_DATA / "amazon-search" / "amazon2023-ucsd-sample" / "training.jsonl.gz"
    if not src.exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(src, "rt") as fh, gzip.open(out, "wt") as dst:
        for i, line in enumerate(fh):
            if i == records:
                break
            dst.write(line)
    return out


def tiny_search_params(reviews_path, **overrides):
    """evaluate-search settings that run in seconds with the tiny model: one seed, a few BLaIR steps."""
    from plmrec.config import BlairParams, SearchParams

    blair = BlairParams(batch_size=8, max_pairs=48, epochs=1.0, max_length=48, learning_rate=1e-3, log_every=2)
    base = dict(
        reviews_path=str(reviews_path) if reviews_path else None, seeds=[0], blair=blair, depth=200, min_query_chars=60
    )
    return SearchParams(**{**base, **overrides})


def magazine_as_recbole(folder: Path) -> pd.DataFrame:
    """Amazon 2018 Magazine Subscriptions written as RecBole atomic files (`folder`/magazine.inter and
    .item, the format of RecBole's public data sets; the repeated reviews left out, as RecBole's own
    conversions leave them); returns the interactions written."""
    from plmrec.data.amazon import load_items, load_reviews

    root = shared("amazon2018")
    reviews = load_reviews(root / "Magazine_Subscriptions_5.json.gz")
    reviews = reviews.drop_duplicates(["user_id", "item_id", "timestamp", "rating"])
    inter = pd.DataFrame(
        {
            "user_id": reviews["user_id"],
            "item_id": reviews["item_id"],
            "rating": reviews["rating"],
            "timestamp": reviews["timestamp"].astype("int64") // 10**9,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    _atomic(
        inter,
        folder / "magazine.inter",
        {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"},
    )
    meta = load_items(root / "meta_Magazine_Subscriptions.json.gz")
    item = pd.DataFrame({"item_id": meta["item_id"], "title": meta["title"].str.replace("\t", " ")})
    _atomic(item, folder / "magazine.item", {"item_id": "token", "title": "token_seq"})
    return inter


def _atomic(frame: pd.DataFrame, path: Path, types: dict[str, str]) -> None:
    """A RecBole atomic file: tab-separated, `name:type` headers."""
    header = "\t".join(f"{c}:{types[c]}" for c in frame.columns)
    body = frame.astype(str).apply(lambda r: "\t".join(r), axis=1)
    path.write_text(header + "\n" + "\n".join(body) + "\n")


def retail_orders(rows: int) -> pd.DataFrame:
    """The first `rows` lines of the real Online Retail file that have a customer, as a shop's order
    export in a shape of its own (order_id, customer_id, sku, ordered_at, qty, unit_price, product_name)."""
    raw = pd.read_parquet(shared("online-retail", "online_retail.parquet")).head(rows).dropna(subset=["CustomerID"])
    return pd.DataFrame(
        {
            "order_id": raw["InvoiceNo"].astype(str),
            "customer_id": raw["CustomerID"].astype(int),
            "sku": raw["StockCode"],
            "ordered_at": raw["InvoiceDate"],
            "qty": raw["Quantity"],
            "unit_price": raw["UnitPrice"],
            "product_name": raw["Description"],
        }
    )
