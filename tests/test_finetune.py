"""Contrastive fine-tuning: pair builders never see the future, phases chain, and it learns."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers import SMALL, shared, tiny_finetune_params
from plmrec.config import FinetunePhaseParams, Params, SyntheticParams
from plmrec.data.prepare import prepare_transactions
from plmrec.encoders import load_encoder
from plmrec.errors import PairError
from plmrec.finetune import pairs as pair_builders
from plmrec.finetune.retrieval import score_encoder, temporal_queries
from plmrec.finetune.schedule import build_pairs, finetune

TRAIN_END = "2011-09-01"


def _rows(spec):
    """(customer, invoice, 'YYYY-MM-DD', code, description, split) tuples -> a prepared-like table."""
    df = pd.DataFrame(spec, columns=["CustomerID", "InvoiceNo", "InvoiceDate", "StockCode", "Description", "split"])
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    return df


@pytest.fixture(scope="module")
def prepared():
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    table, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    return table


def test_pairs_never_use_purchases_after_the_cutoff(prepared):
    planted = prepared[prepared["split"] == "test"].iloc[[0, 1]].copy()
    customer = prepared[prepared["split"] == "train"]["CustomerID"].iloc[0]
    planted["CustomerID"] = customer  # a known customer buys a brand-new item after the cut-off
    planted["StockCode"] = ["FUTURE1", "FUTURE2"]
    planted["Description"] = ["PLANTED FUTURE LANTERN", "PLANTED FUTURE MUG"]
    planted["InvoiceNo"] = "999999"
    table = pd.concat([prepared, planted], ignore_index=True)
    p = Params()
    p.finetune.max_pairs = 10**6
    rows = pair_builders.training_rows(table, TRAIN_END)
    assert rows["InvoiceDate"].max() < pd.Timestamp(TRAIN_END)
    for task in ("item_context", "sequence_next", "sequence_sequence", "item_text"):
        pairs = build_pairs(task, p, rows, seed=0)
        assert pairs, task
        assert not any("PLANTED" in a or "PLANTED" in b for a, b in pairs), task

    mislabelled = planted.assign(split="train")  # a row marked train but dated after the cut-off
    with pytest.raises(PairError, match="on or after train_end=2011-09-01.*invoice 999999"):
        pair_builders.training_rows(pd.concat([prepared, mislabelled], ignore_index=True), TRAIN_END)


def test_item_context_pairs_follow_co_purchases():
    rows = _rows(
        [
            (1, "A1", "2011-01-01", "a", "RED MUG", "train"),
            (1, "A1", "2011-01-01", "b", "RED PLATE", "train"),
            (2, "A2", "2011-02-01", "a", "RED MUG", "train"),
            (2, "A2", "2011-02-01", "b", "RED PLATE", "train"),
            (2, "A2", "2011-02-01", "c", "BLUE CUP", "train"),
            (3, "A3", "2011-03-01", "d", "LONE BOX", "train"),
        ]
    )
    pairs = pair_builders.item_context_pairs(rows, neighbours_per_item=1)
    assert ("RED MUG", "RED PLATE") in pairs and ("RED PLATE", "RED MUG") in pairs  # bought together twice
    assert ("BLUE CUP", "RED MUG") in pairs  # tie (1 each) goes to the lower code
    assert not any("LONE BOX" in x for pair in pairs for x in pair)  # never in a basket with others
    assert len(pairs) == 3


def test_sequence_pairs_render_recent_history_first():
    rows = _rows(
        [
            (1, "I1", "2011-01-01", "a", "OLD MUG", "train"),
            (1, "I2", "2011-02-01", "b", "MID PLATE", "train"),
            (1, "I3", "2011-03-01", "a", "OLD MUG", "train"),
            (1, "I3", "2011-03-01", "c", "NEW CUP", "train"),
            (2, "I4", "2011-01-05", "d", "SOLO BOX", "train"),
        ]
    )
    pairs = pair_builders.sequence_next_pairs(rows, history_length=5)
    assert pairs == [("OLD MUG", "MID PLATE"), ("MID PLATE; OLD MUG", "NEW CUP")]  # repurchase is no target
    assert pair_builders.sequence_next_pairs(rows, history_length=1)[1] == ("MID PLATE", "NEW CUP")
    assert pair_builders.render_history(["A", "B", "C"], 2) == "C; B"


def test_review_item_pairs_need_30_characters_both_sides():
    reviews = pd.DataFrame(
        {
            "review_title": ["Great", "ok", "Lovely mug"],
            "review_text": [
                "Works well and looks good on my desk every day",
                "fine",
                "I use it for tea every single morning now",
            ],
            "item_text": [
                "Ceramic mug. 350 ml. Dishwasher safe stoneware",
                "short",
                "Ceramic mug. 350 ml. Dishwasher safe stoneware",
            ],
        }
    )
    pairs = pair_builders.review_item_pairs(reviews, min_chars=30)
    assert pairs == [
        ("Great. Works well and looks good on my desk every day", "Ceramic mug. 350 ml. Dishwasher safe stoneware"),
        ("Lovely mug. I use it for tea every single morning now", "Ceramic mug. 350 ml. Dishwasher safe stoneware"),
    ]


@pytest.mark.realdata
def test_review_item_pairs_from_amazon_2018():
    from plmrec.data.amazon import load_reviews_with_items

    data = shared("amazon2018")
    reviews = load_reviews_with_items(
        data / "Magazine_Subscriptions_5.json.gz", data / "meta_Magazine_Subscriptions.json.gz"
    )
    pairs = pair_builders.review_item_pairs(reviews[reviews["has_item_meta"]], min_chars=30)
    assert len(pairs) > 500
    assert all(len(a) >= 30 and len(b) >= 30 for a, b in pairs)


def test_phases_chain_and_finetuning_raises_recall(prepared, tiny_model_dir, tmp_path):
    p = Params()
    p.finetune = tiny_finetune_params(
        phases=[
            FinetunePhaseParams(task="item_context", steps=100),
            FinetunePhaseParams(task="sequence_next", steps=100),
        ],
        batch_size=64,
    )
    cat = pair_builders.catalogue(prepared)
    queries = temporal_queries(prepared, {c: i for i, c in enumerate(cat["StockCode"])}, "valid")
    assert len(queries) > 50

    def recall(path):
        model = load_encoder(path, "mean", 64)
        return score_encoder(
            model, cat["Description"].tolist(), queries, ks=[10], history_length=10, half_life=5.0, exclude_history=True
        )["sentence"]["recall@10"]

    before = recall(tiny_model_dir)
    report = finetune(p, prepared, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False)
    first, second = report["phases"]
    assert second["start_fingerprint"] == first["end_fingerprint"] != first["start_fingerprint"]
    assert first["losses"][-1][1] < first["losses"][0][1]
    after = recall(tmp_path / "ft" / "sentence-transformer")
    assert after > before + 0.03, (before, after)

    again = finetune(
        p, prepared, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False
    )  # finished phases skipped
    assert [ph["end_fingerprint"] for ph in again["phases"]] == [first["end_fingerprint"], second["end_fingerprint"]]


def test_merging_with_the_start_keeps_the_interpolation_valid_prefers(prepared, tiny_model_dir, tmp_path):
    import torch

    from plmrec.selection import best_query

    p = Params()
    p.finetune = tiny_finetune_params(
        phases=[FinetunePhaseParams(task="item_context", steps=30)], batch_size=32, merge_alphas=[0.25, 0.5]
    )
    report = finetune(p, prepared, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False)
    merge = report["merge"]
    assert list(merge["scores"]) == ["alpha=1", "alpha=0.5", "alpha=0.25"]  # as trained, always a candidate
    valid = {name: best_query(by_kind)[1] for name, by_kind in merge["scores"].items()}
    assert merge["chosen"] == max(valid, key=valid.get) == f"alpha={merge['alpha']:g}"

    start, tuned, saved = (
        load_encoder(path, "mean", 64)
        for path in (
            tiny_model_dir,
            tmp_path / "ft" / "phases" / "1-item_context",
            tmp_path / "ft" / "sentence-transformer",
        )
    )
    a = merge["alpha"]
    weights = {name: dict(m.named_parameters()) for name, m in (("start", start), ("tuned", tuned), ("saved", saved))}
    for key, value in weights["saved"].items():
        if ".pooler." in key:  # the tiny RoBERTa has no pooler: drawn afresh at each load, and unused
            continue
        torch.testing.assert_close(value, (1 - a) * weights["start"][key] + a * weights["tuned"][key])
    assert any(not torch.equal(weights["start"][k], weights["tuned"][k]) for k in weights["tuned"])


def test_merging_models_of_different_shapes_is_refused(tiny_model_dir):
    from plmrec.errors import StageError
    from plmrec.finetune.merge import interpolate
    from plmrec.pretrain.models import resolve_base_model

    minilm = resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
    small, other = load_encoder(tiny_model_dir, "mean", 64), load_encoder(minilm, "mean", 64)
    with pytest.raises(StageError, match="finetune.merge_alphas: .*differ|finetune.merge_alphas: .* in the start"):
        interpolate(small, other, 0.5)


@pytest.mark.parametrize(
    "overrides", [dict(loss="cached_mnrl", mini_batch_size=4), dict(mlm_weight=0.1), dict(pooling="cls")]
)
def test_loss_variants_train(prepared, tiny_model_dir, tmp_path, overrides):
    p = Params()
    p.finetune = tiny_finetune_params(
        phases=[FinetunePhaseParams(task="item_context", steps=10)], max_pairs=32, batch_size=32, **overrides
    )  # one repeated batch
    report = finetune(p, prepared, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False)
    losses = [v for _, v in report["phases"][0]["losses"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    config = json.loads((tmp_path / "ft" / "sentence-transformer" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in config] == ["Transformer", "Pooling", "Normalize"]


def test_no_pairs_fails_before_training(tiny_model_dir, tmp_path):
    rows = _rows([(1, "I1", "2011-01-01", "a", "ONLY ITEM", "train"), (1, "I9", "2011-12-01", "b", "LATER", "test")])
    p = Params()
    p.finetune = tiny_finetune_params(phases=[FinetunePhaseParams(task="item_context", steps=2)])
    with pytest.raises(Exception, match=r"phase 1 \(item_context\): no training pairs from 1 training rows"):
        finetune(p, rows, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_finetuning(prepared, tiny_model_dir, tmp_path):
    p = Params()
    p.finetune = tiny_finetune_params(
        phases=[FinetunePhaseParams(task="sequence_next", steps=10)],
        loss="cached_mnrl",
        mini_batch_size=4,
        mlm_weight=0.1,
    )
    phase = finetune(p, prepared, str(tiny_model_dir), out_dir=tmp_path / "ft", progress=False)["phases"][0]
    assert phase["device"].startswith("cuda") and phase["precision"] == "bf16"
    assert np.isfinite([v for _, v in phase["losses"]]).all()


def test_missing_encoders_are_named(tmp_path):
    from plmrec.errors import PlmrecError
    from plmrec.stages.evaluate_retrieval import retrieval_encoders
    from plmrec.stages.finetune import finetune_start_model

    p = Params()
    for start_from in ("auto", "pretrained"):
        p.finetune.start_from = start_from
        with pytest.raises(PlmrecError, match=rf"start_from is '{start_from}' but .*hf holds no encoder"):
            finetune_start_model(p, tmp_path / "nothing-here")
    p.retrieval.compare = ["finetuned"]
    with pytest.raises(PlmrecError, match=r"compare includes 'finetuned' but .*sentence-transformer holds no encoder"):
        retrieval_encoders(p, None, tmp_path)


def test_encoder_folder_takes_a_stage_folder_or_a_model(tmp_path):
    """evaluate-retrieval's `encoder` folder (bench/search.py --selected) or the model inside it; a folder
    without one is one clear error, not a transformers traceback."""
    from plmrec.encoders import encoder_folder
    from plmrec.errors import StageError

    model = tmp_path / "encoder" / "sentence-transformer"
    model.mkdir(parents=True)
    (model / "modules.json").write_text("[]")
    assert encoder_folder(tmp_path / "encoder") == model and encoder_folder(model) == model
    with pytest.raises(StageError, match="holds no encoder .* pass the folder evaluate-retrieval wrote"):
        encoder_folder(tmp_path)
