"""Complex product search: the Amazon-C4 and ESCI loaders, the review benchmark's time split, BM25,
reciprocal rank fusion, the metrics and the evaluate-search stage."""

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers import shared, small_review_file, tiny_search_params
from plmrec.config import BlairParams, Params
from plmrec.errors import DataLoadError
from plmrec.search import datasets
from plmrec.search.benchmark import load_review_data, query_benchmark, review_benchmark
from plmrec.search.blair import blair_pairs
from plmrec.search.fusion import fuse, fused_ranks
from plmrec.search.lexical import Bm25Index
from plmrec.search.metrics import search_metrics, target_ranks

C4 = ("amazon-search", "amazon-c4-subset")
UCSD = ("amazon-search", "amazon2023-ucsd-sample")


# ---------------------------------------------------------------------------------------------- loaders
def test_the_c4_loader_reads_the_real_subset_without_the_reference_review():
    queries = datasets.load_c4_queries(shared(*C4, "test_subset.csv.gz"))
    assert len(queries) == 1722 and queries["qid"].is_unique
    assert list(queries.columns) == ["qid", "query", "item_id", "user_id", "category"]
    assert set(queries["category"]) == {"Baby", "Office", "Sports", "Video_Games"}
    reference = datasets.load_c4_reference(shared(*C4, "test_subset.csv.gz")).set_index("qid")
    joined = queries.join(reference, on="qid")
    assert not any(str(review) in query for query, review in zip(joined["query"], joined["ori_review"]))
    baby = datasets.load_c4_queries(shared(*C4, "Baby.test.json.gz"))  # the per-category JSON arrays
    assert len(baby) == 247 and set(baby["category"]) == {"Baby"}
    assert set(baby["qid"]) <= set(queries["qid"])


def test_the_c4_loader_names_the_missing_columns(tmp_path):
    bad = tmp_path / "test.csv"
    pd.DataFrame({"qid": [1], "query": ["a tent"], "item_id": ["B0"], "ori_rating": [5]}).to_csv(bad, index=False)
    with pytest.raises(DataLoadError, match=r"missing column\(s\) user_id, ori_review"):
        datasets.load_c4_queries(bad)


def test_a_c4_pool_the_test_builds_makes_a_benchmark_with_a_valid_slice(tmp_path):
    queries = datasets.load_c4_queries(shared(*C4, "Video_Games.test.json.gz"))
    pool = tmp_path / "sampled_item_metadata_1M.jsonl"
    with open(pool, "w") as fh:
        for i, item in enumerate([*queries["item_id"], "B-extra-1", "B-extra-2"]):
            fh.write(json.dumps({"item_id": item, "category": "Games", "metadata": f"<b>Game</b> number {i}"}) + "\n")
    items = datasets.load_c4_items(pool)
    assert len(items) == len(set(queries["item_id"])) + 2 and items["text"].iloc[0] == "Game number 0"
    bench = query_benchmark(queries, items, name="c4-games", valid_fraction=0.2, seed=0)
    valid, test = bench.queries["valid"], bench.queries["test"]
    assert len(valid) == 30 and len(valid) + len(test) == 150
    assert not set(valid["qid"]) & set(test["qid"])
    assert bench.training.empty  # C4 has nothing to train on
    with pytest.raises(DataLoadError, match="3 of 150 queries name items not in the pool"):
        query_benchmark(queries, items[~items["item_id"].isin(queries["item_id"].iloc[:3])], name="c4")


def test_the_esci_loader_keeps_one_locale_and_refuses_unknown_labels(tmp_path):
    examples = pd.DataFrame(
        {
            "example_id": [0, 1, 2],
            "query": ["red shoes", "red shoes", "zapatos"],
            "query_id": [1, 1, 2],
            "product_id": ["P1", "P2", "P3"],
            "product_locale": ["us", "us", "es"],
            "esci_label": ["E", "I", "S"],
            "split": ["test", "test", "train"],
        }
    )
    products = pd.DataFrame(
        {
            "product_id": ["P1", "P2", "P3"],
            "product_title": ["Red running shoe", "Blue hat", "Zapato"],
            "product_brand": ["Acme", None, "X"],
            "product_locale": ["us", "us", "es"],
        }
    )
    examples.to_parquet(tmp_path / "examples.parquet")
    products.to_parquet(tmp_path / "products.parquet")
    got, items = datasets.load_esci(tmp_path / "examples.parquet", tmp_path / "products.parquet")
    assert list(got["product_id"]) == ["P1", "P2"] and list(items["text"]) == ["Red running shoe. Acme", "Blue hat"]
    examples.assign(esci_label=["E", "X", "S"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataLoadError, match="esci_label has X"):
        datasets.load_esci(tmp_path / "bad.parquet")


def test_the_c4_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataLoadError, match="McAuley-Lab/Amazon-C4.*copy the two files"):
        datasets.download_c4(tmp_path)


