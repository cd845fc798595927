"""Bad inputs stop the run with the exact failure named, a report written, and nothing lost."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from plmrec.cli import main
from plmrec.config import Params
from plmrec.data.online_retail import load_transactions, transactions_to_csv_bytes
from plmrec.data.prepare import prepare_transactions
from plmrec.errors import DataValidationFailed
from plmrec.validation import validate_table


def _csv(df, path):
    path.write_bytes(transactions_to_csv_bytes(df))
    return path


def test_clean_synthetic_passes_both_suites(small_raw, tmp_path):
    p = Params()
    assert validate_table(small_raw, "raw", p, report_dir=tmp_path / "raw").success
    prepared, _ = prepare_transactions(small_raw, p.clean, p.split)
    out = validate_table(prepared, "prepared", p, report_dir=tmp_path / "prep")
    assert out.success and json.loads((tmp_path / "prep" / "summary.json").read_text())["validation_success"] == 1


def test_missing_column(small_raw, tmp_path):
    df = load_transactions(_csv(small_raw.head(300).drop(columns=["Country"]), tmp_path / "no_country.csv"))
    with pytest.raises(DataValidationFailed, match=r"failed 1 of \d+ expectations: column 'Country' must exist"):
        validate_table(df, "raw", Params(), report_dir=tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [f["expectation"] for f in report["failures"]] == ["expect_column_to_exist"]
    assert (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "data_docs" / "index.html").exists()
    checks = report["checks"]  # every expectation is listed, passed or not, in the JSON and on the page
    assert len(checks) == report["evaluated"] and [c["says"] for c in checks if not c["passed"]] == [
        "column 'Country' must exist"
    ]
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"Every expectation ({len(checks)})" in page and page.count(">passed<") == len(checks) - 1


def test_wrong_type_with_example_rows(small_raw, tmp_path):
    df = small_raw.head(300).copy()
    df["Quantity"] = df["Quantity"].astype(str)
    df.loc[[4, 17], "Quantity"] = ["six", "12 pcs"]
    loaded = load_transactions(_csv(df, tmp_path / "wrong_type.csv"))
    with pytest.raises(
        DataValidationFailed, match=r"column 'Quantity' must hold int64 values \(2 rows, e\.g\. row 4: Quantity='six'\)"
    ):
        validate_table(loaded, "raw", Params(), report_dir=tmp_path / "r")
    failure = json.loads((tmp_path / "r" / "report.json").read_text())["failures"][0]
    assert [(e["row"], e["Quantity"]) for e in failure["examples"]] == [(4, "six"), (17, "12 pcs")]


def test_negative_prices_beyond_tolerance(small_raw, tmp_path):
    df = small_raw.head(1000).copy()
    df.loc[df.index[:3], "UnitPrice"] = -1.5
    with pytest.raises(DataValidationFailed, match=r"'UnitPrice' must be >= 0 .*\(3 rows, e\.g\. row 0: UnitPrice="):
        validate_table(df, "raw", Params(), report_dir=tmp_path / "r")
    # within tolerance: one bad-debt adjustment in a million-row file passes
    loose = Params.model_validate({"validation": {"max_negative_price_fraction": 0.01}})
    assert validate_table(df, "raw", loose, report_dir=None).success


def test_header_only_file_fails_row_count(tmp_path):
    p = tmp_path / "header_only.csv"
    p.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n")
    with pytest.raises(DataValidationFailed, match="the table must have at least one row"):
        validate_table(load_transactions(p), "raw", Params(), report_dir=tmp_path / "r")


def test_leakage_across_split(small_raw, tmp_path):
    p = Params()
    prepared, _ = prepare_transactions(small_raw, p.clean, p.split)
    row = prepared.index[prepared["split"] == "train"][0]
    prepared.loc[row, "InvoiceDate"] = pd.Timestamp("2011-11-20 10:00")
    with pytest.raises(
        DataValidationFailed,
        match=r"split leakage: every train row must be before train_end 2011-09-01 \(1 row, e\.g\.",
    ):
        validate_table(prepared, "prepared", p, report_dir=tmp_path / "r")
    ex = json.loads((tmp_path / "r" / "report.json").read_text())["failures"][0]["examples"]
    assert ex[0]["row"] == row and ex[0]["InvoiceDate"].startswith("2011-11-20")


def test_cli_exit_code_and_one_line_summary(small_raw, tmp_path):
    bad = small_raw.head(500).copy()
    bad.loc[bad.index[:10], "UnitPrice"] = -3.0
    path = _csv(bad, tmp_path / "bad.csv")
    res = CliRunner().invoke(main, ["data", "validate", str(path), "--report-dir", str(tmp_path / "rep")])
    assert res.exit_code == 3
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "validation 'raw' failed 1 of" in lines[0] and "report.html" in lines[0]
    assert path.read_bytes() == transactions_to_csv_bytes(bad)  # the input is untouched


def test_cli_load_errors_are_one_line(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    res = CliRunner().invoke(main, ["data", "validate", str(p)])
    assert res.exit_code == 2 and "empty.csv: file is empty" in res.output and "Traceback" not in res.output


def test_one_bad_value_is_named_not_the_whole_column(small_raw, tmp_path):
    """A single Quantity of 2.5, or one date in a second format, is reported as that row, not 5,000."""
    df = small_raw.head(500).copy()
    df["Quantity"] = df["Quantity"].astype(float)
    df.loc[123, "Quantity"] = 2.5
    with pytest.raises(DataValidationFailed, match=r"'Quantity' must hold int64 values \(1 row, e\.g\. row 123: "):
        validate_table(load_transactions(_csv(df, tmp_path / "q.csv")), "raw", Params(), report_dir=tmp_path / "r1")
    import csv
    import io

    rows = list(csv.reader(io.StringIO(transactions_to_csv_bytes(small_raw.head(500)).decode())))
    rows[1 + 42][rows[0].index("InvoiceDate")] = "2011-01-05 09:30:00"  # the others are 12/01/2010 08:26
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    (tmp_path / "d.csv").write_text(out.getvalue())
    loaded = load_transactions(tmp_path / "d.csv")
    with pytest.raises(
        DataValidationFailed, match=r"'InvoiceDate' must hold datetime64\[ns\] values \(1 row, e\.g\. row 42"
    ):
        validate_table(loaded, "raw", Params(), report_dir=tmp_path / "r2")
    failure = json.loads((tmp_path / "r2" / "report.json").read_text())["failures"][0]
    assert failure["unexpected_count"] == 1 and [e["row"] for e in failure["examples"]] == [42]


def test_duplicates_failure_names_the_setting_and_cleaning_can_merge_them(small_raw, tmp_path):
    df = pd.concat([small_raw.head(400), small_raw.head(400).iloc[:20]], ignore_index=True)  # 40 of 420 rows
    with pytest.raises(DataValidationFailed, match=r"exact duplicates \(validation\.max_duplicate_fraction; clean"):
        validate_table(df, "raw", Params(), report_dir=None)
    loose = Params.model_validate({"validation": {"max_duplicate_fraction": 0.2}})  # both copies count
    assert validate_table(df, "raw", loose, report_dir=None).success
    from plmrec.data.prepare import clean_transactions

    merged = Params.model_validate({"clean": {"drop_exact_duplicates": True}}).clean
    out, report = clean_transactions(df, merged)
    assert report.dropped["exact_duplicate"] == 20 and not out.duplicated().any()
    assert "exact_duplicate" not in clean_transactions(df, Params().clean)[1].dropped  # off by default (the study)


def _stage(args, cwd=None):
    import os

    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        return CliRunner().invoke(main, ["stage", *args])
    finally:
        os.chdir(old)


def test_stage_prepare_stops_on_a_table_that_failed_validation(small_raw, tmp_path, monkeypatch):
    """A raw table without a column, or with the header repeated mid-file, stops prepare with exit 3 and
    the rows at fault; nothing is written."""
    from plmrec.data.tables import write_table

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_table(small_raw.head(300).drop(columns=["Country"]), tmp_path / "no_country.parquet", {})
    res = _stage(["prepare", "--raw", str(tmp_path / "no_country.parquet"), "--prepared", str(tmp_path / "p1.parquet")])
    assert res.exit_code == 3, res.output
    assert "no_country.parquet is not a valid raw table: column 'Country' is missing" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "p1.parquet").exists()

    csv = transactions_to_csv_bytes(small_raw.head(300)).decode().splitlines()
    csv.insert(150, csv[0])  # the header again, as when two exports are concatenated
    (tmp_path / "twice.csv").write_text("\n".join(csv) + "\n")
    source = ["-S", "data.source=file", "-S", f"data.path={tmp_path / 'twice.csv'}"]
    res = _stage(["ingest", *source, "--raw", str(tmp_path / "raw.parquet")])
    assert res.exit_code == 0, res.output
    res = _stage(["prepare", "--raw", str(tmp_path / "raw.parquet"), "--prepared", str(tmp_path / "p2.parquet")])
    assert res.exit_code == 3 and "Traceback" not in res.output, res.output
    assert "column 'Quantity' must hold int64 values: 1 of 301 rows do not (row 149: 'Quantity')" in res.output


def test_cleaning_that_empties_the_table_names_the_step(small_raw):
    df = small_raw.head(200).copy()
    df["CustomerID"] = float("nan")
    with pytest.raises(Exception, match=r"cleaning dropped every row: 200 in, none left \(missing_customer 200\)"):
        prepare_transactions(df, Params().clean, Params().split)


def test_a_stage_says_where_tracking_goes(small_raw, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    small = ["-S", "data.synthetic.n_customers=50", "-S", "data.synthetic.n_invoices=200"]
    res = _stage(["ingest", *small, "--raw", "raw.parquet"], cwd=elsewhere)
    assert res.exit_code == 0, res.output
    assert f"[plmrec] tracking: sqlite:///{elsewhere.resolve() / 'mlflow.db'}, artifacts in" in res.output


def _late(df):
    df["InvoiceDate"] = pd.Timestamp("2090-01-01")
    return df


def _fractional(df):
    df["Quantity"] = df["Quantity"] + 0.5
    return df


def _absurd(df):
    df.loc[df.index[:5], "Quantity"] = 10**9
    return df


def _anonymous(df):
    df.loc[df.index[: int(len(df) * 0.6)], "CustomerID"] = float("nan")
    return df


def _negative(df):
    df["UnitPrice"] = -df["UnitPrice"].abs() - 1
    return df


def _no_codes(df):
    df["StockCode"] = pd.Series([None] * len(df), dtype="string")
    return df


HOSTILE_RAW = [
    ("dates in 2090", _late, "'InvoiceDate' must lie between"),
    ("fractional quantities", _fractional, "column 'Quantity' must hold int64 values"),
    ("absurd quantities", _absurd, "'Quantity' must be within"),
    ("60% anonymous", _anonymous, "'CustomerID' may be empty"),
    ("negative prices", _negative, "'UnitPrice' must be >= 0"),
    ("no stock codes", _no_codes, "'StockCode' must not be empty"),
]


@pytest.mark.parametrize("case, change, says", HOSTILE_RAW, ids=[c[0] for c in HOSTILE_RAW])
def test_prepare_run_alone_refuses_what_the_raw_suite_refuses(small_raw, tmp_path, monkeypatch, case, change, says):
    """Without a passing validate-raw record for its input in its pipeline run, prepare checks the table with
    the raw suite itself: the bad table stops there (exit 3), nothing prepared."""
    from plmrec.data.tables import write_table

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    write_table(change(small_raw.head(300).copy()), tmp_path / "raw.parquet", {"adapter": "online_retail"})
    res = _stage(["prepare", "--raw", str(tmp_path / "raw.parquet"), "--prepared", str(tmp_path / "p.parquet")])
    assert res.exit_code == 3, (case, res.output)
    assert says in res.output and "checking it with the raw suite" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "p.parquet").exists()


def test_ingest_refuses_files_that_are_not_data_with_a_hint(small_raw, tmp_path, monkeypatch):
    """An empty folder, a symlink loop, a header and NUL bytes, a file over data.max_file_mb: exit 2 naming
    the problem; a CSV saved with ';' (Excel in many locales) is read as such."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def ingest(path, *extra):
        source = ["-S", "data.source=file", "-S", f"data.path={path}", *extra]
        return _stage(["ingest", *source, "--raw", str(tmp_path / "raw.parquet")])

    (tmp_path / "empty").mkdir()
    res = ingest(tmp_path / "empty")
    assert res.exit_code == 2 and "a directory without .inter files (it is empty)" in res.output, res.output
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    res = ingest(tmp_path / "loop.csv")
    assert res.exit_code == 2 and "a symbolic link loop" in res.output, res.output
    header = transactions_to_csv_bytes(small_raw.head(1)).splitlines()[0]
    (tmp_path / "nul.csv").write_bytes(header + b"\n" + b"\0" * 200_000)
    res = ingest(tmp_path / "nul.csv")
    assert res.exit_code == 2 and "binary content in a text file (a NUL byte at byte" in res.output, res.output
    good = _csv(small_raw.head(300), tmp_path / "good.csv")
    res = ingest(good, "-S", "data.max_file_mb=0.001")
    assert res.exit_code == 2 and "over data.max_file_mb (0 MB)" in res.output, res.output
    res = ingest(good, "-S", "data.max_rows=100")
    assert res.exit_code == 2 and "more than 100 rows (data.max_rows)" in res.output, res.output
    res = _stage(["ingest", "-S", "data.max_rows=100", "--raw", str(tmp_path / "raw.parquet")])  # synthetic
    assert res.exit_code == 2 and "more than data.max_rows (100)" in res.output, res.output
    semi = small_raw.head(300).copy()
    semi["Description"] = semi["Description"].str.replace(",", " ")
    text = transactions_to_csv_bytes(semi).decode().replace(",", ";")
    (tmp_path / "semi.csv").write_text(text)
    res = ingest(tmp_path / "semi.csv")
    assert res.exit_code == 0 and "300 rows from file" in res.output, res.output
    assert all("Traceback" not in r.output for r in [res])


def test_a_key_given_twice_in_a_params_file_is_an_error(tmp_path):
    from plmrec.config import load_params
    from plmrec.errors import ConfigError

    (tmp_path / "p.yaml").write_text("serving:\n  port: 8080\n  max_k: 50\n  port: 9090\n")
    with pytest.raises(
        ConfigError, match=r"p.yaml: line 4: key 'port' is given twice in one mapping \(first on line 2\)"
    ):
        load_params(tmp_path / "p.yaml")
