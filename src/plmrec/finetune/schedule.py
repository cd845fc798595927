"""Fine-tuning phases in order on one sentence encoder, then the embedding outputs.

Output directory:
  sentence-transformer/       the fine-tuned encoder (pooling + L2 normalisation), interpolated with its
                              start where finetune.merge_alphas finds that better on valid
  phases/<i>-<task>/phase.json  what each phase did (a rerun skips finished phases)
  item_embeddings.parquet, user_embeddings.parquet, index.json
  finetune_report.json, loss_curve.png, embedding_pca.png
  valid_scores.json           the valid probe's scores of every encoder scored here (start choice, merge),
                              by weights digest: evaluate-retrieval reuses those of the same weights
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from plmrec.config import FinetunePhaseParams, Params
from plmrec.distributed import barrier, is_main_process
from plmrec.errors import TrainingConfigError
from plmrec.finetune import pairs
from plmrec.finetune.contrastive import Contrastive
from plmrec.finetune.embed import encode_texts, item_table, save_embeddings, stack, user_table
from plmrec.plots import plot_losses
from plmrec.pretrain.models import quiet_transformers
from plmrec.selection import SCORES_FILE, model_digest
from plmrec.training.loop import run_phase


def build_pairs(task: str, params: Params, rows: pd.DataFrame, *, seed: int) -> list[tuple[str, str]]:
    """The (anchor, positive) texts of one task, from training rows only."""
    ft = params.finetune
    if task == "item_context":
        if "basket" in rows.attrs.get("plmrec", {}).get("absent", []):  # no baskets: neighbouring interactions
            rows = pairs.neighbour_baskets(rows)
        return pairs.item_context_pairs(
            rows, ft.neighbours_per_item, max_pairs=ft.max_pairs, weighting=ft.pair_weighting, seed=seed
        )
    if task == "sequence_next":
        return pairs.sequence_next_pairs(
            rows, ft.history_length, ft.pairs_per_user, max_pairs=ft.max_pairs, template=ft.history_template, seed=seed
        )
    if task == "sequence_sequence":
        return pairs.sequence_sequence_pairs(
            rows, ft.history_length, ft.max_pairs, template=ft.history_template, seed=seed
        )
    if task == "item_text":
        return pairs.item_text_pairs(pairs.catalogue(rows), ft.max_pairs, seed)
    if task == "review_item":
        from plmrec.data.amazon import load_reviews_with_items

        reviews = load_reviews_with_items(ft.reviews_path, ft.meta_path)
        return pairs.review_item_pairs(reviews[reviews["has_item_meta"]], ft.min_chars, ft.max_pairs, seed=seed)
    raise TrainingConfigError(f"unknown fine-tuning task '{task}'")


def _record(phase: FinetunePhaseParams, params: Params, start: str, *, seed: int) -> dict:
    ft = params.finetune
    return {
        "phase": phase.model_dump(exclude_none=True),
        "start_model": start,
        "seed": seed,
        "settings": ft.model_dump(
            mode="json",
            exclude={
                "phases",
                "enabled",
                "start_from",
                "resources",
                "device",
                "precision",
                "compile",
                "log_every",
                "checkpoint_every",
                "checkpoint_dir",
                "merge_alphas",
            },
        ),
    }


def finetune(
    params: Params,
    prepared: pd.DataFrame,
    start_model: str,
    *,
    out_dir: str | Path,
    on_log: Callable[[str, int, float], None] | None = None,
    progress: bool = True,
) -> dict:
    """Run the configured phases from `start_model` (a Hugging Face or sentence-transformers
    directory); returns the report, also written to finetune_report.json."""
    quiet_transformers()
    ft, out, seed = params.finetune, Path(out_dir), params.seed
    rows = pairs.training_rows(prepared, params.split.train_end)
    pair_sets = {}
    for i, phase in enumerate(ft.phases, start=1):  # every phase's data is checked before any training
        if phase.task not in pair_sets:
            pair_sets[phase.task] = build_pairs(phase.task, params, rows, seed=seed)
        if not pair_sets[phase.task]:
            raise TrainingConfigError(
                f"fine-tuning phase {i} ({phase.task}): no training pairs from {len(rows):,} training rows"
            )

    def contrastive(model_dir: str) -> Contrastive:
        return Contrastive(
            model_dir,
            ft.max_length,
            ft.pooling,
            loss=ft.loss,
            scale=ft.scale,
            mini_batch_size=ft.mini_batch_size,
            mlm_weight=ft.mlm_weight,
            mlm_probability=ft.mlm_probability,
        )

    objective = contrastive(start_model)
    ckpt_root = Path(ft.checkpoint_dir) if ft.checkpoint_dir else out / "checkpoints"
    report = {
        "start_model": start_model,
        "pairs": {k: len(v) for k, v in pair_sets.items()},
        "training_rows": len(rows),
        "train_end": str(params.split.train_end),
        "phases": [],
    }
    started, current = time.time(), start_model
    for i, phase in enumerate(ft.phases, start=1):
        label = f"{i}-{phase.task}"
        phase_dir = out / "phases" / label
        record = _record(phase, params, current, seed=seed)
        done_file = phase_dir / "phase.json"
        if (
            done_file.exists()
            and json.loads(done_file.read_text())["record"] == record
            and (phase_dir / "config.json").exists()
        ):
            objective = contrastive(str(phase_dir))
            report["phases"].append(json.loads(done_file.read_text()))
            current = str(phase_dir)
            print(f"[plmrec] finetune: phase {label} already done, skipped", flush=True)
            continue
        start_fp = objective.start_fingerprint()
        examples = objective.encode(pair_sets[phase.task])
        entry = run_phase(
            objective,
            examples,
            phase,
            stage="finetune",
            settings=ft,
            seed=seed + 100 + i,
            progress=progress,
            label=label,
            phase_dir=phase_dir,
            checkpoint_root=ckpt_root,
            on_log=on_log,
            facts={"record": record, "pairs": len(examples), "start_fingerprint": start_fp},
        )
        report["phases"].append(entry)
        current = str(phase_dir)
    report["seconds"] = round(time.time() - started, 2)
    if is_main_process():
        model = objective.st
        if ft.merge_alphas != [1.0]:
            model = merge_with_start(
                params, prepared, start_model, tuned=model, report=report, scores_file=out / SCORES_FILE
            )
        st_dir = out / "sentence-transformer"
        shutil.rmtree(st_dir, ignore_errors=True)
        model.save(str(st_dir))
        (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
        plot_losses(report, out / "loss_curve.png")
    barrier()
    return report


def merge_with_start(
    params: Params, prepared: pd.DataFrame, start_model: str, *, tuned, report: dict, scores_file: Path | None = None
):
    """The interpolation of `tuned` with `start_model` that scores best on the valid window
    (finetune.merge_alphas); the choice and every candidate's figures go to report['merge'], the
    valid scores also to `scores_file` (for evaluate-retrieval's same probe)."""
    from plmrec.encoders import load_encoder
    from plmrec.finetune.merge import choose_alpha
    from plmrec.selection import ValidProbe

    ft = params.finetune
    started = time.time()
    start = load_encoder(start_model, ft.pooling, ft.max_length, device=str(tuned.device))
    probe = ValidProbe.from_prepared(prepared, params)
    alpha, model, selection = choose_alpha(
        start,
        tuned,
        ft.merge_alphas,
        probe=probe,
        progress=lambda message: print(f"[plmrec] finetune: merge {message}", flush=True),
    )
    if scores_file is not None:
        probe.save_scores(scores_file)
    report["merge"] = {"alpha": alpha, "seconds": round(time.time() - started, 2), **selection.to_dict()}
    return model


def embedding_settings(params: Params) -> dict:
    """What the user embeddings depend on besides the model and the table (recorded in index.json)."""
    return {
        "users_from": f"purchases before {params.split.train_end}",
        "history_length": params.finetune.history_length,
        "history_template": params.finetune.history_template,
        "recency_half_life": params.retrieval.recency_half_life,
        "pooling": params.finetune.pooling,
        "max_length": params.finetune.max_length,
    }


def saved_embeddings_match(model_dir: str | Path, prepared: pd.DataFrame, params: Params) -> bool:
    """Whether `model_dir` already holds what embed_catalogue would write there for this table and these
    params (its index.json settings and its item list), so a later stage can copy instead of encoding."""
    out = Path(model_dir)
    files = [out / name for name in ("index.json", "item_embeddings.parquet", "user_embeddings.parquet")]
    if not all(f.is_file() for f in files):
        return False
    meta = json.loads(files[0].read_text())
    wanted = {"kind": params.retrieval.index, **embedding_settings(params)}
    if any(meta.get(key) != value for key, value in wanted.items()):
        return False
    cat = pairs.catalogue(prepared)
    items = pd.read_parquet(files[1], columns=["StockCode", "Description"])
    return items["StockCode"].tolist() == cat["StockCode"].tolist() and (
        items["Description"].tolist() == cat["Description"].tolist()
    )


def saved_item_vectors(model, model_dir: str | Path, prepared: pd.DataFrame, *, params: Params) -> np.ndarray | None:
    """The item vectors `model_dir` holds for this table when these very weights wrote them (the digest in
    its index.json), in catalogue order; None when they would have to be encoded."""
    index = Path(model_dir) / "index.json"
    if not index.is_file() or json.loads(index.read_text()).get("model_digest") != model_digest(model):
        return None  # other weights: the table need not be read
    if not saved_embeddings_match(model_dir, prepared, params):
        return None
    return stack(pd.read_parquet(Path(model_dir) / "item_embeddings.parquet", columns=["embedding"])["embedding"])


def embed_catalogue(
    model, prepared: pd.DataFrame, params: Params, *, out_dir: str | Path, item_vectors: np.ndarray | None = None
) -> dict:
    """Item embeddings (every stock code in the table), user embeddings (training purchases) and
    the index description, written next to the model. `item_vectors`: the catalogue's vectors from these
    weights, already encoded (pairs.catalogue order), so they are not encoded again."""
    cat = pairs.catalogue(prepared)
    start = time.perf_counter()
    if item_vectors is not None and len(item_vectors) == len(cat):
        vectors = item_vectors
    else:
        vectors = encode_texts(model, cat["Description"].tolist(), params.retrieval.encode_batch_size, progress=True)
    encode_s = time.perf_counter() - start
    rows = pairs.training_rows(prepared, params.split.train_end)
    row_of = {c: i for i, c in enumerate(cat["StockCode"])}
    customers, histories = [], []
    for customer, codes in pairs.customer_histories(rows):
        customers.append(customer)
        histories.append([row_of[c] for c in codes])
    users = user_table(
        customers,
        histories,
        vectors,
        item_texts=cat["Description"].tolist(),
        model=model,
        history_length=params.finetune.history_length,
        template=params.finetune.history_template,
        half_life=params.retrieval.recency_half_life,
        batch_size=params.retrieval.encode_batch_size,
        sentences="sentence" in params.retrieval.query_kinds,
    )
    save_embeddings(
        out_dir,
        item_table(cat["StockCode"].tolist(), cat["Description"].tolist(), vectors),
        users,
        index_kind=params.retrieval.index,
        model_info={**embedding_settings(params), "model_digest": model_digest(model)},
    )
    return {
        "items": len(cat),
        "users": len(users),
        "encode_seconds": round(encode_s, 3),
        "items_per_s": round(len(cat) / encode_s, 1) if encode_s else None,
        "vectors": vectors,
    }
