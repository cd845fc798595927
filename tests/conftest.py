"""Shared fixtures: small synthetic data, the real datasets when present, a real MLflow server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import SMALL, ChildServer, comparison_bundles, free_port, quick_recommenders_params
from plmrec.config import Params, SyntheticParams

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def small_params() -> Params:
    p = Params()
    p.data.synthetic = SyntheticParams(**SMALL)
    return p


@pytest.fixture(scope="session")
def small_raw():
    from plmrec.data.synthetic import generate_transactions

    return generate_transactions(SyntheticParams(**SMALL))


@pytest.fixture(scope="session")
def mlflow_server_root(tmp_path_factory) -> Path:
    """The MLflow server's directory: mlflow.db, and artifacts/ (its --artifacts-destination)."""
    return tmp_path_factory.mktemp("mlflow-server")


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_root):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store, proxying artifacts; yields its URI."""
    root = mlflow_server_root
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    with ChildServer("mlflow server", cmd, port, health_path="/health", cwd=root, timeout=90) as server:
        yield server.url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random RoBERTa with a byte-level BPE tokenizer trained here on the synthetic text."""
    from plmrec.data.synthetic import synthetic_catalogue
    from plmrec.pretrain.corpus import synthetic_dapt_corpus
    from plmrec.pretrain.models import build_tiny_roberta, quiet_transformers

    quiet_transformers()
    texts = list(synthetic_catalogue(SyntheticParams(**SMALL))["Description"]) + synthetic_dapt_corpus(2000)
    return build_tiny_roberta(texts, tmp_path_factory.mktemp("tiny-roberta"), vocab_size=800)


@pytest.fixture(scope="session")
def serving_bundles(tmp_path_factory) -> dict:
    """Serving bundles built the pipeline's way on the small synthetic data with the offline MiniLM:
    the learning-to-rank recommender chosen by the comparison, and a popularity one to tell them apart."""
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    prepared, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    return {
        "prepared": prepared,
        **comparison_bundles(
            prepared, quick_recommenders_params(), tmp_path_factory.mktemp("bundles"), models=("ltr", "popularity")
        ),
    }
