"""The serving bundle and the KServe predictor, through real HTTP against `plmrec serve`."""

import json
import re
import socket
import time

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import plmrec_server, quick_recommenders_params
from plmrec.config import ServingParams
from plmrec.errors import BundleError, RequestError
from plmrec.serving.bundle import Recommender, find_bundle
from plmrec.serving.requests import parse_v1


@pytest.fixture(scope="module")
def recommender(serving_bundles):
    return Recommender(serving_bundles["ltr"])


@pytest.fixture(scope="module")
def server(serving_bundles, tmp_path_factory):
    args = [
        "--bundle",
        str(serving_bundles["ltr"]),
        "-S",
        "serving.body_timeout_s=2",
        "-S",
        "serving.header_timeout_s=2",
    ]
    args += ["-S", "serving.keep_alive_s=2"]
    with plmrec_server(args, tmp_path_factory.mktemp("serve")) as s:
        yield s


def _customer(recommender, min_items=5):
    lines = np.asarray(recommender.counts.sum(axis=1)).ravel()
    row = int(np.argmax(lines >= min_items))
    return next(c for c, r in recommender.customer_row.items() if r == row)


def test_bundle_holds_what_the_predictor_needs(serving_bundles, recommender):
    meta = recommender.meta
    assert meta["model"] == "ltr" and meta["items"] == recommender.n_items == len(recommender.item_vectors)
    assert meta["customers"] == serving_bundles["prepared"]["CustomerID"].nunique()
    assert meta["metrics"]["ndcg@10"] > 0
    norms = np.linalg.norm(recommender.item_vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    assert (serving_bundles["ltr"] / "ranker.json").exists() and (
        serving_bundles["ltr"] / "encoder" / "modules.json"
    ).exists()
    assert find_bundle(serving_bundles["ltr"].parent) in (serving_bundles["ltr"], serving_bundles["popularity"])


def test_a_broken_bundle_is_named(serving_bundles, tmp_path):
    import shutil

    broken = tmp_path / "b"
    shutil.copytree(serving_bundles["popularity"], broken)
    (broken / "item_factors.npy").unlink()
    with pytest.raises(BundleError, match="bundle file missing: item_factors.npy"):
        Recommender(broken, load_encoder=False)
    with pytest.raises(BundleError, match="no serving bundle"):
        find_bundle(tmp_path / "nothing-here")


def test_customer_basket_and_query_recommendations(recommender):
    c = _customer(recommender)
    rec = recommender.recommend_customer(c, 10)
    assert len(rec.stock_codes) == 10 and len(set(rec.stock_codes)) == 10
    assert rec.scores == sorted(rec.scores, reverse=True)
    assert all(
        d == recommender.descriptions[recommender.item_col[s]] for s, d in zip(rec.stock_codes, rec.descriptions)
    )
    seen = set(recommender.codes[recommender.counts[recommender.customer_row[c]].indices])
    fresh = recommender.recommend_customer(c, 10, exclude_seen=True)
    assert not seen & set(fresh.stock_codes)
    stranger = recommender.recommend_customer(1, 5)  # unknown, no basket: the popular list, flagged
    assert stranger.fallback == "popular" and "customer 1 is unknown" in stranger.reason
    assert stranger.stock_codes == recommender.codes[np.argsort(-recommender.popularity, kind="stable")[:5]].tolist()
    assert recommender.recommend_customer(1, 5, [recommender.codes[0]]).fallback is None  # a basket: cold start
    nothing = recommender.recommend_basket(["NOPE"], 3)
    assert nothing.fallback == "popular" and nothing.unknown_stock_codes == ["NOPE"] and len(nothing.stock_codes) == 3
    basket = recommender.recommend_basket([recommender.codes[0], "NO-SUCH-CODE"], 5)
    assert basket.unknown_stock_codes == ["NO-SUCH-CODE"] and len(basket.stock_codes) == 5
    hits = recommender.search(["lantern", "cake stand"], 5)
    assert any("LANTERN" in d for d in hits[0].descriptions[:3])
    assert any("CAKE STAND" in d for d in hits[1].descriptions[:3])


def test_a_customers_history_as_a_basket_gets_the_same_recommendations(recommender):
    """Folding the history in as an anonymous basket recovers the customer's ALS vector: the two paths agree."""
    c = _customer(recommender, 8)
    row = recommender.customer_row[c]
    codes = recommender.codes[recommender.counts[row].indices].tolist()
    counts = recommender.counts[row]
    folded = recommender._fold_in(counts)
    fitted = recommender.user_factors[row]
    assert np.dot(folded, fitted) / np.linalg.norm(folded) / np.linalg.norm(fitted) > 0.98
    as_customer = recommender.recommend_customer(c, 20)
    as_basket = recommender.recommend_basket(codes, 20)
    assert len(set(as_customer.stock_codes) & set(as_basket.stock_codes)) >= 12


@pytest.mark.parametrize("new_item_slots", [0, 2])
def test_lists_ranked_at_load_are_the_lists_ranked_per_request(serving_bundles, new_item_slots):
    """The server reads a known customer's list from the lists ranked when the model loads (in batches);
    every customer's every list, at every k, is the one the request path ranks alone, to the last digit;
    with new-item places too (the first five items made unsold here to have some to place)."""
    live = Recommender(serving_bundles["ltr"], load_encoder=False)
    if new_item_slots:
        live.meta["new_item_slots"], live.unsold = new_item_slots, np.arange(5)
    ranked = Recommender(serving_bundles["ltr"], load_encoder=False)
    ranked.meta, ranked.unsold = live.meta, live.unsold
    assert ranked.precompute(20, max_customers=10**6)
    assert not Recommender(serving_bundles["ltr"], load_encoder=False).precompute(20, max_customers=1)
    placed, expected, unsold = 0, 0, set(live.codes[:5])
    for customer in live.customer_row:
        for kind in ("mixed", "discover", "buy_again"):
            for k in (3, 10, 20):
                a, b = (
                    live.recommend_customer(customer, k, kind=kind),
                    ranked.recommend_customer(customer, k, kind=kind),
                )
                assert (a.stock_codes, a.scores) == (b.stock_codes, b.scores), (customer, kind, k)
                if new_item_slots and kind == "discover" and k >= 10:
                    fresh = unsold - set(live.codes[live.counts[live.customer_row[customer]].indices])
                    expected += len(fresh) >= new_item_slots
                    placed += set(b.stock_codes[10 - new_item_slots : 10]) <= fresh
    assert placed == expected and (expected > 0) == bool(new_item_slots)  # a top 10 ends with its places
    c, basket = next(iter(live.customer_row)), [live.codes[3]]
    assert ranked.recommend_customer(c, 5, basket).stock_codes == live.recommend_customer(c, 5, basket).stock_codes
    assert len(ranked.recommend_customer(c, 30).stock_codes) == 30  # beyond the ranked depth: ranked per request


def test_a_list_chosen_on_its_own_view_is_ranked_by_that_rows_bundle(serving_bundles, tmp_path):
    """Where valid chose another row for a list's view (here forced: popularity for the discover list and
    for baskets), the bundle holds that row's bundle and answers the list from it: the same lists as that
    row's own bundle, while the other lists stay the served row's; bundle.json and the run's line say so."""
    from plmrec.config import Params
    from plmrec.recsys.comparison import Comparison
    from plmrec.serving.bundle import lift_summary, write_bundle

    params = Params(recommenders=quick_recommenders_params())
    params.registry.served_model = "ltr"
    rows, detail = serving_bundles["rows"], serving_bundles["detail"]
    lifts = [v.lift for v in Comparison(params, pd.DataFrame(), {"skipped": "-"}, rows, detail).view_lifts() if v.lift]
    served = write_bundle(
        params,
        serving_bundles["prepared"],
        serving_bundles["items"],
        recommender_rows=serving_bundles["rows"],
        recommender_detail=serving_bundles["detail"],
        encoder_dir=serving_bundles["encoder"],
        bundle_dir=tmp_path / "bundle",
        lists={"mixed": "ltr", "buy_again": "ltr", "discover": "popularity", "basket": "popularity"},
        lifts=lifts,
    )
    assert served["lists"] == {"mixed": "ltr", "buy_again": "ltr", "discover": "popularity", "basket": "popularity"}
    both = Recommender(tmp_path / "bundle", load_encoder=False)
    assert both.meta["list_rows"] == {"discover": "popularity", "basket": "popularity"}
    assert not (tmp_path / "bundle" / "rows" / "popularity" / "encoder").exists()  # queries: the served bundle's
    ltr = Recommender(serving_bundles["ltr"], load_encoder=False)
    popularity = Recommender(serving_bundles["popularity"], load_encoder=False)
    assert both.precompute(20, max_customers=10**6)
    assert set(both.lists) == {"mixed", "buy_again"} and set(both.ranked_by["discover"].lists) == {"discover"}
    for customer in list(both.customer_row)[:40]:
        for kind, expected in (("mixed", ltr), ("buy_again", ltr), ("discover", popularity)):
            got, want = (
                both.recommend_customer(customer, 10, kind=kind),
                expected.recommend_customer(customer, 10, kind=kind),
            )
            assert got.stock_codes == want.stock_codes, (customer, kind)
    basket = [both.codes[3], both.codes[7]]
    assert both.recommend_basket(basket, 5).stock_codes == popularity.recommend_basket(basket, 5).stock_codes
    assert both.recommend_customer(-1, 5, basket).stock_codes == popularity.recommend_basket(basket, 5).stock_codes
    line = lift_summary(both.meta)  # the lists popularity ranks read no text: only ltr's lift
    assert line.startswith("served: ltr (mixed, buy again), popularity (discover, basket); lift over each list's")
    assert "all ndcg@10 ltr " in line and " vs ltr-no-text " in line and "discovery" not in line


def test_latest_items_leave_the_purchase_days_as_they_were():
    """The last basket of each row, without touching the row's days (the served frame reads them next)."""
    import scipy.sparse as sp

    from plmrec.recsys.recommend import latest_items

    days = sp.csr_matrix(np.array([[5.0, 0, 7, 7], [0, 3, 4, 0]]))
    before = days.toarray().copy()
    assert latest_items(days).toarray().tolist() == [[0, 0, 1, 1], [0, 0, 1, 0]]
    assert (days.toarray() == before).all()


def test_a_customer_id_must_have_the_type_of_the_models_data(recommender):
    """Ids in the type the shop's data has: this bundle's are numbers, so text is a 400 naming the field;
    a bundle of text ids (Amazon's) takes text (tests/test_any_shop.py serves one over HTTP)."""
    from plmrec.serving.requests import answer

    assert not recommender.text_ids
    limits = ServingParams()
    queries = parse_v1({"instances": [{"customer_id": 12347}, {"customer_id": "12347"}]}, limits)
    assert [q.customer_id for q in queries] == [12347, "12347"]  # both parse; the model decides
    with pytest.raises(RequestError, match=re.escape("instances[1].customer_id must be an integer")) as err:
        answer(recommender, queries)
    assert err.value.http_status == 400


def test_request_parsing_names_the_field():
    limits = ServingParams()
    queries = parse_v1(
        {
            "instances": [
                {"customer_id": 12347},
                {"basket": ["85123A", " 22423 "], "k": 3},
                {"query": " red heart ", "k": 2},
            ]
        },
        limits,
    )
    assert [(q.kind, q.k) for q in queries] == [("customer", 10), ("basket", 3), ("query", 2)]
    assert (
        queries[0].customer_id == 12347 and queries[1].basket == ["85123A", "22423"] and queries[2].text == "red heart"
    )
    cases = [
        ({"instances": [{"customer_id": 1.5}]}, "instances[0].customer_id must be an integer"),
        ({"instances": [{"customer_id": 2**64, "basket": ["A"]}]}, "customer_id must be <= 9223372036854775807"),
        ({"instances": [{"customer_id": -1}]}, "customer_id must be >= 0"),
        ({"instances": [{"query": "lamp", "k": "5"}]}, "instances[0].k must be an integer, got str '5'"),
        ({"instances": [{"basket": ["85123A", 22423]}]}, "instances[0].basket[1] must be a string"),
        ({"instances": [{"query": "lamp", "exclude_seen": 1}]}, "exclude_seen must be true or false"),
        ({"instances": [{"query": "lamp"}], "parameters": {}}, "unknown top-level field(s) parameters"),
        ({"instances": [{"customer_id": 1, "k": 101}]}, "1 <= k <= 100"),
        ({"instances": [{"customer_id": 1, "k": True}]}, "instances[0].k must be an integer"),
        ({"instances": [{"basket": "85123A"}]}, "instances[0].basket must be a list"),
        ({"instances": [{"basket": [{"code": 1}]}]}, "instances[0].basket[0] must be a string"),
        ({"instances": [{"query": 7}]}, "instances[0].query must be a string"),
        ({"instances": [{"query": "  "}]}, "instances[0].query must be a non-empty string"),
        ({"instances": [{"query": "a", "customer_id": 1}]}, "takes no customer_id"),
        ({"instances": [{"k": 3}]}, "needs one of customer_id, basket or query"),
        ({"instances": [{"customer": 3}]}, "instances[0].customer is an unknown field"),
        ({"instances": []}, "non-empty list"),
        ({"rows": []}, '"instances"'),
    ]
    for payload, message in cases:
        with pytest.raises(RequestError, match=re.escape(message)) as err:
            parse_v1(payload, limits)
        assert err.value.http_status == 400
    with pytest.raises(RequestError) as err:
        parse_v1({"instances": [{"customer_id": 1}] * 65}, limits)
    assert err.value.http_status == 413


# ---------------------------------------------------------------------------------------------- HTTP


def _v1(server, body, **kw):
    return requests.post(f"{server.url}/v1/models/plmrec:predict", json=body, timeout=30, **kw)


def _v2(server, body):
    return requests.post(f"{server.url}/v2/models/plmrec/infer", json=body, timeout=30)


def test_health_endpoints(server):
    assert requests.get(f"{server.url}/v2/health/live", timeout=5).json() == {"live": True}
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v1/models/plmrec", timeout=5).json() == {"name": "plmrec", "ready": True}
    assert requests.get(f"{server.url}/v2/models/plmrec/ready", timeout=5).status_code == 200
    metadata = requests.get(f"{server.url}/v2/models/plmrec", timeout=5).json()  # what a v2 client reads first
    assert metadata["inputs"] == [
        {"name": "customer_id", "datatype": "INT64", "shape": [-1]},
        {"name": "basket", "datatype": "BYTES", "shape": [-1]},
        {"name": "query", "datatype": "BYTES", "shape": [-1]},
        {"name": "embed_customer_id", "datatype": "INT64", "shape": [-1]},
        {"name": "embed_text", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("stock_code", "BYTES", [-1, -1]),
        ("description", "BYTES", [-1, -1]),
        ("score", "FP32", [-1, -1]),
        ("fallback", "BYTES", [-1]),
        ("list", "BYTES", [-1]),
        ("text_vector", "FP32", [-1, -1]),  # an embed request's outputs
        ("text_profile", "FP32", [-1, -1]),
        ("mf", "FP32", [-1, -1]),
    ]


def test_embed_answers_the_exported_vectors_over_both_protocols(server, recommender, serving_bundles, tmp_path):
    """{"embed": {"customer_id": ...}} and {"embed": {"text": ...}} (v2: embed_customer_id, embed_text)
    answer the served model's own vectors: those `plmrec export embeddings` writes, and for a text the
    vector the query path ranks the items' text vectors with."""
    from plmrec.serving.export import export_embeddings, read_vectors

    export_embeddings(serving_bundles["ltr"], tmp_path / "e")
    customers = tmp_path / "e" / "customers.parquet"
    profiles, factors = read_vectors(customers, "text_profile"), read_vectors(customers, "mf")
    c = _customer(recommender)
    row = recommender.customer_row[c]
    text = "red heart lantern for a wedding"
    r = _v1(server, {"instances": [{"embed": {"customer_id": c}}, {"embed": {"text": text}}]})
    assert r.status_code == 200, r.text
    who, what = r.json()["predictions"]
    assert who["kind"] == what["kind"] == "embed" and who["customer_id"] == c and who["model"] == "ltr"
    assert set(who["vectors"]) == {"text_profile", "mf"}  # no user model in this bundle
    assert np.array_equal(np.asarray(who["vectors"]["text_profile"], np.float32), profiles[row])
    assert np.array_equal(np.asarray(who["vectors"]["mf"], np.float32), factors[row])
    query = np.asarray(what["vectors"]["text_vector"], np.float32)
    assert np.allclose(query, recommender.embed_texts([text])[0], atol=1e-6)
    top = recommender.search([text], 1, "dense")[0]  # the query path ranks by this very vector
    assert recommender.codes[int(np.argmax(recommender.item_vectors @ query))] == top.stock_codes[0]
    ids = [c, next(iter(recommender.customer_row))]
    v2 = {"inputs": [{"name": "embed_customer_id", "shape": [2], "datatype": "INT64", "data": ids}]}
    r = requests.post(f"{server.url}/v2/models/plmrec/infer", json=v2, timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"text_profile", "mf"} and outputs["mf"]["shape"] == [2, factors.shape[1]]
    got = np.asarray(outputs["mf"]["data"], np.float32).reshape(2, -1)
    assert np.allclose(got, factors[[recommender.customer_row[i] for i in ids]], atol=1e-6)
    v2 = {"inputs": [{"name": "embed_text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    out = requests.post(f"{server.url}/v2/models/plmrec/infer", json=v2, timeout=30).json()["outputs"][0]
    assert out["name"] == "text_vector" and out["shape"] == [1, len(query)]


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({"instances": [{"embed": {}}]}, 400, "instances[0].embed needs one of customer_id or text"),
        ({"instances": [{"embed": {"customer_id": 1, "text": "x"}}]}, 400, "needs one of customer_id or text"),
        ({"instances": [{"embed": {"customer_id": 999999999}}]}, 404, "instances[0].embed.customer_id: customer"),
        (
            {"instances": [{"embed": {"customer_id": "12347"}}]},
            400,
            "instances[0].embed.customer_id must be an integer",
        ),
        ({"instances": [{"embed": {"text": "x"}, "k": 3}]}, 400, "an embed instance takes no other field, got k"),
        ({"instances": [{"embed": {"sku": "x"}}]}, 400, "instances[0].embed.sku is an unknown field"),
        ({"instances": [{"embed": {"text": "  "}}]}, 400, "instances[0].embed.text must be a non-empty string"),
        ({"instances": [{"embed": "12347"}]}, 400, "instances[0].embed must be an object"),
    ],
)
def test_bad_embed_requests_get_a_4xx_naming_the_field(server, body, status, message):
    r = _v1(server, body)
    assert r.status_code == status and message in r.json()["error"], r.text


@pytest.mark.parametrize(
    "inputs,parameters,message",
    [
        ([("embed_text", "BYTES", ["a"]), ("query", "BYTES", ["b"])], None, "one input: embed_customer_id or"),
        ([("embed_text", "BYTES", ["a"])], {"k": 3}, "an embed request takes no parameters, got k"),
        ([("embed_customer_id", "FP32", [1.0])], None, "input 'embed_customer_id': datatype 'FP32'"),
        ([("embed_customer_id", "INT64", [])], None, "input 'embed_customer_id' is empty"),
    ],
)
def test_bad_v2_embed_requests_get_a_400_naming_the_input(server, inputs, parameters, message):
    body = {"inputs": [{"name": n, "shape": [len(d)], "datatype": t, "data": d} for n, t, d in inputs]}
    if parameters:
        body["parameters"] = parameters
    r = requests.post(f"{server.url}/v2/models/plmrec/infer", json=body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_v1_answers_each_request_kind(server, recommender):
    c = _customer(recommender)
    body = {
        "instances": [
            {"customer_id": c, "k": 5},
            {"basket": [recommender.codes[3], recommender.codes[7]], "k": 4},
            {"query": "red heart lantern for a wedding", "k": 3},
            {"customer_id": c, "basket": [recommender.codes[3]], "k": 2, "exclude_seen": True},
        ]
    }
    r = _v1(server, body)
    assert r.status_code == 200, r.text
    out = r.json()["predictions"]
    assert [p["kind"] for p in out] == ["customer", "basket", "query", "customer"]
    assert [len(p["items"]) for p in out] == [5, 4, 3, 2]
    direct = recommender.recommend_customer(c, 5)
    assert [i["stock_code"] for i in out[0]["items"]] == direct.stock_codes  # the server is the library
    assert [i["score"] for i in out[0]["items"]] == pytest.approx(direct.scores, abs=1e-5)
    assert {"stock_code", "description", "score"} == set(out[2]["items"][0])
    assert recommender.codes[3] not in [i["stock_code"] for i in out[3]["items"]]


def test_an_unknown_customer_gets_the_popular_list_flagged_and_the_batch_is_answered(server, recommender):
    """Not a 404 that loses the rest of the request: the popular list, flagged with the reason, over both
    protocols; a known customer in the same batch is served as ever."""
    c = _customer(recommender)
    popular = recommender.popular(3, reason="").stock_codes
    r = _v1(server, {"instances": [{"customer_id": 1, "k": 3}, {"query": "cake stand", "k": 2}, {"customer_id": c}]})
    assert r.status_code == 200, r.text
    first, query, known = r.json()["predictions"]
    assert [i["stock_code"] for i in first["items"]] == popular and first["fallback"] == "popular"
    assert "customer 1 is unknown" in first["reason"] and len(query["items"]) == 2
    assert "fallback" not in query and "fallback" not in known
    ids = {"name": "customer_id", "shape": [2], "datatype": "INT64", "data": [1, c]}
    r = _v2(server, {"inputs": [ids], "parameters": {"k": 3}})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["fallback"]["data"] == ["popular", ""] and outputs["fallback"]["shape"] == [2]
    assert outputs["stock_code"]["data"][:3] == popular


def test_each_list_over_both_protocols(server, recommender):
    """buy_again: only the customer's own items; discover: none of them; mixed (the default) either; the
    unknown customer with a basket gets the new-customer path (the basket's list), without one the popular
    list; a list with a query, or an unknown list, is a 400 that names the field."""
    c = _customer(recommender, min_items=12)
    own = set(recommender.codes[recommender.counts[recommender.customer_row[c]].indices])
    body = {"instances": [{"customer_id": c, "k": 10, "list": kind} for kind in ("buy_again", "discover", "mixed")]}
    r = _v1(server, body)
    assert r.status_code == 200, r.text
    buy_again, discover, mixed = r.json()["predictions"]
    assert [p["list"] for p in (buy_again, discover, mixed)] == ["buy_again", "discover", "mixed"]
    codes = {p["list"]: [i["stock_code"] for i in p["items"]] for p in (buy_again, discover, mixed)}
    assert codes["buy_again"] and set(codes["buy_again"]) <= own
    assert codes["discover"] and not set(codes["discover"]) & own
    assert codes["mixed"] == recommender.recommend_customer(c, 10).stock_codes  # the default list
    scores = {i["stock_code"]: i["score"] for p in (buy_again, discover) for i in p["items"]}
    mixed_scores = {i["stock_code"]: i["score"] for i in mixed["items"]}
    assert all(scores[code] == pytest.approx(score, abs=1e-5) for code, score in mixed_scores.items() if code in scores)
    basket = [recommender.codes[3], recommender.codes[7]]
    r = _v1(server, {"instances": [{"customer_id": 1, "basket": basket, "list": "discover", "k": 5}]})
    new = r.json()["predictions"][0]
    assert (
        "fallback" not in new
        and new["list"] == "discover"
        and not set(basket) & {i["stock_code"] for i in new["items"]}
    )
    assert [i["stock_code"] for i in new["items"]] == recommender.recommend_basket(
        basket, 5, kind="discover"
    ).stock_codes
    ids = {"name": "customer_id", "shape": [2], "datatype": "INT64", "data": [c, 1]}
    r = _v2(server, {"inputs": [ids], "parameters": {"k": 10, "list": "buy_again"}})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["list"]["data"] == ["buy_again", ""] and outputs["fallback"]["data"] == ["", "popular"]
    assert [x for x in outputs["stock_code"]["data"][:10] if x] == codes["buy_again"]
    r = _v1(server, {"instances": [{"query": "cake stand", "list": "discover"}]})
    assert r.status_code == 400 and "instances[0].list goes with a customer or basket" in r.text
    r = _v1(server, {"instances": [{"customer_id": c, "list": "new"}]})
    assert r.status_code == 400 and "expected one of mixed, discover, buy_again" in r.text
    r = _v1(server, {"instances": [{"customer_id": c, "list": "buy_again", "exclude_seen": True}]})
    assert r.status_code == 400 and "contradicts exclude_seen" in r.text
    r = _v2(server, {"inputs": [ids], "parameters": {"list": 3}})
    assert r.status_code == 400 and "parameters.list must be a string" in r.text


def test_v2_answers_each_request_kind(server, recommender):
    c1, c2 = list(recommender.customer_row)[:2]
    r = _v2(
        server,
        {
            "id": "req-1",
            "inputs": [{"name": "customer_id", "shape": [2], "datatype": "INT64", "data": [c1, c2]}],
            "parameters": {"k": 4},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "plmrec"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["stock_code"]["shape"] == [2, 4] and outputs["score"]["datatype"] == "FP32"
    assert outputs["stock_code"]["data"][:4] == recommender.recommend_customer(c1, 4).stock_codes
    r = _v2(
        server,
        {
            "inputs": [
                {
                    "name": "basket",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [recommender.codes[1], recommender.codes[2]],
                }
            ],
            "parameters": {"k": 3},
        },
    )
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 3]
    r = _v2(server, {"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["cake stand"]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10] and r.json()["id"]


def test_each_search_mode_over_both_protocols_is_the_library(server, recommender):
    """v1 `search_mode` per instance and v2 `search_mode` parameter answer as Recommender.search does:
    lexical is BM25 over the descriptions, hybrid their fusion with the dense ranking."""
    query = "red heart lantern"
    by_mode = {}
    for mode in ("dense", "lexical", "hybrid"):
        direct = recommender.search([query], 5, mode)[0]
        r = _v1(server, {"instances": [{"query": query, "k": 5, "search_mode": mode}]})
        assert r.status_code == 200, r.text
        assert [i["stock_code"] for i in r.json()["predictions"][0]["items"]] == direct.stock_codes
        body = {
            "inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": [query]}],
            "parameters": {"k": 5, "search_mode": mode},
        }
        r = _v2(server, body)
        assert r.status_code == 200, r.text
        assert {o["name"]: o for o in r.json()["outputs"]}["stock_code"]["data"] == direct.stock_codes
        by_mode[mode] = direct
    words = {"red", "heart", "lantern", "lanterns", "hearts"}
    assert by_mode["lexical"].stock_codes and all(
        words & set(d.lower().split()) for d in by_mode["lexical"].descriptions
    )
    dense = recommender.search([query], recommender.n_items, "dense")[0].stock_codes  # the fusion by hand
    lexical = recommender.search([query], recommender.n_items, "lexical")[0].stock_codes
    weight, k = recommender.search_settings["hybrid_weight"], recommender.search_settings["rrf_k"]
    fused = {}
    for ranking, share in ((dense, weight), (lexical, 1 - weight)):
        for rank, code in enumerate(ranking, start=1):
            fused[code] = fused.get(code, 0.0) + share / (k + rank)
    row = recommender.item_col
    expected = sorted(fused, key=lambda c: (-fused[c], row[c]))[:5]
    assert by_mode["hybrid"].stock_codes == expected
    mixed = _v1(server, {"instances": [{"query": query, "k": 5, "search_mode": "lexical"}, {"query": query, "k": 5}]})
    default = recommender.search_settings["default_mode"]
    assert [i["stock_code"] for i in mixed.json()["predictions"][1]["items"]] == by_mode[default].stock_codes


def test_the_bundle_serves_queries_in_the_mode_evaluate_search_chose(serving_bundles, tmp_path):
    import json
    import shutil

    from plmrec.serving.bundle import search_settings

    assert Recommender(serving_bundles["ltr"]).search_settings["default_mode"] == "dense"  # no decision given
    copy = tmp_path / "bundle"
    shutil.copytree(serving_bundles["ltr"], copy)
    meta = json.loads((copy / "bundle.json").read_text())
    decision = {
        "mode": "lexical",
        "ranker": "bm25",
        "metric": "ndcg@100",
        "evaluated": True,
        "benchmark": "b",
        "hybrid_weight": 0.65,
        "rrf_k": 60,
        "depth": 1000,
    }
    meta["search"] = search_settings(decision)
    (copy / "bundle.json").write_text(json.dumps(meta))
    rec = Recommender(copy, load_encoder=False)  # lexical needs no encoder
    assert rec.search(["cake stand"], 4)[0].stock_codes == rec.search(["cake stand"], 4, "lexical")[0].stock_codes
    assert "evaluate-search: best valid ndcg@100 (bm25)" in rec.search_settings["chosen_by"]


BAD_V1 = [
    (
        "malformed JSON",
        dict(data=b'{"instances": [{"customer_id": 1', headers={"content-type": "application/json"}),
        400,
        "the body is not valid JSON: Expecting ',' delimiter at byte 32",
    ),
    (
        "malformed JSON, no content type",
        dict(data=b'{"instances": [', headers={"content-type": "text/plain"}),
        400,
        "not valid JSON",
    ),
    ("k too large", dict(json={"instances": [{"customer_id": 1, "k": 1000}]}), 400, "1 <= k <= 100"),
    ("k zero", dict(json={"instances": [{"query": "lamp", "k": 0}]}), 400, "out of range"),
    (
        "customer id of the wrong type",
        dict(json={"instances": [{"customer_id": {"id": 1}}]}),
        400,
        "must be an integer",
    ),
    ("k of the wrong type", dict(json={"instances": [{"query": "lamp", "k": "ten"}]}), 400, "must be an integer"),
    ("basket of the wrong type", dict(json={"instances": [{"basket": 85123}]}), 400, "must be a list"),
    ("no instances", dict(json={"inputs": []}), 400, '"instances"'),
    ("a list body", dict(json=[1, 2]), 400, '"instances"'),
    ("too many instances", dict(json={"instances": [{"query": "lamp"}] * 65}), 413, "at most 64"),
    (
        "oversized body",
        dict(
            data=b'{"instances": [' + b'{"query": "lamp"},' * 80000 + b'{"query": "x"}]}',
            headers={"content-type": "application/json"},
        ),
        413,
        "exceeds the limit",
    ),
    ("query too long", dict(json={"instances": [{"query": "lamp " * 200}]}), 413, "characters"),
    ("customer id as a digit string", dict(json={"instances": [{"customer_id": "--5"}]}), 400, "must be an integer"),
    ("k as a string", dict(json={"instances": [{"query": "lamp", "k": "5"}]}), 400, "k must be an integer"),
    (
        "unknown search mode",
        dict(json={"instances": [{"query": "lamp", "search_mode": "fuzzy"}]}),
        400,
        "instances[0].search_mode = 'fuzzy'; expected one of dense, lexical, hybrid",
    ),
    (
        "search mode on a customer",
        dict(json={"instances": [{"customer_id": 1, "search_mode": "lexical"}]}),
        400,
        "search_mode goes with a query",
    ),
    ("search mode not a string", dict(json={"instances": [{"query": "a", "search_mode": 1}]}), 400, "search_mode"),
    ("unknown top-level field", dict(json={"instances": [{"query": "lamp"}], "x": 1}), 400, "unknown top-level"),
    (
        "customer id beyond 64 bits, with a basket",
        dict(json={"instances": [{"customer_id": 2**70, "basket": ["85123A"]}]}),
        400,
        "instances[0].customer_id = 1180591620717411303424 is beyond 64 bits",
    ),
]


@pytest.mark.parametrize("case, kwargs, status, message", BAD_V1, ids=[c[0] for c in BAD_V1])
def test_v1_client_mistakes_get_a_4xx_that_says_why(server, case, kwargs, status, message):
    r = requests.post(f"{server.url}/v1/models/plmrec:predict", timeout=30, **kwargs)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert message in r.json()["error"]


BAD_V2 = [
    ("malformed JSON", b'{"inputs": [{"name": "query"', 400, "not valid JSON: Expecting ',' delimiter at byte 28"),
    ("inputs not a list", b'{"inputs": {"name": "query"}}', 400, "inputs must be a list"),
    (
        "unknown input",
        b'{"inputs": [{"name": "user", "shape": [1], "datatype": "INT64", "data": [1]}]}',
        400,
        "unknown input(s) user",
    ),
    (
        "k out of range",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}], '
        b'"parameters": {"k": 500}}',
        400,
        "1 <= k <= 100",
    ),
    (
        "customer id as text",
        b'{"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]}',
        400,
        "customer_id[0] must be an integer (this model's customer ids are numbers; v2: INT64), got str 'abc'",
    ),
    (
        "unknown datatype",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "WAT", "data": ["lamp"]}]}',
        400,
        "inputs[0].datatype must be one of 'BOOL', 'UINT8'",
    ),
    (
        "shape larger than the data",
        b'{"inputs": [{"name": "query", "shape": [3], "datatype": "BYTES", "data": ["lamp", "cake"]}]}',
        400,
        "shape [3] declares 3 values, the data holds 2",
    ),
    (
        "two dimensions",
        b'{"inputs": [{"name": "query", "shape": [1, 1], "datatype": "BYTES", "data": [["lamp"]]}]}',
        400,
        "expected one dimension",
    ),
    (
        "duplicate input names",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["a"]},'
        b'{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["b"]}]}',
        400,
        "query given more than once",
    ),
    (
        "integer data under BYTES",
        b'{"inputs": [{"name": "basket", "shape": [1], "datatype": "BYTES", "data": [85123]}]}',
        400,
        "basket[0] must be a string",
    ),
    (
        "k as a string",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}], '
        b'"parameters": {"k": "5"}}',
        400,
        "parameters.k must be an integer",
    ),
    (
        "unknown parameter",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}], '
        b'"parameters": {"top": 5}}',
        400,
        "parameters.top is an unknown field",
    ),
    (
        "unknown search mode",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}], '
        b'"parameters": {"search_mode": "semantic"}}',
        400,
        "parameters.search_mode = 'semantic'; expected one of dense, lexical, hybrid",
    ),
    (
        "search mode with a basket",
        b'{"inputs": [{"name": "basket", "shape": [1], "datatype": "BYTES", "data": ["85123A"]}], '
        b'"parameters": {"search_mode": "hybrid"}}',
        400,
        "search_mode goes with a query",
    ),
    (
        "query and customer together",
        b'{"inputs": [{"name": "query", "shape": [1], "datatype": "BYTES", "data": ["a"]},'
        b'{"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [1]}]}',
        400,
        "takes no customer_id",
    ),
]


