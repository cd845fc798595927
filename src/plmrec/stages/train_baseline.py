"""train-baseline: XGBoost on the non-text features for the quantity label, early stopping on valid.

Input: `prepared` (data/prepared.parquet, after validate-prepared passed). Outputs: `baseline` (model,
models/baseline), `metrics` (metrics/train_baseline.json: the valid figures).
"""

from __future__ import annotations

from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.stages.common import kfp_setup, log_figures, read_checked, say, skip, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.prepare import PREPARED

BASELINE = Port("baseline", "model", "the baseline XGBoost model folder", "models/baseline")
SPEC = Stage(
    "train-baseline",
    __name__,
    inputs=(PREPARED,),
    outputs=(
        BASELINE,
        Port("metrics", "metrics", "valid figures (JSON)", "metrics/train_baseline.json", required=False),
    ),
    params=("seed", "baseline"),
    code=("src/plmrec/baseline.py", "src/plmrec/features.py"),
    after=("reports/validation/prepared/summary.json",),
)


def train_baseline(
    params: Params,
    *,
    prepared: str | Path,
    baseline: str | Path,
    metrics: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Fit the baseline on the training split (early stopping on valid) and save it to `baseline`."""
    from plmrec.baseline import save_baseline
    from plmrec.baseline import train_baseline as fit

    with tracking.stage_run(params, "train-baseline", run_key=run_key, tracking_uri=tracking_uri):
        table, meta = read_checked(prepared, "prepared")
        if "quantity_labels" in meta.get("skipped", {}):
            return skip("train-baseline", meta["skipped"]["quantity_labels"], folder=baseline)
        model, encoder, info = fit(table, params)
        save_baseline(model, encoder, info, out_dir=baseline)
        tracking.log_numeric(info["valid"], "valid_")
        tracking.log_numeric(
            {
                "train_seconds": info["train_seconds"],
                "best_iteration": info["best_iteration"],
                "valid_majority_accuracy": info["valid_majority_accuracy"],
            }
        )
        tracking.log_xgboost(model, "baseline_xgboost")  # the model, loadable by MLflow's xgboost flavour
        tracking.log_dir(baseline, "baseline_model")  # the folder evaluate-baseline reads (model, encoder, info)
        if metrics is not None:
            write_json(metrics, {"baseline_xgboost": {"valid": info["valid"]}})
        say(
            "train-baseline",
            f"valid accuracy {info['valid']['accuracy']:.3f} "
            f"(majority class {info['valid_majority_accuracy']:.3f}) in {info['train_seconds']}s",
        )
        return info


command = SPEC.command(train_baseline, help="Train the non-text XGBoost baseline.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, prepared, baseline, metrics) -> None:
    """The KFP component's body."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    info = train_baseline(
        params, **SPEC.kfp_paths({"prepared": prepared, "baseline": baseline, "metrics": metrics}), **tracked
    )
    baseline.metadata.update({"framework": "xgboost", "features": info.get("features", []), **info})
    log_figures(metrics, metrics.path)
