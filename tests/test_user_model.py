"""The sequential user model (GUIM): the mixture works on planted two-interest users, max-over-C
retrieval equals brute force, masked items never reach the encoder, leave-one-out training never
sees a valid or test target, and bad configuration fails before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import shared
from plmrec.data.seqrec import load_seqrec
from plmrec.errors import TrainingConfigError
from plmrec.finetune.embed import build_index
from plmrec.usermodel.fit import FitSettings, fit
from plmrec.usermodel.model import UserModel, UserModelSpec
from plmrec.usermodel.objective import UserModelObjective, example, inclusion_log_q
from plmrec.usermodel.retrieval import UserQueries, evaluate, search_max, search_with_offset
from plmrec.usermodel.sequences import leave_one_out


def planted_users(n_users: int, *, topics: int = 16, per_topic: int = 4, length: int = 8, seed: int = 0):
    """Each user buys from two random topics of `per_topic` items; the next items come from the same
    two. With 4-dimensional vectors one vector cannot rank an arbitrary pair of topics first."""
    rng = np.random.default_rng(seed)

    def user():
        a, b = rng.choice(topics, 2, replace=False)
        pool = np.concatenate([a * per_topic + np.arange(per_topic), b * per_topic + np.arange(per_topic)])
        return rng.choice(pool, length), pool

    train = []
    for _ in range(n_users):
        seq, pool = user()
        train.append(example(seq, targets=rng.choice(pool, 2, replace=False)))

    def queries(n: int) -> UserQueries:
        seqs, relevant = [], []
        for _ in range(n):
            seq, pool = user()
            seqs.append(seq)
            relevant.append({int(x) for x in pool})
        return UserQueries(list(range(n)), seqs, [np.zeros(len(s), dtype=np.int64) for s in seqs], relevant)

    return train, queries(300), queries(300), topics * per_topic


def tiny_model(n_items: int, *, vectors: int = 1, inputs: str = "id", text=None, **spec) -> UserModel:
    torch.manual_seed(0)
    options = {"dim": 4, "heads": 1, "layers": 1, "id_dim": 8, "dropout": 0.0, "max_length": 8, **spec}
    return UserModel(
        UserModelSpec(vectors=vectors, inputs=inputs, **options), item_text=text, item_ids=np.arange(1, n_items + 1)
    )


def test_two_vectors_beat_one_on_two_interest_users():
    train, valid, test, n_items = planted_users(1500)
    settings = FitSettings(
        epochs=12, patience=100, batch_size=64, learning_rate=3e-3, mlm_weight=0.0, select="recall@8", progress=False
    )
    recall = {}
    for c in (1, 2):
        model = tiny_model(n_items, vectors=c)
        fit(model, train, valid, settings=settings, ks=[8])
        recall[c] = evaluate(model, test, [8])["recall@8"]
    assert recall[2] > recall[1] + 0.04, recall


def brute_force_top(users: np.ndarray, items: np.ndarray, k: int, exclude=None) -> list[list[int]]:
    out = []
    for u, user in enumerate(users):
        scores = {j: max(float(c @ items[j]) for c in user) for j in range(len(items))}
        if exclude is not None:
            for j in exclude[u]:
                scores.pop(j)
        out.append([j for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]])
    return out


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_max_over_vectors_equals_brute_force(kind):
    pytest.importorskip("faiss") if kind == "faiss" else None
    rng = np.random.default_rng(3)
    items = rng.normal(size=(60, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.normal(size=(25, 3, 8)).astype(np.float32)
    users /= np.linalg.norm(users, axis=2, keepdims=True)
    exclude = [list(rng.choice(60, 4, replace=False)) for _ in range(25)]
    index = build_index(items, kind)
    if kind == "faiss":  # a small HNSW graph searched exhaustively is exact
        index.index.hnsw.efSearch = 200
    for ex in (None, exclude):
        top, scores = search_max(index, users, 10, exclude=ex)
        assert top.tolist() == brute_force_top(users, items, 10, ex)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("offset", [-0.3, 0.0, 0.4])
def test_the_repeat_offset_search_equals_brute_force(offset):
    rng = np.random.default_rng(5)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.normal(size=(20, 2, 8)).astype(np.float32)
    users /= np.linalg.norm(users, axis=2, keepdims=True)
    histories = [rng.choice(50, rng.integers(0, 7), replace=True) for _ in range(20)]
    exclude = [list(rng.choice(50, 3, replace=False)) for _ in range(20)]
    for ex in (None, exclude):
        top = search_with_offset(
            build_index(items, "exact"), users, 10, items=items, histories=histories, offset=offset, exclude=ex
        )
        expected = []
        for u in range(20):
            scores = {j: max(float(c @ items[j]) for c in users[u]) for j in range(50)}
            for j in set(histories[u].tolist()):
                scores[j] += offset
            for j in ex[u] if ex is not None else ():
                scores.pop(j)
            expected.append([j for j, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:10]])
        assert top.tolist() == expected


def test_the_learned_repeat_offset_goes_down_when_nobody_buys_again():
    train, valid, _, n_items = planted_users(600)  # targets are drawn from the user's topics, repeats included
    fresh = []
    for e in train:  # keep only targets the user has not bought
        seq, targets = e[e[:, 2] == 0, 0], e[e[:, 2] == 1, 0]
        new = [t for t in targets if t not in set(seq.tolist())]
        if new:
            fresh.append(example(seq, targets=new))
    model = tiny_model(n_items, vectors=2, repeat_offset=True)
    settings = FitSettings(
        epochs=4, batch_size=64, learning_rate=1e-2, mlm_weight=0.0, select="recall@8", progress=False
    )
    fit(model, fresh, valid, settings=settings, ks=[8])
    assert float(model.repeat.detach()) < -0.05, float(model.repeat.detach())


def test_masked_items_never_reach_the_encoder():
    model = tiny_model(30, max_length=12)
    objective = UserModelObjective(model, mask_probability=0.3)
    rows = [example(np.arange(i, i + 10), targets=[20 + i]) for i in range(6)]
    batch = objective.collate(rows, seed=11)
    masked = batch["seq"].eq(model.mask_index)
    assert masked.any() and masked.sum(1).ge(1).all()  # at least one masked position per sequence
    truth = torch.stack([torch.as_tensor(r[:10, 0]) for r in rows])
    assert torch.equal(truth[masked], batch["candidates"][batch["mlm_cols"]])  # labels are the hidden items
    # rewriting the hidden items changes nothing the model computes
    model.eval()
    users, _ = model(batch["seq"], batch["buckets"])
    other = [r.copy() for r in rows]
    for i, r in enumerate(other):
        r[:10, 0] = np.where(masked[i].numpy(), 29, r[:10, 0])
    again = objective.collate(other, seed=11)
    assert torch.equal(again["seq"], batch["seq"])
    assert torch.allclose(model(again["seq"], again["buckets"])[0], users)


def test_targets_are_never_in_the_sequence():
    model = tiny_model(40)
    objective = UserModelObjective(model, mlm_weight=0.0)
    rows = [example([1, 2, 3], targets=[7, 8]), example([4, 5], targets=[9])]
    batch = objective.collate(rows, seed=0)
    seq = batch["seq"][batch["seq"].lt(model.pad_index)]
    assert set(seq.tolist()) == {1, 2, 3, 4, 5}
    assert batch["candidates"][batch["match_cols"]].tolist() == [7, 8, 9]
    assert batch["match_rows"].tolist() == [0, 0, 1]


def test_every_training_setting_comes_from_params():
    import dataclasses

    from plmrec.config import UserModelParams
    from plmrec.usermodel.variants import fit_settings

    changed = UserModelParams(negatives=77, log_q=False, mlm_weight=0.5, batch_size=33)
    settings = fit_settings(changed, progress=False)
    assert (settings.negatives, settings.log_q, settings.mlm_weight, settings.batch_size) == (77, False, 0.5, 33)
    missing = {f.name for f in dataclasses.fields(FitSettings)} - {"progress"} - set(UserModelParams.model_fields)
    assert not missing, f"FitSettings fields with no user_model key: {missing}"


def test_whitened_text_projection_gives_equal_uncorrelated_components():
    rng = np.random.default_rng(0)
    text = (rng.normal(size=(300, 24)) * np.geomspace(3.0, 0.05, 24)).astype(np.float32)
    model = UserModel(UserModelSpec(inputs="text", dim=8, whiten=True), item_text=text, item_ids=np.zeros(300, int))
    tower = model.items
    projected = torch.nn.functional.linear(torch.as_tensor(text) - tower.text_mean, tower.text_basis).double()
    cov = torch.cov(projected.T)
    assert torch.allclose(cov, cov[0, 0] * torch.eye(8, dtype=torch.float64), atol=1e-3 * float(cov[0, 0]))
    plain = UserModel(UserModelSpec(inputs="text", dim=8), item_text=text, item_ids=np.zeros(300, int)).items
    spread = torch.cov(torch.nn.functional.linear(torch.as_tensor(text), plain.text_basis).double().T).diagonal()
    assert spread[0] > 10 * spread[-1]  # unwhitened: the leading component dominates


def test_drawn_negatives_join_the_candidates_and_the_correction():
    model = tiny_model(40)
    rows = [example([1, 2, 3], targets=[7]), example([4, 5], targets=[9])]
    plain = UserModelObjective(model, mlm_weight=0.0).collate(rows, seed=0)
    mixed = UserModelObjective(model, mlm_weight=0.0, negatives=20).collate(rows, seed=0)
    assert set(plain["candidates"].tolist()) == {1, 2, 3, 4, 5, 7, 9}
    assert set(plain["candidates"].tolist()) < set(mixed["candidates"].tolist())
    assert 20 <= len(mixed["candidates"]) <= 27
    # the positives are still where match_cols says
    assert mixed["candidates"][mixed["match_cols"]].tolist() == [7, 9]
    # more negatives: every item is more likely among the candidates, and all of them is certain
    examples = [np.array(r) for r in rows]
    base = inclusion_log_q(examples, 40, batch_size=2)
    half = inclusion_log_q(examples, 40, batch_size=2, negatives=20)
    full = inclusion_log_q(examples, 40, batch_size=2, negatives=40)
    assert np.all(half >= base) and np.all(half[base < np.log(0.5)] > base[base < np.log(0.5)])
    assert np.allclose(full, 0.0)
    assert np.all(half >= np.log(0.5) - 1e-6)


@pytest.mark.realdata
def test_leave_one_out_training_never_sees_valid_or_test_targets():
    ds = load_seqrec(shared("amazon-seqrec", "scientific"))
    examples, valid, test = leave_one_out(ds, max_length=50)
    train_part = {u: list(h) for u, h in zip(ds.splits["valid"]["user"], ds.splits["valid"]["history"])}
    train_users = ds.splits["train"]["user"].tolist()
    checked = 0
    for user, e in zip(train_users, examples):
        full = train_part[user]
        if len(full) >= 50:  # the benchmark cuts long valid histories to their newest 50 items
            continue
        seen = e[:, 0].tolist()  # the sequence and its target
        # a training example is a prefix of the user's training part: it ends before the valid target
        assert seen == full[: len(seen)]
        checked += 1
    assert checked > 0.9 * len(examples)
    assert len(valid) == len(ds.splits["valid"]) and len(test) == len(ds.splits["test"])


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"vectors": 0}, "vectors (C) is 0"),
        ({"variant": "moe"}, "variant 'moe' is not one of guim, edi, mh"),
        ({"inputs": "image"}, "inputs 'image'"),
    ],
)
def test_bad_configuration_fails_before_training(spec, words):
    with pytest.raises(TrainingConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        UserModel(UserModelSpec(**spec), item_text=None, item_ids=np.arange(1, 11))


def test_text_inputs_need_item_embeddings():
    with pytest.raises(TrainingConfigError, match="needs item text embeddings"):
        UserModel(UserModelSpec(inputs="id+text"), item_text=None, item_ids=np.arange(1, 11))


def test_text_model_starts_at_the_pooled_text_signal():
    """Before any training, a text model's user vector is the recency-pooled history in a projection
    of the text space: the item a user bought last is its best match."""
    rng = np.random.default_rng(0)
    text = rng.normal(size=(50, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    model = tiny_model(50, inputs="text", text=text, dim=16, heads=2)
    seqs = [rng.choice(50, 5, replace=False) for _ in range(20)]
    queries = UserQueries(list(range(20)), seqs, [np.zeros(5, dtype=np.int64)] * 20, [{int(s[-1])} for s in seqs])
    assert evaluate(model, queries, [1])["recall@1"] >= 0.9


@pytest.fixture(scope="module")
def synthetic_prepared():
    from helpers import SMALL
    from plmrec.config import Params, SyntheticParams
    from plmrec.data.prepare import prepare_transactions
    from plmrec.data.synthetic import generate_transactions

    p = Params()
    table, _ = prepare_transactions(generate_transactions(SyntheticParams(**SMALL)), p.clean, p.split)
    return table


def test_window_sequences_never_read_past_their_cut_off(synthetic_prepared):
    """Training sequences and targets end before train_end (valid) or valid_end (refit); valid and
    test sequences hold only purchases before their window."""
    import pandas as pd

    from plmrec.config import Params
    from plmrec.usermodel.sequences import window_examples, window_queries, with_item_rows

    p = Params()
    codes = sorted(synthetic_prepared["StockCode"].astype(str).unique())
    rows = with_item_rows(synthetic_prepared, {c: i for i, c in enumerate(codes)})
    train_end, valid_end = pd.Timestamp(p.split.train_end), pd.Timestamp(p.split.valid_end)
    late = set(rows[rows["InvoiceDate"] >= train_end].index)
    # plant a purchase after the cut-off of an item nobody bought before it: it may never appear
    planted = rows.iloc[[0]].copy()
    planted["item"], planted["InvoiceDate"] = len(codes), train_end + pd.Timedelta(days=1)
    rows = pd.concat([rows, planted])
    examples = window_examples(rows, end=train_end, horizon=valid_end - train_end, cutoffs=3, max_length=50, buckets=12)
    assert examples and late
    assert all(len(codes) not in e[:, 0] for e in examples)
    valid = window_queries(rows, cutoff=train_end, end=valid_end, max_length=50, buckets=12, exclude_history=True)
    assert all(len(codes) not in s for s in valid.sequences)
    assert all(not (r & set(e)) for r, e in zip(valid.relevant, valid.exclude))  # new items only


def test_train_user_model_stage_saves_the_chosen_variant(synthetic_prepared, tmp_path):
    import json

    import pandas as pd

    import helpers

    items, _ = helpers.minilm_items(synthetic_prepared)
    out = helpers.train_user_model_stage(
        tmp_path, synthetic_prepared, items, user_model=helpers.quick_user_model_params()
    )["user_model"]
    assert set(out["variants"]) == {"guim-c1-id", "guim-c2-id+text"}
    assert out["chosen"] in out["variants"]
    assert json.loads((tmp_path / "metrics.json").read_text())["user_model"]["chosen"] == out["chosen"]
    saved = json.loads((tmp_path / "user_model" / "user_model.json").read_text())
    assert saved["variant"] == out["chosen"] and len(saved["items"]) == len(items)
    vectors = pd.read_parquet(tmp_path / "user_model" / "user_vectors.parquet")
    width = saved["spec"]["dim"] * (1 if saved["spec"]["variant"] != "edi" else saved["spec"]["vectors"])
    c = saved["spec"]["vectors"] if saved["spec"]["variant"] != "edi" else 1
    assert len(vectors) == out["saved"]["customers"] > 0
    assert all(len(v) == c * width for v in vectors["vectors"])
    assert (tmp_path / "user_model" / "results.md").read_text().count("guim-") >= 2


def test_missing_item_embeddings_is_a_clear_error(synthetic_prepared, tmp_path):
    from plmrec.config import Params
    from plmrec.errors import StageError
    from plmrec.stages.train_user_model import train_user_model

    synthetic_prepared.to_parquet(tmp_path / "prepared.parquet", index=False)
    (tmp_path / "empty").mkdir()
    params = Params()
    params.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(StageError, match="item_embeddings.parquet is missing; pass the folder evaluate-retrieval"):
        train_user_model(
            params,
            prepared=tmp_path / "prepared.parquet",
            encoder=tmp_path / "empty",
            user_model=tmp_path / "u",
            metrics=tmp_path / "m.json",
        )


@pytest.mark.parametrize(("variant", "n_vectors", "width"), [("guim", 3, 8), ("edi", 1, 24), ("mh", 3, 8)])
def test_each_variant_gives_its_user_vectors_and_a_finite_loss(variant, n_vectors, width):
    rng = np.random.default_rng(0)
    text = rng.normal(size=(30, 16)).astype(np.float32)
    model = tiny_model(30, vectors=3, variant=variant, inputs="id+text", text=text, dim=8, heads=2, time_buckets=4)
    rows = [example(rng.choice(30, 6), buckets=rng.integers(0, 5, 6), targets=[i]) for i in range(8)]
    objective = UserModelObjective(model)
    batch = objective.collate(rows, seed=0)
    loss = objective.loss(batch, torch.Generator())
    loss.backward()
    assert torch.isfinite(loss)
    users = model.user_vectors(batch["seq"], batch["buckets"])
    assert users.shape == (8, n_vectors, width)
    assert model.item_vectors().shape == (30, width)
