"""The registered model's MLflow flavour: a pyfunc over the serving bundle.

`mlflow.pyfunc.load_model("models:/plmrec-recommender@champion").predict(frame)` answers the same
requests as the KServe predictor: one row per request with `customer_id`, `basket`, `query` (and `search_mode`), `k`.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from plmrec.tracking import ENCODER_RUNTIME, pinned_requirements

_RUNTIME = [
    "pandas",
    "numpy",
    "scipy",
    "pyarrow",
    "xgboost-cpu",
    *ENCODER_RUNTIME,
    "bm25s",
    "PyStemmer",
    "pydantic",
    "pyyaml",
    "mlflow",
]


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of the bundle (given explicitly: inference takes seconds)."""
    return pinned_requirements([*_RUNTIME, "plmrec"])


def request_example(bundle_dir) -> pd.DataFrame:
    """One request row for the bundle's first customer: the registered model's input example."""
    import numpy as np

    from plmrec.serving.bundle import find_bundle

    customer = np.load(find_bundle(bundle_dir) / "customers.npy")[:1].tolist()[0]  # int or str, as the data has
    return pd.DataFrame([{"customer_id": customer, "k": 5}])


def signature(bundle_dir, example: pd.DataFrame):
    """The request frame's columns (each optional: one request kind per row) and the answer's, inferred
    from the bundle's own answer to `example`. customer_id and k are `any` in the schema: a frame that
    mixes request kinds holds them as floats or nullable integers (NaN where a row has none); the
    strict request model checks each row's values instead."""
    import warnings

    from mlflow.models import infer_signature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType, Array

    from plmrec.serving.bundle import Recommender, find_bundle

    inputs = Schema(
        [
            ColSpec(AnyType(), "customer_id", required=False),
            ColSpec(Array("string"), "basket", required=False),
            ColSpec("string", "query", required=False),
            ColSpec(AnyType(), "k", required=False),
            ColSpec("boolean", "exclude_seen", required=False),
            ColSpec("string", "search_mode", required=False),
            ColSpec("string", "list", required=False),
        ]
    )
    output = answer_frame(Recommender(find_bundle(bundle_dir), load_encoder=False), example)
    with warnings.catch_warnings():  # its hint on integer columns: the inputs are declared above
        warnings.simplefilter("ignore", UserWarning)
        found = infer_signature(example, output[["kind", "customer_id", "items"]])
    return type(found)(inputs=inputs, outputs=found.outputs)


def answer_frame(recommender, frame: pd.DataFrame) -> pd.DataFrame:
    """One answer per request row, through the same strict request model as the server."""
    from plmrec.config import ServingParams
    from plmrec.serving.requests import answer, parse_instance

    limits = ServingParams()
    rows = frame.to_dict("records")
    answers = answer(recommender, [parse_instance(_row(r), f"row {i}", limits) for i, r in enumerate(rows)])
    out = pd.DataFrame(answers)
    if "customer_id" in out:  # ids in their own type (pandas would make 12346 beside a None 12346.0)
        out["customer_id"] = pd.Series([a.get("customer_id") for a in answers], index=out.index, dtype=object)
    return out


def _row(row: dict) -> dict:
    """One frame row as a request instance: empty cells dropped, numpy values made plain, and a whole
    float in customer_id or k (pandas' way of holding an integer beside NaN) made an integer."""
    out = {}
    for k, v in row.items():
        if v is None or (isinstance(v, float) and v != v):  # a column this row leaves empty
            continue
        v = [_python(c) for c in v] if k == "basket" else _python(v)
        if k in ("customer_id", "k") and isinstance(v, float) and v.is_integer():
            v = int(v)
        out[k] = v
    return out


def _python(value):
    """A numpy scalar from the frame as the plain value the strict request model checks."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


class BundleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from plmrec.serving.bundle import Recommender, find_bundle

        self.recommender = Recommender(find_bundle(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return answer_frame(self.recommender, model_input)
