"""finetune: contrastive fine-tuning of the encoder (phases in order, from the start finetune.start_from
names or valid chooses), its merge with the start (finetune.merge_alphas, chosen on valid), then the
item and user embeddings, the index description and the embedding picture.

Inputs: `prepared` (data/prepared.parquet), `pretrained` (models/pretrained; not needed when
finetune.start_from is base). Outputs: `finetuned` (model, models/finetuned: sentence-transformer/,
item_embeddings.parquet, user_embeddings.parquet, index.json, valid_scores.json, finetune_report.json),
`metrics` (metrics/finetune.json), `plots` (reports/plots: finetune_loss.png, embedding_pca.png),
`report` (KFP: the loss and embedding page). On a cluster with finetune.resources.distributed.workers > 1
it runs as a Kubeflow Trainer job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.errors import StageError
from plmrec.stages.common import (
    ENCODER_COLUMNS,
    copy_pictures,
    kfp_setup,
    log_figures,
    read_checked,
    run_distributed,
    say,
    write_json,
    write_loss_curve,
)
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.prepare import PREPARED
from plmrec.stages.pretrain import PRETRAINED, phase_figures

if TYPE_CHECKING:
    from plmrec.selection import EncoderSelection

FINETUNED = Port(
    "finetuned", "model", "the fine-tuned encoder folder (sentence-transformer/, embeddings)", "models/finetuned"
)
SPEC = Stage(
    "finetune",
    __name__,
    inputs=(
        PREPARED,
        PRETRAINED.reading("the pretrain stage's folder (not needed when finetune.start_from is base)", required=False),
    ),
    outputs=(
        FINETUNED,
        Port(
            "metrics",
            "metrics",
            "per-phase figures, the merge, the embeddings (JSON)",
            "metrics/finetune.json",
            required=False,
        ),
        Port(
            "plots",
            "plots",
            "where the loss curve and the embedding picture go",
            "reports/plots",
            required=False,
            files=("finetune_loss.png", "embedding_pca.png"),
            curves=(("finetune_loss.csv", "step", "loss"),),
        ),
        Port("report", "html", "the loss curves and the embedding picture"),
    ),
    params=(
        "seed",
        "split",
        "finetune",
        "pretrain.base_model",
        "pretrain.enabled",
        "retrieval.exclude_history",
        "retrieval.recency_half_life",
        "retrieval.encode_batch_size",
        "retrieval.index",
        "retrieval.clusters",
    ),
    code=("src/plmrec/finetune", "src/plmrec/selection.py", "src/plmrec/encoders.py", "src/plmrec/plots.py"),
    distributed="finetune",
    comment="start_from auto and merge_alphas choose on the valid window (pretrain.base_model, split, retrieval)",
    resumes="the start choice's valid scores, the finished phases and the newest checkpoint under --finetuned",
)


def finetune_summary(report: dict) -> dict[str, dict]:
    return {ph["label"]: phase_figures(ph, "pairs") for ph in report["phases"]}


def merge_summary(report: dict) -> dict[str, float]:
    """finetune.merge_alphas' outcome as metrics: the kept alpha and its valid figure (empty: no merging)."""
    merge = report.get("merge")
    if not merge:
        return {}
    metric = merge["metric"]
    return {
        "merge_alpha": merge["alpha"],
        f"merge_valid_{metric.replace('@', '_at_')}": merge["valid"][merge["chosen"]][metric],
    }


