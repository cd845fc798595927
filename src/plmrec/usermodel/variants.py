"""The user-model comparison (what `train-user-model` runs), on the split the prepared table has.

Temporal windows: for each variant and seed, train on sequences before cut-offs inside the training
window (matching the items bought in the next horizon), choose the epoch on the valid window, then
refit on train + valid for that many epochs and score the test window once.
Leave-one-out: the benchmark's protocol (bench/user_model_scientific.py): train on every (history, next
item) inside each user's training part, choose the epoch on the valid rows, score the test rows with
that epoch's weights (no refit), history items not masked, no time buckets.
The variant with the best mean valid figure is the one saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from plmrec.errors import TrainingConfigError
from plmrec.training.batches import steps_for_epochs
from plmrec.training.loop import train
from plmrec.usermodel.fit import FitSettings, fit, objective_for, train_config
from plmrec.usermodel.model import UserModel, UserModelSpec
from plmrec.usermodel.retrieval import UserQueries, evaluate
from plmrec.usermodel.sequences import (
    id_vocabulary,
    leave_one_out,
    seqrec_from_rows,
    training_purchases,
    window_examples,
    window_queries,
    with_item_rows,
)


def spec_for(settings, variant) -> UserModelSpec:
    """The model shape of one `user_model.variants` entry under the `user_model` settings."""
    return UserModelSpec(
        variant=variant.variant,
        vectors=variant.vectors,
        inputs=variant.inputs,
        dim=settings.dim,
        layers=settings.layers,
        heads=settings.heads,
        max_length=settings.max_length,
        id_dim=settings.id_dim,
        time_buckets=settings.time_buckets,
        dropout=settings.dropout,
        scale=settings.scale,
        whiten=settings.whiten,
    ).check()


def fit_settings(settings, *, progress: bool = True) -> FitSettings:
    keys = (
        "epochs",
        "patience",
        "batch_size",
        "learning_rate",
        "weight_decay",
        "warmup_ratio",
        "mask_probability",
        "mlm_weight",
        "log_q",
        "negatives",
        "select",
        "device",
        "precision",
        "checkpoint_every",
        "log_every",
    )
    return FitSettings(progress=progress, **{k: getattr(settings, k) for k in keys})


def refit(model: UserModel, examples: list[np.ndarray], *, settings: FitSettings, epochs: int, seed: int) -> dict:
    """`epochs` epochs on `examples` with no valid set (the count valid chose); returns the loop's result."""
    per_epoch = steps_for_epochs(len(examples), 1, settings.batch_size, grad_accum=1)
    cfg = train_config(settings, steps=per_epoch * max(1, epochs), seed=seed)
    return train(objective_for(model, examples, settings), examples, cfg, desc="user-model refit").to_dict()


@dataclass
class WindowData:
    """The three tasks over one catalogue (item rows = the encoder's item table); leave-one-out data
    has no refit (`refit` None: the valid-chosen weights are scored) and no time buckets (`timed`)."""

    codes: list[str]
    text: np.ndarray
    train: list[np.ndarray]
    valid: UserQueries
    refit: list[np.ndarray] | None
    test: UserQueries
    ids: np.ndarray
    refit_ids: np.ndarray | None
    end: pd.Timestamp  # just after the last purchase
    rows: pd.DataFrame = field(repr=False)

    @property
    def timed(self) -> bool:
        """Temporal windows (time buckets, a refit); leave-one-out data has neither."""
        return self.refit is not None

    def facts(self) -> dict:
        return {
            "items": len(self.codes),
            "train_sequences": len(self.train),
            "valid_users": len(self.valid),
            "refit_sequences": 0 if self.refit is None else len(self.refit),
            "test_users": len(self.test),
        }


