import numpy as np
import pandas as pd

from plmrec.config import SyntheticParams
from plmrec.data.schema import TRANSACTION_COLUMNS
from plmrec.data.synthetic import THEMES, generate_transactions, synthetic_catalogue

P = SyntheticParams(n_customers=300, n_products=200, n_invoices=2500)


def test_same_seed_same_table_other_seed_differs(small_raw):
    pd.testing.assert_frame_equal(small_raw, generate_transactions(P))
    other = generate_transactions(P.model_copy(update={"seed": 8}))
    assert not other.head(100).equals(small_raw.head(100))


def test_schema_and_quirks(small_raw):
    df = small_raw
    assert list(df.columns) == TRANSACTION_COLUMNS
    assert df["InvoiceNo"].str.fullmatch(r"C?\d{6}").all()
    cancelled = df["InvoiceNo"].str.startswith("C")
    assert cancelled.any() and (df.loc[cancelled, "Quantity"] < 0).all()
    assert ((df["Quantity"] < 0) & ~cancelled).any()  # stock adjustments without a 'C'
    assert 0.1 < df["CustomerID"].isna().mean() < 0.4
    assert (df["UnitPrice"] == 0).any() and (df["StockCode"] == "POST").any()
    assert df["InvoiceDate"].between("2010-12-01", "2011-12-10").all()
    assert df["Description"].dropna().str.fullmatch(r"[A-Z0-9 \-]+").all()
    assert df["Quantity"].max() > 20 * df["Quantity"].median()  # heavy tail


def test_customers_have_theme_tastes(small_raw):
    """Text carries signal: a customer's purchases concentrate on few themes (vs a uniform 1/8)."""
    cat = synthetic_catalogue(P).set_index("StockCode")["theme"]
    df = small_raw.dropna(subset=["CustomerID"])
    df = df[df["StockCode"].isin(cat.index)].assign(theme=lambda d: d["StockCode"].map(cat))
    top_share = df.groupby("CustomerID")["theme"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    busy = df.groupby("CustomerID").size() >= 30
    assert top_share[busy].median() > 2.5 / len(THEMES)


def test_theme_words_in_descriptions():
    cat = synthetic_catalogue(P)
    hits = [any(w in d for w in THEMES[t]) for d, t in zip(cat["Description"], cat["theme"])]
    assert np.mean(hits) == 1.0