def finetune_start_model(
    params: Params,
    pretrained_dir: str | Path | None,
    prepared: pd.DataFrame | None = None,
    *,
    scores_file: str | Path | None = None,
) -> tuple[str, EncoderSelection | None]:
    """The encoder fine-tuning starts from: the pretrain stage's output, the untouched base model, or
    (start_from: auto) whichever of the two scores higher on the valid window; and that selection.
    The valid scores are also written to `scores_file` (selection.SCORES_FILE) for later stages."""
    from plmrec.pretrain.models import check_base_model
    from plmrec.selection import ValidProbe, select_encoder
    from plmrec.training.device import resolve_device

    tuning = params.finetune
    base = check_base_model(params.pretrain.base_model)
    if tuning.start_from == "base" or (tuning.start_from == "auto" and not params.pretrain.enabled):
        return base, None
    hf = Path(pretrained_dir or "") / "hf"
    if not (hf / "config.json").is_file():
        raise StageError(
            f"finetune.start_from is '{tuning.start_from}' but {hf} holds no encoder "
            f"(run the pretrain stage first, or set finetune.start_from: base)"
        )
    if tuning.start_from == "pretrained":
        return str(hf), None
    if prepared is None:
        raise StageError("finetune.start_from is 'auto': the prepared table is needed to score on the valid window")
    probe = ValidProbe.from_prepared(prepared, params)
    if scores_file is not None and (reused := probe.load_scores(scores_file)):
        say("finetune", f"start_from auto: {reused} encoder(s) already scored on valid ({scores_file}): reused")

    def progress(message: str) -> None:
        say("finetune", f"start_from auto: {message}")
        if scores_file is not None:  # each candidate's score kept as soon as it is known: a kill loses none
            probe.save_scores(scores_file)

    selection = select_encoder(
        {"base": base, "pretrained": str(hf)},
        probe,
        mode="auto",
        pooling=tuning.pooling,
        max_length=tuning.max_length,
        device=str(resolve_device(tuning.device)),
        progress=progress,
    )
    return selection.path, selection


def _log_merge(merge: dict, *, params: Params, tracked: dict) -> None:
    """finetune.merge_alphas' choice: the valid table, the kept alpha (metric, and tag on the stage and
    the parent run) and one line."""
    from plmrec.selection import EncoderSelection

    selection = EncoderSelection("auto", merge["scores"])
    tracking.log_table(selection.table().rename(columns={"encoder": "merge"}), "finetune/merge_selection.json")
    tracking.log_numeric(merge_summary({"merge": merge}))
    tags = {tracking.MERGE_TAG: f"{merge['alpha']:g}"}
    tracking.set_tags(tags)
    tracking.set_parent_tags(params, tags, **tracked)
    kept = "kept as trained" if merge["alpha"] == 1 else f"merged with the start at alpha={merge['alpha']:g}"
    say("finetune", f"fine-tuned weights {kept}: {selection.line()}")


