"""Great-expectations suites for the raw and prepared transaction tables, and their reports.

A failed suite writes `report.json` (each failed expectation in words, with example rows),
`report.html` (the same, one self-contained page) and great-expectations Data Docs, then
raises `DataValidationFailed` with a one-line summary.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from plmrec.config import Params
from plmrec.data.schema import SPLITS, TRANSACTION_COLUMNS
from plmrec.errors import DataValidationFailed

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

INVOICE_PATTERN = r"^[CA]?\d{6}$"  # 'C' cancellations, 'A' bad-debt adjustments
STOCK_CODE_PATTERN = r"^(?:\d{5}[A-Za-z]{0,2}|[A-Za-z][A-Za-z0-9_ ]{0,19})$"  # 85123A, POST, DCGS0076, gift_0001_40
# Type names as great-expectations reports them for the plain-dtype view (see `_plain_view`).
EXPECTED_DTYPES = {
    "InvoiceNo": ["str"],
    "StockCode": ["str"],
    "Description": ["str"],
    "Quantity": ["int64", "int32"],
    "InvoiceDate": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]"],
    "UnitPrice": ["float64", "float32", "int64"],
    "CustomerID": ["float64", "int64", "str"],  # numbers (Online Retail) or text ids (the other formats)
    "Country": ["str"],
}
NUMERIC_COLUMNS = ("Quantity", "UnitPrice", "CustomerID")
SUITES = ("raw", "prepared")


def passed_tag(suite: str) -> str:
    """The pipeline run's tag holding the md5 of the table that passed `suite` (the validation record a
    later stage checks before it trusts that table)."""
    return f"validation.{suite}.passed_md5"


@dataclass
class Check:
    """One expectation plus the sentence a person reads when it fails."""

    expectation: Any
    says: str


@dataclass
class ValidationOutcome:
    suite: str
    success: bool
    evaluated: int
    failures: list[dict] = field(default_factory=list)
    report_dir: Path | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped before this table, by reason
    checks: list[dict] = field(default_factory=list)  # every expectation: what it says, its type, passed or not

    @property
    def summary(self) -> str:
        if self.success:
            return f"validation '{self.suite}' passed: {self.evaluated} expectations"
        what = "; ".join(f["says"] + _rows_in_words(f) for f in self.failures[:3])
        more = f"; and {len(self.failures) - 3} more" if len(self.failures) > 3 else ""
        where = f" Report: {self.report_dir / 'report.html'}" if self.report_dir else ""
        return (
            f"validation '{self.suite}' failed {len(self.failures)} of {self.evaluated} expectations: "
            f"{what}{more}.{where}"
        )


def _rows_in_words(failure: dict) -> str:
    """' (3 rows, e.g. row 17: Quantity=2.5)': how many rows fail and the first of them."""
    n = failure.get("unexpected_count")
    if not n:
        return ""
    first = (failure.get("examples") or [None])[0]
    col = failure.get("column")
    example = f", e.g. row {first['row']}: {col}={first.get(col)!r}" if first and col in first else ""
    return f" ({n:,} row{'s' if n != 1 else ''}{example})"


def _gx():
    import great_expectations as gx

    return gx


def _plain_view(df: pd.DataFrame) -> pd.DataFrame:
    """Numpy dtypes only: great-expectations misreads pandas' string and Int64 extension types."""
    out = df.reset_index(drop=True).copy()
    for col in out.columns:
        dtype = out[col].dtype
        if isinstance(dtype, pd.StringDtype):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
        elif isinstance(dtype, pd.api.extensions.ExtensionDtype) and pd.api.types.is_numeric_dtype(dtype):
            out[col] = out[col].astype("float64")
    return out


def _online_retail(meta: dict | None) -> bool:
    """Whether the table's metadata says it is Online Retail's (ingest writes `adapter`; older tables are)."""
    return (meta or {}).get("adapter", "online_retail") == "online_retail"