def window_data(prepared: pd.DataFrame, items: pd.DataFrame, params) -> WindowData:
    """Sequences and queries from the prepared table and the selected encoder's item table
    (StockCode, embedding); the split's cut-offs place the valid and test windows."""
    from plmrec.data.prepare import _cutoffs, split_mode_of
    from plmrec.vectors import stack

    um = params.user_model
    codes = items["StockCode"].astype(str).tolist()
    rows = with_item_rows(prepared, {c: i for i, c in enumerate(codes)})
    if split_mode_of(prepared) == "leave_one_out":
        ds = seqrec_from_rows(rows, pd.DataFrame({"item_id": codes}))
        examples, valid, test = leave_one_out(ds, max_length=um.max_length)
        return WindowData(
            codes=codes,
            text=stack(items["embedding"]),
            train=examples,
            valid=valid,
            refit=None,
            test=test,
            ids=id_vocabulary(training_purchases(ds), len(codes), um.top_ids),
            refit_ids=None,
            end=rows["InvoiceDate"].max() + pd.Timedelta(seconds=1),
            rows=rows,
        )
    train_end, valid_end = (pd.Timestamp(x) for x in _cutoffs(params.split))
    horizon = pd.Timedelta(days=um.horizon_days) if um.horizon_days else valid_end - train_end
    end = rows["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    shape = {"horizon": horizon, "cutoffs": um.cutoffs, "max_length": um.max_length, "buckets": um.time_buckets}
    train_rows = rows[rows["InvoiceDate"] < train_end]
    seen = {"max_length": um.max_length, "buckets": um.time_buckets, "exclude_history": um.exclude_history}
    data = WindowData(
        codes=codes,
        text=stack(items["embedding"]),
        train=window_examples(rows, end=train_end, **shape),
        valid=window_queries(rows, cutoff=train_end, end=valid_end, **seen),
        refit=window_examples(rows, end=valid_end, **shape),
        test=window_queries(rows, cutoff=valid_end, end=end, **seen),
        ids=id_vocabulary(train_rows["item"], len(codes), um.top_ids),
        refit_ids=id_vocabulary(rows[rows["InvoiceDate"] < valid_end]["item"], len(codes), um.top_ids),
        end=end,
        rows=rows,
    )
    if not data.train or not len(data.valid):
        raise TrainingConfigError(
            f"user_model: {len(data.train)} training sequences and {len(data.valid)} valid users from the windows "
            f"before split.train_end={params.split.train_end}; lower user_model.horizon_days or cutoffs"
        )
    return data


def train_variant(data: WindowData, params, variant, *, seed: int, progress: bool = True, on_epoch=None) -> dict:
    """One variant and seed: valid-chosen epoch, refit on train + valid, test scored once; `on_epoch`
    gets each epoch's valid row while the variant trains."""
    um = params.user_model
    spec, settings = spec_for(um, variant), fit_settings(um, progress=progress)
    if not data.timed:
        spec = replace(spec, time_buckets=0)
    torch.manual_seed(seed)
    model = UserModel(spec, item_text=data.text if spec.uses_text else None, item_ids=data.ids)
    result = fit(
        model, data.train, data.valid, settings=settings, ks=um.ks, seed=seed, desc=variant.label, on_epoch=on_epoch
    )
    if data.refit is None:  # leave-one-out: the valid-chosen weights are the model
        final, refit_result = model, None
    else:
        torch.manual_seed(seed)
        final = UserModel(spec, item_text=data.text if spec.uses_text else None, item_ids=data.refit_ids)
        refit_result = refit(final, data.refit, settings=settings, epochs=result.chosen_epoch, seed=seed)
    test = evaluate(final, data.test, um.ks)
    return {
        "variant": variant.label,
        "seed": seed,
        "model": final,
        "fit_model": model,
        "fit": result,
        "refit": refit_result,
        "valid": {k: v for k, v in result.valid.items() if "@" in k},
        "test": {k: round(v, 4) for k, v in test.items() if "@" in k},
    }


USER_MODEL_VERDICTS = (  # (metric, better, worse): the questions the user-model table answers
    ("recall@100", "guim-c4-id+text", "guim-c1-id+text"),
    ("ndcg@10", "guim-c1-id+text", "guim-c1-id"),
    ("ndcg@10", "guim-c4-id+text", "guim-c1-id"),
)


def summarise_variants(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Mean ± std per variant (valid and test) and the verdicts among the variants that ran."""
    from plmrec.recsys.experiment import mean_std, verdict

    metrics = [c for c in rows.columns if c.startswith(("valid_", "test_"))]
    summary = mean_std(rows, "variant", metrics)
    seeds = rows.groupby("variant")["seed"].nunique()
    verdicts = []
    for metric, better, worse in USER_MODEL_VERDICTS:
        column = f"test_{metric}"
        if better in summary.index and worse in summary.index and column in metrics:
            line = verdict(summary, column, better, vanilla=worse, label="user model")
            gap = summary.loc[better, ("mean", column)] - summary.loc[worse, ("mean", column)]
            spread = 2 * max(summary.loc[better, ("std", column)], summary.loc[worse, ("std", column)])
            if seeds[[better, worse]].min() < 2:
                verdicts.append(line.extended("; one seed: no spread to judge the gap by", ", 1 seed"))
            elif abs(gap) > spread:
                verdicts.append(line.extended("; exceeds 2 std", ", > 2 std"))
            else:
                verdicts.append(line.extended("; within 2 std", ", < 2 std"))
    return summary, verdicts


def chosen_variant(summary: pd.DataFrame, select: str) -> str:
    """The variant saved and served: the best mean valid `select` figure (never a test one)."""
    return str(summary[("mean", f"valid_{select}")].idxmax())
