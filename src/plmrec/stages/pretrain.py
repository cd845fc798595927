"""pretrain: DAPT/TAPT of the encoder with MLM and TSDAE, phases in the configured order, each scored
on the valid window (the per-phase proxy); an interrupted run resumes.

Input: `prepared` (data/prepared.parquet). Outputs: `pretrained` (model, models/pretrained: hf/,
sentence-transformer/, corpora/, loss_curve.png), `metrics` (metrics/pretrain.json: per phase),
`plots` (reports/plots/pretrain_loss.png), `report` (KFP: the loss page). On a cluster with
pretrain.resources.distributed.workers > 1 it runs as a Kubeflow Trainer job.
"""

from __future__ import annotations

from pathlib import Path

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

PRETRAINED = Port(
    "pretrained", "model", "the pretrained encoder folder (hf/, sentence-transformer/)", "models/pretrained"
)
SPEC = Stage(
    "pretrain",
    __name__,
    inputs=(PREPARED,),
    outputs=(
        PRETRAINED,
        Port("metrics", "metrics", "per-phase figures (JSON)", "metrics/pretrain.json", required=False),
        Port(
            "plots",
            "plots",
            "where the loss curve goes (a picture, and the table DVC draws)",
            "reports/plots",
            required=False,
            files=("pretrain_loss.png",),
            curves=(("pretrain_loss.csv", "step", "loss"),),
        ),
        Port("report", "html", "the loss curves"),
    ),
    params=("seed", "split", "pretrain", "retrieval.exclude_history", "retrieval.recency_half_life"),
    code=("src/plmrec/pretrain", "src/plmrec/selection.py"),
    resumes="the finished phases and the newest checkpoint under --pretrained",
    after=("reports/validation/prepared/summary.json",),
    distributed="pretrain",
    comment="the per-phase valid proxy reads the valid window (split, retrieval settings)",
)


def build_corpora(params: Params, prepared: pd.DataFrame) -> dict[str, list[str]]:
    """The TAPT and DAPT corpora that the configured phases use."""
    from plmrec.pretrain.corpus import dapt_corpus, tapt_corpus

    pretraining, needed, corpora = params.pretrain, {ph.corpus for ph in params.pretrain.phases}, {}
    if "tapt" in needed:
        corpora["tapt"] = tapt_corpus(
            prepared, pretraining.tapt.splits, pretraining.tapt.max_chars, min_chars=pretraining.tapt.min_chars
        )
    if "dapt" in needed:
        dapt = pretraining.dapt
        corpora["dapt"] = dapt_corpus(
            dapt.source,
            dapt.path,
            dapt.max_chars,
            min_chars=dapt.min_chars,
            max_sentences=dapt.max_sentences,
            synthetic_sentences=dapt.synthetic_sentences,
            seed=params.seed,
        )
    return corpora


def phase_figures(phase: dict, extra: str) -> dict:
    """One phase's headline figures, with the `extra` one the stage reports (tokens/s, pairs)."""
    return {
        "steps": phase["steps"],
        "seconds": round(phase["seconds"], 2),
        extra: phase[extra],
        "samples_per_s": phase["samples_per_s"],
        "final_loss": phase["losses"][-1][1] if phase["losses"] else None,
    }


def pretrain_summary(report: dict) -> dict:
    """Per-phase headline figures: DVC metrics, the KFP Metrics artifact and the MLflow stage run; with
    the valid proxy, `valid_ndcg_at_10` per phase and for the base model."""
    phases = {}
    if report.get("valid_proxy_base"):
        phases["base"] = {"valid_ndcg_at_10": report["valid_proxy_base"]["ndcg@10"]}
    for ph in report["phases"]:
        phases[ph["label"]] = phase_figures(ph, "tokens_per_s")
        if ph.get("valid_proxy"):
            phases[ph["label"]]["valid_ndcg_at_10"] = ph["valid_proxy"]["ndcg@10"]
    return {"pretrain": phases}


def _probe(params: Params, prepared: pd.DataFrame):
    """The valid-window probe for the per-phase proxy, or None (switched off, or no valid customers)."""
    from plmrec.selection import ValidProbe

    if not params.pretrain.valid_proxy:
        return None
    try:
        return ValidProbe.from_prepared(prepared, params)
    except StageError as exc:
        say("pretrain", f"no valid proxy: {exc}")
        return None


