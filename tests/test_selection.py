"""The language model earns its place: the encoder is chosen on the valid window (never the test
window), fine-tuning starts from whichever valid prefers, and a fresh MLM head starts informed."""

import shutil

import numpy as np
import pytest
import torch

from helpers import SMALL
from plmrec.config import Params, SyntheticParams
from plmrec.data.prepare import prepare_transactions
from plmrec.errors import StageError
from plmrec.finetune.pairs import render_history
from plmrec.pretrain.models import resolve_base_model
from plmrec.selection import SCORES_FILE, EncoderSelection, ValidProbe, select_encoder

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def prepared():
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    table, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    return table


def _scores(ndcg: dict[str, float]) -> dict:
    return {kind: {"ndcg@10": value, "recall@10": value} for kind, value in ndcg.items()}


def test_auto_selection_takes_the_best_valid_figure_and_ties_go_to_the_simpler_model():
    chosen = EncoderSelection(
        "auto",
        {
            "base": _scores({"sentence": 0.04, "mean": 0.03, "recency": 0.045}),
            "pretrained": _scores({"sentence": 0.02, "mean": 0.02, "recency": 0.03}),
            "finetuned": _scores({"sentence": 0.06, "mean": 0.03, "recency": 0.05}),
        },
    )
    assert (chosen.chosen, chosen.query) == ("finetuned", "sentence")
    assert "encoder 'finetuned' (best on valid" in chosen.line() and "base 0.0450 (recency)" in chosen.line()
    table = chosen.table()
    assert table[table["chosen"]][["encoder", "query"]].values.tolist() == [["finetuned", "sentence"]]

    tie = EncoderSelection("auto", {"pretrained": _scores({"mean": 0.05}), "base": _scores({"mean": 0.05})})
    assert tie.chosen == "base"
    fixed = EncoderSelection("pretrained", {"base": _scores({"mean": 0.05}), "pretrained": _scores({"mean": 0.01})})
    assert fixed.chosen == "pretrained" and "fixed by encoder_selection" in fixed.line()
    with pytest.raises(StageError, match="encoder_selection is 'finetuned' but the candidates are"):
        EncoderSelection("finetuned", {"base": _scores({"mean": 0.05})})


def test_selection_picks_a_planted_better_encoder_and_reads_no_test_row(prepared, tiny_model_dir):
    params = Params()
    probe = ValidProbe.from_prepared(prepared, params)
    test = prepared["split"] == "test"
    assert test.any()
    # the test window rewritten: other items, other customers, nonsense text; nothing the probe reads changes
    scrambled = prepared.copy()
    scrambled.loc[test, "StockCode"] = scrambled.loc[test, "StockCode"].sample(frac=1, random_state=1).to_numpy()
    scrambled.loc[test, "Description"] = "ZZZ PLANTED TEST TEXT"
    scrambled.loc[test, "CustomerID"] = scrambled.loc[test, "CustomerID"].sample(frac=1, random_state=2).to_numpy()
    for other in (ValidProbe.from_prepared(scrambled, params), ValidProbe.from_prepared(prepared[~test], params)):
        assert other.item_texts == probe.item_texts
        assert other.queries.users == probe.queries.users and other.queries.relevant == probe.queries.relevant
    assert "ZZZ PLANTED TEST TEXT" not in probe.item_texts

    # the planted better encoder: MiniLM against a random tiny RoBERTa
    candidates = {"pretrained": str(tiny_model_dir), "finetuned": resolve_base_model(MINILM)}
    selection = select_encoder(candidates, probe, mode="auto", pooling="mean", max_length=64)
    assert selection.chosen == "finetuned" and selection.path == candidates["finetuned"]
    assert selection.best["finetuned"][1] > selection.best["pretrained"][1]
    again = select_encoder(
        candidates, ValidProbe.from_prepared(scrambled, params), mode="auto", pooling="mean", max_length=64
    )
    assert again.scores == selection.scores  # the same figures: the test window was never read


