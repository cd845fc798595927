"""The user model beyond its own stage: saved and loaded whole, scored in compare-models (its row and
learning to rank with it, the valid window read without any test row), and served over real HTTP by
max over the customer's C vectors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import requests
import torch

import helpers
from plmrec.config import Params, SyntheticParams
from plmrec.errors import BundleError
from plmrec.usermodel import store
from plmrec.usermodel.model import UserModel, UserModelSpec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small synthetic data, MiniLM item vectors, and train-user-model's output (one variant, two seeds)."""
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.synthetic import generate_transactions

    root = tmp_path_factory.mktemp("user-model")
    p = Params()
    prepared, _ = prepare_transactions(generate_transactions(SyntheticParams(**helpers.SMALL)), p.clean, p.split)
    items, encoder = helpers.minilm_items(prepared)
    user_model = helpers.quick_user_model_params(variants=[{"vectors": 2, "inputs": "id+text"}], seeds=[0, 1])
    helpers.train_user_model_stage(root, prepared, items, user_model=user_model)
    return {"prepared": prepared, "items": items, "encoder": encoder, "dir": root / "user_model", "root": root}


@pytest.fixture(scope="module")
def compared(trained):
    from plmrec.recsys import experiment
    from plmrec.usermodel.store import SavedUserModels

    codes = trained["items"]["StockCode"].astype(str).tolist()
    saved = SavedUserModels(trained["dir"], trained["prepared"], codes, split_params=Params().split)
    rp = helpers.quick_recommenders_params()
    rp.seeds = [0, 5]  # seed 5 has no user model of its own: scored with seed 0's, and no user_model row
    rows, detail = experiment.run_recommenders(trained["prepared"], trained["items"], rp, user_models=saved)
    return {"saved": saved, "rows": rows, "detail": detail, "rp": rp}


def test_a_saved_model_loads_to_the_same_vectors(tmp_path):
    rng = np.random.default_rng(0)
    text = rng.normal(size=(40, 16)).astype(np.float32)
    torch.manual_seed(0)
    spec = UserModelSpec(vectors=3, inputs="id+text", dim=8, heads=2, layers=1, id_dim=4, time_buckets=5)
    model = UserModel(spec, item_text=text, item_ids=rng.integers(0, 10, 40))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the start, so every weight is checked
    model.eval()
    codes = [f"C{i}" for i in range(40)]
    store.save(model, tmp_path / "m.pt", codes=codes, seed=3)
    loaded, saved = store.load(tmp_path / "m.pt")
    assert saved["codes"] == codes and saved["seed"] == 3 and loaded.spec == spec
    seq = torch.as_tensor([[1, 2, 3, 40], [5, 6, 7, 8]])
    buckets = torch.as_tensor([[1, 2, 3, 0], [4, 3, 2, 1]])
    assert torch.equal(loaded.user_vectors(seq, buckets), model.user_vectors(seq, buckets))
    assert torch.equal(loaded.item_vectors(), model.item_vectors())
    with pytest.raises(BundleError, match="no saved user model"):
        store.load(tmp_path / "missing.pt")


def test_item_scores_are_the_max_over_the_vectors():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(7, 3, 5)).astype(np.float32)
    items = rng.normal(size=(11, 5)).astype(np.float32)
    best, which = store.item_scores(users, items, chunk=3)
    for u in range(7):
        for j in range(11):
            cos = [float(users[u, c] @ items[j]) for c in range(3)]
            assert best[u, j] == pytest.approx(max(cos), abs=1e-5)
            assert which[u, j] == int(np.argmax(cos))


def test_the_stage_saves_both_models_of_each_seed(trained):
    for seed in (0, 1):
        for name, window in (("valid.pt", "train"), ("refit.pt", "train+valid")):
            _, saved = store.load(trained["dir"] / "seeds" / str(seed) / name)
            assert saved["seed"] == seed and saved["window"] == window
            assert saved["codes"] == trained["items"]["StockCode"].astype(str).tolist()


