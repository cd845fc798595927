"""The consumer-profile probe (GUIM's CPP tasks): how much a user vector says about the customer.

A logistic regression reads a customer's vector and predicts a property held out of its input: on
Online Retail, whether the customer is in the United Kingdom, and the tercile of what the customer
spends in the window after the vector's cut-off. The same probe on the mean of the customer's item
text vectors is the reference. Customers are split once (stratified, by seed) into the probe's
training and scoring parts; the vectors come from purchases before the cut-off only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HOME_COUNTRY = "United Kingdom"
TASK_FIGURE = {"home": "auc", "spend_tercile": "macro_f1"}  # the figure each task is judged by


def customer_labels(prepared: pd.DataFrame, *, cutoff: pd.Timestamp, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per customer with purchases before `cutoff`: `home` (their country is the United Kingdom) and
    `spend_tercile` (0-2) of their spend in [cutoff, end), among those who buy there (-1 otherwise)."""
    rows = prepared[prepared["CustomerID"].notna()]
    before = rows[rows["InvoiceDate"] < cutoff]
    country = before.groupby("CustomerID")["Country"].agg(lambda s: s.mode().iloc[0])
    after = rows[(rows["InvoiceDate"] >= cutoff) & ((rows["InvoiceDate"] < end) if end is not None else True)]
    spend = (after["Quantity"] * after["UnitPrice"]).groupby(after["CustomerID"]).sum()
    out = pd.DataFrame({"home": (country == HOME_COUNTRY).astype(int)})
    spend = spend.reindex(out.index)
    buyers = spend.notna() & (spend > 0)
    tercile = pd.Series(-1, index=out.index, dtype=int)
    if buyers.sum() >= 3:
        tercile[buyers] = pd.qcut(spend[buyers].rank(method="first"), 3, labels=False).astype(int)
    out["spend_tercile"] = tercile
    return out


def _score(features: np.ndarray, labels: np.ndarray, *, seed: int, binary: bool) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_fit, x_score, y_fit, y_score = train_test_split(
        features, labels, test_size=0.3, random_state=seed, stratify=labels
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    probe.fit(x_fit, y_fit)
    predicted = probe.predict(x_score)
    out = {"accuracy": float(accuracy_score(y_score, predicted)), "customers": int(len(labels))}
    if binary:
        out["auc"] = float(roc_auc_score(y_score, probe.predict_proba(x_score)[:, 1]))
    else:
        out["macro_f1"] = float(f1_score(y_score, predicted, average="macro"))
    return out


def profile_probe(vectors: dict[str, np.ndarray], customers: list, labels: pd.DataFrame, *, seed: int = 0) -> dict:
    """For each named set of vectors (rows in `customers` order; any shape per row, flattened): the
    probe's figures on each task. A task is skipped where a class has fewer than 10 customers."""
    index = pd.Index(customers)
    table = labels.reindex(index)
    out: dict[str, dict] = {}
    for task, figure in TASK_FIGURE.items():
        y = table[task].to_numpy()
        keep = ~pd.isna(y) & (y >= 0)
        y = y[keep].astype(int)
        counts = np.bincount(y) if len(y) else np.array([])
        if len(counts) < 2 or counts.min() < 10:
            continue
        for name, v in vectors.items():
            x = np.asarray(v, dtype=np.float32).reshape(len(index), -1)[keep]
            out.setdefault(task, {})[name] = _score(x, y, seed=seed, binary=figure == "auc")
    return out


def probe_user_model(model, rows: pd.DataFrame, text: np.ndarray, *, cutoff, labels: pd.DataFrame, seed: int) -> dict:
    """The probe on `model`'s vectors and on the mean of the item text vectors, both from each
    customer's purchases (`rows`, with item rows as `item`) before `cutoff`."""
    from plmrec.usermodel.retrieval import customer_sequences, customer_vectors

    seqs = customer_sequences(model, rows, cutoff=cutoff)
    customers, users = customer_vectors(model, seqs)
    mean = np.stack([text[seqs[c][0]].mean(axis=0) for c in customers])
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return profile_probe({"user_model": users, "mean_of_items": mean}, customers, labels, seed=seed)


PROBE_COLUMNS = ["Country", "Quantity", "UnitPrice"]  # the prepared table's columns the labels come from


def probe_runs(runs: list[dict], data, prepared: pd.DataFrame, *, cutoff: pd.Timestamp) -> pd.DataFrame:
    """The probe per seed on each refitted model's vectors from purchases before `cutoff` (the test
    window's start; labels: home country, spend tercile after it), against the mean of item text vectors;
    one row per (seed, task, vectors). `runs`: plmrec.usermodel.variants.train_variant's results."""
    labels = customer_labels(prepared, cutoff=cutoff)
    rows = []
    for run in runs:
        found = probe_user_model(run["model"], data.rows, data.text, cutoff=cutoff, labels=labels, seed=run["seed"])
        for task, by_vectors in found.items():
            for vectors, figures in by_vectors.items():
                rows.append({"seed": run["seed"], "task": task, "vectors": vectors, **figures})
    return pd.DataFrame(rows)
