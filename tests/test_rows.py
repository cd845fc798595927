"""The recommender-row registry: the built-in rows as the study has always reported them, and a row
added the README's way (one register() call, its grid in the params) studied, judged and served."""

import re

import numpy as np
import pandas as pd
import pytest

import helpers
from plmrec.config import Params, RecommendersParams, SyntheticParams, parse_params
from plmrec.errors import ConfigError
from plmrec.recsys import recommend, rows
from plmrec.recsys.rows import Mix, Versus

BUILT_IN = (
    "popularity",
    "mf",
    "mf+repeat",
    "mf+cluster",
    "mf+similarity",
    "text_neighbours",
    "ltr-no-text",
    "ltr",
    "user_model",
    "ltr+user_model",
)
ADDED = "mf+popularity"
GRID = [0.1, 0.3]


def test_the_built_in_rows_and_what_the_study_reports_of_them():
    assert rows.names()[: len(BUILT_IN)] == BUILT_IN
    assert [r.name for r in rows.scored_rows()][:7] == [*BUILT_IN[:6], "user_model"]  # studied before ltr
    assert not rows.get("ltr-no-text").text and rows.get("ltr").text
    assert [r.name for r in rows.ltr_rows()][:3] == ["ltr-no-text", "ltr", "ltr+user_model"]
    assert [r.name for r in rows.ltr_rows() if r.user_model] == ["ltr+user_model"]
    assert [n for n in BUILT_IN if rows.get(n).user_model] == ["user_model", "ltr+user_model"]
    assert rows.weight_names()[:3] == ("similarity_weight", "cluster_weight", "repeat_weight")
    assert [rows.get(n).grid for n in ("mf+similarity", "mf+cluster", "mf+repeat")] == [
        "recommenders.mf.similarity_weights",
        "recommenders.mf.cluster_weights",
        "recommenders.mf.repeat_weights",
    ]
    verdicts = [(r.name, v.vanilla, v.label) for r in rows.reported_rows() if r.name in BUILT_IN for v in r.versus]
    assert verdicts == [
        ("mf+similarity", "mf", "MF"),
        ("mf+similarity", "mf+repeat", "MF, text vs bought-before"),
        ("mf+cluster", "mf", "MF"),
        ("ltr-no-text", "popularity", "Learning to rank without text"),
        ("ltr", "popularity", "Learning to rank"),
        ("ltr", "ltr-no-text", "Learning to rank, text vs no text"),
        ("user_model", "mf", "User model (GUIM)"),
        ("ltr+user_model", "ltr", "Learning to rank with the user model"),
        ("ltr+user_model", "ltr-no-text", "Learning to rank with the user model vs no text"),
    ]
    # every row that reads text is measured against a text-free twin on every view
    twins = {n: rows.twin_of(n) for n in BUILT_IN}
    assert twins == {
        "popularity": "popularity",
        "mf": "mf",
        "mf+repeat": "mf+repeat",
        "mf+cluster": "mf",
        "mf+similarity": "mf+repeat",
        "text_neighbours": "popularity",
        "ltr-no-text": "ltr-no-text",
        "ltr": "ltr-no-text",
        "user_model": "mf",
        "ltr+user_model": "ltr-no-text",
    }
    with pytest.raises(ValueError, match="must be a text-free row registered before it"):
        rows.register("x", scores=rows.Scorer("mf"), twin="ltr")
    with pytest.raises(ValueError, match="already registered"):
        rows.register("mf", scores=rows.Scorer("mf"))
    with pytest.raises(ValueError, match="not registered before it"):
        rows.register("x", scores=rows.Scorer("mf"), versus=[Versus("no-such-row", "X")])
    with pytest.raises(ValueError, match="belongs to another row"):
        rows.register("x", scores=Mix("mf", "cluster"), weight="cluster_weight", grid="recommenders.mf.other")
    with pytest.raises(ValueError, match=re.escape("must be a recommenders.mf.<key> of a scored row")):
        rows.register("x", scores=Mix("mf", "cluster"), weight="x_weight", grid="recommenders.ltr.x_weights")
    assert "x" not in rows.names()


