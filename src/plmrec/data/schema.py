"""Canonical column names and dtypes (the UCI Online Retail schema)."""

TRANSACTION_COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]

# Online Retail II renamed a few columns; map them onto the original names.
ONLINE_RETAIL_II_ALIASES = {
    "Invoice": "InvoiceNo",
    "Price": "UnitPrice",
    "Customer ID": "CustomerID",
}

STRING_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Country"]
INTEGER_COLUMNS = ["Quantity"]
FLOAT_COLUMNS = ["UnitPrice"]
ID_COLUMNS = ["CustomerID"]  # integer ids with nulls (nullable Int64)
DATE_COLUMNS = ["InvoiceDate"]
DAY_NS = 86_400 * 10**9  # InvoiceDate is datetime64[ns]: its int64 value // DAY_NS is a day number

SPLITS = ("train", "valid", "test")
