"""Pretraining: objectives learn, phases hand weights on, runs resume, bad settings fail early."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import shared, tiny_pretrain_params
from plmrec.config import PhaseParams, parse_params
from plmrec.errors import ConfigError, TrainingConfigError
from plmrec.pretrain.corpus import cap_text, dapt_corpus, finish_corpus, tapt_corpus
from plmrec.pretrain.models import check_base_model
from plmrec.pretrain.objectives import (
    MaskedLM,
    Tsdae,
    delete_words,
    make_objective,
    mask_tokens,
    retention_loss,
    word_start_table,
)
from plmrec.pretrain.schedule import check_schedule, run_schedule
from plmrec.training.checkpoints import latest_checkpoint
from plmrec.training.loop import TrainConfig, train

SENTENCES = [
    "RED HEART T-LIGHT HOLDER",
    "VINTAGE GLASS CAKE STAND",
    "SET OF 3 SANTA GIFT BOXS",
    "BLUE NAUTICAL ANCHOR MUG",
    "PINK WEDDING BUNTING",
    "GREEN GARDEN BIRD ORNAMENT",
    "WHITE SPACEBOY LUNCH BOX",
    "IVORY REGENCY TEA TOWEL",
]


def _cfg(**kw):
    return TrainConfig(
        **{
            **dict(steps=30, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, log_every=5, progress=False, seed=3),
            **kw,
        }
    )


@pytest.mark.parametrize("objective", ["mlm", "tsdae"])
def test_objective_lowers_loss_on_a_repeated_batch(tiny_model_dir, objective):
    obj = make_objective(objective, str(tiny_model_dir), 32, packing=False)
    examples = obj.encode(SENTENCES)
    assert len(examples) == len(SENTENCES)  # one batch of 8, seen every step
    result = train(obj, examples, _cfg(steps=40))
    first, last = result.losses[0][1], result.losses[-1][1]
    assert np.isfinite(last) and last < 0.7 * first, result.losses
    assert result.steps == 40 and result.tokens > 0 and result.device.split(":")[0] in ("cpu", "cuda")


@pytest.mark.parametrize("objective", ["mlm", "tsdae"])
def test_retention_keeps_the_encoder_near_its_start(tiny_model_dir, objective):
    """pretrain.retain_weight: the term is 0 before any step, and after the same steps the encoder's
    token vectors sit closer to the start's than with the plain objective."""
    probe = make_objective("mlm", str(tiny_model_dir), 32, packing=False)
    ids = probe.collate(probe.encode(SENTENCES), seed=0)
    inputs, attn = ids["input_ids"], ids["attention_mask"]
    with torch.no_grad():
        before = probe.encoder(input_ids=inputs, attention_mask=attn).last_hidden_state

    def drift(weight: float) -> float:
        obj = make_objective(objective, str(tiny_model_dir), 32, packing=False, retain_weight=weight)
        if weight:
            hidden = obj.encoder(input_ids=inputs, attention_mask=attn).last_hidden_state
            start = retention_loss(obj.teacher, inputs, attn=attn, hidden=hidden, keep=attn.bool())
            assert start.item() < 1e-6
        result = train(obj, obj.encode(SENTENCES), _cfg(steps=25, learning_rate=5e-3))
        assert np.isfinite(result.final_loss)
        obj.encoder.eval()
        with torch.no_grad():
            after = obj.encoder(input_ids=inputs, attention_mask=attn).last_hidden_state
        keep = attn.bool()
        return (1 - torch.nn.functional.cosine_similarity(after[keep], before[keep], dim=-1)).mean().item()

    plain, retained = drift(0.0), drift(5.0)
    assert retained < 0.5 * plain, (plain, retained)