def _text_ids(values: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(values.dtype) and values.dropna().map(type).eq(str).all()


def _dtype_ok(df: pd.DataFrame, col: str) -> bool:
    dtype = df[col].dtype
    if col == "CustomerID" and _text_ids(df[col]):
        return True
    if col in NUMERIC_COLUMNS:
        return pd.api.types.is_numeric_dtype(dtype)
    if col == "InvoiceDate":
        return pd.api.types.is_datetime64_any_dtype(dtype)
    return pd.api.types.is_object_dtype(dtype) and df[col].dropna().map(type).eq(str).all()


def _ts(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def raw_checks(df: pd.DataFrame, params: Params, meta: dict | None = None) -> list[Check]:
    """The raw table's expectations; Online Retail's invoice and stock-code formats only for its files
    (`meta['adapter']`, written by ingest), the other formats having been read into the canonical tables."""
    E = _gx().expectations
    online_retail = _online_retail(meta)
    v = params.validation
    max_date = v.max_date or dt.date.today() + dt.timedelta(days=1)
    checks = [Check(E.ExpectTableRowCountToBeBetween(min_value=1), "the table must have at least one row")]
    for col in TRANSACTION_COLUMNS:
        checks.append(Check(E.ExpectColumnToExist(column=col), f"column '{col}' must exist"))
    present = [c for c in TRANSACTION_COLUMNS if c in df.columns]
    for col in present:
        checks.append(
            Check(
                E.ExpectColumnValuesToBeInTypeList(column=col, type_list=EXPECTED_DTYPES[col]),
                f"column '{col}' must hold {EXPECTED_DTYPES[col][0]} values",
            )
        )
    typed = [c for c in present if _dtype_ok(df, c)]  # value checks only where the type is right
    for col in ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "Country"):
        if col in typed:
            checks.append(Check(E.ExpectColumnValuesToNotBeNull(column=col), f"'{col}' must not be empty"))
    if "Description" in typed:
        checks.append(
            Check(
                E.ExpectColumnValuesToNotBeNull(column="Description", mostly=1 - v.max_missing_description_fraction),
                f"at most {v.max_missing_description_fraction:.2%} of 'Description' may be empty "
                "(validation.max_missing_description_fraction)",
            )
        )
    if "CustomerID" in typed:
        checks.append(
            Check(
                E.ExpectColumnValuesToNotBeNull(column="CustomerID", mostly=1 - v.max_missing_customer_fraction),
                f"at most {v.max_missing_customer_fraction:.0%} of 'CustomerID' may be empty "
                "(validation.max_missing_customer_fraction)",
            )
        )
    if "InvoiceNo" in typed and online_retail:
        checks.append(
            Check(
                E.ExpectColumnValuesToMatchRegex(column="InvoiceNo", regex=INVOICE_PATTERN),
                "'InvoiceNo' must be 6 digits, optionally prefixed by C (cancelled) or A (adjustment)",
            )
        )
    if "StockCode" in typed and online_retail:
        checks.append(
            Check(
                E.ExpectColumnValuesToMatchRegex(column="StockCode", regex=STOCK_CODE_PATTERN),
                "'StockCode' must be 5 digits with an optional letter suffix, or a short service code",
            )
        )
    if "Quantity" in typed:
        checks.append(
            Check(
                E.ExpectColumnValuesToBeBetween(
                    column="Quantity", min_value=-v.max_abs_quantity, max_value=v.max_abs_quantity
                ),
                f"'Quantity' must be within ±{v.max_abs_quantity:,} (validation.max_abs_quantity)",
            )
        )
    if "UnitPrice" in typed:
        checks.append(
            Check(
                E.ExpectColumnValuesToBeBetween(
                    column="UnitPrice", min_value=0, mostly=1 - v.max_negative_price_fraction
                ),
                f"'UnitPrice' must be >= 0 (at most {v.max_negative_price_fraction:.4%} of rows may be negative: "
                "validation.max_negative_price_fraction)",
            )
        )
    if "InvoiceDate" in typed:
        checks.append(
            Check(
                E.ExpectColumnValuesToBeBetween(
                    column="InvoiceDate", min_value=_ts(v.min_date), max_value=_ts(max_date)
                ),
                f"'InvoiceDate' must lie between {v.min_date} and {max_date} "
                "(validation.min_date, validation.max_date)",
            )
        )
    if len(typed) == len(TRANSACTION_COLUMNS) and not params.clean.drop_exact_duplicates:  # else merged, counted
        checks.append(
            Check(
                E.ExpectCompoundColumnsToBeUnique(column_list=TRANSACTION_COLUMNS, mostly=1 - v.max_duplicate_fraction),
                f"at most {v.max_duplicate_fraction:.1%} of rows may be exact duplicates "
                "(validation.max_duplicate_fraction; clean.drop_exact_duplicates merges them)",
            )
        )
    return checks


def prepared_checks(df: pd.DataFrame, params: Params, meta: dict | None = None) -> list[Check]:
    """The prepared table's expectations; the date-leakage ones where the split is temporal (a
    leave-one-out split is checked user by user when it is made: plmrec.data.prepare.check_split)."""
    E = _gx().expectations
    temporal = (meta or {}).get("split", {}).get("mode", "temporal") == "temporal"
    n = params.clean.n_quantity_labels
    train_end, valid_end = _ts(params.split.train_end), _ts(params.split.valid_end)
    cols = TRANSACTION_COLUMNS + ["split", "label"]
    checks = [Check(E.ExpectColumnToExist(column=c), f"column '{c}' must exist") for c in cols]
    if any(c not in df.columns for c in cols):
        return checks
    min_price = 0.01 if params.clean.drop_zero_price else 0
    checks += [
        Check(
            E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            "'split' must be train, valid or test",
        ),
        Check(
            E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(SPLITS)),
            "every split must have rows",
        ),
        Check(
            E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=n - 1),
            f"'label' must be in 0..{n - 1}",
        ),
        Check(E.ExpectColumnValuesToNotBeNull(column="CustomerID"), "cleaned rows must have a CustomerID"),
        Check(E.ExpectColumnValuesToBeBetween(column="Quantity", min_value=1), "cleaned 'Quantity' must be positive"),
        Check(
            E.ExpectColumnValuesToBeBetween(column="UnitPrice", min_value=min_price),
            f"cleaned 'UnitPrice' must be >= {min_price}",
        ),
    ]
    if _online_retail(meta):
        checks.append(
            Check(
                E.ExpectColumnValuesToNotMatchRegex(column="InvoiceNo", regex=r"^C"),
                "cancelled invoices must be removed",
            )
        )
    if not temporal:
        return checks
    checks += [
        Check(
            E.ExpectColumnValuesToBeBetween(
                column="InvoiceDate",
                max_value=train_end,
                strict_max=True,
                row_condition='split=="train"',
                condition_parser="pandas",
            ),
            f"split leakage: every train row must be before train_end {params.split.train_end}",
        ),
        Check(
            E.ExpectColumnValuesToBeBetween(
                column="InvoiceDate",
                min_value=train_end,
                max_value=valid_end,
                strict_max=True,
                row_condition='split=="valid"',
                condition_parser="pandas",
            ),
            f"split leakage: every valid row must be in [{params.split.train_end}, {params.split.valid_end})",
        ),
        Check(
            E.ExpectColumnValuesToBeBetween(
                column="InvoiceDate", min_value=valid_end, row_condition='split=="test"', condition_parser="pandas"
            ),
            f"split leakage: every test row must be on or after valid_end {params.split.valid_end}",
        ),
    ]
    return checks


