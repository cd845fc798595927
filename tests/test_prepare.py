import pandas as pd
import pytest

from helpers import shared
from plmrec.config import CleanParams, SplitParams
from plmrec.data.online_retail import load_transactions
from plmrec.data.prepare import (
    apply_labels,
    check_split,
    clean_transactions,
    fit_label_thresholds,
    prepare_transactions,
)
from plmrec.errors import PlmrecError


def test_cleaning_reasons_counted(small_raw):
    out, rep = clean_transactions(small_raw, CleanParams())
    assert rep.rows_in == len(small_raw) and rep.rows_out == len(out)
    assert rep.rows_in - sum(rep.dropped.values()) == rep.rows_out
    assert rep.dropped["missing_customer"] == small_raw["CustomerID"].isna().sum()
    assert out["CustomerID"].notna().all() and (out["Quantity"] > 0).all()
    assert not out["InvoiceNo"].str.startswith("C").any()
    assert (out["UnitPrice"] == 0).any()  # kept by default
    out2, rep2 = clean_transactions(small_raw, CleanParams(drop_zero_price=True))
    assert rep2.dropped["zero_price"] > 0 and not (out2["UnitPrice"] == 0).any()


def test_labels_equal_frequency_and_ordinal():
    q = pd.Series([1] * 30 + [2] * 20 + [3] * 10 + [6] * 15 + [12] * 15 + [24] * 10)
    th = fit_label_thresholds(q, 5)
    assert th == sorted(set(th)) and len(th) == 4
    labels = apply_labels(q, th)
    assert labels.min() == 0 and labels.max() == 4
    assert (labels.groupby(q).nunique() == 1).all()  # one quantity, one label
    assert labels.is_monotonic_increasing


def test_labels_need_enough_distinct_values():
    with pytest.raises(PlmrecError, match="only 3 distinct values; cannot form 5 labels"):
        fit_label_thresholds(pd.Series([1, 2, 3, 3]), 5)


def test_labels_fitted_on_train_only(small_raw):
    prepared, meta = prepare_transactions(small_raw, CleanParams(), SplitParams())
    tampered = small_raw.copy()
    late = tampered["InvoiceDate"] >= pd.Timestamp(SplitParams().train_end)
    tampered.loc[late & (tampered["Quantity"] > 0), "Quantity"] = 999  # valid/test quantities change
    _, meta2 = prepare_transactions(tampered, CleanParams(), SplitParams())
    assert meta2["label_thresholds"] == meta["label_thresholds"]


def test_split_by_cutoffs(small_raw):
    sp = SplitParams()
    prepared, meta = prepare_transactions(small_raw, CleanParams(), sp)
    train = prepared[prepared["split"] == "train"]
    assert train["InvoiceDate"].max() < pd.Timestamp(sp.train_end)
    assert prepared.loc[prepared["split"] == "test", "InvoiceDate"].min() >= pd.Timestamp(sp.valid_end)
    assert sum(meta["split"]["rows"].values()) == len(prepared)


def test_planted_late_train_row_is_caught(small_raw):
    prepared, _ = prepare_transactions(small_raw, CleanParams(), SplitParams())
    prepared.loc[prepared.index[prepared["split"] == "test"][0], "split"] = "train"
    with pytest.raises(PlmrecError, match="1 training rows are on or after train_end=2011-09-01"):
        check_split(prepared, SplitParams())


def test_empty_split_explained(small_raw):
    with pytest.raises(PlmrecError, match="split test is empty: data spans .* cut-offs"):
        prepare_transactions(small_raw, CleanParams(), SplitParams(train_end="2011-09-01", valid_end="2012-06-01"))


@pytest.mark.realdata
def test_real_cleaning_matches_study():
    raw = load_transactions(shared("online-retail", "online_retail.parquet"))
    _, rep = clean_transactions(raw, CleanParams())
    assert (rep.rows_out, rep.customers, rep.stock_codes) == (397_924, 4_339, 3_665)
    _, rep = clean_transactions(raw, CleanParams(drop_zero_price=True))
    assert (rep.rows_out, rep.customers, rep.stock_codes) == (397_884, 4_338, 3_665)