def test_masking_is_dynamic_and_follows_80_10_10():
    ids = torch.randint(5, 1000, (64, 128))
    ids[:, 0] = 0  # a special token at the start of every row
    maskable = ids.ne(0)
    g = torch.Generator().manual_seed(1)
    inputs, labels = mask_tokens(ids, maskable, 0.15, mask_id=4, vocab_size=1000, generator=g)
    chosen = labels.ne(-100)
    assert not chosen[:, 0].any()  # specials never chosen
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    became_mask = (inputs == 4) & chosen
    unchanged = (inputs == ids) & chosen
    assert abs(became_mask.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert 0.07 < unchanged.sum().item() / chosen.sum().item() < 0.14  # 10% kept, plus random draws of itself
    _, labels2 = mask_tokens(
        ids, maskable, 0.15, mask_id=4, vocab_size=1000, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(labels, labels2)  # a fresh mask for another batch


def test_word_deletion_drops_whole_words(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    starts = word_start_table(tok)
    text = "RED HEART LANTERN WITH WHITE GLASS"
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"])
    rng = np.random.default_rng(0)
    for _ in range(20):
        kept = tok.decode(delete_words(ids, starts, 0.6, rng=rng)).split()
        assert kept and set(kept) <= set(text.split())  # whole words only, never empty
    assert len(delete_words(ids, starts, 0.0, rng=rng)) == len(ids)


def test_schedule_hands_weights_from_phase_to_phase(tiny_model_dir, tmp_path, capsys):
    params = tiny_pretrain_params(tiny_model_dir)
    corpora = {"tapt": SENTENCES * 4}
    report = run_schedule(params, corpora, tmp_path / "out", seed=1, progress=False)
    first, second = report["phases"]
    assert first["label"] == "1-tapt-mlm" and second["label"] == "2-tapt-tsdae"
    assert first["end_fingerprint"] != first["start_fingerprint"]  # phase 1 trained
    assert second["start_fingerprint"] == first["end_fingerprint"]  # phase 2 began from phase 1's weights
    assert second["record"]["start_model"].endswith("phases/1-tapt-mlm")

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "out" / "sentence-transformer"), device="cpu")
    vec = st.encode(["red heart lantern"])
    assert vec.shape == (1, 64) and abs(np.linalg.norm(vec) - 1) < 1e-4  # L2-normalised
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "pretrain_report.json").read_text())
    assert [p["label"] for p in saved["phases"]] == ["1-tapt-mlm", "2-tapt-tsdae"]

    capsys.readouterr()
    again = run_schedule(params, corpora, tmp_path / "out", seed=1, progress=False)  # finished: nothing to redo
    assert "phase 2-tapt-tsdae already done" in capsys.readouterr().out
    assert again["phases"][1]["end_fingerprint"] == second["end_fingerprint"]


