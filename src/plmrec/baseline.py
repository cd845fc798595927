"""The first baseline: XGBoost on non-text features predicting the quantity label."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from plmrec.config import Params
from plmrec.features import TabularEncoder
from plmrec.metrics import classification_metrics, majority_class_accuracy
from plmrec.recsys import boosting

MODEL_FILE, ENCODER_FILE, INFO_FILE = "model.json", "encoder.json", "info.json"


def train_baseline(prepared: pd.DataFrame, params: Params) -> tuple[xgb.XGBClassifier, TabularEncoder, dict]:
    """Fit on train, early-stop on valid; the test split is not touched here."""
    b = params.baseline
    train = prepared[prepared["split"] == "train"]
    valid = prepared[prepared["split"] == "valid"]
    enc = TabularEncoder.fit(train, b.feature_groups)
    x_train, x_valid = enc.transform(train), enc.transform(valid)
    model = xgb.XGBClassifier(
        n_estimators=b.n_estimators,
        max_depth=b.max_depth,
        learning_rate=b.learning_rate,
        objective="multi:softprob",
        num_class=params.clean.n_quantity_labels,
        tree_method="hist",
        early_stopping_rounds=b.early_stopping_rounds,
        eval_metric="mlogloss",
        random_state=params.seed,
        n_jobs=b.n_jobs or None,
    )
    start = time.perf_counter()
    boosting.fit_classifier(model, b, x=x_train, y=train["label"], eval_set=[(x_valid, valid["label"])])
    seconds = time.perf_counter() - start
    valid_metrics = classification_metrics(valid["label"], model.predict(x_valid), params.clean.n_quantity_labels)
    info = {
        "features": enc.columns,
        "best_iteration": int(model.best_iteration),
        "train_seconds": round(seconds, 3),
        "train_rows": int(len(train)),
        "valid_rows": int(len(valid)),
        "valid": {k: v for k, v in valid_metrics.items() if k != "confusion_matrix"},
        "valid_majority_accuracy": majority_class_accuracy(train["label"], valid["label"]),
        "feature_importance": dict(zip(enc.columns, map(float, model.feature_importances_))),
    }
    return model, enc, info


def save_baseline(model: xgb.XGBClassifier, enc: TabularEncoder, info: dict, *, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_model(out / MODEL_FILE)
    (out / ENCODER_FILE).write_text(json.dumps(enc.to_dict()), encoding="utf-8")
    (out / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return out


def load_baseline(model_dir: str | Path) -> tuple[xgb.XGBClassifier, TabularEncoder, dict]:
    d = Path(model_dir)
    model = xgb.XGBClassifier()
    model.load_model(d / MODEL_FILE)
    enc = TabularEncoder.from_dict(json.loads((d / ENCODER_FILE).read_text(encoding="utf-8")))
    info = json.loads((d / INFO_FILE).read_text(encoding="utf-8"))
    return model, enc, info


def evaluate_baseline(model: xgb.XGBClassifier, enc: TabularEncoder, prepared: pd.DataFrame, *, params: Params) -> dict:
    """Score the test split once; also the majority-class accuracy as a floor to beat."""
    train = prepared[prepared["split"] == "train"]
    test = prepared[prepared["split"] == "test"]
    pred = model.predict(enc.transform(test))
    m = classification_metrics(test["label"], pred, params.clean.n_quantity_labels)
    m["majority_class_accuracy"] = majority_class_accuracy(train["label"], test["label"])
    m["label_distribution"] = np.bincount(test["label"], minlength=params.clean.n_quantity_labels).tolist()
    return m