@pytest.mark.parametrize("case, body, status, message", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_v2_client_mistakes_get_a_4xx_that_says_why(server, case, body, status, message):
    r = requests.post(
        f"{server.url}/v2/models/plmrec/infer", data=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code == status, (case, r.status_code, r.text)
    assert message in r.json()["error"]


def test_predict_urls_take_post_only(server):
    for url in ("/v1/models/plmrec:predict", "/v2/models/plmrec/infer"):
        r = requests.get(f"{server.url}{url}", timeout=5)
        assert r.status_code == 405 and r.headers["allow"] == "POST", (url, r.status_code, r.text)
        assert "use POST" in r.json()["error"]


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (headers and body may come in separate reads)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_that_never_arrives_gets_a_408(server):
    """A client that declares 1,000 bytes and sends 47 cannot hold its connection past the timeout."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/models/plmrec:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"instances": [{"customer_id": 1}], "padding": "'
        )
        reply = _read_until_closed(sock).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "serving.body_timeout_s" in reply and time.monotonic() - start < 20


def _client_errors(server) -> dict[tuple[str, str], float]:
    """plmrec_client_errors_total from the server's /metrics, by (reason, status)."""
    out = {}
    for line in requests.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        m = re.match(r'plmrec_client_errors_total\{reason="([^"]+)",status="(\d+)"\} ([0-9.e+]+)', line)
        if m:
            out[m.group(1), m.group(2)] = float(m.group(3))
    return out


def test_client_mistakes_are_counted_and_logged_sampled(server):
    """Every 4xx is counted by reason on /metrics; the log gets the first of a reason, then at most a line
    per serving.mistake_log_every_s (10 s); no traceback, no ERROR."""
    before_log, before = server.log_path.read_text(), _client_errors(server)
    for _ in range(30):
        requests.post(f"{server.url}/v1/models/plmrec:predict", json={"instances": [{"query": 5}]}, timeout=30)
        requests.post(f"{server.url}/v1/models/plmrec:predict", data=b"{", timeout=30)
    for _ in range(5):  # and answers: nothing is logged per request beyond the access line
        assert _v2(server, {"inputs": [_ONE_QUERY]}).status_code == 200
        assert _v1(server, {"instances": [{"query": "lamp"}]}).status_code == 200
    requests.get(f"{server.url}/v1/models/plmrec:predict", timeout=5)
    after = _client_errors(server)
    assert after["invalid_request", "400"] - before.get(("invalid_request", "400"), 0) == 30
    assert after["bad_json", "400"] - before.get(("bad_json", "400"), 0) == 30
    assert after["method_not_allowed", "405"] - before.get(("method_not_allowed", "405"), 0) == 1
    new = server.log_path.read_text()[len(before_log) :]
    assert "Traceback" not in new and " ERROR " not in new, new[-3000:]
    warnings = [line for line in new.splitlines() if "WARNING" in line and "plmrec.serving" in line]
    assert len(warnings) <= 6, warnings  # 61 mistakes of three reasons: at most a line per reason per 10 s
    assert "Warning:" not in new, new[-2000:]  # no library warning repeated per request either


def test_a_reasons_first_mistake_is_logged_then_one_line_per_interval(caplog):
    from plmrec.serving.http import ClientMistakes

    mistakes = ClientMistakes(every_s=0.3)
    with caplog.at_level("INFO", logger="plmrec.serving"):
        for i in range(50):
            mistakes.record(400, "bad_json", f"mistake {i}")
        mistakes.record(404, "unknown_route", "other")
        time.sleep(0.35)
        mistakes.record(400, "bad_json", "after the interval")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "400 bad_json: mistake 0",
        "404 unknown_route: other",
        "400 bad_json: after the interval (+49 more bad_json since the last line)",
    ]


NOT_ROUTES = [
    ("POST", "/v2/repository/models/plmrec/unload", 404),  # would let any client unload the model
    ("POST", "/v2/repository/models/plmrec/load", 404),
    ("POST", "/v2/repository/models/other/unload", 404),
    ("POST", "/v1/models/plmrec:explain", 404),
    ("POST", "/v2/models/plmrec/versions/1/infer", 404),
    ("GET", "/v2/models/plmrec/versions/1/ready", 404),
    ("GET", "/docs", 404),
    ("GET", "/openapi.json", 404),
    ("POST", "/openai/v1/completions", 404),
    ("GET", "/../../etc/passwd", 404),
    ("PUT", "/v2/health/ready", 405),
    ("DELETE", "/v1/models/plmrec", 405),
    ("POST", "/v2/models/plmrec", 405),
]


def test_only_the_routes_the_predictor_implements_exist(server, recommender):
    """KServe's repository routes (load, unload), explain and versioned routes answer 404 here, from the
    gate, without a traceback; the model stays loaded and ready."""
    before = server.log_path.read_text()
    for method, path, status in NOT_ROUTES:
        r = requests.request(method, f"{server.url}{path}", json={}, timeout=5)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        assert "error" in r.json() and ("no route" in r.json()["error"] or "not allowed" in r.json()["error"])
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.head(f"{server.url}/v2/health/live", timeout=5).status_code == 405
    r = _v1(server, {"instances": [{"customer_id": _customer(recommender), "k": 2}]})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["items"]) == 2
    assert "Traceback" not in server.log_path.read_text()[len(before) :]