def _unconvertible(values: pd.Series, col: str) -> pd.Series:
    """The values that keep a column from its type: what a person must fix, not the whole column."""
    present = values.notna()
    if col == "InvoiceDate":
        if pd.api.types.is_datetime64_any_dtype(values):
            return pd.Series(False, index=values.index)
        from plmrec.data.online_retail import DATE_FORMATS

        # the format most dates are in; a date in another format (or none) is the one to fix
        text = values.astype("string")
        parsed = max(
            (pd.to_datetime(text, format=fmt, errors="coerce") for fmt in DATE_FORMATS), key=lambda d: d.notna().sum()
        )
        return present & parsed.isna()
    if col == "CustomerID" and _text_ids(values):
        return pd.Series(False, index=values.index)
    if col in NUMERIC_COLUMNS:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = present & numbers.isna()
        if col in ("Quantity", "CustomerID"):  # whole numbers: 2.5 is as wrong as "two"
            bad |= present & numbers.notna() & (numbers % 1 != 0)
        return bad
    return present & ~values.map(lambda v: isinstance(v, str))


def schema_problems(df: pd.DataFrame, columns: list[str], *, limit: int = 3) -> list[str]:
    """Missing columns and the rows whose values do not fit a column's type, in words."""
    problems = [f"column '{c}' is missing" for c in columns if c not in df.columns]
    for col in (c for c in columns if c in df.columns and c in EXPECTED_DTYPES):
        if _dtype_ok(df, col):
            continue
        bad = _unconvertible(df[col], col)
        n = int(bad.sum())
        if not n:
            problems.append(f"column '{col}' has type {df[col].dtype}, expected {EXPECTED_DTYPES[col][0]}")
            continue
        shown = ", ".join(f"row {i}: {v!r}" for i, v in df.loc[bad, col].head(limit).items())
        problems.append(
            f"column '{col}' must hold {EXPECTED_DTYPES[col][0]} values: {n:,} of {len(df):,} row"
            f"{'s' if len(df) != 1 else ''} do not ({shown})"
        )
    return problems