def test_interrupted_training_resumes_where_it_stopped(tiny_model_dir, tmp_path):
    sentences = SENTENCES * 6

    def fresh():
        obj = MaskedLM(str(tiny_model_dir), 32, packing=False)
        return obj, obj.encode(sentences)

    cfg = _cfg(steps=9, checkpoint_every=2, log_every=1)
    obj, ex = fresh()
    reference = train(obj, ex, cfg)
    ref_weights = {k: v.clone() for k, v in obj.model.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_at_5(step, _result):
        if step == 5:
            raise Killed

    obj, ex = fresh()
    with pytest.raises(Killed):
        train(obj, ex, cfg, checkpoint_dir=tmp_path / "ckpt", on_step=kill_at_5)
    ckpt = latest_checkpoint(tmp_path / "ckpt")
    assert ckpt.name == "step-00000004.pt"  # lost one step, less than one checkpoint interval
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == 4 and int(saved["optimizer"]["state"][0]["step"]) == 4

    obj, ex = fresh()
    resumed = train(obj, ex, cfg, checkpoint_dir=tmp_path / "ckpt")
    assert resumed.resumed_from_step == 4 and resumed.steps == 9
    assert [s for s, _ in resumed.losses] == list(range(1, 10))
    np.testing.assert_allclose([v for _, v in resumed.losses], [v for _, v in reference.losses], rtol=1e-5)
    for k, v in obj.model.state_dict().items():  # same batches, masks, dropout and Adam moments
        torch.testing.assert_close(v, ref_weights[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_from_other_settings_is_refused(tiny_model_dir, tmp_path):
    obj = MaskedLM(str(tiny_model_dir), 32, packing=False)
    ex = obj.encode(SENTENCES)
    train(obj, ex, _cfg(steps=4, checkpoint_every=2), checkpoint_dir=tmp_path / "ckpt", on_step=lambda s, r: None)
    assert latest_checkpoint(tmp_path / "ckpt") is not None
    with pytest.raises(TrainingConfigError, match="was written with"):
        train(
            MaskedLM(str(tiny_model_dir), 32, packing=False),
            ex,
            _cfg(steps=4, learning_rate=1e-4),
            checkpoint_dir=tmp_path / "ckpt",
        )


def test_bad_configuration_fails_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="pretrain.phases.0.objective"):
        parse_params({"pretrain": {"phases": [{"corpus": "tapt", "objective": "mlmx", "steps": 3}]}})
    with pytest.raises(ConfigError, match="exactly one of steps or epochs"):
        parse_params({"pretrain": {"phases": [{"corpus": "tapt", "objective": "mlm"}]}})
    with pytest.raises(TrainingConfigError, match="unknown pretraining objective 'clm'"):
        make_objective("clm", str(tiny_model_dir), 32)
    with pytest.raises(TrainingConfigError, match="TAPT corpus is empty"):
        check_schedule(tiny_pretrain_params(tiny_model_dir), {"tapt": []})
    with pytest.raises(TrainingConfigError, match="does not exist"):
        check_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(TrainingConfigError, match="no config.json"):
        check_base_model(str(tmp_path / "empty-dir"))
    params = tiny_pretrain_params(tmp_path / "missing" / "model")
    with pytest.raises(TrainingConfigError, match="does not exist"):
        run_schedule(params, {"tapt": SENTENCES}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "phases").exists()  # nothing trained


def test_epochs_phase_counts_steps_from_the_corpus(tiny_model_dir, tmp_path):
    params = tiny_pretrain_params(
        tiny_model_dir, batch_size=4, packing=False, phases=[PhaseParams(corpus="tapt", objective="mlm", epochs=2)]
    )
    report = run_schedule(params, {"tapt": SENTENCES}, tmp_path / "out", progress=False)
    assert report["phases"][0]["steps"] == 4  # 8 sentences / batch 4 = 2 steps per epoch


def test_corpora_are_capped_and_deduplicated(small_raw):
    assert cap_text("WHITE HANGING HEART T-LIGHT HOLDER WITH EXTRA LONG NAME HERE", 30) == "WHITE HANGING HEART T-LIGHT"
    assert cap_text("  a   b  ", 50) == "a b"
    assert finish_corpus(["Red Mug", "RED MUG", "x", "Blue Mug"], 50, 3) == ["Red Mug", "Blue Mug"]
    from plmrec.config import CleanParams, SplitParams
    from plmrec.data.prepare import prepare_transactions

    prepared, _ = prepare_transactions(small_raw, CleanParams(), SplitParams())
    tapt = tapt_corpus(prepared, ["train"], 50, min_chars=3)
    train_desc = set(prepared.loc[prepared["split"] == "train", "Description"])
    assert tapt and all(len(s) <= 50 for s in tapt) and set(tapt) <= {cap_text(d, 50) for d in train_desc}
    synthetic = dapt_corpus("synthetic", None, synthetic_sentences=500)
    assert 100 < len(synthetic) <= 500 and len(set(s.casefold() for s in synthetic)) == len(synthetic)


@pytest.mark.realdata
def test_dapt_corpus_from_amazon_2018():
    sentences = dapt_corpus("amazon", str(shared("amazon2018")), max_chars=50, min_chars=10, max_sentences=5000)
    assert len(sentences) == 5000
    assert all(10 <= len(s) <= 50 for s in sentences)
    assert len({s.casefold() for s in sentences}) == len(sentences)


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_mlm_head_loss_matches_eager_for_every_row_count(tiny_model_dir):
    """--compile fuses the MLM head and its cross-entropy; the masked row count varies per batch, so
    one dynamic graph must give eager's loss and gradients for each, and the compiled loop must learn."""
    obj = MaskedLM(str(tiny_model_dir), 32, packing=True)
    obj.compile()
    hidden = obj.model.config.hidden_size
    torch.manual_seed(0)
    for rows in (64, 128, 192):
        x = torch.randn(rows, hidden, requires_grad=True)
        targets = torch.randint(obj.vocab_size, (rows,))
        targets[-7:] = -100  # the padding rows that keep GEMMs aligned
        compiled = obj._head_loss_fn(x, targets)
        (g_compiled,) = torch.autograd.grad(compiled, x)
        eager = obj._head_loss(x, targets)
        (g_eager,) = torch.autograd.grad(eager, x)
        assert obj._head_loss_fn is not obj._head_loss
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-6)
    result = train(obj, obj.encode(SENTENCES * 50), _cfg(steps=12, log_every=4, compile=True, batch_size=8))
    assert result.losses[-1][1] < result.losses[0][1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_bf16_path(tiny_model_dir, compile_):
    obj = MaskedLM(str(tiny_model_dir), 32, packing=True)
    result = train(obj, obj.encode(SENTENCES * 50), _cfg(steps=20, compile=compile_, batch_size=16))
    assert result.device.startswith("cuda") and result.precision == "bf16"
    assert np.isfinite(result.losses[-1][1]) and result.losses[-1][1] < result.losses[0][1]
    assert result.peak_memory_bytes > 0
    ts = Tsdae(str(tiny_model_dir), 32)
    r2 = train(ts, ts.encode(SENTENCES * 10), _cfg(steps=10, batch_size=16))
    assert r2.precision == "bf16" and np.isfinite(r2.losses[-1][1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_nodes(commands: list[tuple[list[str], dict]]) -> None:
    """Start every node's process at once (they rendezvous), wait for all, fail with the first's stderr."""
    import subprocess

    procs = [
        subprocess.Popen(
            cmd,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd, env in commands
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("launcher", ["torchrun", "trainer-v2-nodes", "training-operator-v1-pods"])
def test_data_parallel_under_torchrun(tiny_model_dir, tmp_path, launcher):
    """Two CPU processes (gloo): replicas stay identical, batches are split, rank 0 writes. Launched
    three ways: one torchrun with two processes; two "nodes" of a Kubeflow Trainer v2 TrainJob, each a
    bare `torchrun` that finds everything in the PET_* variables the torch runtime sets (PET_NNODES,
    PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT); and two pods of a Training
    Operator v1 PyTorchJob, each the plain command with MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK."""
    import sys

    port = _free_port()
    worker = [str(Path(__file__).parent / "ddp_worker.py"), str(tiny_model_dir), str(tmp_path)]
    run = [sys.executable, "-m", "torch.distributed.run"]
    if launcher == "torchrun":
        flags = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        _run_nodes([([*run, *flags, *worker], {})])
    elif launcher == "trainer-v2-nodes":
        pet = {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }
        _run_nodes([([*run, *worker], {**pet, "PET_NODE_RANK": str(node)}) for node in (0, 1)])
    else:
        pod = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
        _run_nodes([([sys.executable, *worker], {**pod, "RANK": str(rank)}) for rank in (0, 1)])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["start"] == r1["start"] and r0["end"] == r1["end"] != r0["start"]  # gradients averaged
    assert r0["samples"] == r1["samples"] == 6 * 4 * 2  # throughput of the whole job
    assert r0["device"] == "cpu x2 ranks"
    report = json.loads((tmp_path / "schedule" / "pretrain_report.json").read_text())
    first, second = report["phases"]
    assert second["start_fingerprint"] == first["end_fingerprint"]
    assert (tmp_path / "schedule" / "sentence-transformer" / "modules.json").exists()
