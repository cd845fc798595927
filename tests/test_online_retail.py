import gzip

import pandas as pd
import pytest

from helpers import shared
from plmrec.data.online_retail import load_transactions, transactions_to_csv_bytes
from plmrec.data.schema import TRANSACTION_COLUMNS
from plmrec.data.tables import read_table, write_table
from plmrec.errors import DataLoadError


def _same(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".xlsx"])
def test_formats_round_trip(small_raw, tmp_path, suffix):
    df = small_raw.head(400)
    path = tmp_path / f"retail{suffix}"
    if suffix == ".csv":
        path.write_bytes(transactions_to_csv_bytes(df))
    elif suffix == ".csv.gz":
        path.write_bytes(gzip.compress(transactions_to_csv_bytes(df)))
    elif suffix == ".parquet":
        write_table(df, path)
    else:
        df.to_excel(path, index=False)
    loaded = load_transactions(path)
    assert list(loaded.columns) == TRANSACTION_COLUMNS
    assert str(loaded["Quantity"].dtype) == "int64" and str(loaded["CustomerID"].dtype) == "Int64"
    _same(loaded, df)


def test_online_retail_ii_columns_and_sheets(small_raw, tmp_path):
    df = small_raw.head(200).rename(columns={"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"})
    path = tmp_path / "online_retail_II.xlsx"
    with pd.ExcelWriter(path) as xw:  # one sheet per year, as published
        df.iloc[:120].to_excel(xw, sheet_name="Year 2009-2010", index=False)
        df.iloc[120:].to_excel(xw, sheet_name="Year 2010-2011", index=False)
    loaded = load_transactions(path)
    assert list(loaded.columns) == TRANSACTION_COLUMNS
    _same(loaded, small_raw.head(200))


def test_unparseable_values_kept_as_text(small_raw, tmp_path):
    df = small_raw.head(50).copy()
    raw = transactions_to_csv_bytes(df).decode().splitlines()
    cells = raw[5].split(",")
    cells[3] = "abc"
    raw[5] = ",".join(cells)
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(raw) + "\n")
    loaded = load_transactions(path)
    assert loaded.loc[4, "Quantity"] == "abc" and len(loaded) == 50  # nothing dropped or nulled


def test_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(DataLoadError, match=r"empty.csv: file is empty \(0 bytes\)"):
        load_transactions(p)


def test_non_utf8_bytes_located(small_raw, tmp_path):
    lines = transactions_to_csv_bytes(small_raw.head(20)).split(b"\n")
    lines[7] = lines[7].replace(b",", b",CAF\xe9 ", 1)
    p = tmp_path / "latin.csv"
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(DataLoadError, match=r"latin.csv: bytes that are not valid utf-8 at line 8"):
        load_transactions(p)
    assert len(load_transactions(p, encoding="latin-1")) == 20  # the fix the message suggests works


def test_truncated_xlsx(small_raw, tmp_path):
    good = tmp_path / "good.xlsx"
    small_raw.head(100).to_excel(good, index=False)
    bad = tmp_path / "truncated.xlsx"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataLoadError, match=r"truncated.xlsx: not a readable xlsx workbook"):
        load_transactions(bad)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataLoadError, match="file not found"):
        load_transactions(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataLoadError, match="unknown file type"):
        load_transactions(tmp_path / "x.txt")


def test_table_metadata_round_trip(tmp_path, small_raw):
    write_table(small_raw.head(5), tmp_path / "t.parquet", {"a": [1, 2]})
    df, meta = read_table(tmp_path / "t.parquet")
    assert meta == {"a": [1, 2]} and len(df) == 5


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["online_retail.parquet", "online_retail.csv.gz"])
def test_real_file_facts(name):
    df = load_transactions(shared("online-retail", name))
    assert len(df) == 541_909
    assert df["InvoiceNo"].nunique() == 25_900
    assert df["StockCode"].nunique() == 4_070
    assert df["CustomerID"].nunique() == 4_372
    assert df["Country"].nunique() == 38
    assert df["InvoiceNo"].str.startswith("C").sum() == 9_288
    assert df["Description"].isna().sum() == 1_454 and df["CustomerID"].isna().sum() == 135_080
