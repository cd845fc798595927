"""Embeddings as a product: a serving bundle's item and customer vectors written as Parquet for other
teams to read (`plmrec export embeddings`), the very arrays the server ranks with.

    items.parquet      item, text, text_vector (the encoder's L2-normalised vector), mf (ALS item factors),
                       user_model (the user model's item vector; only where the bundle has one)
    customers.parquet  customer (the data's id type), purchase_lines, text_profile (the L2-normalised mean of
                       the text vectors of what they bought), mf (ALS user factors), user_model (their C
                       vectors, C x w; only where the bundle has one)
    manifest.json      what made them: the served row, the encoder (name, source), the user model (its
                       spec), each column's width, the bundle's data end and creation time, plmrec's version

Vectors are lists of float32 (Parquet lists), one row per item or customer, in the bundle's order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from plmrec.serving.bundle import Recommender

EXPORT_FORMAT = 1


def _vectors(matrix: np.ndarray) -> pa.Array:
    """Rows of a float matrix (n x w, or n x C x w) as a Parquet list column of float32."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    flat = pa.array(m.reshape(-1))
    for width in reversed(m.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, width)
    return flat


def export_embeddings(bundle: str | Path, out: str | Path, *, source: dict | None = None) -> dict:
    """Write the bundle's item and customer vectors to `out` (items.parquet, customers.parquet,
    manifest.json); `source` (e.g. the registry's model and version) is kept in the manifest."""
    from plmrec import __version__

    rec = Recommender(bundle, load_encoder=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    item_columns = {
        "item": pa.array(rec.codes.tolist(), pa.string()),
        "text": pa.array(rec.descriptions.tolist(), pa.string()),
        "text_vector": _vectors(rec.item_vectors),
        "mf": _vectors(rec.item_factors),
    }
    customers = sorted(rec.customer_row, key=rec.customer_row.get)
    customer_columns = {
        "customer": pa.array(customers, pa.string() if rec.text_ids else pa.int64()),
        "purchase_lines": pa.array(np.asarray(rec.counts.sum(axis=1)).ravel().astype(np.int64)),
        "text_profile": _vectors(rec.text_profiles),
        "mf": _vectors(rec.user_factors),
    }
    user_model = None
    if rec.user_model is not None:
        item_columns["user_model"] = _vectors(rec.user_item_vectors)
        customer_columns["user_model"] = _vectors(rec.user_vectors)
        spec = rec.user_model.spec
        user_model = {"spec": {k: v for k, v in vars(spec).items() if isinstance(v, (int, float, str, bool))}}
    pq.write_table(pa.table(item_columns), out / "items.parquet")
    pq.write_table(pa.table(customer_columns), out / "customers.parquet")
    widths = {
        "items": {name: _width(col) for name, col in item_columns.items() if pa.types.is_fixed_size_list(col.type)},
        "customers": {
            name: _width(col) for name, col in customer_columns.items() if pa.types.is_fixed_size_list(col.type)
        },
    }
    manifest = {
        "format": EXPORT_FORMAT,
        "bundle": str(Path(bundle)),
        "model": rec.meta["model"],
        "encoder": rec.meta.get("encoder", {}),
        "user_model": user_model,
        "items": rec.n_items,
        "customers": len(customers),
        "widths": widths,
        "data_end_day": rec.meta.get("end_day"),
        "bundle_created": rec.meta.get("created"),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "plmrec": __version__,
        "source": source or {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _width(column: pa.Array) -> list[int]:
    shape, kind = [], column.type
    while pa.types.is_fixed_size_list(kind):
        shape.append(kind.list_size)
        kind = kind.value_type
    return shape


def read_vectors(path: str | Path, column: str) -> np.ndarray:
    """A vector column of an exported table back as a float32 array (n x w, or n x C x w)."""
    table = pq.read_table(path, columns=[column])
    col = table.column(column).combine_chunks()
    shape = [len(col), *_width(col)]
    values = col
    while pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(shape)
