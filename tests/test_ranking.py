"""Top-K metrics against hand-computed values, and the item indexes against brute force."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plmrec.finetune.embed import ExactIndex, build_index, recency_weights, user_vectors
from plmrec.ranking import average_precision_at_k, ndcg_at_k, precision_at_k, ranking_metrics, recall_at_k


def test_hand_computed_example():
    ranked, relevant = ["a", "x", "b", "y", "z"], {"a", "b", "c"}
    assert precision_at_k(ranked, relevant, 5) == pytest.approx(2 / 5)
    assert recall_at_k(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert average_precision_at_k(ranked, relevant, 5) == pytest.approx((1 / 1 + 2 / 3) / 3)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx(dcg / idcg)
    assert precision_at_k(ranked, relevant, 1) == 1.0 and recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert average_precision_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)  # divides by min(|rel|, K) = 2


def test_no_relevant_items_is_undefined_and_left_out():
    for fn in (precision_at_k, recall_at_k, average_precision_at_k, ndcg_at_k):
        assert math.isnan(fn(["a", "b"], set(), 2))
    m = ranking_metrics([["a"], ["b"]], [{"a"}, set()], [1])
    assert m["recall@1"] == 1.0 and m["queries"] == 1 and m["queries_without_relevant"] == 1
    empty = ranking_metrics([["a"]], [set()], [5])
    assert math.isnan(empty["ndcg@5"]) and empty["queries"] == 0


_IDS = st.integers(min_value=-1, max_value=12)  # -1: no candidate


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.lists(_IDS, max_size=8), st.sets(st.integers(0, 12), max_size=4)), max_size=12),
    st.sets(st.integers(1, 9), min_size=1, max_size=3),
    st.booleans(),
)
def test_the_vectorised_means_are_the_per_query_definitions_bit_for_bit(queries, ks, as_matrix):
    """ranking_metrics scores every query at once; each mean equals the mean of the per-query functions
    exactly (duplicates, -1, short lists, queries without relevant items included)."""
    ranked = [r for r, _ in queries]
    relevant = [rel for _, rel in queries]
    if as_matrix:  # what the recommenders pass: one row per query, padded with -1
        width = max((len(r) for r in ranked), default=0)
        ranked = np.array([r + [-1] * (width - len(r)) for r in ranked], dtype=np.int64).reshape(len(ranked), width)
    got = ranking_metrics(ranked, relevant, sorted(ks))
    used = [i for i, rel in enumerate(relevant) if rel]
    fns = {"precision": precision_at_k, "recall": recall_at_k, "map": average_precision_at_k, "ndcg": ndcg_at_k}
    for name, fn in fns.items():
        for k in ks:
            want = [fn(list(ranked[i]), relevant[i], k) for i in used]
            expected = float(np.mean(want)) if want else math.nan
            assert got[f"{name}@{k}"] == expected or (math.isnan(expected) and math.isnan(got[f"{name}@{k}"]))
    assert got["queries"] == len(used)


def test_fewer_candidates_than_k():
    ranked, relevant = ["a", "b"], {"a", "b"}
    assert precision_at_k(ranked, relevant, 5) == pytest.approx(2 / 5)  # missing ranks are misses
    assert recall_at_k(ranked, relevant, 5) == 1.0
    assert ndcg_at_k(ranked, relevant, 5) == pytest.approx(1.0)
    assert average_precision_at_k(ranked, relevant, 5) == pytest.approx(1.0)
    assert precision_at_k([-1, "a"], {"a"}, 2) == pytest.approx(0.5)  # -1: no candidate


def test_duplicates_count_once():
    assert recall_at_k(["a", "a", "b"], {"a", "b"}, 3) == 1.0
    assert precision_at_k(["a", "a"], {"a"}, 2) == pytest.approx(0.5)
    assert ndcg_at_k(["a", "a"], {"a", "b"}, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_ties_are_broken_by_item_order():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    ids, scores = ExactIndex(vectors).search(np.array([[1.0, 0.0]], dtype=np.float32), 3)
    assert ids.tolist() == [[0, 1, 3]] and scores.tolist() == [[1.0, 1.0, 1.0]]
    m = ranking_metrics(ids.tolist(), [{3}], [2, 3])
    assert m["recall@2"] == 0.0 and m["recall@3"] == 1.0


def test_exact_index_matches_brute_force_and_excludes():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    ids, scores = ExactIndex(items, chunk=7).search(queries, 10)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    assert (ids == expected).all()
    assert np.allclose(scores, np.take_along_axis(queries @ items.T, expected, axis=1), atol=1e-5)
    exclude = [list(expected[i, :3]) for i in range(40)]
    ids2, _ = ExactIndex(items).search(queries, 10, exclude)
    assert (ids2[:, :7] == expected[:, 3:]).all()
    assert ExactIndex(items[:4]).search(queries[:1], 10)[0].shape == (1, 4)  # k capped at catalogue size


def test_faiss_index_agrees_with_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    items = rng.normal(size=(2000, 32)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    exact, _ = build_index(items, "exact").search(queries, 10)
    approx, _ = build_index(items, "faiss").search(queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert overlap > 0.9
    excluded, _ = build_index(items, "faiss").search(queries, 10, [[i] for i in range(50)])
    assert all(i not in row for i, row in enumerate(excluded))


def test_user_vectors_mean_and_recency():
    items = np.eye(3, dtype=np.float32)
    mean, recent = user_vectors([[0, 1], [2], []], items, half_life=1.0)
    assert np.allclose(mean[0], [2**-0.5, 2**-0.5, 0])
    w = recency_weights(2, 1.0)  # oldest first: [0.5, 1]
    assert w.tolist() == [0.5, 1.0]
    assert np.allclose(recent[0], np.array([0.5, 1.0, 0]) / np.linalg.norm([0.5, 1.0]))
    assert np.allclose(mean[1], [0, 0, 1]) and np.allclose(mean[2], 0)  # no history: zero vector


def test_saved_embeddings_reload_with_their_index(tmp_path):
    from plmrec.finetune.embed import item_table, load_item_index, save_embeddings

    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(5, 4)).astype(np.float32)
    items = item_table([f"c{i}" for i in range(5)], ["x"] * 5, vecs)
    users = item_table(["u"], ["y"], vecs[:1])  # any table: saved as given
    save_embeddings(tmp_path, items, users, index_kind="exact", model_info={"users_from": "test"})
    loaded, index = load_item_index(tmp_path)
    assert loaded["StockCode"].tolist() == [f"c{i}" for i in range(5)] and index.kind == "exact"
    assert index.search(vecs[[3]], 1)[0].tolist() == ExactIndex(vecs).search(vecs[[3]], 1)[0].tolist()