def test_readiness_is_true_only_while_the_model_is_loaded_and_answers(serving_bundles):
    """The gate answers /v2/health/ready from the model's own check (KServe's server check is always
    true): 503 before the model is loaded, or once its recommender is gone; 200 while it answers."""
    import asyncio

    from starlette.testclient import TestClient

    from plmrec.serving.http import Gate
    from plmrec.serving.predictor import RecommenderModel

    async def downstream(scope, receive, send):  # what KServe answers once the gate lets a request through
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ready": true}'})

    model = RecommenderModel("plmrec", serving_bundles["popularity"])
    client = TestClient(Gate(downstream, models=[model], max_bytes=1024, timeout_s=1))
    assert asyncio.run(model.healthy()) is False
    r = client.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False, "error": "model plmrec is not loaded"}
    model.load()
    assert client.get("/v2/health/ready").status_code == 200 and asyncio.run(model.healthy()) is True
    model.recommender = None
    assert client.get("/v2/health/ready").status_code == 503


_ONE_QUERY = {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["lamp"]}
_V1_URL, _V2_URL = "/v1/models/plmrec:predict", "/v2/models/plmrec/infer"
HOSTILE = [  # (case, url, body, headers, status, message)
    ("duplicate key", _V1_URL, b'{"instances": [{"query": "a", "query": "b"}]}', {}, 400, "key 'query' twice"),
    ("duplicate top-level key", _V2_URL, b'{"inputs": [], "inputs": []}', {}, 400, "key 'inputs' twice"),
    ("lone surrogate in a query", _V1_URL, b'{"instances": [{"query": "\\ud800"}]}', {}, 400, "lone surrogate"),
    ("lone surrogate in a key", _V1_URL, b'{"instances": [{"\\udfff": 1}]}', {}, 400, "lone surrogate"),
    (
        "lone surrogate in a v2 id",
        _V2_URL,
        b'{"inputs": [{"name": "customer_id", "shape": [1], "datatype": "BYTES", "data": ["\\udc00x"]}]}',
        {},
        400,
        "inputs[0].data[0] holds a lone surrogate",
    ),
    ("lone surrogate in a name", _V2_URL, b'{"inputs": [{"name": "\\ud83d"}]}', {}, 400, "lone surrogate"),
    ("deep nesting, text/plain", _V1_URL, b"[" * 100_000, {"content-type": "text/plain"}, 400, "nests deeper"),
    ("deep nesting, no type", _V1_URL, b'{"a":' * 5000 + b"1" + b"}" * 5000, {"content-type": ""}, 400, "nests"),
    ("deep v2 data", _V2_URL, b'{"inputs": [{"data": ' + b"[" * 900 + b"]" * 900 + b"}]}", {}, 400, "nests deeper"),
    ("not UTF-8", _V1_URL, b'{"instances": [{"query": "\xff"}]}', {}, 400, "not UTF-8: byte 26 is 0xff"),
    ("NaN", _V1_URL, b'{"instances": [{"query": "a", "k": NaN}]}', {}, 400, "holds NaN"),
    ("beyond 64 bits", _V1_URL, b'{"instances": [{"customer_id": 1' + b"0" * 30 + b"}]}", {}, 400, "beyond 64 bits"),
    ("an infinite float", _V1_URL, b'{"instances": [{"query": "a", "k": 1e999}]}', {}, 400, "too large for a float"),
    ("empty body", _V1_URL, b"", {}, 400, "the body is empty"),
    ("binary tensors", _V2_URL, b"{}", {"inference-header-content-length": "2"}, 415, "binary tensor extension"),
    ("binary tensors, bad", _V2_URL, b"{}", {"inference-header-content-length": "-9"}, 415, "binary tensor"),
    (
        "v2 unknown top-level field",
        _V2_URL,
        json.dumps({"inputs": [_ONE_QUERY], "extra": 1}).encode(),
        {},
        400,
        "extra is an unknown field",
    ),
    ("v2 outputs", _V2_URL, json.dumps({"inputs": [_ONE_QUERY], "outputs": []}).encode(), {}, 400, "outputs is an"),
    (
        "v2 unknown input field",
        _V2_URL,
        json.dumps({"inputs": [{**_ONE_QUERY, "shap": [1]}]}).encode(),
        {},
        400,
        "inputs[0].shap is an unknown field",
    ),
    (
        "v2 lower-case datatype",
        _V2_URL,
        json.dumps({"inputs": [{**_ONE_QUERY, "datatype": "bytes"}]}).encode(),
        {},
        400,
        "inputs[0].datatype must be one of 'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', "
        "'INT32', 'INT64', 'FP16', 'FP32', 'FP64' or 'BYTES' (exactly), got str 'bytes'",
    ),
    (
        "v2 shape as strings",
        _V2_URL,
        json.dumps({"inputs": [{**_ONE_QUERY, "shape": ["1"]}]}).encode(),
        {},
        400,
        "inputs[0].shape[0] must be an integer",
    ),
    (
        "v2 nested data under shape [1]",
        _V2_URL,
        json.dumps({"inputs": [{**_ONE_QUERY, "data": [[["lamp"]]]}]}).encode(),
        {},
        400,
        "data must be a flat list of 1 values for shape [1]",
    ),
    ("v2 no inputs", _V2_URL, b'{"inputs": []}', {}, 400, "inputs must be a non-empty list"),
]