def finetune(
    params: Params,
    *,
    prepared: str | Path,
    finetuned: str | Path,
    pretrained: str | Path | None = None,
    metrics: str | Path | None = None,
    plots: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Contrastive fine-tuning into `finetuned`, then item/user embeddings, the index description and the
    embedding picture."""
    from plmrec.distributed import is_main_process
    from plmrec.encoders import load_encoder, sentence_model
    from plmrec.finetune.schedule import embed_catalogue
    from plmrec.finetune.schedule import finetune as run_finetune
    from plmrec.plots import plot_embedding_space
    from plmrec.pretrain.models import quiet_transformers
    from plmrec.selection import SCORES_FILE
    from plmrec.training.device import resolve_device

    tuning, out = params.finetune, Path(finetuned)
    with tracking.stage_run(params, "finetune", run_key=run_key, tracking_uri=tracking_uri):
        quiet_transformers()
        table, _ = read_checked(prepared, "prepared", columns=ENCODER_COLUMNS)
        out.mkdir(parents=True, exist_ok=True)
        scores_file = out / SCORES_FILE if is_main_process() else None  # one writer under torchrun
        start, start_selection = finetune_start_model(params, pretrained, table, scores_file=scores_file)
        if start_selection is not None:
            say("finetune", f"start_from auto: {start_selection.line()}")
            tracking.log_table(start_selection.table(), "finetune/start_selection.json")
            tracking.set_tags({"finetune.start_from_chosen": start_selection.chosen})
        report: dict = {"start_model": start, "phases": []}
        if tuning.enabled:
            report = run_finetune(params, table, start, out_dir=out, on_log=tracking.loss_logger())
            if not is_main_process():  # under torchrun, rank 0 embeds, plots and logs
                return report
            for label, figures in finetune_summary(report).items():
                tracking.log_numeric(figures, f"{label}/")
            tracking.log_numeric({f"pairs_{k}": v for k, v in report["pairs"].items()})
            tracking.log_artifact(out / "loss_curve.png", "finetune")
            say("finetune", f"{len(report['phases'])} phases in {report['seconds']}s from {start}")
            if "merge" in report:
                _log_merge(report["merge"], params=params, tracked={"run_key": run_key, "tracking_uri": tracking_uri})
        else:
            sentence_model(start, tuning.pooling, tuning.max_length).save(str(out / "sentence-transformer"))
            say("finetune", f"disabled: {start} exported unchanged")
        model = load_encoder(
            out / "sentence-transformer", tuning.pooling, tuning.max_length, device=str(resolve_device(tuning.device))
        )
        embedded = embed_catalogue(model, table, params, out_dir=out)
        picture = plot_embedding_space(
            embedded.pop("vectors"),
            params.retrieval.clusters,
            out / "embedding_pca.png",
            title=f"fine-tuned item embeddings: PCA, KMeans k={params.retrieval.clusters}",
            seed=params.seed,
        )
        report["embeddings"] = {**embedded, **picture}
        if start_selection is not None:
            report["start_selection"] = start_selection.to_dict()
        (out / "finetune_report.json").write_text(json.dumps(report, indent=2))
        tracking.log_numeric(embedded, "embed_")
        tracking.log_numeric(picture, "pca_")
        tracking.set_tags(
            {
                "finetune.start_model": start,
                "finetune.loss": tuning.loss,
                "finetune.pooling": tuning.pooling,
                "finetune.schedule": " -> ".join(p.task for p in tuning.phases) if tuning.enabled else "disabled",
            }
        )
        tracking.log_json(report, "finetune/finetune_report.json")
        tracking.log_json(tuning.model_dump(mode="json"), "finetune/config.json")
        tracking.log_artifact(out / "embedding_pca.png", "finetune")
        for name in ("item_embeddings.parquet", "user_embeddings.parquet", "index.json"):
            tracking.log_artifact(out / name, "embeddings")
        tracking.log_sentence_encoder(model.to("cpu"), "finetuned_encoder")
        if metrics is not None:
            write_json(metrics, finetune_figures(report))
        copy_pictures(out, plots, {"loss_curve.png": "finetune_loss.png", "embedding_pca.png": "embedding_pca.png"})
        write_loss_curve(report, plots, "finetune_loss.csv")
        say("finetune", f"{embedded['items']:,} item and {embedded['users']:,} user embeddings -> {out}")
        return report


def finetune_figures(report: dict) -> dict:
    """The stage's metrics: per-phase figures, the merge's choice and the embeddings' counts."""
    return {"finetune": {**finetune_summary(report), **merge_summary(report), "embeddings": report["embeddings"]}}


command = SPEC.command(finetune, help="Contrastive fine-tuning, then item/user embeddings and the item index.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, prepared, pretrained, finetuned, metrics, report) -> None:
    """The KFP component's body: in its own pod, or as a Trainer job when distributed."""
    from plmrec.reports import image_html

    params, tracked = kfp_setup(config, tracking_uri, run_key)
    if params.finetune.resources.distributed.workers > 1:
        inputs = {"prepared": prepared.path, "pretrained": pretrained.path}
        result = run_distributed(params, SPEC.name, tracked, inputs=inputs, model=finetuned.path)
        write_json(metrics.path, finetune_figures(result))
    else:
        artifacts = {"prepared": prepared, "pretrained": pretrained, "finetuned": finetuned, "metrics": metrics}
        result = finetune(params, **SPEC.kfp_paths(artifacts), **tracked)
    finetuned.metadata.update(
        {
            "framework": "sentence-transformers",
            "start_model": result["start_model"],
            "schedule": [p["label"] for p in result["phases"]],
            "sentence_transformer_dir": "sentence-transformer",
            "item_embeddings": "item_embeddings.parquet",
            "user_embeddings": "user_embeddings.parquet",
            "index": params.retrieval.index,
        }
    )
    log_figures(metrics, metrics.path)
    out = Path(finetuned.path)
    pictures = [out / "loss_curve.png", out / "embedding_pca.png"]
    Path(report.path).write_text(image_html("Fine-tuning loss and item embedding space", pictures))