def _needed(suite: str, columns: list[str] | None) -> list[str]:
    from plmrec.data.schema import TRANSACTION_COLUMNS as transactions

    return columns or (transactions + (["split", "label"] if suite == "prepared" else []))


def _not_valid(source: str | Path, suite: str, problems: list[str]) -> DataValidationFailed:
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    return DataValidationFailed(
        f"{source} is not a valid {suite} table: {'; '.join(problems[:5])}{more}. "
        f"`plmrec data validate {source} --suite {suite}` writes the full report"
    )


def check_columns(names: list[str], suite: str, *, source: str | Path, columns: list[str] | None = None) -> None:
    """The columns a stage reads are all there (before reading any of them)."""
    missing = [f"column '{c}' is missing" for c in _needed(suite, columns) if c not in names]
    if missing:
        raise _not_valid(source, suite, missing)


def check_schema(df: pd.DataFrame, suite: str, *, source: str | Path, columns: list[str] | None = None) -> None:
    """What a stage reads: the columns it needs, each of its type; raises DataValidationFailed naming the rows."""
    wanted = _needed(suite, columns)
    problems = schema_problems(_plain_view(df[[c for c in wanted if c in df.columns]]), wanted)  # copy only these
    if problems:
        raise _not_valid(source, suite, problems)


def _examples(df: pd.DataFrame, expectation: str, result: dict, *, col: str | None, limit: int) -> list[dict]:
    idx = result.get("unexpected_index_list") or []
    if expectation == "expect_column_values_to_be_in_type_list" and col in df.columns:
        idx = list(df.index[_unconvertible(df[col], col)][:limit])  # the values a person must fix
    rows = df.loc[list(idx)[:limit]] if len(idx) else df.iloc[0:0]
    out = []
    for i, row in rows.iterrows():
        out.append({"row": int(i), **{k: (None if pd.isna(v) else str(v)) for k, v in row.items()}})
    return out


def _run_gx(df: pd.DataFrame, suite_name: str, checks: list[Check], *, docs_dir: Path | None):
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        ctx.add_data_docs_site(
            site_name="plmrec",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["plmrec"]))
    batch = (
        ctx.data_sources.add_pandas("plmrec")
        .add_dataframe_asset(name=suite_name)
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
    for i, c in enumerate(checks):
        c.expectation.meta = {**(c.expectation.meta or {}), "plmrec_check": i, "says": c.says}
        suite.add_expectation(c.expectation)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(
            name=suite_name, validation_definitions=[vd], actions=actions, result_format={"result_format": "COMPLETE"}
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})
    return next(iter(result.run_results.values()))