@pytest.mark.parametrize("case, url, body, headers, status, message", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_bodies_get_a_4xx_naming_the_place(server, case, url, body, headers, status, message):
    base = {"content-type": "application/json"}
    r = requests.post(f"{server.url}{url}", data=body, headers={**base, **headers}, timeout=30)
    assert r.status_code == status, (case, r.status_code, r.text)
    assert message in r.json()["error"], (case, r.json())


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", None],
)
def test_every_content_type_is_read_as_json_the_same_way(server, recommender, content_type):
    """One parser for every content type: curl -d's form type and no type at all get the same answer."""
    body = json.dumps({"instances": [{"customer_id": _customer(recommender), "k": 3}]}).encode()
    headers = {"content-type": content_type} if content_type else {}
    session = requests.Session()
    request = requests.Request("POST", f"{server.url}{_V1_URL}", data=body, headers=headers).prepare()
    if content_type is None:
        request.headers.pop("Content-Type", None)
    r = session.send(request, timeout=30)
    assert r.status_code == 200, r.text
    expected = recommender.recommend_customer(_customer(recommender), 3).stock_codes
    assert [i["stock_code"] for i in r.json()["predictions"][0]["items"]] == expected
    cloud = requests.post(
        f"{server.url}{_V1_URL}", data=body, headers={"ce-specversion": "1.0", "ce-type": "x", "ce-id": "1"}
    )
    assert cloud.status_code == 200 and [i["stock_code"] for i in cloud.json()["predictions"][0]["items"]] == expected