def test_compare_models_has_the_user_model_rows(compared):
    rows = compared["rows"]
    by_model = rows.groupby("model")["seed"].apply(sorted).to_dict()
    assert by_model["user_model"] == [0]  # only the seed it was trained with: its std is honest
    assert by_model["ltr+user_model"] == [0, 5] and by_model["ltr"] == [0, 5]
    assert rows.loc[rows["model"] == "user_model", "test_ndcg@10"].iloc[0] > 0
    chosen = compared["detail"]["chosen"]
    assert chosen[5]["user_model_seed"] == 0 and chosen[0]["user_model_seed"] == 0
    assert set(chosen[0]["ltr+user_model_importance"]) >= {"user_model", "user_model_c"}
    assert "user_model" not in chosen[0]["ltr_importance"]


def test_the_valid_window_reads_no_test_row(trained, compared):
    """Scores for the valid window are the same with every test row deleted or rewritten."""
    from plmrec.recsys import recommend
    from plmrec.usermodel.store import SavedUserModels

    prepared = trained["prepared"]
    codes = trained["items"]["StockCode"].astype(str).tolist()
    wv = recommend.make_window(prepared, {c: i for i, c in enumerate(codes)}, "valid", exclude_history=False)
    customers = wv.customers[wv.eval_rows]
    before = compared["saved"].scores("valid", customers, seed=0)
    scrambled = prepared.copy()
    test = scrambled["split"] == "test"
    scrambled.loc[test, "StockCode"] = scrambled.loc[test, "StockCode"].sample(frac=1.0, random_state=0).to_numpy()
    for table in (scrambled, prepared[~test]):
        after = SavedUserModels(trained["dir"], table, codes, split_params=Params().split).scores(
            "valid", customers, seed=0
        )
        assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


@pytest.fixture(scope="module")
def bundles(trained, compared, tmp_path_factory):
    from plmrec.serving.bundle import write_bundle

    root, out = tmp_path_factory.mktemp("um-bundles"), {}
    params = Params(recommenders=compared["rp"])
    for model in ("user_model", "ltr+user_model"):
        params.registry.served_model = model
        write_bundle(
            params,
            trained["prepared"],
            trained["items"],
            recommender_rows=compared["rows"],
            recommender_detail=compared["detail"],
            encoder_dir=trained["encoder"],
            bundle_dir=root / model.replace("+", "_"),
            user_models=compared["saved"],
        )
        out[model] = root / model.replace("+", "_")
    return out


def test_a_user_model_bundle_needs_the_user_model(trained, compared, tmp_path):
    from plmrec.serving.bundle import write_bundle

    params = Params(recommenders=compared["rp"])
    params.registry.served_model = "user_model"
    rows = compared["rows"][compared["rows"]["model"] != "user_model"]
    with pytest.raises(BundleError, match="registry.served_model 'user_model' was not evaluated"):
        write_bundle(
            params,
            trained["prepared"],
            trained["items"],
            recommender_rows=rows,
            recommender_detail=compared["detail"],
            encoder_dir=trained["encoder"],
            bundle_dir=tmp_path / "b",
        )


