"""Loading, generating, cleaning and splitting the transaction and product-text data: Online Retail
(`online_retail`, `download`), Amazon reviews (`amazon`), RecBole/UniSRec files (`seqrec`), the synthetic
generator (`synthetic`), cleaning and the temporal split (`prepare`), parquet tables with metadata
(`tables`, `files`) and the transaction schema (`schema`)."""

from plmrec.data.schema import TRANSACTION_COLUMNS
from plmrec.data.tables import read_table, write_table

__all__ = ["TRANSACTION_COLUMNS", "read_table", "write_table"]