def test_slow_headers_are_cut_off(server):
    """serving.header_timeout_s (2 s here): a connection that sends nothing, and one that sends its headers
    a byte at a time, are answered 408 and closed; a client that leaves mid-body is one INFO line."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        assert _read_until_closed(idle).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - start < 8
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.settimeout(0.4)
        reply = b""
        for byte in b"POST /v1/models/plmrec:predict HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100:
            try:
                slow.sendall(bytes([byte]))
                reply += slow.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if reply:
                break
        slow.settimeout(30)
        try:
            reply += _read_until_closed(slow)
        except OSError:
            pass
    assert reply.startswith(b"HTTP/1.1 408") and b"serving.header_timeout_s" in reply, reply
    assert time.monotonic() - start < 10


def test_idle_keep_alive_connections_are_closed_and_a_leaving_client_is_one_info_line(server):
    before_log, before = server.log_path.read_text(), _client_errors(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 200")  # kept alive, then closed when idle
        assert time.monotonic() - start < 8
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/plmrec:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b'{"inst')
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while _client_errors(server).get(("client_disconnect", "499"), 0) == before.get(("client_disconnect", "499"), 0):
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.2)
    new = server.log_path.read_text()[len(before_log) :]
    assert "Traceback" not in new and " ERROR " not in new, new[-2000:]
    assert sum("client_disconnect" in line for line in new.splitlines()) <= 1


def test_the_server_survives_bad_input_and_keeps_answering(server, recommender):
    for _ in range(3):
        for _, kwargs, _, _ in BAD_V1[:4]:
            requests.post(f"{server.url}/v1/models/plmrec:predict", timeout=30, **kwargs)
    assert server.proc.poll() is None
    r = _v1(server, {"instances": [{"customer_id": _customer(recommender), "k": 3}]})
    assert r.status_code == 200 and len(r.json()["predictions"][0]["items"]) == 3
    assert requests.post(f"{server.url}/v1/models/other:predict", json={"instances": []}, timeout=5).status_code == 404


def test_pyfunc_answers_like_the_server(serving_bundles, recommender, tmp_path):
    """The registered model's MLflow flavour gives the same answer as the predictor."""
    import mlflow

    from plmrec.serving.pyfunc import BundleModel

    mlflow.pyfunc.save_model(
        str(tmp_path / "m"),
        python_model=BundleModel(),
        artifacts={"bundle": str(serving_bundles["ltr"])},
        pip_requirements=["plmrec"],
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    c = _customer(recommender)
    out = model.predict(pd.DataFrame([{"customer_id": c, "k": 5}]))
    assert [i["stock_code"] for i in out.loc[0, "items"]] == recommender.recommend_customer(c, 5).stock_codes
    mixed = model.predict(pd.DataFrame([{"customer_id": c, "k": 5}, {"query": "red heart lantern", "k": 5}]))
    assert mixed["customer_id"].tolist() == [c, None] and type(mixed.loc[0, "customer_id"]) is int  # not 12346.0
    stranger = model.predict(pd.DataFrame([{"customer_id": 1, "k": 2}]))
    assert stranger.loc[0, "fallback"] == "popular" and len(stranger.loc[0, "items"]) == 2


# ------------------------------------------------------------------------------ arbitrary JSON (hypothesis)

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_INSTANCE = (
    st.fixed_dictionaries(
        {},
        optional={
            "customer_id": st.integers(min_value=-(2**70), max_value=2**70) | _JSON,
            "basket": st.lists(st.sampled_from(["85123A", "22423", "NOPE", ""]) | _JSON, max_size=4),
            "query": st.text(max_size=40) | _JSON,
            "k": st.integers(min_value=-3, max_value=300) | _JSON,
            "exclude_seen": _JSON,
            "extra": _JSON,
        },
    )
    | _JSON
)
_V1 = st.fixed_dictionaries({"instances": st.lists(_INSTANCE, max_size=4)}, optional={"parameters": _JSON}) | _JSON
_V2_INPUT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["customer_id", "basket", "query", "user"]),
        "shape": st.lists(st.integers(min_value=-2, max_value=5), max_size=3) | _JSON,
        "datatype": st.sampled_from(["INT64", "INT32", "BYTES", "FP32", "BOOL", "WAT"]) | _JSON,
        "data": st.lists(st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=8) | _JSON, max_size=5)
        | _JSON,
    }
)
_V2 = (
    st.fixed_dictionaries(
        {"inputs": st.lists(_V2_INPUT, max_size=3)},
        optional={"parameters": st.dictionaries(st.sampled_from(["k", "exclude_seen", "top"]), _JSON), "id": _JSON},
    )
    | _JSON
)


_CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/octet-stream", "", "x/y; a=b"])
_NOISE = st.binary(max_size=64) | st.sampled_from([b"[" * 3000, b'{"a":' * 40, b'"\\ud800"', b"\xef\xbb\xbf{}"])


def _body(payload, raw: bytes | None) -> bytes:
    """A JSON text of `payload` (keys as Python writes them, lone surrogates escaped) or raw bytes."""
    return raw if raw is not None else json.dumps(payload).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v1=_V1, v2=_V2, ctype=_CONTENT_TYPES, raw=st.none() | _NOISE, binary=st.booleans())
def test_arbitrary_bodies_never_get_a_5xx_nor_a_traceback(server, v1, v2, ctype, raw, binary):
    """Both protocols, any content type, JSON or noise, with or without the binary tensor header."""
    before = server.log_path.stat().st_size
    headers = {"content-type": ctype, **({"inference-header-content-length": "7"} if binary else {})}
    r1 = requests.post(f"{server.url}{_V1_URL}", data=_body(v1, raw), headers=headers, timeout=30)
    assert r1.status_code < 500, (v1, raw, r1.status_code, r1.text)
    r2 = requests.post(f"{server.url}{_V2_URL}", data=_body(v2, raw), headers=headers, timeout=30)
    assert r2.status_code < 500, (v2, raw, r2.status_code, r2.text)
    assert "error" in r1.json() or r1.status_code == 200
    assert "error" in r2.json() or r2.status_code == 200
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    with server.log_path.open("rb") as fh:
        fh.seek(before)
        assert b"Traceback" not in fh.read()


