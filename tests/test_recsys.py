"""Feature-based models and recommenders: windows, features fitted on train only, and the
integration claims (text features help XGBoost; learning to rank beats popularity)."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import helpers
from helpers import SMALL
from plmrec.config import ClassifierParams, Params, RecommendersParams, SyntheticParams
from plmrec.data.prepare import prepare_transactions
from plmrec.features import EmbeddingFeatures
from plmrec.finetune.embed import item_table
from plmrec.recsys import experiment, recommend, views
from plmrec.recsys.classify import _fit_chosen_on_valid, ablation_rows, plm_counterpart, run_ablation


@pytest.fixture(scope="module")
def prepared():
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    table, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    return table


@pytest.fixture(scope="module")
def minilm_items(prepared):
    """Item embeddings from the offline MiniLM (the default base model)."""
    return helpers.minilm_items(prepared)[0]


def test_ablation_rows_are_cumulative():
    rows = ablation_rows(
        ClassifierParams(base_groups=["transaction"], ablation=["rf_selection", "text_cluster", "stock_code"])
    )
    assert [r["variant"] for r in rows] == [
        "vanilla",
        "+rf_selection",
        "+text_cluster",
        "+stock_code",
        "text+rf_selection",
    ]
    assert rows[-2] == {
        "variant": "+stock_code",
        "groups": ["transaction", "stock_code"],
        "text": ["text_cluster"],
        "rf": True,
    }
    # selection after the text features: vanilla's groups, every text group, threshold chosen on valid
    assert rows[-1] == {
        "variant": "text+rf_selection",
        "groups": ["transaction"],
        "text": ["text_cluster"],
        "rf": "valid",
    }
    assert "text+rf_selection" not in [
        r["variant"] for r in ablation_rows(ClassifierParams(ablation=["rf_selection"], selection_after_text=True))
    ]  # no text group: no such row
    assert rows[0]["rf"] is False and rows[0]["text"] == []
    # text rows are judged against the same pipeline without text: here the +rf_selection row
    assert plm_counterpart(ClassifierParams(ablation=["rf_selection", "text_cluster", "stock_code"])) == "+rf_selection"
    assert plm_counterpart(ClassifierParams(ablation=["text_pca10"])) == "vanilla"


def test_embedding_features_are_fitted_on_training_items_only():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 16)).astype(np.float32)
    items = item_table([f"c{i}" for i in range(40)], ["x"] * 40, vecs)
    train_codes = [f"c{i}" for i in range(30)]
    base = EmbeddingFeatures.fit(items, train_codes, clusters=3, seed=0)
    shifted = items.copy()
    shifted.loc[35, "embedding"] = vecs[35] * 1000  # an extreme item that is never sold in train
    again = EmbeddingFeatures.fit(shifted, train_codes, clusters=3, seed=0)
    assert np.allclose(base.table[:30], again.table[:30])  # PCA and KMeans did not see it
    out = again.transform(pd.Series(["c1", "c35", "unknown"]), ["text_cluster", "text_pca2"])
    assert list(out.columns) == ["text_cluster", "text_pca2_0", "text_pca2_1"]
    assert out.loc[2, "text_cluster"] == -1 and out.loc[2, ["text_pca2_0", "text_pca2_1"]].isna().all()


def _table(spec):
    df = pd.DataFrame(spec, columns=["CustomerID", "StockCode", "InvoiceDate", "split"])
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    return df


def test_window_history_and_relevant_items():
    df = _table(
        [
            (1, "a", "2011-01-01", "train"),
            (1, "b", "2011-02-01", "train"),
            (1, "a", "2011-09-10", "valid"),
            (1, "c", "2011-11-01", "test"),
            (1, "a", "2011-11-02", "test"),
            (2, "b", "2011-03-01", "train"),
            (3, "c", "2011-11-05", "test"),
        ]
    )  # customer 3 has no history: not evaluated
    col = {"a": 0, "b": 1, "c": 2}
    w = recommend.make_window(df, col, "test", exclude_history=False)
    assert w.customers.tolist() == [1, 2] and w.eval_rows.tolist() == [0]
    assert w.relevant == [{0, 2}]
    assert w.counts.toarray().tolist() == [[2, 1, 0], [0, 1, 0]]  # train + valid purchases
    assert recommend.make_window(df, col, "test", exclude_history=True).relevant == [{2}]
    v = recommend.make_window(df, col, "valid", exclude_history=False)
    assert v.counts.toarray().tolist() == [[1, 1, 0], [0, 1, 0]] and v.relevant == [{0}]


def test_top_k_breaks_ties_by_item_and_excludes():
    import scipy.sparse as sp

    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert recommend.top_k(scores, 3).tolist() == [[1, 0, 2], [0, 1, 2]]
    assert recommend.top_k(scores, 2, sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 0, 0]]))).tolist() == [
        [0, 2],
        [1, 2],
    ]


@pytest.mark.parametrize("keep_matrix", [True, False])
def test_max_similarity_is_the_best_cosine_to_a_bought_item(monkeypatch, keep_matrix):
    if not keep_matrix:  # a catalogue too large for the item x item matrix: scored block by block
        monkeypatch.setattr(recommend, "SIMILARITY_MATRIX_MAX_ITEMS", 0)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    dense = (rng.random((7, 40)) < 0.3).astype(np.float32) * rng.integers(1, 4, (7, 40))  # more lines than items
    dense[2] = 0  # a customer without history scores 0 everywhere
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    got = recommend.max_similarity(sp.csr_matrix(dense), vectors, block=3)
    for r in range(len(dense)):
        bought = np.flatnonzero(dense[r])
        want = (unit[bought] @ unit.T).max(axis=0) if len(bought) else np.zeros(40)
        np.testing.assert_allclose(got[r], want, atol=1e-5)
    assert np.allclose(got[dense > 0], 1.0, atol=1e-5)  # a bought item is its own nearest neighbour
    if keep_matrix:  # the server's way: the matrix computed once, each request reading its items' rows
        served = recommend.max_similarity(
            sp.csr_matrix(dense[:1]), vectors, pairwise=recommend.item_similarity(vectors)
        )
        np.testing.assert_allclose(served[0], got[0], atol=1e-5)


def test_repeat_blend_is_the_text_free_counterpart():
    """mf+repeat moves bought items up and leaves the order of the others to ALS."""
    s = recommend.Scorers(
        mf=np.array([[3.0, 2.0, 1.0, 0.0]]),
        similarity=np.zeros((1, 4)),
        cluster=np.zeros((1, 4)),
        popularity=np.zeros(4),
        bought=np.array([[0.0, 0.0, 0.0, 1.0]]),
    )
    scores = recommend.variant_scores(s, similarity_weight=0.0, cluster_weight=0.0, repeat_weight=0.75)["mf+repeat"]
    assert recommend.top_k(scores, 4)[0].tolist() == [3, 0, 1, 2]


def test_f1_is_the_harmonic_mean_of_mean_precision_and_recall():
    m = recommend.evaluate(np.array([[0, 1], [2, 3]]), [{0}, {9}], [2])
    assert m["precision@2"] == pytest.approx(0.25) and m["recall@2"] == pytest.approx(0.5)
    assert m["f1@2"] == pytest.approx(2 * 0.25 * 0.5 / 0.75)


def test_verdict_reports_absolute_relative_and_std():
    table = pd.DataFrame(
        {
            "model": ["mf", "mf", "mf+similarity", "mf+similarity"],
            "seed": [0, 1, 0, 1],
            "test_ndcg@10": [0.20, 0.22, 0.25, 0.27],
        }
    )
    summary = experiment.mean_std(table, "model", ["test_ndcg@10"])
    line = experiment.verdict(summary, "test_ndcg@10", "mf+similarity", vanilla="mf", label="MF")
    assert line.startswith("MF: mf+similarity beats mf on ndcg@10: 0.2600 ± 0.0141 vs 0.2100 ± 0.0141")
    assert "(+0.0500 absolute, +23.8% relative)" in line
    assert "within one std" in experiment.verdict(summary.iloc[::-1], "test_ndcg@10", "mf", vanilla="mf", label="MF")


def _ltr_frame_by_customer(w, s, candidates, item_customers, names):
    """The learning-to-rank features computed one customer at a time: the reference for ltr_frame."""
    mf_rank = np.argsort(np.argsort(-s.mf, axis=1), axis=1)
    parts = []
    for i, (r, items) in enumerate(zip(w.eval_rows, candidates)):
        lines = w.counts[r].toarray().ravel()[items]
        last = w.last_day[r].toarray().ravel()[items]
        row = {
            "mf": s.mf[i, items],
            "mf_rank": mf_rank[i, items],
            "similarity": s.similarity[i, items],
            "cluster_share": s.cluster[i, items],
            "popularity": s.popularity[items],
            "user_item_lines": lines,
            "days_since_user_bought_item": np.where(last > 0, w.end_day - (last - 1), 9999.0),
            "user_lines": np.full(len(items), w.counts[r].sum()),
            "item_customers": item_customers[items],
            "similarity_recent": s.recent_similarity[i, items],
            "user_model": s.user_model[i, items],
            "user_model_c": s.user_model_c[i, items],
        }
        parts.append(np.column_stack([row[n] for n in names]))
    return np.vstack(parts)


@pytest.mark.parametrize(("user_model", "text"), [(False, True), (True, True), (False, False)])
def test_ltr_features_match_a_per_customer_reference(user_model, text):
    rng = np.random.default_rng(0)
    n_customers, n_items = 9, 30
    dense = (rng.random((n_customers, n_items)) < 0.2) * rng.integers(1, 5, (n_customers, n_items))
    counts = sp.csr_matrix(dense.astype(np.float32))
    last_day = sp.csr_matrix(np.where(dense > 0, rng.integers(100, 200, dense.shape), 0).astype(np.float64))
    w = recommend.Window(
        customers=np.arange(n_customers),
        counts=counts,
        last_day=last_day,
        eval_rows=np.array([1, 4, 7]),
        relevant=[{0}, {1}, {2}],
        end_day=210.0,
    )
    s = recommend.Scorers(
        mf=rng.normal(size=(3, n_items)),
        similarity=rng.normal(size=(3, n_items)),
        cluster=rng.random((3, n_items)),
        popularity=rng.random(n_items),
        bought=(dense[[1, 4, 7]] > 0).astype(np.float32),
        recent_similarity=rng.normal(size=(3, n_items)),
    ).with_user_model(rng.normal(size=(3, n_items)).astype(np.float32), rng.integers(0, 4, (3, n_items)))
    candidates = [np.sort(rng.choice(n_items, k, replace=False)) for k in (5, 12, 1)]
    item_customers = recommend.item_customer_counts(counts)
    frame, qid = recommend.ltr_frame(w, s, candidates, item_customers=item_customers, user_model=user_model, text=text)
    names = recommend.ltr_features(user_model, text=text)
    assert list(frame.columns) == names
    text_free = {"similarity", "cluster_share", "similarity_recent", "user_model", "user_model_c"}.isdisjoint(names)
    assert text_free == (not text)  # the twin's ranker sees no text-derived feature
    assert qid.tolist() == [0] * 5 + [1] * 12 + [2]
    np.testing.assert_allclose(frame.to_numpy(), _ltr_frame_by_customer(w, s, candidates, item_customers, names))


def test_the_last_basket_is_the_latest_purchase_day():
    last_day = sp.csr_matrix(np.array([[5.0, 0, 9, 9], [0, 0, 0, 0], [3, 3, 0, 1]]))
    latest = recommend.latest_items(last_day).toarray()
    assert latest.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]


def test_the_no_text_twin_has_no_text_candidates():
    rng = np.random.default_rng(1)
    n_items = 40
    counts = sp.csr_matrix(np.eye(3, n_items, dtype=np.float32))
    w = recommend.Window(np.arange(3), counts, counts * 10, np.arange(3), [{5}, {6}, {7}], 20.0)
    mf = rng.normal(size=(3, n_items))
    similarity = np.zeros((3, n_items))
    similarity[:, 30:] = 5.0  # text's favourites: items 30..39, which MF ranks last
    mf[:, 30:] = -100.0
    s = recommend.Scorers(
        mf=mf,
        similarity=similarity,
        cluster=np.zeros((3, n_items)),
        popularity=np.zeros(n_items),
        bought=counts.toarray(),
        recent_similarity=similarity,
    )
    rp = RecommendersParams(
        ltr={"mf_candidates": 5, "neighbour_candidates": 5, "recent_neighbour_candidates": 5, "popular_candidates": 0}
    )
    with_text = recommend.ltr_candidates(w, s, rp)
    without = recommend.ltr_candidates(w, s, rp, text=False)
    assert all(set(c) & set(range(30, 40)) for c in with_text)
    assert not any(set(c) & set(range(30, 40)) for c in without)


def test_a_fit_with_the_same_inputs_is_reused_and_equals_a_fresh_one():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(600, 4)), columns=list("abcd"))
    y = pd.Series((x["a"] + x["b"] > 0).astype(int) + (x["c"] > 1).astype(int))
    train, valid = (x[:400], y[:400]), (x[400:], y[400:])
    xp = ClassifierParams().xgboost.model_copy(update={"n_estimators": 20, "n_jobs": 1})
    cache: dict = {}
    fit = dict(xp=xp, n_labels=3, seed=0)
    first = _fit_chosen_on_valid([(None, ["a", "b", "c"])], train, valid, cache=cache, **fit)
    # the same columns under two thresholds, and a different set: one new fit, the rest reused
    again = _fit_chosen_on_valid([(0.1, ["a", "b", "c"]), (0.2, ["a", "b"])], train, valid, cache=cache, **fit)
    assert len(cache) == 2 and first[-1] is False
    assert again[0] == 0.1 and again[2] is first[2] and again[-1] is True
    fresh = _fit_chosen_on_valid([(None, ["a", "b", "c"])], train, valid, cache={}, **fit)
    assert fresh[2] is not first[2]
    abc = x[["a", "b", "c"]]
    np.testing.assert_array_equal(fresh[2].predict_proba(abc), first[2].predict_proba(abc))
    changed = x.assign(c=x["c"] * 2)  # same columns, other values: not the same inputs
    _fit_chosen_on_valid([(None, ["a", "b", "c"])], (changed[:400], y[:400]), valid, cache=cache, **fit)
    assert len(cache) == 3


def test_a_verdict_carries_a_short_tag():
    table = pd.DataFrame({"model": ["ltr", "ltr+user_model"], "seed": [0, 0], "test_ndcg@10": [0.60, 0.66]})
    summary = experiment.mean_std(table, "model", ["test_ndcg@10"])
    line = experiment.verdict(summary, "test_ndcg@10", "ltr+user_model", vanilla="ltr", label="LTR")
    assert line.tag_name == "ltr_user_model.vs.ltr" and line.tag_value == "+0.0600"
    longer = line.extended("; one seed", ", 1 seed")
    assert longer.endswith("; one seed") and longer.tag_value == "+0.0600, 1 seed"


@pytest.mark.integration
def test_text_features_help_xgboost_and_ranker_beats_popularity(prepared, minilm_items):
    cp = ClassifierParams(ablation=["text_pca10"], rf_thresholds=[0.0, 0.5])
    table, detail = run_ablation(prepared, minilm_items, cp, n_labels=5, seeds=[0, 1], clusters=8)
    acc = table.groupby("variant")["test_accuracy"].mean()
    assert acc["+text_pca10"] > acc["vanilla"] + 0.01, acc.to_dict()
    assert detail["best_variant"] in ("+text_pca10", "text+rf_selection")  # chosen on valid
    assert any(c.startswith("text_pca10_") for c in detail["columns"])
    assert table.groupby("variant")["text_features"].max().to_dict() == {
        "vanilla": 0,
        "+text_pca10": 10,
        "text+rf_selection": 10,  # threshold 0 keeps every feature, 0.5 only the best one: valid prefers all
    }
    assert table[table["variant"] == "text+rf_selection"]["rf_threshold"].tolist() == [0.0, 0.0]
    # threshold 0 keeps +text_pca10's very inputs: that row's fit is reused, not trained again
    by_row = table.set_index(["variant", "seed"])
    assert by_row["fit_reused"].to_dict() == {
        **{(v, s): False for v in ("vanilla", "+text_pca10") for s in (0, 1)},
        **{("text+rf_selection", s): True for s in (0, 1)},
    }
    accuracy = by_row["test_accuracy"]
    for seed in (0, 1):
        assert accuracy[("text+rf_selection", seed)] == accuracy[("+text_pca10", seed)]

    rp = RecommendersParams(seeds=[0], mf=dict(factors=[16], similarity_weights=[0.5], cluster_weights=[0.5]))
    rows, info = experiment.run_recommenders(prepared, minilm_items, rp)
    ndcg = rows.set_index("model")["test_ndcg@10"]
    assert ndcg["ltr"] > ndcg["popularity"] + 0.05, ndcg.to_dict()
    assert ndcg["mf"] > ndcg["popularity"]
    from plmrec.recsys import rows as registry

    assert set(ndcg.index) == {
        n for n in registry.names() if not registry.get(n).user_model
    }  # all but the user model's
    assert {"ltr-no-text", "ltr", "text_neighbours"} <= set(ndcg.index)
    # every view scores the same models (and co-purchase the new customers); the lists differ by view
    by_view = info["views"].set_index(["view", "model"])
    assert set(info["views"]["view"]) == {"all", "discovery", "new_items", "new_customers"}
    assert ("new_customers", "co-purchase") in by_view.index and ("all", "co-purchase") not in by_view.index
    assert by_view.loc[("all", "ltr"), "test_ndcg@10"] == ndcg["ltr"]  # the all view is the main table's
    assert info["view_customers"]["discovery"] <= info["test_customers"]
    importance = info["chosen"][0]["ltr-no-text_importance_by_source"]
    assert "text" not in importance and importance  # the twin's ranker has no text feature
    assert "text" in info["chosen"][0]["ltr_importance_by_source"]
    assert info["chosen"][0]["factors"] == 16 and len(info["precision_curves"]["ltr"]) == 20
    from plmrec.recsys.comparison import Comparison

    comparison = Comparison(Params(recommenders=rp), pd.DataFrame(), {"skipped": "-"}, rows, info)
    lists, best = comparison.list_rows(), comparison.view_choices(servable=True)
    assert lists["mixed"] == lists["buy_again"] == comparison.served == best["all"]  # each list: its view's best
    assert lists["discover"] == best["discovery"] and lists["basket"] == best.get("new_customers", lists["mixed"])
    held = recommend.held_out_queries(np.arange(info["valid_customers"]), 0)
    assert info["valid_customers_scored"] == len(held) < info["valid_customers"]  # valid read out of sample


def _day(d: int) -> pd.Timestamp:
    return pd.Timestamp("2026-01-01") + pd.Timedelta(days=d)


def test_the_views_score_new_items_discovery_and_new_customers_from_their_first_basket():
    """Customer 1 has history and buys an old item again, a new-to-them one and one first sold in the
    window; customer 2 is new: their first day's basket is what they are served from, later days the
    targets; customer 3 is new with one day only (nothing to score)."""
    rows = [  # customer, item, day, split
        (1, "A", 1, "train"),
        (1, "B", 2, "train"),
        (9, "C", 3, "train"),
        (1, "A", 20, "test"),
        (1, "C", 21, "test"),
        (1, "NEW", 22, "test"),
        (2, "A", 20, "test"),
        (2, "B", 20, "test"),
        (2, "C", 23, "test"),
        (2, "A", 25, "test"),
        (3, "B", 21, "test"),
    ]
    prepared = pd.DataFrame(
        {
            "CustomerID": [r[0] for r in rows],
            "StockCode": [r[1] for r in rows],
            "InvoiceDate": [_day(r[2]) for r in rows],
            "split": [r[3] for r in rows],
        }
    )
    item_col = {c: i for i, c in enumerate(["A", "B", "C", "NEW"])}
    w = recommend.make_window(prepared, item_col, "test", exclude_history=False)
    assert w.customers.tolist() == [1, 9] and w.relevant == [{0, 2, 3}]
    assert views.discovery(w).relevant == [{2, 3}]  # A was bought before
    assert views.new_item_columns(w).tolist() == [3] and views.new_items(w).relevant == [{3}]
    new = views.new_customer_window(prepared, item_col, "test")
    assert new.customers.tolist() == [2]  # customer 3 has no later day
    assert new.counts.toarray().tolist() == [[1, 1, 0, 0]] and new.relevant == [{0, 2}]  # A again, and C
    assert new.last_day.toarray().tolist() == [[new.end_day + 1, new.end_day + 1, 0, 0]]  # days since: 0
    assert views.new_customer_window(prepared, item_col, "test", exclude_history=True).relevant == [{2}]
    lists = np.array([[3, 2, 0, 1]])
    scored = views.score_view("new_items", lists, views.new_items(w), ks=[1], new_columns=np.array([3]))
    assert scored["recall@1"] == 1.0 and scored[views.NEW_ITEM_SHARE] == 1.0 and scored["customers"] == 1
    empty = views.score_view("discovery", lists, views.Targets(np.zeros(0, np.int64), []), ks=[1])
    assert empty["customers"] == 0 and np.isnan(empty["ndcg@1"])


def test_valid_figures_read_only_the_customers_no_ranker_learnt():
    """Every row's valid figure (what the served row and the per-view bests are chosen by) is read on the
    early-stopping fifth: a ranker trained on the other valid customers is compared out of sample. New
    customers are no ranker's training queries: all of them count."""
    valid = {
        "all": views.Targets(np.arange(5), [{0}, {1}, {2}, {3}, {4}]),
        "discovery": views.Targets(np.array([1, 3]), [{1}, {3}]),
        "new_customers": views.Targets(np.arange(2), [{0}, {1}]),
    }
    held = experiment._held_targets(valid, np.array([3, 4]))
    assert held["all"].rows.tolist() == [3, 4] and held["all"].relevant == [{3}, {4}]
    assert held["discovery"].rows.tolist() == [3] and held["discovery"].relevant == [{3}]
    assert held["new_customers"] is valid["new_customers"]
    lists = np.array([[0], [1], [2], [9], [4]])  # right but for customer 3
    assert held["all"].figure(lists, [1], "recall@1") == 0.5  # customers 0-2 (right) are not read