# ---------------------------------------------------------------------------------------------- benchmark
@pytest.fixture(scope="module")
def ucsd():
    return load_review_data(shared(*UCSD))


def test_the_review_benchmark_never_trains_on_a_query(ucsd):
    reviews, items = ucsd
    assert len(reviews) == 3305 and reviews["category"].nunique() == 23
    bench = review_benchmark(reviews, items, name="ucsd", valid_fraction=0.1, test_fraction=0.2, min_query_chars=100)
    valid, test = bench.queries["valid"], bench.queries["test"]
    assert bench.training["timestamp"].max() < valid["timestamp"].min() <= valid["timestamp"].max()
    assert valid["timestamp"].max() < test["timestamp"].min()
    assert (valid["query"].str.len() >= 100).all() and (test["query"].str.len() >= 100).all()
    assert set(valid["item_id"]) | set(test["item_id"]) <= set(bench.items["item_id"])
    anchors = {a for a, _ in blair_pairs(bench.training, BlairParams(), seed=0)}
    assert anchors and not anchors & (set(valid["query"]) | set(test["query"]))
    targets = bench.targets("test")
    assert (bench.items["item_id"].to_numpy()[targets] == test["item_id"].to_numpy()).all()


def test_amazon_2018_reviews_with_their_metadata_make_a_benchmark():
    reviews, items = load_review_data(
        shared("amazon2018", "Magazine_Subscriptions_5.json.gz"),
        shared("amazon2018", "meta_Magazine_Subscriptions.json.gz"),
    )
    assert set(reviews["category"]) == {"Magazine_Subscriptions"} and (items["text"].str.len() > 0).all()
    bench = review_benchmark(reviews, items, name="magazines")
    assert len(bench.queries["test"]) > 50 and len(bench.items) > 1000
    with pytest.raises(DataLoadError, match="need their metadata file"):
        load_review_data(shared("amazon2018", "Magazine_Subscriptions_5.json.gz"))


# ---------------------------------------------------------------------------------------------- rankers
def test_bm25_scores_match_the_formula_worked_by_hand(tmp_path):
    corpus = ["A cat sat on the mat", "Dogs and cats", "The red mat"]
    index = Bm25Index(corpus)
    # After stop words and stemming: [cat, sat, mat], [dog, cat], [red, mat]; N = 3, avgdl = 7/3.
    # Lucene: idf = ln(1 + (N - df + 0.5) / (df + 0.5)); cat and mat: df = 2, idf = ln(1.6) = 0.470004.
    # A term with tf = 1 in a document of length dl: 1 / (1 + 1.5 * (0.25 + 0.75 * dl / avgdl)).
    idf = math.log(1.6)
    weight3 = 1 / (1 + 1.5 * (0.25 + 0.75 * 3 / (7 / 3)))  # 0.354430
    weight2 = 1 / (1 + 1.5 * (0.25 + 0.75 * 2 / (7 / 3)))  # 0.427518
    expected = [2 * idf * weight3, idf * weight2, idf * weight2]  # 0.333167, 0.200918, 0.200918
    scores = next(index.scores(["cats on mats"]))
    assert scores[0] == pytest.approx(expected, abs=1e-5)
    rows, values = index.top(["cat mat", "zebra"], 3)
    assert rows[0].tolist() == [0, 1, 2] and rows[1].tolist() == [-1, -1, -1]  # no shared word: no candidate
    assert index.top(["the and"], 2)[0].tolist() == [[-1, -1]]  # stop words only
    index.save(tmp_path / "bm25")
    again = Bm25Index.load(tmp_path / "bm25")
    assert next(again.scores(["cats on mats"]))[0] == pytest.approx(expected, abs=1e-5)


