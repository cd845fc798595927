"""XGBoost on the 5-level quantity label with and without PLM features: the study's feature ablation.

Rows of the sweep are cumulative: vanilla (recommenders.classifier.base_groups), then each step of
`ablation` added to the previous row (e.g. +rf_selection, +text_cluster, +text_pca10, ...).
The study's order runs random-forest selection before any text feature exists, so one more row
(`text+rf_selection`, when `selection_after_text` is on) adds every text group of the ablation to
vanilla first and selects afterwards, with the importance threshold chosen on valid accuracy.
Fitted on train, early-stopped on valid, scored on test once per (row, seed); a row whose inputs equal an
earlier row's (same seed) reuses that fit.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import xgboost as xgb

from plmrec.config import ClassifierParams, XGBoostParams
from plmrec.features import TEXT_GROUPS, EmbeddingFeatures, TabularEncoder
from plmrec.metrics import classification_metrics
from plmrec.recsys import boosting

TEXT_THEN_SELECTION = "text+rf_selection"


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
    text = [step for step in cp.ablation if step in TEXT_GROUPS]
    if cp.selection_after_text and text:
        rows.append({"variant": TEXT_THEN_SELECTION, "groups": list(cp.base_groups), "text": text, "rf": "valid"})
    return rows


def plm_counterpart(cp: ClassifierParams) -> str:
    """The row to compare text-feature rows with: the last row before the first text step."""
    rows = [r for r in ablation_rows(cp) if r["variant"] != TEXT_THEN_SELECTION]
    first_text = next((i for i, r in enumerate(rows) if r["text"]), None)
    return rows[first_text - 1]["variant"] if first_text else "vanilla"


def design(frame: pd.DataFrame, enc: TabularEncoder, emb: EmbeddingFeatures | None, *, text: list[str]) -> pd.DataFrame:
    x = enc.transform(frame)
    if text:
        if emb is None:
            raise ValueError(f"text feature groups {text} need item embeddings")
        x = pd.concat([x, emb.transform(frame["StockCode"], text)], axis=1)
    return x


def rf_importance(x: pd.DataFrame, y: pd.Series, *, trees: int, sample_rows: int, seed: int) -> pd.Series:
    """Random-forest importance of each column, fitted on a seeded sample of rows."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample_rows, len(x)), replace=False)
    rf = RandomForestClassifier(n_estimators=trees, max_depth=12, n_jobs=-1, random_state=seed)
    rf.fit(x.iloc[rows].fillna(-1), y.iloc[rows])
    return pd.Series(rf.feature_importances_, index=x.columns)


def kept_columns(importance: pd.Series, threshold: float) -> list[str]:
    """Columns whose importance reaches `threshold` (at least the best one), in their order."""
    keep = importance[importance >= threshold].index.tolist()
    return keep or [importance.idxmax()]


def rf_select(x: pd.DataFrame, y: pd.Series, threshold: float, *, trees: int, sample_rows: int, seed: int) -> list[str]:
    """Columns whose random-forest importance reaches `threshold` (at least the best one)."""
    return kept_columns(rf_importance(x, y, trees=trees, sample_rows=sample_rows, seed=seed), threshold)


def classifier(xp: XGBoostParams, n_labels: int, seed: int) -> xgb.XGBClassifier:
    return xgb.XGBClassifier(
        **xp.booster_settings(),
        objective="multi:softprob",
        num_class=n_labels,
        eval_metric="mlogloss",
        random_state=seed,
    )


def _fingerprint(*frames: pd.DataFrame) -> str:
    """A digest of the frames' columns and values: equal digests, equal XGBoost inputs."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update("\x1f".join(f"{c}:{t}" for c, t in frame.dtypes.items()).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _fit_chosen_on_valid(
    fits: list[tuple], train: tuple, valid: tuple, *, xp: XGBoostParams, n_labels: int, seed: int, cache: dict
):
    """One XGBoost per (threshold, columns) candidate, early-stopped on valid; the one with the best
    valid accuracy (the first on ties) as (threshold, columns, model, fit seconds, reused).

    `cache` holds this seed's fits by their inputs: a candidate whose train and valid columns equal an
    earlier one's (later ablation rows often keep the same selected columns) reuses that model, which
    a new fit with the same seed would reproduce."""
    (x_train, y_train), (x_valid, y_valid) = train, valid
    best = None
    for threshold, columns in fits:
        key = _fingerprint(x_train[columns], x_valid[columns])
        reused = key in cache
        if not reused:
            model = classifier(xp, n_labels, seed)
            start = time.perf_counter()
            boosting.fit_classifier(model, xp, x=x_train[columns], y=y_train, eval_set=[(x_valid[columns], y_valid)])
            seconds = time.perf_counter() - start
            accuracy = classification_metrics(y_valid, model.predict(x_valid[columns]), n_labels)["accuracy"]
            cache[key] = (model, seconds, accuracy)
        model, seconds, accuracy = cache[key]
        if best is None or accuracy > best[0]:
            best = (accuracy, threshold, columns, model, seconds, reused)
    return best[1:]


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
        fitted: dict = {}  # this seed's XGBoost fits by their inputs
        emb = (
            EmbeddingFeatures.fit(items, train["StockCode"].unique(), clusters, seed=seed)
            if items is not None
            else None
        )
        for row in ablation_rows(cp):
            enc = TabularEncoder.fit(train, row["groups"])
            x_train, x_valid, x_test = (design(f, enc, emb, text=row["text"]) for f in (train, valid, test))
            columns, threshold = list(x_train.columns), None
            if row["rf"]:
                importance = rf_importance(
                    x_train, train["label"], trees=cp.rf_trees, sample_rows=cp.rf_sample_rows, seed=seed
                )
                thresholds = cp.rf_thresholds if row["rf"] == "valid" else [cp.rf_threshold]
                fits = [(t, kept_columns(importance, t)) for t in thresholds]
            else:
                fits = [(None, columns)]
            threshold, columns, model, seconds, reused = _fit_chosen_on_valid(
                fits,
                (x_train, train["label"]),
                (x_valid, valid["label"]),
                xp=cp.xgboost,
                n_labels=n_labels,
                seed=seed,
                cache=fitted,
            )
            v = classification_metrics(valid["label"], model.predict(x_valid[columns]), n_labels)
            t = classification_metrics(test["label"], model.predict(x_test[columns]), n_labels)
            records.append(
                {
                    "variant": row["variant"],
                    "seed": seed,
                    "features": len(columns),
                    "text_features": sum(c.startswith("text_") for c in columns),
                    "rf_threshold": threshold,
                    "train_seconds": round(seconds, 3),
                    "fit_reused": reused,  # the same inputs as an earlier row of this seed: its model
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
