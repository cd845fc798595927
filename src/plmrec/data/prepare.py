"""Cleaning (as in the Online Retail study), the temporal split and the quantity labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from plmrec.config import CleanParams, SplitParams
from plmrec.data.schema import SPLITS, TRANSACTION_COLUMNS
from plmrec.errors import PlmrecError


@dataclass
class CleaningReport:
    rows_in: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows, in the order applied
    rows_out: int = 0
    customers: int = 0
    stock_codes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def clean_transactions(df: pd.DataFrame, params: CleanParams) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop rows without a customer, cancelled invoices and non-positive quantities (and, if asked, zero prices)."""
    report = CleaningReport(rows_in=len(df))
    rules = [("exact_duplicate", df.duplicated(subset=TRANSACTION_COLUMNS))] if params.drop_exact_duplicates else []
    rules += [
        ("missing_customer", df["CustomerID"].isna()),
        ("cancelled_invoice", df["InvoiceNo"].str.startswith("C", na=False)),
        ("non_positive_quantity", df["Quantity"] <= 0),
        ("negative_price", df["UnitPrice"] < 0),
    ]
    if params.drop_zero_price:
        rules.append(("zero_price", df["UnitPrice"] == 0))
    keep = pd.Series(True, index=df.index)
    for reason, drop in rules:
        drop = drop.fillna(False).astype(bool) & keep
        report.dropped[reason] = int(drop.sum())
        keep &= ~drop
    if not keep.any():
        dropped = ", ".join(f"{reason} {n:,}" for reason, n in report.dropped.items() if n)
        last = [reason for reason, n in report.dropped.items() if n][-1] if report.rows_in else None
        raise PlmrecError(
            f"cleaning dropped every row: {report.rows_in:,} in, none left ({dropped or 'the table is empty'})"
            + (f"; the last ones went at '{last}'" if last else "")
            + ". The rules and their settings: clean.* in params.yaml, 'Cleaning' in the README"
        )
    out = df.loc[keep].reset_index(drop=True)
    out["CustomerID"] = out["CustomerID"].astype("int64")
    report.rows_out = len(out)
    report.customers = int(out["CustomerID"].nunique())
    report.stock_codes = int(out["StockCode"].nunique())
    return out, report


def _cutoffs(params: SplitParams) -> tuple[pd.Timestamp, pd.Timestamp]:
    return pd.Timestamp(params.train_end), pd.Timestamp(params.valid_end)


def assign_split(df: pd.DataFrame, params: SplitParams) -> pd.Series:
    """train: before train_end; valid: [train_end, valid_end); test: from valid_end on."""
    train_end, valid_end = _cutoffs(params)
    when = df["InvoiceDate"]
    split = np.where(when < train_end, "train", np.where(when < valid_end, "valid", "test"))
    return pd.Series(split, index=df.index, dtype="string")


def window_rows(df: pd.DataFrame, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows before an evaluation window (valid: train; test: train + valid) and the window's rows."""
    if split not in ("valid", "test"):
        raise ValueError(f"evaluation split must be valid or test, got {split!r}")
    before = ("train",) if split == "valid" else ("train", "valid")
    return df[df["split"].isin(before)], df[df["split"] == split]


def check_split(df: pd.DataFrame, params: SplitParams) -> None:
    """Raise if a split is empty or a training row is not before the first cut-off."""
    train_end, valid_end = _cutoffs(params)
    counts = df["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    if empty:
        lo, hi = df["InvoiceDate"].min(), df["InvoiceDate"].max()
        raise PlmrecError(
            f"split {', '.join(empty)} is empty: data spans {lo} to {hi}, cut-offs are "
            f"train_end={params.train_end}, valid_end={params.valid_end} (split.* in params.yaml)"
        )
    late = df[(df["split"] == "train") & (df["InvoiceDate"] >= train_end)]
    if len(late):
        raise PlmrecError(f"{len(late)} training rows are on or after train_end={params.train_end}, "
                          f"first: invoice {late.iloc[0]['InvoiceNo']} at {late.iloc[0]['InvoiceDate']}")
    early = df[(df["split"] != "train") & (df["InvoiceDate"] < train_end)]
    if len(early):
        raise PlmrecError(f"{len(early)} valid/test rows are before train_end={params.train_end}")


def fit_label_thresholds(quantity: pd.Series, n_labels: int) -> list[float]:
    """Equal-frequency cut points for ordinal labels, fitted on training quantities.

    Quantities are discrete (1, 2, 12, 24, ...), so exact equal frequency is impossible;
    each threshold is the value whose cumulative share is closest to k/n, kept strictly
    increasing. label = number of thresholds the quantity exceeds.
    """
    values, counts = np.unique(quantity.to_numpy(), return_counts=True)
    # The last value can never be a threshold (nothing would exceed it).
    if len(values) < n_labels:
        raise PlmrecError(f"training quantities have only {len(values)} distinct values; cannot form {n_labels} labels")
    cum = np.cumsum(counts) / counts.sum()
    thresholds: list[float] = []
    lo = 0
    for k in range(1, n_labels):
        hi = len(values) - 1 - (n_labels - k)  # leave room for the thresholds still to come
        window = np.arange(lo, hi + 1)
        best = int(window[np.argmin(np.abs(cum[window] - k / n_labels))])
        thresholds.append(float(values[best]))
        lo = best + 1
    return thresholds


def apply_labels(quantity: pd.Series, thresholds: list[float]) -> pd.Series:
    return pd.Series(np.searchsorted(np.asarray(thresholds), quantity.to_numpy(), side="left"),
                     index=quantity.index, dtype="int64")


def prepare_transactions(raw: pd.DataFrame, clean: CleanParams, split: SplitParams) -> tuple[pd.DataFrame, dict]:
    """Clean, split by date, fit labels on train; returns the table and its metadata."""
    cleaned, report = clean_transactions(raw, clean)
    cleaned["split"] = assign_split(cleaned, split)
    check_split(cleaned, split)
    thresholds = fit_label_thresholds(cleaned.loc[cleaned["split"] == "train", "Quantity"], clean.n_quantity_labels)
    cleaned["label"] = apply_labels(cleaned["Quantity"], thresholds)
    label_share = cleaned.loc[cleaned["split"] == "train", "label"].value_counts(normalize=True).sort_index()
    meta = {
        "cleaning": report.to_dict(),
        "split": {"train_end": str(split.train_end), "valid_end": str(split.valid_end),
                  "rows": {s: int((cleaned["split"] == s).sum()) for s in SPLITS}},
        "label_thresholds": thresholds,
        "train_label_share": {str(k): round(float(v), 4) for k, v in label_share.items()},
        "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return cleaned, meta
