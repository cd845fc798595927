"""Classification metrics for the quantity label."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true, y_pred, n_labels: int) -> dict:
    labels = list(range(n_labels))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_label = {f"accuracy_label_{k}": float(cm[k, k] / cm[k].sum()) if cm[k].sum() else float("nan") for k in labels}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(p),
        "recall_macro": float(r),
        "f1_macro": float(f),
        **per_label,
        "n": int(len(y_true)),
        "confusion_matrix": cm.tolist(),
    }


def majority_class_accuracy(y_train, y_eval) -> float:
    values, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float(np.mean(np.asarray(y_eval) == values[np.argmax(counts)]))