def test_reciprocal_rank_fusion_orders_a_hand_made_example():
    dense, lexical = np.array([1, 2, 3]), np.array([3, 1, 4, -1])
    # weight 0.5, k 60: item 1: .5/61 + .5/62 = 0.016261; item 3: .5/63 + .5/61 = 0.016133;
    # item 2: .5/62 = 0.008065; item 4: .5/63 = 0.007937
    rows, scores = fuse(dense, lexical, weight=0.5, k=60)
    assert rows.tolist() == [1, 3, 2, 4]
    assert scores[0] == pytest.approx(0.5 / 61 + 0.5 / 62)
    assert fuse(dense, lexical, weight=1.0, k=60)[0].tolist() == [1, 2, 3]
    assert fuse(dense, lexical, weight=0.0, k=60)[0].tolist() == [3, 1, 4]
    assert fuse(dense, lexical, weight=0.9, k=1)[0].tolist() == [1, 2, 3, 4]  # 1/(1+r) puts dense first
    ranks = fused_ranks(np.array([dense, dense]), np.array([lexical, lexical]), np.array([3, 7]), weight=0.5, k=60)
    assert ranks[0] == 2 and ranks[1] == np.inf


def test_metrics_count_ties_against_the_target():
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0], [0.2, 0.9, 0.3, 0.1]])
    ranks = target_ranks(scores, np.array([0, 2, 0]))
    assert ranks.tolist() == [1, 4, 3]
    m = search_metrics(np.array([1, 3, np.inf]), [1, 10], depth=1000)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 3)


# ---------------------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def small_reviews(tmp_path_factory):
    shared(*UCSD)
    return small_review_file(tmp_path_factory.mktemp("reviews") / "sample.jsonl.gz")


def _search_params(tmp_path, base_model, reviews_path=None):
    params = Params()
    params.pretrain.base_model = str(base_model)
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params.search = tiny_search_params(reviews_path, seeds=[0, 1])
    return params


def test_evaluate_search_scores_every_ranker_and_chooses_the_mode_on_valid(tmp_path, small_reviews, tiny_model_dir):
    from plmrec.stages.evaluate_search import evaluate_search

    params = _search_params(tmp_path, tiny_model_dir, small_reviews)
    out = evaluate_search(params, search=tmp_path / "search", metrics=tmp_path / "m.json")
    decision = json.loads((tmp_path / "search" / "decision.json").read_text())
    assert decision["evaluated"] and decision["mode"] in ("dense", "lexical", "hybrid")
    valid = {mode: v["ndcg@100"] for mode, v in decision["valid"].items()}
    assert valid[decision["mode"]] == max(valid.values())  # the mode is valid's winner
    rows = {r["ranker"]: r for r in out["test"]}
    assert set(rows) == {"bm25", "base", "blair", "hybrid", "hybrid-base"}
    assert rows["blair"]["std_ndcg@100"] >= 0 and rows["bm25"]["std_ndcg@100"] == 0
    per_seed = pd.read_csv(tmp_path / "search" / "per_seed.csv")
    assert sorted(per_seed.loc[per_seed["ranker"] == "blair", "seed"].unique()) == [0, 1]
    assert (tmp_path / "search" / "categories.png").stat().st_size > 0
    mlflow.set_tracking_uri(params.tracking.uri)
    run = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.mlflow.runName = 'evaluate-search'", output_format="list"
    )[0]
    assert run.data.tags["plmrec.search_mode"] == decision["mode"]
    assert "blair.vs.bm25" in run.data.tags and "Product search" in run.data.tags["mlflow.note.content"]
    assert any(k.startswith("test/blair/ndcg_at_100") for k in run.data.metrics)


def test_evaluate_search_without_review_data_records_a_skip(tmp_path, tiny_model_dir):
    from plmrec.stages.evaluate_search import evaluate_search

    params = _search_params(tmp_path, tiny_model_dir)
    out = evaluate_search(params, search=tmp_path / "search", metrics=tmp_path / "m.json")
    assert out["decision"]["mode"] == "dense" and not out["decision"]["evaluated"]
    assert "search.reviews_path is not set" in (tmp_path / "search" / "results.md").read_text()
