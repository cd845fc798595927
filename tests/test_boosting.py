"""XGBoost on Dask (`xgboost.backend: dask`): the same parameters on a real dask.distributed
LocalCluster of two worker processes give the metrics of the single-process model, within a stated
tolerance (each worker sketches the quantiles of its own part, so split points differ a little)."""

import numpy as np
import pytest
import xgboost as xgb
from dask.distributed import LocalCluster

from plmrec.config import Params, SyntheticParams, XGBoostParams
from plmrec.data.prepare import prepare_transactions
from plmrec.data.synthetic import generate_transactions
from plmrec.features import TabularEncoder
from plmrec.metrics import classification_metrics
from plmrec.ranking import ranking_metrics
from plmrec.recsys import boosting
from plmrec.recsys.classify import classifier

ACCURACY_TOLERANCE = 0.02  # absolute, on the quantity label's test accuracy
NDCG_TOLERANCE = 0.03  # absolute, NDCG@10 of the ranker on held-out queries


@pytest.fixture(scope="module")
def quantity_data():
    p = Params()
    prepared, _ = prepare_transactions(
        generate_transactions(SyntheticParams(n_customers=300, n_products=200, n_invoices=2500)), p.clean, p.split
    )
    enc = TabularEncoder.fit(prepared[prepared["split"] == "train"], ["transaction", "customer", "basket"])
    return {s: (enc.transform(f), f["label"].to_numpy()) for s, f in prepared.groupby("split")}


def test_the_classifier_on_two_dask_workers_scores_as_in_one_process(quantity_data):
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = (quantity_data[s] for s in ("train", "valid", "test"))
    local_xp = XGBoostParams(n_estimators=120, n_jobs=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        dask_xp = local_xp.model_copy(update={"backend": "dask", "dask_scheduler": cluster.scheduler_address})
        models = {}
        for name, xp in (("local", local_xp), ("dask", dask_xp)):
            model = classifier(xp, 5, seed=0)
            models[name] = boosting.fit_classifier(model, xp, x=x_train, y=y_train, eval_set=[(x_valid, y_valid)])
        assert len(cluster.workers) == 2
    dask_model = models["dask"]
    assert type(dask_model) is xgb.XGBClassifier  # the plain model comes back: predict, save, serve as usual
    chosen = [*local_xp.booster_settings(), "objective", "num_class", "random_state"]
    assert {k: dask_model.get_params()[k] for k in chosen} == {k: models["local"].get_params()[k] for k in chosen}
    assert dask_model.best_iteration > 0 and dask_model.feature_importances_.shape == (x_train.shape[1],)
    acc = {n: classification_metrics(y_test, m.predict(x_test), 5)["accuracy"] for n, m in models.items()}
    assert acc["local"] > 0.4
    print("test accuracy", acc)
    assert abs(acc["dask"] - acc["local"]) <= ACCURACY_TOLERANCE, acc


def test_the_ranker_on_a_local_dask_cluster_ranks_as_in_one_process():
    rng = np.random.default_rng(0)
    n_queries, per_query = 300, 20
    x = rng.standard_normal((n_queries * per_query, 6)).astype(np.float32)
    relevance = x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.standard_normal(len(x))
    y = (relevance > np.quantile(relevance, 0.85)).astype(np.float32)
    qid = np.repeat(np.arange(n_queries), per_query)
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    train, held, test = qid < 200, (qid >= 200) & (qid < 240), qid >= 240
    results = {}
    for backend in ("local", "dask"):  # dask: no scheduler given, so a LocalCluster of 2 workers per fit
        xp = XGBoostParams(n_estimators=80, n_jobs=1, backend=backend, dask_workers=2)
        ranker = xgb.XGBRanker(**xp.booster_settings(), objective="rank:ndcg", eval_metric="ndcg@10", random_state=0)
        boosting.fit_ranker(
            ranker,
            xp,
            x=frame[train],
            y=y[train],
            qid=qid[train],
            eval_set=[(frame[held], y[held])],
            eval_qid=[qid[held]],
        )
        scores = ranker.predict(frame[test])
        ranked, relevant = [], []
        for q in np.unique(qid[test]):
            rows = np.flatnonzero(qid[test] == q)
            ranked.append(list(rows[np.argsort(-scores[rows], kind="stable")]))
            relevant.append(set(rows[y[test][rows] > 0]))
        results[backend] = ranking_metrics(ranked, relevant, [10])["ndcg@10"]
    assert results["local"] > 0.6
    print("test ndcg@10", results)
    assert abs(results["dask"] - results["local"]) <= NDCG_TOLERANCE, results


def test_the_baseline_trains_on_dask_with_the_same_settings():
    from plmrec.baseline import evaluate_baseline, train_baseline

    p = Params()
    p.data.synthetic = SyntheticParams(n_customers=300, n_products=200, n_invoices=2500)
    prepared, _ = prepare_transactions(generate_transactions(p.data.synthetic), p.clean, p.split)
    p.baseline.n_estimators, p.baseline.n_jobs = 120, 1
    scores = {}
    for backend in ("local", "dask"):
        p.baseline.backend = backend
        model, enc, info = train_baseline(prepared, p)
        assert type(model) is xgb.XGBClassifier and info["best_iteration"] > 0
        scores[backend] = evaluate_baseline(model, enc, prepared, params=p)["accuracy"]
    print("baseline test accuracy", scores)
    assert abs(scores["dask"] - scores["local"]) <= ACCURACY_TOLERANCE, scores
