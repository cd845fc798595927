"""Loading, generating, cleaning and splitting the transaction and product-text data."""

from plmrec.data.schema import TRANSACTION_COLUMNS
from plmrec.data.tables import read_table, write_table

__all__ = ["TRANSACTION_COLUMNS", "read_table", "write_table"]