def validate_table(
    df: pd.DataFrame,
    suite: str,
    params: Params,
    *,
    report_dir: str | Path | None = None,
    raise_on_failure: bool = True,
    meta: dict | None = None,
) -> ValidationOutcome:
    """Run the named suite on `df` (`meta`: the table's metadata: its format, its split's mode); write
    reports to `report_dir`; raise if it fails."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite '{suite}'; choose one of {', '.join(SUITES)}")
    df = _plain_view(df)
    checks = (raw_checks if suite == "raw" else prepared_checks)(df, params, meta)
    report_dir = Path(report_dir) if report_dir else None
    docs_dir = report_dir / "data_docs" if report_dir else None
    res = _run_gx(df, suite, checks, docs_dir=docs_dir)
    failures, listed = [], []
    for r in sorted(res.results, key=lambda r: r.expectation_config.meta["plmrec_check"]):
        d = r.to_json_dict()
        check = checks[d["expectation_config"]["meta"]["plmrec_check"]]
        kwargs = {k: v for k, v in d["expectation_config"]["kwargs"].items() if k != "batch_id"}
        entry = {"says": check.says, "expectation": d["expectation_config"]["type"], "column": kwargs.get("column")}
        listed.append({**entry, "passed": bool(d["success"])})
        if d["success"]:
            continue
        result = d.get("result") or {}
        if d["expectation_config"]["type"] == "expect_column_values_to_be_in_type_list" and kwargs["column"] in df:
            bad = int(_unconvertible(df[kwargs["column"]], kwargs["column"]).sum())
            result = {
                **result,
                "unexpected_count": bad or result.get("unexpected_count"),
                "unexpected_percent": 100.0 * (bad or result.get("unexpected_count") or 0) / max(len(df), 1),
            }
        exc = d.get("exception_info") or {}
        failures.append(
            {
                **entry,
                "kwargs": kwargs,
                "unexpected_count": result.get("unexpected_count"),
                "unexpected_percent": result.get("unexpected_percent"),
                "observed_value": result.get("observed_value"),
                "error": exc.get("exception_message") if exc.get("raised_exception") else None,
                "examples": _examples(
                    df,
                    d["expectation_config"]["type"],
                    result,
                    col=kwargs.get("column"),
                    limit=params.validation.example_rows,
                ),
            }
        )
    meta = meta or {}
    dropped = meta.get("dropped") or meta.get("cleaning", {}).get("dropped") or {}
    outcome = ValidationOutcome(
        suite=suite,
        success=not failures,
        evaluated=len(checks),
        failures=failures,
        report_dir=report_dir,
        dropped={k: int(v) for k, v in dropped.items() if v},
        checks=listed,
    )
    if report_dir:
        write_reports(outcome, df)
    if failures and raise_on_failure:
        raise DataValidationFailed(outcome.summary, str(report_dir / "report.json") if report_dir else None)
    return outcome


def write_reports(outcome: ValidationOutcome, df: pd.DataFrame) -> None:
    d = outcome.report_dir
    d.mkdir(parents=True, exist_ok=True)
    body = {
        "suite": outcome.suite,
        "success": outcome.success,
        "evaluated": outcome.evaluated,
        "failed": len(outcome.failures),
        "rows": len(df),
        "summary": outcome.summary,
        "failures": outcome.failures,
        "checks": outcome.checks,
        "dropped": outcome.dropped,
        "data_docs": "data_docs/index.html",
    }
    (d / "report.json").write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
    (d / "summary.json").write_text(
        json.dumps(
            {
                "validation_success": int(outcome.success),
                "expectations_evaluated": outcome.evaluated,
                "expectations_failed": len(outcome.failures),
                "rows": len(df),
                **{f"dropped_{reason}": n for reason, n in outcome.dropped.items()},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (d / "report.html").write_text(render_html(outcome, len(df)), encoding="utf-8")


def render_html(outcome: ValidationOutcome, rows: int) -> str:
    e = html.escape
    status = "passed" if outcome.success else "FAILED"
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>plmrec validation: {e(outcome.suite)}</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}.fail{color:#b00}.ok{color:#070}</style>",
        f"<h1>Validation of the <code>{e(outcome.suite)}</code> table: "
        f"<span class='{'ok' if outcome.success else 'fail'}'>{status}</span></h1>",
        f"<p>{rows:,} rows; {outcome.evaluated} expectations; {len(outcome.failures)} failed. "
        f"Full great-expectations Data Docs: <a href='data_docs/index.html'>data_docs/index.html</a></p>",
    ]
    if outcome.dropped:
        parts.append("<h2>Rows dropped before this table, by reason</h2><table><tr><th>reason</th><th>rows</th></tr>")
        parts += [f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in outcome.dropped.items()]
        parts.append("</table>")
    for f in outcome.failures:
        stat = ""
        if f.get("unexpected_count") is not None:
            stat = f" &mdash; {f['unexpected_count']:,} rows ({(f.get('unexpected_percent') or 0):.3f}%)"
        elif f.get("observed_value") is not None:
            stat = f" &mdash; observed {e(str(f['observed_value']))}"
        parts.append(
            f"<h2 class='fail'>{e(f['says'])}{stat}</h2><p><code>{e(f['expectation'])}</code> "
            f"<code>{e(json.dumps(f['kwargs'], default=str))}</code></p>"
        )
        if f["examples"]:
            cols = list(f["examples"][0])
            parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
            for ex in f["examples"]:
                parts.append("<tr>" + "".join(f"<td>{e(str(ex.get(c, '')))}</td>" for c in cols) + "</tr>")
            parts.append("</table>")
    if outcome.checks:
        parts.append(
            f"<h2>Every expectation ({len(outcome.checks)})</h2><table>"
            "<tr><th>#</th><th>what it checks</th><th>column</th><th>expectation</th><th>result</th></tr>"
        )
        parts += [
            f"<tr><td>{i}</td><td>{e(c['says'])}</td><td>{e(c['column'] or '')}</td><td><code>"
            f"{e(c['expectation'])}</code></td><td class='{'ok' if c['passed'] else 'fail'}'>"
            f"{'passed' if c['passed'] else 'FAILED'}</td></tr>"
            for i, c in enumerate(outcome.checks, 1)
        ]
        parts.append("</table>")
    return "\n".join(parts)