def test_blend_scores_are_the_z_scored_mix():
    rng = np.random.default_rng(0)
    s = recommend.Scorers(
        mf=rng.normal(size=(3, 5)),
        similarity=rng.normal(size=(3, 5)),
        cluster=rng.normal(size=(3, 5)),
        popularity=rng.normal(size=5),
        bought=(rng.random((3, 5)) > 0.5).astype(np.float32),
    )
    z = recommend.zscore
    scores = recommend.variant_scores(s, similarity_weight=0.25, cluster_weight=0.5, repeat_weight=0.75)
    assert list(scores) == list(BUILT_IN[:6])  # no user model in the scorers: no user-model row
    np.testing.assert_array_equal(scores["mf+similarity"], 0.75 * z(s.mf) + 0.25 * z(s.similarity))
    np.testing.assert_array_equal(scores["mf+cluster"], z(s.mf) + 0.5 * z(s.cluster))
    np.testing.assert_array_equal(scores["popularity"], np.broadcast_to(s.popularity, (3, 5)))
    with pytest.raises(TypeError, match="unknown blend weight"):
        recommend.variant_scores(s, similarity_weights=0.5)


@pytest.fixture
def added_row():
    """A throwaway row, added the README's way; removed afterwards so other tests see only the built-ins."""
    row = rows.register(
        ADDED,
        scores=Mix("mf", "popularity"),
        weight="popularity_weight",
        grid="recommenders.mf.popularity_weights",
        versus=[Versus("mf", "MF, popularity")],
    )
    yield row
    rows.unregister(ADDED)


def test_a_registered_rows_grid_is_a_params_key_of_its_own(added_row):
    parsed = parse_params({"recommenders": {"mf": {"popularity_weights": GRID}}, "registry": {"served_model": ADDED}})
    assert parsed.recommenders.mf.popularity_weights == GRID
    assert parsed.to_dict()["recommenders"]["mf"]["popularity_weights"] == GRID  # travels with the params
    with pytest.raises(ConfigError, match="missing key 'recommenders.mf.popularity_weights'"):
        parse_params({"recommenders": {"mf": {"factors": [8]}}})
    with pytest.raises(ConfigError, match="invalid value for 'recommenders.mf.popularity_weights'"):
        parse_params({"recommenders": {"mf": {"popularity_weights": []}}})
    with pytest.raises(ConfigError, match="unknown key 'recommenders.mf.popularity_weight'"):
        parse_params({"recommenders": {"mf": {"popularity_weights": GRID, "popularity_weight": 0.5}}})
    with pytest.raises(ConfigError, match=re.escape(f"the weight grid of the '{ADDED}' row is not in the params")):
        rows.weight_grid(added_row, RecommendersParams())  # the defaults, never validated against it


def test_a_rows_default_grid_stands_in_for_a_missing_key():
    row = rows.register(
        "mf+bought",
        scores=Mix("mf", "bought"),
        weight="bought_weight",
        grid="recommenders.mf.bought_weights",
        default_grid=[0.5],
    )
    try:
        assert parse_params({"recommenders": {"mf": {"factors": [8]}}}).recommenders.mf.bought_weights == [0.5]
        assert rows.weight_grid(row, RecommendersParams()) == [0.5]
        assert parse_params({"recommenders": {"mf": {"bought_weights": [0.2]}}}).recommenders.mf.bought_weights == [0.2]
    finally:
        rows.unregister("mf+bought")


def test_without_the_row_its_grid_is_an_unknown_key():
    assert ADDED not in rows.names()
    with pytest.raises(ConfigError, match="unknown key 'recommenders.mf.popularity_weights'"):
        parse_params({"recommenders": {"mf": {"popularity_weights": GRID}}})
    with pytest.raises(ConfigError, match=re.escape(f"served_model '{ADDED}' must be one of auto, popularity")):
        parse_params({"registry": {"served_model": ADDED}})


@pytest.fixture(scope="module")
def data():
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    prepared, _ = prepare_transactions(generate_transactions(SyntheticParams(**helpers.SMALL)), p.clean, p.split)
    items, encoder = helpers.minilm_items(prepared)
    return prepared, items, encoder


def _no_classifier_study() -> tuple[pd.DataFrame, dict]:
    """A classifier table with vanilla alone: the comparison's recommender half is what is checked."""
    metrics = dict(test_accuracy=0.5, test_precision_macro=0.5, test_recall_macro=0.5, test_f1_macro=0.5)
    table = pd.DataFrame([{"variant": "vanilla", "seed": 0, **metrics, "valid_accuracy": 0.5, "features": 5}])
    return table.assign(text_features=0), {"best_variant": "vanilla"}


