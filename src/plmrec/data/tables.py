"""Parquet tables with JSON metadata stored in the file's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_META_KEY = b"plmrec"


def write_table(df: pd.DataFrame, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta:
        merged = dict(table.schema.metadata or {})
        merged[_META_KEY] = json.dumps(meta, default=str).encode()
        table = table.replace_schema_metadata(merged)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)  # readers never see a half-written table
    return path


def read_table(path: str | Path, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    path = Path(path)
    table = pq.read_table(path, columns=columns)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    meta = json.loads(raw) if raw else {}
    frame = table.to_pandas()
    frame.attrs["plmrec"] = meta  # what the table is (its format, split mode) travels with it
    return frame, meta


def read_meta(path: str | Path) -> dict[str, Any]:
    raw = (pq.read_schema(path).metadata or {}).get(_META_KEY)
    return json.loads(raw) if raw else {}