def pretrain(
    params: Params,
    *,
    prepared: str | Path,
    pretrained: str | Path,
    metrics: str | Path | None = None,
    plots: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """DAPT/TAPT with MLM and TSDAE in the configured order; the encoder goes to `pretrained` and MLflow."""
    from plmrec.distributed import is_main_process
    from plmrec.encoders import load_encoder
    from plmrec.pretrain.corpus import write_corpus
    from plmrec.pretrain.models import check_base_model, quiet_transformers
    from plmrec.pretrain.schedule import export, run_schedule

    out, pretraining = Path(pretrained), params.pretrain
    with tracking.stage_run(params, "pretrain", run_key=run_key, tracking_uri=tracking_uri):
        quiet_transformers()
        if not pretraining.enabled:
            export(
                check_base_model(pretraining.base_model), out, pretraining.pooling, max_length=pretraining.max_length
            )
            say("pretrain", f"disabled: exported {pretraining.base_model} unchanged -> {out}")
            report = {"phases": []}
            if metrics is not None:
                write_json(metrics, pretrain_summary(report))
            return report
        check_base_model(pretraining.base_model)  # fail on a bad model before reading any data
        table, _ = read_checked(prepared, "prepared", columns=ENCODER_COLUMNS)
        corpora = build_corpora(params, table)
        probe = _probe(params, table)
        for name, sentences in corpora.items():
            if is_main_process():
                write_corpus(sentences, out / "corpora" / f"{name}.txt")
        tracking.log_numeric({f"{k}_sentences": len(v) for k, v in corpora.items()}, "corpus_")
        say("pretrain", "corpora: " + ", ".join(f"{k.upper()} {len(v):,} sentences" for k, v in corpora.items()))
        report = run_schedule(
            pretraining,
            corpora,
            out,
            seed=params.seed,
            on_log=tracking.loss_logger(),
            probe=probe,
            on_proxy=lambda index, figures: tracking.log_metric(
                "valid_proxy_ndcg_at_10", figures["ndcg@10"], step=index
            ),
        )
        for label, figures in pretrain_summary(report)["pretrain"].items():
            tracking.log_numeric(figures, f"{label}/")
        tracking.log_numeric({"pretrain_seconds": report["seconds"]})
        tracking.set_tags(
            {
                "pretrain.device": report["phases"][-1]["device"],
                "pretrain.precision": report["phases"][-1]["precision"],
                "pretrain.base_model": pretraining.base_model,
                "pretrain.schedule": " -> ".join(ph.name for ph in pretraining.phases),
            }
        )
        tracking.log_json(report, "pretrain/pretrain_report.json")
        tracking.log_json(pretraining.model_dump(mode="json"), "pretrain/config.json")
        if not is_main_process():
            return report
        if metrics is not None:
            write_json(metrics, pretrain_summary(report))
        copy_pictures(out, plots, {"loss_curve.png": "pretrain_loss.png"})
        write_loss_curve(report, plots, "pretrain_loss.csv")
        tracking.log_artifact(out / "loss_curve.png", "pretrain")
        tracking.log_sentence_encoder(
            load_encoder(out / "sentence-transformer", pretraining.pooling, pretraining.max_length),
            "pretrained_encoder",
        )
        say("pretrain", f"{len(report['phases'])} phases in {report['seconds']}s -> {out}")
        return report


command = SPEC.command(pretrain, help="DAPT/TAPT pretraining (MLM, TSDAE) of the encoder; resumes an interrupted run.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, prepared, pretrained, metrics, report) -> None:
    """The KFP component's body: in its own pod, or as a Trainer job when distributed."""
    from plmrec.reports import image_html

    params, tracked = kfp_setup(config, tracking_uri, run_key)
    if params.pretrain.resources.distributed.workers > 1:
        result = run_distributed(params, SPEC.name, tracked, inputs={"prepared": prepared.path}, model=pretrained.path)
        write_json(metrics.path, pretrain_summary(result))
    else:
        paths = SPEC.kfp_paths({"prepared": prepared, "pretrained": pretrained, "metrics": metrics})
        result = pretrain(params, **paths, **tracked)
    pretrained.metadata.update(
        {
            "framework": "sentence-transformers",
            "base_model": params.pretrain.base_model,
            "schedule": [p["label"] for p in result["phases"]],
            "hf_dir": "hf",
            "sentence_transformer_dir": "sentence-transformer",
        }
    )
    log_figures(metrics, metrics.path)
    png = Path(pretrained.path) / "loss_curve.png"
    extra = "" if png.exists() else "<p>pretraining disabled: base model exported unchanged</p>"
    Path(report.path).write_text(image_html("Pretraining loss per phase", [png], extra))
