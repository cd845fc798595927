"""XGBoost on the 5-level quantity label with and without PLM features: the study's feature ablation.

Rows of the sweep are cumulative: vanilla (recommenders.classifier.base_groups), then each step of
`ablation` added to the previous row (e.g. +rf_selection, +text_cluster, +text_pca10, ...).
Fitted on train, early-stopped on valid, scored on test once per (row, seed).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import xgboost as xgb

from plmrec.config import ClassifierParams, XGBoostParams
from plmrec.features import TEXT_GROUPS, EmbeddingFeatures, TabularEncoder
from plmrec.metrics import classification_metrics


def ablation_rows(cp: ClassifierParams) -> list[dict]:
    rows = [{"variant": "vanilla", "groups": list(cp.base_groups), "text": [], "rf": False}]
    for step in cp.ablation:
        prev = rows[-1]
        row = {"variant": f"+{step}", "groups": list(prev["groups"]), "text": list(prev["text"]), "rf": prev["rf"]}
        if step == "rf_selection":
            row["rf"] = True
        elif step in TEXT_GROUPS:
            row["text"].append(step)
        elif step not in row["groups"]:
            row["groups"].append(step)
        rows.append(row)
    return rows


def plm_counterpart(cp: ClassifierParams) -> str:
    """The row to compare text-feature rows with: the last row before the first text step."""
    rows = ablation_rows(cp)
    first_text = next((i for i, r in enumerate(rows) if r["text"]), None)
    return rows[first_text - 1]["variant"] if first_text else "vanilla"


def design(frame: pd.DataFrame, enc: TabularEncoder, emb: EmbeddingFeatures | None, *, text: list[str]) -> pd.DataFrame:
    x = enc.transform(frame)
    if text:
        if emb is None:
            raise ValueError(f"text feature groups {text} need item embeddings")
        x = pd.concat([x, emb.transform(frame["StockCode"], text)], axis=1)
    return x


def rf_select(x: pd.DataFrame, y: pd.Series, threshold: float, *, trees: int, sample_rows: int, seed: int) -> list[str]:
    """Columns whose random-forest importance reaches `threshold` (at least the best one)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample_rows, len(x)), replace=False)
    rf = RandomForestClassifier(n_estimators=trees, max_depth=12, n_jobs=-1, random_state=seed)
    rf.fit(x.iloc[rows].fillna(-1), y.iloc[rows])
    importance = pd.Series(rf.feature_importances_, index=x.columns)
    keep = importance[importance >= threshold].index.tolist()
    return keep or [importance.idxmax()]


def classifier(xp: XGBoostParams, n_labels: int, seed: int) -> xgb.XGBClassifier:
    return xgb.XGBClassifier(
        **xp.booster_settings(),
        objective="multi:softprob",
        num_class=n_labels,
        eval_metric="mlogloss",
        random_state=seed,
    )


def run_ablation(
    prepared: pd.DataFrame,
    items: pd.DataFrame | None,
    cp: ClassifierParams,
    *,
    n_labels: int,
    seeds: list[int],
    clusters: int,
    progress=None,
) -> tuple[pd.DataFrame, dict]:
    """One row per (variant, seed) with valid and test metrics; returns it and the details of the
    best variant's last seed (confusion matrix, feature importances)."""
    train = prepared[prepared["split"] == "train"]
    valid = prepared[prepared["split"] == "valid"]
    test = prepared[prepared["split"] == "test"]
    records, details = [], {}
    for seed in seeds:
        emb = (
            EmbeddingFeatures.fit(items, train["StockCode"].unique(), clusters, seed=seed)
            if items is not None
            else None
        )
        for row in ablation_rows(cp):
            enc = TabularEncoder.fit(train, row["groups"])
            x_train, x_valid, x_test = (design(f, enc, emb, text=row["text"]) for f in (train, valid, test))
            columns = list(x_train.columns)
            if row["rf"]:
                columns = rf_select(
                    x_train,
                    train["label"],
                    cp.rf_threshold,
                    trees=cp.rf_trees,
                    sample_rows=cp.rf_sample_rows,
                    seed=seed,
                )
            model = classifier(cp.xgboost, n_labels, seed)
            start = time.perf_counter()
            model.fit(x_train[columns], train["label"], eval_set=[(x_valid[columns], valid["label"])], verbose=False)
            seconds = time.perf_counter() - start
            v = classification_metrics(valid["label"], model.predict(x_valid[columns]), n_labels)
            t = classification_metrics(test["label"], model.predict(x_test[columns]), n_labels)
            records.append(
                {
                    "variant": row["variant"],
                    "seed": seed,
                    "features": len(columns),
                    "text_features": sum(c.startswith("text_") for c in columns),
                    "train_seconds": round(seconds, 3),
                    "best_iteration": int(model.best_iteration),
                    **{f"valid_{k}": v[k] for k in ("accuracy", "f1_macro")},
                    **{f"test_{k}": val for k, val in t.items() if k not in ("confusion_matrix", "n")},
                }
            )
            details[(row["variant"], seed)] = {
                "confusion_matrix": t["confusion_matrix"],
                "columns": columns,
                "importance": dict(zip(columns, map(float, model.feature_importances_))),
            }
            if progress:
                progress(f"classifier {row['variant']} seed {seed}: test accuracy {t['accuracy']:.3f}")
    table = pd.DataFrame(records)
    best = table.groupby("variant", sort=False)["valid_accuracy"].mean().idxmax()  # chosen on valid
    return table, {"best_variant": best, **details[(best, seeds[-1])]}
