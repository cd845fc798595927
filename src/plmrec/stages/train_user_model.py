"""train-user-model: GUIM variants (user_model.variants) over the chosen encoder's item text on the
temporal windows; per seed the epoch is chosen on valid, the model refitted on train + valid and the
test window scored once; the variant with the best mean valid `user_model.select` is saved.

Inputs: `prepared` (data/prepared.parquet), `encoder` (models/encoder: its item_embeddings.parquet).
Outputs: `user_model` (model, models/user_model: the folder plmrec.usermodel.store describes, with
runs.csv and results.md), `metrics` (metrics/user_model.json). On a cluster with
user_model.resources.distributed.workers > 1 it runs as a Kubeflow Trainer job.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.distributed import is_main_process, rank
from plmrec.errors import StageError
from plmrec.stages.common import ENCODER_COLUMNS, kfp_setup, log_figures, read_checked, run_distributed, say, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.evaluate_retrieval import ENCODER
from plmrec.stages.prepare import PREPARED

STAGE = "train-user-model"
USER_MODEL = Port("user_model", "model", "the chosen user model with every customer's vectors", "models/user_model")
SPEC = Stage(
    STAGE,
    __name__,
    inputs=(PREPARED, ENCODER.reading("the encoder chosen by evaluate-retrieval (its item_embeddings.parquet)")),
    outputs=(
        USER_MODEL,
        Port("metrics", "metrics", "every variant's figures, the choice, the probe (JSON)", "metrics/user_model.json"),
    ),
    params=("seed", "split", "user_model"),
    code=("src/plmrec/usermodel",),
    distributed="user_model",
)


def _train_variants(data, params: Params) -> tuple[list[dict], pd.DataFrame]:
    """Every variant on every seed: the runs (models and figures) and one table row each; the valid
    figures per epoch go to MLflow as they come."""
    from plmrec.usermodel.variants import train_variant

    um, runs, rows = params.user_model, [], []
    for variant in um.variants:
        for seed in um.seeds:
            run = train_variant(
                data,
                params,
                variant,
                seed=seed,
                progress=False,
                on_epoch=lambda row, label=variant.label, seed=seed: say(
                    STAGE,
                    f"{label} seed {seed} epoch {row['epoch']}/{um.epochs}: loss {row['loss']}, "
                    f"valid {um.select} {row[um.select]:.4f}",
                ),
            )
            for row in run["fit"].by_epoch:
                for key, value in row.items():
                    if key != "epoch":
                        name = f"{tracking.safe_name(run['variant'])}/s{seed}/valid_{key.replace('@', '_at_')}"
                        tracking.log_metric(name, value, step=row["epoch"])
            rows.append(
                {
                    "variant": run["variant"],
                    "seed": seed,
                    "epoch": run["fit"].chosen_epoch,
                    "sequences_per_s": round(run["fit"].sequences_per_s, 1),
                    **{f"valid_{k}": v for k, v in run["valid"].items()},
                    **{f"test_{k}": v for k, v in run["test"].items()},
                }
            )
            runs.append(run)
            say(
                STAGE,
                f"{run['variant']} seed {seed}: epoch {run['fit'].chosen_epoch}, valid {um.select} "
                f"{run['valid'][um.select]:.4f}, test {um.select} {run['test'][um.select]:.4f}",
            )
    return runs, pd.DataFrame(rows)


def _report(out: Path, table: pd.DataFrame, summary: pd.DataFrame, *, verdicts: list[str], probe: pd.DataFrame):
    """runs.csv and results.md in the model folder, the same tables on the MLflow run."""
    from plmrec.reports import markdown_table

    table.to_csv(out / "runs.csv", index=False)
    flat = summary.copy()
    flat.columns = [f"{m}_{stat}" for stat, m in flat.columns]
    (out / "results.md").write_text(
        markdown_table(flat.reset_index().round(4))
        + "\n\n"
        + "\n".join(f"- {v}" for v in verdicts)
        + "\n\n## Consumer-profile probe (chosen variant vs mean of item text vectors)\n\n"
        + (markdown_table(probe.round(4)) if len(probe) else "no task had 10 customers in each class\n")
    )
    if len(probe):
        tracking.log_table(probe, "user_model/profile_probe.json")
    tracking.log_table(table, "user_model/runs.json")
    tracking.log_table(flat.reset_index(), "user_model/summary.json")
    tracking.log_artifact(out / "results.md", "user_model")
    for variant in summary.index:
        tracking.log_numeric(
            {
                f"{tracking.safe_name(variant)}/{m.replace('@', '_at_')}_mean": summary.loc[variant, ("mean", m)]
                for m in summary["mean"].columns
            }
        )


def _say_probe(probe: pd.DataFrame) -> None:
    from plmrec.usermodel.probe import TASK_FIGURE

    means = probe.groupby(["task", "vectors"]).mean(numeric_only=True)
    found = [(task, TASK_FIGURE[task]) for task in probe["task"].unique()]
    say(
        STAGE,
        "profile probe: "
        + "; ".join(
            f"{task} {figure} user model {means.loc[(task, 'user_model'), figure]:.3f} "
            f"vs mean of items {means.loc[(task, 'mean_of_items'), figure]:.3f}"
            for task, figure in found
        ),
    )


def train_user_model(
    params: Params,
    *,
    prepared: str | Path,
    encoder: str | Path,
    user_model: str | Path,
    metrics: str | Path,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Train every variant on every seed, choose on valid, save the chosen one to `user_model`."""
    from plmrec.data.prepare import _cutoffs
    from plmrec.usermodel import store
    from plmrec.usermodel.probe import PROBE_COLUMNS, probe_runs
    from plmrec.usermodel.variants import chosen_variant, summarise_variants, window_data

    um, out = params.user_model, Path(user_model)
    tracked = {"run_key": run_key, "tracking_uri": tracking_uri}
    with tracking.stage_run(params, STAGE, **tracked):
        out.mkdir(parents=True, exist_ok=True)
        if not um.enabled:
            write_json(metrics, {"user_model": {"enabled": False}})
            say(STAGE, "disabled (user_model.enabled: false)")
            return {"user_model": {"enabled": False}}
        table, _ = read_checked(prepared, "prepared", columns=[*ENCODER_COLUMNS, *PROBE_COLUMNS])
        items_path = Path(encoder) / "item_embeddings.parquet"
        if not items_path.is_file():
            raise StageError(
                f"{STAGE}: {items_path} is missing; pass the folder evaluate-retrieval wrote with --encoder "
                f"(its item_embeddings.parquet holds the item text vectors)"
            )
        data = window_data(table, pd.read_parquet(items_path), params)
        say(STAGE, ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in data.facts().items()))
        runs, runs_table = _train_variants(data, params)
        summary, verdicts = summarise_variants(runs_table)
        chosen = chosen_variant(summary, um.select)
        if not is_main_process():  # under torchrun (a TrainJob) rank 0 writes the model and the reports
            return {"user_model": {"chosen": chosen, "rank": rank()}}
        chosen_runs = [r for r in runs if r["variant"] == chosen]
        saved = store.save_chosen(chosen_runs, data, out, select=um.select)
        probe = probe_runs(chosen_runs, data, table, cutoff=_cutoffs(params.split)[1])
        _report(out, runs_table, summary, verdicts=verdicts, probe=probe)
        tracking.set_tags({"plmrec.user_model.chosen": chosen})
        tracking.set_verdicts(verdicts, title="User model verdicts (test, mean ± std over seeds)")
        test_figure = summary.loc[chosen, ("mean", f"test_{um.select}")]
        tracking.log_parent_metrics(
            params, {f"test_{um.select.replace('@', '_at_')}_user_model": test_figure}, **tracked
        )
        figures = {
            "user_model": {
                "chosen": chosen,
                "select": um.select,
                "data": data.facts(),
                "saved": saved,
                "variants": {
                    v: {m: round(float(summary.loc[v, ("mean", m)]), 4) for m in summary["mean"].columns}
                    for v in summary.index
                },
                "verdicts": verdicts,
                "profile_probe": probe.to_dict(orient="records"),
            }
        }
        write_json(metrics, figures)
        for line in verdicts:
            say(STAGE, line)
        if len(probe):
            _say_probe(probe)
        say(
            STAGE,
            f"chosen on valid: {chosen} ({um.select} {summary.loc[chosen, ('mean', f'valid_{um.select}')]:.4f}); "
            f"{saved['customers']:,} customers' vectors in {saved['user_vectors_seconds']}s -> {out}",
        )
        return figures


command = SPEC.command(
    train_user_model, help="GUIM user-model variants over the chosen encoder's item text; the best on valid is saved."
)


def kfp(config: dict, tracking_uri: str, run_key: str, *, prepared, encoder, user_model, metrics) -> None:
    """The KFP component's body: in its own pod, or as a Trainer job when distributed."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    if params.user_model.resources.distributed.workers > 1:
        inputs = {"prepared": prepared.path, "encoder": encoder.path}
        figures = run_distributed(params, SPEC.name, tracked, inputs=inputs, model=user_model.path)
        write_json(metrics.path, figures)
    else:
        paths = SPEC.kfp_paths({"prepared": prepared, "encoder": encoder, "user_model": user_model, "metrics": metrics})
        figures = train_user_model(params, **paths, **tracked)
    out = figures["user_model"]
    if out.get("chosen"):
        user_model.metadata.update(
            {"framework": "plmrec-user-model", "variant": out["chosen"], "select": out["select"]}
        )
    log_figures(metrics, {"user_model": out.get("variants", {})})
