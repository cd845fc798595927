"""Load UCI Online Retail (and Online Retail II) transactions from xlsx, csv(.gz) or parquet.

Loading normalises column names and types but never drops a row or a column the file has:
values that do not parse keep their original text, so the raw validation suite can report
them with example rows instead of a crash or a silent null.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plmrec.data.schema import (
    DATE_COLUMNS,
    FLOAT_COLUMNS,
    ID_COLUMNS,
    INTEGER_COLUMNS,
    ONLINE_RETAIL_II_ALIASES,
    STRING_COLUMNS,
    TRANSACTION_COLUMNS,
)
from plmrec.data.files import require_data_file
from plmrec.errors import DataLoadError

CSV_CHUNK_ROWS = 200_000
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%y %H:%M", "%d/%m/%Y %H:%M")


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".xlsx", "xlsx"), (".parquet", "parquet"), (".csv.gz", "csv"), (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise DataLoadError(f"{path}: unknown file type; expected .xlsx, .csv, .csv.gz or .parquet")


def _first_bad_utf8_line(path: Path, encoding: str) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                bad = line[max(exc.start - 10, 0) : exc.end + 10]
                return f"line {lineno}, byte {exc.start}: {bad!r}"
    return "unknown position"


SEPARATORS = (",", ";", "\t", "|")


def _separator(path: Path, encoding: str) -> str:
    """The header line's separator: the candidate it holds most of (Excel in many locales writes ';')."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding=encoding, errors="replace") as fh:
            header = fh.readline()
    except (OSError, EOFError):
        return ","  # the reader below names the problem
    return max(SEPARATORS, key=header.count) if any(sep in header for sep in SEPARATORS) else ","


def _read_csv(path: Path, encoding: str, max_rows: int | None = None) -> pd.DataFrame:
    sep = _separator(path, encoding)
    try:
        chunks = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            encoding=encoding,
            chunksize=CSV_CHUNK_ROWS,
            keep_default_na=False,
            na_values=[""],
        )
        frames, rows = [], 0
        for chunk in chunks:  # read a chunk at a time: a file over the row guard stops early
            frames.append(chunk)
            rows += len(chunk)
            if max_rows is not None and rows > max_rows:
                raise DataLoadError(
                    f"{path}: more than {max_rows:,} rows (data.max_rows); a larger shop raises it "
                    f"(-S data.max_rows=...), after checking the file is what it should be"
                )
    except UnicodeDecodeError:
        where = _first_bad_utf8_line(path, encoding)
        raise DataLoadError(
            f"{path}: bytes that are not valid {encoding} at {where}; "
            f"re-encode the file or set data.encoding (the original UCI export is latin-1)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataLoadError(f"{path}: file has no header and no rows") from None
    except (pd.errors.ParserError, EOFError, gzip.BadGzipFile, zipfile.BadZipFile, OSError) as exc:
        raise DataLoadError(
            f"{path}: cannot parse as CSV separated by {sep!r} (read from its header line): {exc}; a field with "
            f"the separator in it must be quoted"
        ) from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_xlsx(path: Path) -> pd.DataFrame:
    try:
        sheets = pd.read_excel(path, sheet_name=None, dtype=object, engine="openpyxl")
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, ValueError) as exc:
        raise DataLoadError(f"{path}: not a readable xlsx workbook (truncated or corrupt?): {exc}") from None
    frames = [df for df in sheets.values() if not df.empty]
    if not frames:
        raise DataLoadError(f"{path}: workbook has no rows in any sheet")
    # Online Retail II ships one sheet per year.
    return pd.concat(frames, ignore_index=True)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable parquet file: {exc}") from None


def _as_int(col: pd.Series) -> pd.Series:
    num = pd.to_numeric(col, errors="coerce")
    parsed = num.notna() | col.isna()
    if not parsed.all() or not np.all(np.mod(num.dropna(), 1) == 0):
        return col  # leave it for the validation report
    return num.astype("Int64")


def _as_float(col: pd.Series) -> pd.Series:
    num = pd.to_numeric(col, errors="coerce")
    if not (num.notna() | col.isna()).all():
        return col
    return num.astype("float64")


def _as_datetime(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.astype("datetime64[ns]")
    text = col.astype("string")
    for fmt in DATE_FORMATS:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce")
        if (parsed.notna() | text.isna()).all():
            return parsed.astype("datetime64[ns]")
    return col


def normalise_transactions(df: pd.DataFrame) -> pd.DataFrame:
    """Rename Online Retail II columns and convert types where every value parses."""
    df = df.rename(columns=lambda c: str(c).strip()).rename(columns=ONLINE_RETAIL_II_ALIASES)
    out = pd.DataFrame(index=df.index)
    for name in TRANSACTION_COLUMNS:
        if name not in df.columns:
            continue
        col = df[name]
        if name in STRING_COLUMNS:
            out[name] = col.astype("string").str.strip()
        elif name in INTEGER_COLUMNS:
            out[name] = _as_int(col)
        elif name in FLOAT_COLUMNS:
            out[name] = _as_float(col)
        elif name in ID_COLUMNS:
            out[name] = _as_int(col)
        elif name in DATE_COLUMNS:
            out[name] = _as_datetime(col)
    for name in INTEGER_COLUMNS:
        if name in out and str(out[name].dtype) == "Int64" and not out[name].isna().any():
            out[name] = out[name].astype("int64")
    extras = [c for c in df.columns if c not in TRANSACTION_COLUMNS]
    for name in extras:  # kept as text so nothing in the file is lost
        out[name] = df[name].astype("string")
    return out.reset_index(drop=True)


def load_transactions(path: str | Path, encoding: str = "utf-8", *, max_rows: int | None = None) -> pd.DataFrame:
    """Read an Online Retail file (xlsx, csv, csv.gz, parquet) into the canonical schema; more than
    `max_rows` rows is a DataLoadError (a CSV stops being read there)."""
    path = require_data_file(path)
    fmt = detect_format(path)
    readers = {
        "csv": lambda: _read_csv(path, encoding, max_rows),
        "xlsx": lambda: _read_xlsx(path),
        "parquet": lambda: _read_parquet(path),
    }
    table = readers[fmt]()
    if max_rows is not None and len(table) > max_rows:
        raise DataLoadError(f"{path}: {len(table):,} rows, more than data.max_rows ({max_rows:,}); a larger shop raises it")
    return normalise_transactions(table)


def transactions_to_csv_bytes(df: pd.DataFrame) -> bytes:
    """CSV in the UCI export's layout (dates as %m/%d/%Y %H:%M), for fixtures and exports."""
    out = df.copy()
    out["InvoiceDate"] = out["InvoiceDate"].dt.strftime("%m/%d/%Y %H:%M")
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")