def test_example_ids_are_a_known_customer_and_popular_codes(serving_bundles, recommender):
    """What `make run` prints for a first request: ids the bundle answers."""
    from plmrec.serving.bundle import example_ids

    customer, codes = example_ids(serving_bundles["ltr"])
    assert recommender.knows(customer) and len(codes) == 2
    assert recommender.recommend_basket(codes, 3).unknown_stock_codes == []


def test_a_product_nobody_bought_reaches_the_discover_list_its_text_fits(serving_bundles, tmp_path):
    """Two products in the catalogue with no sales, each the text of an item one customer bought and the
    other did not: over HTTP (both protocols) each customer's discover list shows the one that fits them,
    flagged; the mixed list does not; a catalogue without the columns is named."""
    import helpers
    from plmrec.config import RecommendersParams
    from plmrec.serving.bundle import build_bundle, read_catalogue

    prepared = serving_bundles["prepared"]
    items, encoder = helpers.minilm_items(prepared)
    text = dict(zip(items["StockCode"].astype(str), items["Description"].astype(str)))
    bought = prepared.groupby("CustomerID")["StockCode"].agg(lambda s: {text[str(c)] for c in s})
    big = bought[bought.map(len) >= 8].index.tolist()
    a, b = big[0], next(c for c in big[1:] if bought[c] - bought[big[0]] and bought[big[0]] - bought[c])
    only_a, only_b = sorted(bought[a] - bought[b])[0], sorted(bought[b] - bought[a])[0]
    catalogue = pd.DataFrame({"item": ["PLANT-A", "PLANT-B"], "text": [only_a, only_b]})
    (tmp_path / "catalogue.csv").write_text(catalogue.to_csv(index=False))
    build_bundle(
        prepared,
        items,
        encoder,
        out_dir=tmp_path / "bundle",
        rp=RecommendersParams(seeds=[0]),
        model="mf+similarity",
        chosen={"factors": 16, "similarity_weight": 0.5, "mf+similarity_new_item_slots": 1},
        catalogue=read_catalogue(tmp_path / "catalogue.csv"),
    )
    with plmrec_server(["--bundle", str(tmp_path / "bundle")], tmp_path) as server:
        r = _v1(server, {"instances": [{"customer_id": int(c), "list": "discover"} for c in (a, b)]})
        assert r.status_code == 200, r.text
        for answer, planted, other in zip(r.json()["predictions"], ("PLANT-A", "PLANT-B"), ("PLANT-B", "PLANT-A")):
            found = {i["stock_code"]: i for i in answer["items"]}
            assert planted in found and found[planted]["new_item"] is True and other not in found
            assert sum("new_item" in i for i in answer["items"]) == 1  # only the unsold one is flagged
        r = _v1(server, {"instances": [{"customer_id": int(a)}]})
        assert not {"PLANT-A", "PLANT-B"} & {i["stock_code"] for i in r.json()["predictions"][0]["items"]}
        ids = {"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [int(b)]}
        r = _v2(server, {"inputs": [ids], "parameters": {"list": "discover"}})
        assert r.status_code == 200 and "PLANT-B" in r.json()["outputs"][0]["data"]
    (tmp_path / "bad.csv").write_text("sku,title\nX,a lamp\n")
    with pytest.raises(BundleError, match="needs StockCode and Description, or item and text"):
        read_catalogue(tmp_path / "bad.csv")


def test_connections_beyond_the_limit_are_refused_and_the_server_goes_on(serving_bundles, tmp_path):
    """serving.max_connections: with the limit held by idle connections, a request gets uvicorn's 503 (the
    server is full, not broken); once they are gone it is answered again."""
    args = ["--bundle", str(serving_bundles["popularity"]), "-S", "serving.max_connections=3"]
    with plmrec_server(args, tmp_path) as s:
        idle = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.3)
            r = requests.post(f"{s.url}{_V1_URL}", json={"instances": [{"query": "lamp"}]}, timeout=10)
            assert r.status_code == 503, r.text
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        r = requests.post(f"{s.url}{_V1_URL}", json={"instances": [{"query": "lamp"}]}, timeout=10)
        assert r.status_code == 200, r.text
