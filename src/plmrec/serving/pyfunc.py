"""The registered model's MLflow flavour: a pyfunc over the serving bundle.

`mlflow.pyfunc.load_model("models:/plmrec-recommender@champion").predict(frame)` answers the same
requests as the KServe predictor: one row per request with `customer_id`, `basket`, `query`, `k`.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from plmrec.tracking import ENCODER_RUNTIME, pinned_requirements

_RUNTIME = ["pandas", "numpy", "scipy", "pyarrow", "xgboost-cpu", *ENCODER_RUNTIME, "pydantic", "pyyaml", "mlflow"]


def pip_requirements() -> list[str]:
    """Pinned runtime requirements of the bundle (given explicitly: inference takes seconds)."""
    return pinned_requirements([*_RUNTIME, "plmrec"])


def _python(value):
    """A numpy scalar from the frame as the plain value the strict request model checks."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


class BundleModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from plmrec.serving.bundle import Recommender, find_bundle

        self.recommender = Recommender(find_bundle(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from plmrec.config import ServingParams
        from plmrec.serving.requests import answer, parse_instance

        limits = ServingParams()
        queries = []
        for i, row in enumerate(model_input.to_dict("records")):
            inst = {
                k: ([_python(c) for c in v] if k == "basket" else _python(v))
                for k, v in row.items()
                if v is not None and not (isinstance(v, float) and v != v)  # a column this row leaves empty
            }
            queries.append(parse_instance(inst, f"row {i}", limits))
        return pd.DataFrame(answer(self.recommender, queries))