def _top(users: np.ndarray, items: np.ndarray, k: int, exclude=()) -> list[int]:
    scores = {j: max(float(c @ items[j]) for c in users) for j in range(len(items)) if j not in set(exclude)}
    return [j for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def test_served_customer_and_basket_paths_over_http(bundles, trained, tmp_path):
    """A customer: the max-over-C top-K of their saved vectors (v1 and v2); an anonymous basket: the
    model run on the basket as a sequence."""
    from plmrec.serving.bundle import Recommender
    from plmrec.usermodel.retrieval import encode_users

    rec = Recommender(bundles["user_model"], load_encoder=False)
    assert rec.meta["model"] == "user_model" and rec.user_vectors.shape[1:] == (2, 32)
    customer = next(iter(rec.customer_row))
    row = rec.customer_row[customer]
    seen = rec.counts[row].indices
    basket = [rec.codes[3], rec.codes[17]]
    with helpers.plmrec_server(["--bundle", str(bundles["user_model"])], tmp_path) as server:
        v1 = requests.post(
            f"{server.url}/v1/models/plmrec:predict",
            json={"instances": [{"customer_id": int(customer), "k": 10}, {"basket": basket, "k": 5}]},
            timeout=60,
        )
        v2 = requests.post(
            f"{server.url}/v2/models/plmrec/infer",
            json={
                "inputs": [{"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [int(customer)]}],
                "parameters": {"k": 10, "exclude_seen": True},
            },
            timeout=60,
        )
        embed = requests.post(  # the customer's C vectors, as the user model left them
            f"{server.url}/v2/models/plmrec/infer",
            json={
                "inputs": [{"name": "embed_customer_id", "shape": [1], "datatype": "INT64", "data": [int(customer)]}]
            },
            timeout=60,
        )
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    vectors = {o["name"]: o for o in embed.json()["outputs"]}
    assert vectors["user_model"]["shape"] == [1, 2, 32]
    assert np.allclose(np.reshape(vectors["user_model"]["data"], (2, 32)), rec.user_vectors[row], atol=1e-6)
    got = [rec.item_col[i["stock_code"]] for i in v1.json()["predictions"][0]["items"]]
    assert got == _top(rec.user_vectors[row], rec.user_item_vectors, 10)
    fresh = v2.json()["outputs"]
    codes = next(o for o in fresh if o["name"] == "stock_code")["data"]
    assert [rec.item_col[c] for c in codes] == _top(rec.user_vectors[row], rec.user_item_vectors, 10, exclude=seen)
    basket_rows = [rec.item_col[c] for c in basket]
    users = encode_users(rec.user_model, [np.asarray(sorted(basket_rows), dtype=np.int64)], [np.ones(2, np.int64)])
    got = [rec.item_col[i["stock_code"]] for i in v1.json()["predictions"][1]["items"]]
    assert got == _top(users[0], rec.user_item_vectors, 5)


def test_the_saved_vectors_are_the_model_on_each_history(bundles, trained):
    from plmrec.serving.bundle import Recommender
    from plmrec.usermodel.retrieval import encode_users
    from plmrec.usermodel.sequences import sequences_before, with_item_rows

    rec = Recommender(bundles["user_model"], load_encoder=False)
    rows = with_item_rows(trained["prepared"], rec.item_col)
    end = rows["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    seqs = sequences_before(rows, end, max_length=rec.user_model.spec.max_length, buckets=12)
    customer = sorted(seqs)[7]
    again = encode_users(rec.user_model, [seqs[customer][0]], [seqs[customer][1]])[0]
    assert np.allclose(again, rec.user_vectors[rec.customer_row[customer]], atol=1e-5)


def test_exported_embeddings_are_the_served_vectors(bundles, tmp_path):
    """`plmrec export embeddings`: items and customers as Parquet, each vector the bundle's own (text,
    ALS, the user model's C vectors), a manifest naming the model and encoder; the command line says so."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from plmrec.serving.bundle import Recommender
    from plmrec.serving.export import read_vectors

    rec = Recommender(bundles["ltr+user_model"], load_encoder=False)
    out = tmp_path / "embeddings"
    done = subprocess.run(
        [sys.executable, "-m", "plmrec.cli", "export", "embeddings", "--bundle", str(bundles["ltr+user_model"]),
         "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{rec.n_items:,} items and {len(rec.customer_row):,} customers of ltr+user_model" in done.stdout
    items, customers = out / "items.parquet", out / "customers.parquet"
    assert pq.read_table(items, columns=["item"]).column(0).to_pylist() == rec.codes.tolist()
    order = pq.read_table(customers, columns=["customer"]).column(0).to_pylist()
    assert [rec.customer_row[c] for c in order] == list(range(len(order)))  # the bundle's order, its id type
    assert np.array_equal(read_vectors(items, "text_vector"), rec.item_vectors)
    assert np.array_equal(read_vectors(items, "mf"), rec.item_factors)
    assert np.array_equal(read_vectors(items, "user_model"), rec.user_item_vectors)
    assert np.array_equal(read_vectors(customers, "mf"), rec.user_factors)
    assert np.array_equal(read_vectors(customers, "user_model"), rec.user_vectors)  # C x w each
    assert np.array_equal(read_vectors(customers, "text_profile"), rec.text_profiles)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "ltr+user_model" and manifest["user_model"]["spec"]["vectors"] == 2
    assert manifest["widths"]["customers"]["user_model"] == list(rec.user_vectors.shape[1:])
    assert manifest["source"]["bundle"] == str(bundles["ltr+user_model"])


def test_ltr_with_the_user_model_serves(bundles):
    from plmrec.serving.bundle import Recommender

    rec = Recommender(bundles["ltr+user_model"], load_encoder=False)
    customer = next(iter(rec.customer_row))
    out = rec.recommend_customer(customer, 10, basket=[rec.codes[1]])
    assert len(out.stock_codes) == 10 and out.scores == sorted(out.scores, reverse=True)
    assert len(rec.recommend_basket([rec.codes[2]], 5).stock_codes) == 5


def test_customer_labels_read_the_country_and_the_next_window_spend():
    from plmrec.usermodel.probe import customer_labels

    day = pd.Timestamp("2011-01-01")
    rows = pd.DataFrame(
        {
            "CustomerID": [1, 2, 3, 4, 1, 2, 3, 4],
            "Country": ["United Kingdom", "France", "United Kingdom", "Germany"] * 2,
            "InvoiceDate": [day] * 4 + [day + pd.Timedelta(days=10)] * 4,
            "Quantity": [1, 1, 1, 1, 1, 2, 30, 0],
            "UnitPrice": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        }
    )
    labels = customer_labels(rows, cutoff=day + pd.Timedelta(days=5))
    assert labels["home"].to_dict() == {1: 1, 2: 0, 3: 1, 4: 0}
    assert labels["spend_tercile"].to_dict() == {1: 0, 2: 1, 3: 2, 4: -1}  # 4 spent nothing after the cut-off


def test_the_profile_probe_finds_a_planted_property():
    from plmrec.usermodel.probe import profile_probe

    rng = np.random.default_rng(0)
    n = 400
    home = rng.integers(0, 2, n)
    tercile = rng.integers(0, 3, n)
    labels = pd.DataFrame({"home": home, "spend_tercile": tercile}, index=range(n))
    telling = rng.normal(size=(n, 2, 8)).astype(np.float32)
    telling[:, 0, 0] += 3 * home  # the first vector carries the country
    telling[:, 1, 1] += 3 * tercile  # the second the spend
    blind = rng.normal(size=(n, 8)).astype(np.float32)
    out = profile_probe({"telling": telling, "blind": blind}, list(range(n)), labels, seed=0)
    assert out["home"]["telling"]["auc"] > 0.9 > 0.7 > out["home"]["blind"]["auc"]
    assert out["spend_tercile"]["telling"]["macro_f1"] > 0.6 > 0.45 > out["spend_tercile"]["blind"]["macro_f1"]


def test_the_stage_reports_the_profile_probe(trained):
    import json

    found = json.loads((trained["root"] / "metrics.json").read_text())["user_model"]["profile_probe"]
    tasks = {(r["task"], r["vectors"]) for r in found}
    assert ("home", "user_model") in tasks and ("home", "mean_of_items") in tasks
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in found)
    assert "Consumer-profile probe" in (trained["dir"] / "results.md").read_text()
