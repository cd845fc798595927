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

    def tally(self, kept: pd.DataFrame) -> None:
        """The counts of the rows kept."""
        self.rows_out = len(kept)
        self.customers = int(kept["CustomerID"].nunique())
        self.stock_codes = int(kept["StockCode"].nunique())


def clean_transactions(
    df: pd.DataFrame, params: CleanParams, *, adapter: str = "online_retail"
) -> tuple[pd.DataFrame, CleaningReport]:
    """Drop rows without a customer, cancelled invoices (Online Retail's 'C' invoices) and non-positive
    quantities (and, if asked, zero prices)."""
    report = CleaningReport(rows_in=len(df))
    rules = [("exact_duplicate", df.duplicated(subset=TRANSACTION_COLUMNS))] if params.drop_exact_duplicates else []
    rules.append(("missing_customer", df["CustomerID"].isna()))
    if adapter == "online_retail":
        rules.append(("cancelled_invoice", df["InvoiceNo"].str.startswith("C", na=False)))
    rules += [
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
    if pd.api.types.is_numeric_dtype(out["CustomerID"]):
        out["CustomerID"] = out["CustomerID"].astype("int64")  # 12346.0 -> 12346, as the shop wrote it
    report.tally(out)
    return out, report


def split_mode(params: SplitParams, adapter: str) -> str:
    """split.mode with `auto` resolved: temporal for Online Retail (and the synthetic generator), else
    leave-one-out, the protocol of the public benchmarks the other formats carry."""
    if params.mode != "auto":
        return params.mode
    return "temporal" if adapter == "online_retail" else "leave_one_out"


def split_mode_of(prepared: pd.DataFrame) -> str:
    """The prepared table's split mode, from its metadata (read_table and prepare_transactions put it in
    `attrs`): temporal where it says nothing (tables written before the mode existed)."""
    return prepared.attrs.get("plmrec", {}).get("split", {}).get("mode", "temporal")


def history_order(df: pd.DataFrame) -> list[str]:
    """The columns that order a customer's interactions: `position` where the table has it (the formats
    read into the canonical tables), else the time."""
    return ["position"] if "position" in df else ["InvoiceDate"]


def leave_one_out_split(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each customer's last interaction (by position, else time, then row order) is test, the one before
    it valid, the rest train (plmrec.data.shop.leave_one_out_rows); (split, mask of rows whose customer
    has fewer than three interactions)."""
    from plmrec.data.shop import leave_one_out_rows

    split, short = leave_one_out_rows(df, user="CustomerID", order=history_order(df))
    return split.astype("string"), short


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


def check_split(df: pd.DataFrame, params: SplitParams, *, mode: str = "temporal") -> None:
    """Raise if a split is empty or a training row is not before the first cut-off (temporal), or a
    user's valid or test interaction is not its second-last or last (leave-one-out)."""
    train_end, valid_end = _cutoffs(params)
    counts = df["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    if empty and mode == "leave_one_out":
        raise PlmrecError(
            f"split {', '.join(empty)} is empty: leave-one-out needs users with at least three interactions"
        )
    if mode == "leave_one_out":
        per_user = df.groupby(["CustomerID", "split"]).size().unstack(fill_value=0)
        wrong = per_user[(per_user.get("test", 0) != 1) | (per_user.get("valid", 0) != 1)]
        if len(wrong):
            raise PlmrecError(f"leave-one-out: {len(wrong)} users do not have exactly one valid and one test row, "
                              f"first: {wrong.index[0]!r}")
        return
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


def prepare_transactions(
    raw: pd.DataFrame,
    clean: CleanParams,
    split: SplitParams,
    *,
    adapter: str = "online_retail",
    absent: tuple[str, ...] | list[str] = (),
) -> tuple[pd.DataFrame, dict]:
    """Clean, split (by date or leave-one-out), fit labels on train; returns the table and its metadata.
    `adapter` and `absent` come from the raw table's metadata: what format it was and what it lacks."""
    cleaned, report = clean_transactions(raw, clean, adapter=adapter)
    mode = split_mode(split, adapter)
    if mode == "leave_one_out":
        cleaned["split"], short = leave_one_out_split(cleaned)
        if short.any():
            report.dropped["user_too_short"] = int(short.sum())
            cleaned = cleaned[~short].reset_index(drop=True)
            report.tally(cleaned)
    else:
        cleaned["split"] = assign_split(cleaned, split)
    check_split(cleaned, split, mode=mode)
    skipped = {}
    if "quantity" in absent:
        thresholds: list[float] = []
        cleaned["label"] = pd.Series(0, index=cleaned.index, dtype="int64")
        skipped["quantity_labels"] = "the data has no quantities: every row is label 0, the classifiers are skipped"
    else:
        train_quantity = cleaned.loc[cleaned["split"] == "train", "Quantity"]
        thresholds = fit_label_thresholds(train_quantity, clean.n_quantity_labels)
        cleaned["label"] = apply_labels(cleaned["Quantity"], thresholds)
    label_share = cleaned.loc[cleaned["split"] == "train", "label"].value_counts(normalize=True).sort_index()
    split_meta = {"mode": mode, "rows": {s: int((cleaned["split"] == s).sum()) for s in SPLITS}}
    if mode == "temporal":
        split_meta = {"train_end": str(split.train_end), "valid_end": str(split.valid_end), **split_meta}
    meta = {
        "adapter": adapter,
        "absent": list(absent),
        "skipped": skipped,
        "cleaning": report.to_dict(),
        "split": split_meta,
        "label_thresholds": thresholds,
        "train_label_share": {str(k): round(float(v), 4) for k, v in label_share.items()},
        "prepared_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    cleaned.attrs["plmrec"] = meta
    return cleaned, meta
