"""A downstream team's use of the exported embeddings (issue 41): the consumer-profile probe (GUIM's CPP)
read from `plmrec export embeddings`' Parquet files alone, with the shop's table for the labels.

  plmrec export embeddings --bundle <bundle> --out /tmp/emb
  python bench/embeddings_probe.py --embeddings /tmp/emb --prepared <run>/prepare/prepared \
      --out bench/results/embeddings_probe.json

Each customer vector column (text_profile, mf, user_model) predicts whether the customer is in the home
country (a logistic regression on 70% of the customers, AUC on the other 30%). The exported vectors read
every purchase of the bundle's data, so only properties outside the purchases (the country) are probed;
the spend of a later window needs vectors cut off before it (train-user-model's own probe does that).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402


def main() -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    from plmrec.serving.export import read_vectors
    from plmrec.stages.common import read_checked
    from plmrec.usermodel.probe import customer_labels, profile_probe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", required=True, help="the folder `plmrec export embeddings` wrote")
    ap.add_argument("--prepared", required=True, help="the prepared table (for the customers' country)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    folder = Path(args.embeddings)
    manifest = json.loads((folder / "manifest.json").read_text())
    customers_file = folder / "customers.parquet"
    customers = pq.read_table(customers_file, columns=["customer"]).column(0).to_pylist()
    vectors = {name: read_vectors(customers_file, name) for name in manifest["widths"]["customers"]}
    table, _ = read_checked(args.prepared, "prepared")
    end = table["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    labels = customer_labels(table, cutoff=end)
    found = profile_probe(vectors, customers, labels, seed=args.seed)
    emit(
        {
            "benchmark": "embeddings_probe",
            "embeddings": str(folder),
            "model": manifest["model"],
            "encoder": manifest.get("encoder", {}).get("name"),
            "customers": len(customers),
            "home_share": float(labels["home"].mean()),
            "probe": found,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