def test_a_probe_scores_the_same_weights_once_and_hands_its_scores_to_a_later_stage(prepared, tiny_model_dir, tmp_path):
    from plmrec.encoders import load_encoder

    params = Params()
    probe = ValidProbe.from_prepared(prepared, params)
    model = load_encoder(str(tiny_model_dir), "mean", 64)
    first = probe.score(model)
    assert probe.score(load_encoder(str(tiny_model_dir), "mean", 64)) == first and probe.reused == 1
    assert probe.score(model, kinds=("mean",)) == {"mean": first["mean"]} and probe.reused == 2
    probe.save_scores(tmp_path / SCORES_FILE)

    later = ValidProbe.from_prepared(prepared, params)  # another stage, the same probe
    assert later.load_scores(tmp_path / SCORES_FILE) == 1
    assert later.score(model) == first and later.reused == 1
    assert ValidProbe.from_prepared(prepared, params).score(model) == first  # what scoring again would give

    with torch.no_grad():  # other weights: scored, not reused
        weight = next(model.parameters())
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * weight.std())
    assert later.score(model) != first and later.reused == 1
    assert later.score(load_encoder(str(tiny_model_dir), "cls", 64)) != first and later.reused == 1  # other pooling
    params.finetune.history_length = 3  # another probe: the file is not taken
    assert ValidProbe.from_prepared(prepared, params).load_scores(tmp_path / SCORES_FILE) == 0
    (tmp_path / SCORES_FILE).write_text('{"probe": ')  # a damaged file: scored again, nothing raised
    assert ValidProbe.from_prepared(prepared, Params()).load_scores(tmp_path / SCORES_FILE) == 0


def test_the_selected_encoder_copies_embeddings_its_stage_wrote_for_this_table(prepared, tiny_model_dir, tmp_path):
    import pandas as pd

    from plmrec.encoders import load_encoder
    from plmrec.finetune.schedule import embed_catalogue
    from plmrec.stages.evaluate_retrieval import write_selected_encoder

    params = Params()
    params.finetune.max_length = 64
    model = load_encoder(str(tiny_model_dir), "mean", 64)
    tuned = tmp_path / "finetuned"
    model.save(str(tuned / "sentence-transformer"))
    embed_catalogue(model, prepared, params, out_dir=tuned)
    selection = EncoderSelection(
        "auto", {"finetuned": _scores({"mean": 0.05})}, paths={"finetuned": str(tuned / "sentence-transformer")}
    )
    copied = write_selected_encoder(selection, model, prepared, params=params, out_dir=tmp_path / "a")
    assert copied["copied"] == 1 and copied["items"] > 0
    for name in ("item_embeddings.parquet", "user_embeddings.parquet", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tuned / name).read_bytes()

    params.finetune.history_length = 3  # the user sentences would differ: encoded again
    again = write_selected_encoder(selection, model, prepared, params=params, out_dir=tmp_path / "b")
    assert "copied" not in again and again["users"] == copied["users"]
    users = pd.read_parquet(tmp_path / "b" / "user_embeddings.parquet")
    assert not np.allclose(
        np.stack(users["sentence"]), np.stack(pd.read_parquet(tuned / "user_embeddings.parquet")["sentence"])
    )


def test_catalogue_vectors_are_taken_from_the_finetune_stage_only_for_its_very_weights(
    prepared, tiny_model_dir, tmp_path
):
    """finetune disabled exports the base unchanged and embeds it: evaluate-retrieval reads those vectors
    for the base (bit for bit what it would encode) and encodes any other weights itself."""
    import torch

    from plmrec.encoders import load_encoder
    from plmrec.finetune.embed import encode_texts
    from plmrec.finetune.pairs import catalogue
    from plmrec.finetune.schedule import embed_catalogue, saved_item_vectors

    params = Params()
    params.finetune.max_length = 64
    model = load_encoder(str(tiny_model_dir), "mean", 64)
    embed_catalogue(model, prepared, params, out_dir=tmp_path / "finetuned")
    texts = catalogue(prepared)["Description"].tolist()
    saved = saved_item_vectors(model, tmp_path / "finetuned", prepared, params=params)
    assert saved is not None and np.array_equal(saved, encode_texts(model, texts, params.retrieval.encode_batch_size))

    other = load_encoder(str(tiny_model_dir), "mean", 64)
    with torch.no_grad():
        next(other.parameters())[0, 0] += 0.5  # other weights: their vectors are encoded, not read
    assert saved_item_vectors(other, tmp_path / "finetuned", prepared, params=params) is None
    given = embed_catalogue(model, prepared, params, out_dir=tmp_path / "again", item_vectors=saved)
    assert np.array_equal(given["vectors"], saved)


