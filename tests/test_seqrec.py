"""The UniSRec/RecBole loader on the real Scientific benchmark, its errors, and a full-ranking score."""

import shutil

import pytest

from helpers import shared
from plmrec.data.seqrec import load_seqrec
from plmrec.encoders import load_encoder
from plmrec.errors import DataLoadError
from plmrec.finetune.retrieval import score_encoder, seqrec_queries
from plmrec.pretrain.models import resolve_base_model

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def scientific():
    return load_seqrec(shared("amazon-seqrec", "scientific"))


def test_loads_the_scientific_benchmark(scientific):
    ds = scientific
    assert ds.name == "Scientific" and ds.n_items == 4385  # the data README's counts
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 34101, "valid": 8442, "test": 8442}
    assert (ds.items["text"].str.len() > 0).all()
    test, valid = ds.splits["test"].set_index("user"), ds.splits["valid"].set_index("user")
    user = test.index[0]  # leave-one-out: test history = valid history + valid target
    assert test.loc[user, "history"] == valid.loc[user, "history"] + [valid.loc[user, "target"]]


def test_bad_files_name_the_file_and_line(tmp_path):
    src = shared("amazon-seqrec", "scientific")
    shutil.copytree(src, tmp_path / "sci")
    for f in (tmp_path / "sci").iterdir():
        f.chmod(0o644)
    test_file = tmp_path / "sci" / "Scientific.test.inter"
    lines = test_file.read_text().splitlines()
    test_file.write_text("\n".join(lines[:3] + ["7\t1 2 x\t3"] + lines[4:]) + "\n")
    with pytest.raises(DataLoadError, match=r"Scientific.test.inter:4: expected .*integer indices"):
        load_seqrec(tmp_path / "sci")
    test_file.write_text("\n".join(lines[:2] + ["7\t1 2 99999\t3"]) + "\n")
    with pytest.raises(DataLoadError, match=r"Scientific.test.inter:3: item index 99999 outside 0..4384"):
        load_seqrec(tmp_path / "sci")
    test_file.write_text("user\titems\n")
    with pytest.raises(DataLoadError, match="header"):
        load_seqrec(tmp_path / "sci")
    (tmp_path / "sci" / "Scientific.text").unlink()
    with pytest.raises(DataLoadError, match=r"Scientific.text: missing"):
        load_seqrec(tmp_path / "sci")
    with pytest.raises(DataLoadError, match="not a directory"):
        load_seqrec(tmp_path / "nowhere")


def test_minilm_zero_shot_beats_chance_by_far(scientific):
    model = load_encoder(resolve_base_model("sentence-transformers/all-MiniLM-L6-v2"), "mean", 64)
    queries = seqrec_queries(scientific.splits["test"], max_users=300, seed=0)
    result = score_encoder(
        model,
        scientific.items["text"].tolist(),
        queries,
        ks=[10, 50],
        history_length=20,
        half_life=5.0,
        exclude_history=False,
    )
    chance = 10 / scientific.n_items
    assert result["sentence"]["queries"] == 300
    assert result["sentence"]["recall@10"] > 10 * chance
    assert result["sentence"]["recall@50"] >= result["sentence"]["recall@10"]


def test_only_the_query_kinds_asked_for_are_scored_and_tabled(scientific):
    """retrieval.query_kinds: without the history sentence nothing is encoded per user, and the table
    lists the kinds scored."""
    from plmrec.finetune.retrieval import Queries, results_table

    model = load_encoder(resolve_base_model("sentence-transformers/all-MiniLM-L6-v2"), "mean", 64)
    queries = Queries(users=[0, 1], histories=[[0, 1, 2], [3, 4]], relevant=[{5}, {6}])  # the first 500 items
    result = score_encoder(
        model,
        scientific.items["text"].tolist()[:500],
        queries,
        ks=[10],
        history_length=20,
        half_life=5.0,
        exclude_history=False,
        kinds=("mean", "recency"),
    )
    assert {k for k in result if not k.startswith("_")} == {"mean", "recency"}
    assert results_table({"base": result}, [10])["query"].tolist() == ["mean", "recency"]
