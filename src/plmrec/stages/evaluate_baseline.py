"""evaluate-baseline: the baseline scored once on the test split.

Inputs: `prepared` (data/prepared.parquet), `baseline` (models/baseline). Outputs: `metrics`
(metrics/baseline.json), `plots` (reports/plots/confusion_matrix.png), `confusion` (KFP: the matrix).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from plmrec import tracking
from plmrec.config import Params
from plmrec.stages.common import kfp_setup, log_figures, read_checked, say, skip, skipped, write_json
from plmrec.stages.declaration import Port, Stage
from plmrec.stages.prepare import PREPARED
from plmrec.stages.train_baseline import BASELINE

SPEC = Stage(
    "evaluate-baseline",
    __name__,
    inputs=(PREPARED, BASELINE),
    outputs=(
        Port("metrics", "metrics", "test figures (JSON)", "metrics/baseline.json"),
        Port(
            "plots",
            "plots",
            "where the confusion matrix picture goes",
            "reports/plots",
            files=("confusion_matrix.png",),
        ),
        Port("confusion", "confusion", "the test confusion matrix"),
    ),
    code=("src/plmrec/baseline.py", "src/plmrec/metrics.py", "src/plmrec/plots.py"),
)


def evaluate_baseline(
    params: Params,
    *,
    prepared: str | Path,
    baseline: str | Path,
    metrics: str | Path,
    plots: str | Path | None = None,
    run_key: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """Test accuracy, macro figures and the confusion matrix of the saved baseline."""
    from plmrec.baseline import evaluate_baseline as score
    from plmrec.baseline import load_baseline
    from plmrec.plots import plot_confusion

    with tracking.stage_run(params, "evaluate-baseline", run_key=run_key, tracking_uri=tracking_uri):
        why = skipped(baseline)
        if why is not None:
            write_json(metrics, {"baseline_xgboost": {"skipped": why}})
            if plots is not None:
                Path(plots).mkdir(parents=True, exist_ok=True)
                plot_confusion([[0]], Path(plots) / "confusion_matrix.png", f"skipped: {why}"[:80])
            return skip("evaluate-baseline", why)
        table, _ = read_checked(prepared, "prepared")
        model, encoder, _ = load_baseline(baseline)
        figures = score(model, encoder, table, params=params)
        flat = {k: v for k, v in figures.items() if not isinstance(v, list)}
        write_json(metrics, {"baseline_xgboost": {"test": flat}})
        pictures = Path(plots) if plots is not None else Path(tempfile.mkdtemp(prefix="plmrec-plots-"))
        pictures.mkdir(parents=True, exist_ok=True)
        png = plot_confusion(
            figures["confusion_matrix"],
            pictures / "confusion_matrix.png",
            f"baseline XGBoost, test (acc {figures['accuracy']:.3f})",
        )
        tracking.log_numeric(flat, "test_")
        tracking.log_json(figures, "evaluation/test_metrics.json")
        tracking.log_artifact(png, "evaluation")
        tracking.log_parent_metrics(
            params,
            {f"test_{k}": figures[k] for k in ("accuracy", "f1_macro", "majority_class_accuracy")},
            run_key=run_key,
            tracking_uri=tracking_uri,
        )
        say(
            "evaluate-baseline",
            f"test accuracy {figures['accuracy']:.3f}, macro F1 {figures['f1_macro']:.3f} "
            f"(majority class {figures['majority_class_accuracy']:.3f}) on {figures['n']:,} rows",
        )
        return figures


command = SPEC.command(evaluate_baseline, help="Evaluate the baseline on the test split.")


def kfp(config: dict, tracking_uri: str, run_key: str, *, prepared, baseline, metrics, confusion) -> None:
    """The KFP component's body: the figures as Metrics, the matrix as ClassificationMetrics."""
    params, tracked = kfp_setup(config, tracking_uri, run_key)
    paths = SPEC.kfp_paths({"prepared": prepared, "baseline": baseline, "metrics": metrics})
    paths["plots"] = str(Path(metrics.path).parent / "plots")  # the picture beside the step's outputs
    figures = evaluate_baseline(params, **paths, **tracked)
    log_figures(metrics, metrics.path)
    if "skipped" in figures:
        return
    labels = [str(i) for i in range(params.clean.n_quantity_labels)]
    confusion.log_confusion_matrix(labels, figures["confusion_matrix"])