def test_start_from_auto_follows_the_selection(prepared, tiny_model_dir, tmp_path):
    from plmrec.stages.finetune import finetune_start_model

    pretrained = tmp_path / "pretrained"
    shutil.copytree(tiny_model_dir, pretrained / "hf")  # a pretrained encoder worse than the base model
    params = Params()
    assert params.finetune.start_from == "auto"
    start, selection = finetune_start_model(params, pretrained, prepared)
    assert start == resolve_base_model(MINILM) and selection.chosen == "base"

    shutil.rmtree(pretrained / "hf")
    shutil.copytree(resolve_base_model(MINILM), pretrained / "hf")  # now the pretrained one is better
    params.pretrain.base_model = str(tiny_model_dir)
    start, selection = finetune_start_model(params, pretrained, prepared)
    assert start == str(pretrained / "hf") and selection.chosen == "pretrained"

    params.finetune.start_from = "base"  # a fixed choice scores nothing
    assert finetune_start_model(params, pretrained, prepared) == (str(tiny_model_dir), None)


def test_the_structured_history_template_renders_the_documented_format():
    bought = ["RED MUG", "BLUE LANTERN", "GREEN CANDLE"]  # oldest first
    assert render_history(bought, 20, "structured") == "1: GREEN CANDLE; 2: BLUE LANTERN; 3: RED MUG"
    assert render_history(bought, 2, "structured") == "1: GREEN CANDLE; 2: BLUE LANTERN"  # the oldest go first
    assert render_history(bought, 20) == "GREEN CANDLE; BLUE LANTERN; RED MUG"


def test_the_informed_mlm_head_starts_with_a_lower_loss_than_a_random_head(prepared):
    from plmrec.pretrain.head import start_informed_head
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.pretrain.objectives import MaskedLM

    quiet_transformers()
    texts = prepared["Description"].drop_duplicates().tolist()
    objective = MaskedLM(resolve_base_model(MINILM), 32, 0.15, packing=True)
    assert objective.fresh_head  # MiniLM ships without its MLM head
    examples = objective.encode(texts * 20)
    batch = objective.collate(examples[:32], seed=0)

    def loss() -> float:
        generator = torch.Generator().manual_seed(0)  # the same masks both times
        with torch.no_grad():
            return objective.loss(batch, generator).item()

    random_loss = loss()
    facts = start_informed_head(objective, examples[32:], seed=1)
    informed_loss = loss()
    assert facts["informed"] and facts["informed_head_loss"] < facts["random_head_loss"]
    assert informed_loss < random_loss - 1.0, (random_loss, informed_loss)
    assert np.isfinite(informed_loss)


def test_pretraining_reports_the_valid_proxy_per_phase(prepared, tiny_model_dir, tmp_path):
    from helpers import tiny_pretrain_params
    from plmrec.pretrain.schedule import run_schedule

    params = Params()
    params.pretrain = tiny_pretrain_params(tiny_model_dir)
    seen = []
    corpora = {"tapt": prepared["Description"].drop_duplicates().tolist()}
    report = run_schedule(
        params.pretrain,
        corpora,
        tmp_path / "out",
        probe=ValidProbe.from_prepared(prepared, params),
        on_proxy=lambda index, figures: seen.append((index, figures["ndcg@10"])),
        progress=False,
    )
    assert [i for i, _ in seen] == [0, 1, 2]  # the base model, then each phase
    assert report["valid_proxy_base"]["ndcg@10"] == seen[0][1]
    assert [p["valid_proxy"]["ndcg@10"] for p in report["phases"]] == [v for _, v in seen[1:]]
    assert all(0 <= v <= 1 for _, v in seen)
    assert "head_start" not in report["phases"][0]  # the tiny RoBERTa ships its MLM head: nothing to start


def test_a_rerun_reuses_the_start_choices_valid_scores(prepared, tiny_model_dir, tmp_path, capsys):
    """Each candidate's valid score is written as soon as it is known: a fine-tuning killed after the start
    choice (or between its two candidates) does not score them again when it is rerun."""
    from plmrec.selection import SCORES_FILE
    from plmrec.stages.finetune import finetune_start_model

    pretrained = tmp_path / "pretrained"
    shutil.copytree(tiny_model_dir, pretrained / "hf")
    params = Params()
    scores = tmp_path / "finetuned" / SCORES_FILE
    scores.parent.mkdir()
    first = finetune_start_model(params, pretrained, prepared, scores_file=scores)
    assert "already scored" not in capsys.readouterr().out and scores.is_file()
    again = finetune_start_model(params, pretrained, prepared, scores_file=scores)
    assert "start_from auto: 2 encoder(s) already scored on valid" in capsys.readouterr().out
    assert again[0] == first[0] and again[1].scores == first[1].scores