def test_an_added_row_is_studied_judged_and_served(added_row, data, tmp_path):
    from plmrec.recsys.comparison import Comparison
    from plmrec.recsys.experiment import run_recommenders
    from plmrec.serving.bundle import Recommender, write_bundle

    prepared, items, encoder = data
    rp = RecommendersParams(
        seeds=[0, 1],
        ltr=dict(enabled=False),
        mf=dict(factors=[16], similarity_weights=[0.5], cluster_weights=[0.5], popularity_weights=GRID),
    )
    table, detail = run_recommenders(prepared, items, rp)
    assert table["model"].drop_duplicates().tolist() == [*BUILT_IN[:6], ADDED]  # after the built-in scored rows
    assert table.loc[table["model"] == ADDED, "seed"].tolist() == [0, 1]  # a row per seed
    for seed in (0, 1):
        assert detail["chosen"][seed]["popularity_weight"] in GRID  # chosen on valid from its grid
        assert list(detail["chosen"][seed])[1:5] == [*rows.weight_names()[:3], "popularity_weight"]

    params = Params(recommenders=rp)
    comparison = Comparison(params, *_no_classifier_study(), table, detail)
    verdicts = comparison.verdicts()
    lifts = comparison.view_lifts()  # after the rows' verdicts: the served row is text-free, and says so
    assert comparison.served == ADDED and [str(v) for v in lifts] == [
        f"The served model, {ADDED}, reads no item text: no language-model stage is served"
    ]
    verdicts = verdicts[: -len(lifts)]
    assert verdicts[-1].startswith(f"MF, popularity: {ADDED} ") and " mf on ndcg@10: " in verdicts[-1]
    assert verdicts[-1].tag_name == "mf_popularity.vs.mf"
    assert [v.split(":")[0] for v in verdicts[2:]] == ["MF", "MF, text vs bought-before", "MF", "MF, popularity"]

    params.registry.served_model = ADDED
    served = write_bundle(
        params,
        prepared,
        items,
        recommender_rows=table,
        recommender_detail=detail,
        encoder_dir=encoder,
        bundle_dir=tmp_path / "bundle",
    )
    assert served["model"] == ADDED
    rec = Recommender(tmp_path / "bundle", load_encoder=False)
    weight = rec.meta["popularity_weight"]
    assert rec.meta["model"] == ADDED and weight == detail["chosen"][1]["popularity_weight"]
    customer = min(rec.customer_row)
    row = rec.customer_row[customer]
    got = rec.recommend_customer(customer, 10)
    mf = (rec.user_factors[row] @ rec.item_factors.T)[None, :]
    popularity = np.broadcast_to(rec.popularity, mf.shape)
    expected = ((1 - weight) * recommend.zscore(mf) + weight * recommend.zscore(popularity))[0]
    top = recommend.top_k(expected[None, :].astype(np.float64), 10)[0]
    assert got.stock_codes == rec.codes[top].tolist()  # ranked with the added row's own blend
    np.testing.assert_allclose(got.scores, expected[top], atol=1e-5)


def test_the_compare_models_stage_reports_an_added_row(added_row, data, tmp_path):
    """The stage itself, on files: the added row's figures in its metrics, its verdict in its report."""
    import json

    from plmrec.stages.compare_models import compare_models

    prepared, items, _ = data
    prepared.to_parquet(tmp_path / "prepared.parquet", index=False)
    (tmp_path / "encoder").mkdir()
    items.to_parquet(tmp_path / "encoder" / "item_embeddings.parquet", index=False)
    params = Params(
        recommenders=RecommendersParams(
            seeds=[0],
            classifier=dict(ablation=["text_cluster"]),
            ltr=dict(enabled=False),
            mf=dict(factors=[16], similarity_weights=[0.5], cluster_weights=[0.5], popularity_weights=GRID),
        )
    )
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = compare_models(
        params,
        prepared=tmp_path / "prepared.parquet",
        encoder=tmp_path / "encoder",
        metrics=tmp_path / "compare.json",
        reports=tmp_path / "compare",
    )
    figures = json.loads((tmp_path / "compare.json").read_text())["compare"]["recommenders"]
    assert 0 <= figures[ADDED]["ndcg@10"]["mean"] <= 1 and summary["chosen"][0]["popularity_weight"] in GRID
    assert f"MF, popularity: {ADDED} " in (tmp_path / "compare" / "results.md").read_text()