def test_co_purchase_scores_a_basket_by_its_items_neighbours():
    history = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=np.float32))
    scores = views.co_purchase_scores(history, sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32)))
    assert scores.shape == (1, 4) and scores[0, 1] > scores[0, 3] > scores[0, 2] == 0  # B with A twice, D once


def test_new_items_take_the_last_places_of_the_top_ten_by_text():
    lists = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5, 4, 3, -1, -1, -1, -1, -1, -1, -1, -1, -1]])
    text = np.zeros((2, 20))
    text[0, [15, 16, 17]] = [0.2, 0.9, 0.5]
    text[1, [15, 16, 17]] = [0.7, 0.1, 0.3]
    out = views.with_new_items(lists, text, np.array([15, 16, 17]), slots=2)
    assert out[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 8, 9]  # places 9 and 10, then the list goes on
    assert out[1].tolist() == [5, 4, 3, 15, 17, -1, -1, -1, -1, -1, -1, -1]  # a short list: after its items
    assert views.with_new_items(lists, text, np.array([15, 16, 17]), slots=0) is lists
    again = views.with_new_items(np.array([[16, 0, 1]]), text[:1], np.array([15, 16, 17]), slots=1, depth=3)
    assert again[0].tolist() == [0, 1, 16]  # an item already listed is moved, never doubled
