"""Tabular (non-text) features for the quantity-label model, fitted on the training split only.

Each group can be switched on or off in `params.yaml` (baseline.feature_groups), so later
feature ablations (text embeddings, clusters) add groups without reshaping this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plmrec.data.schema import DAY_NS

FEATURE_GROUPS = {
    "transaction": ["unit_price", "log_unit_price", "hour", "weekday", "month", "day_of_month"],
    "customer": ["customer_id", "country_code", "customer_train_invoices", "customer_train_lines"],
    "basket": ["basket_lines", "basket_value_share"],
    "item": ["item_train_lines", "item_train_customers", "price_vs_item_mean"],
    "rfm": ["rfm_recency_days", "rfm_frequency", "rfm_monetary"],
    "invoice": ["invoice_number", "invoice_lines", "invoice_distinct_items", "invoice_price_sum"],
    "stock_code": ["stock_code_index"],
}


@dataclass
class TabularEncoder:
    """Statistics learnt from training rows; applied unchanged to valid, test and serving rows."""

    groups: list[str]
    countries: dict[str, int] = field(default_factory=dict)
    customer_invoices: dict[int, int] = field(default_factory=dict)
    customer_lines: dict[int, int] = field(default_factory=dict)
    item_lines: dict[str, int] = field(default_factory=dict)
    item_customers: dict[str, int] = field(default_factory=dict)
    item_mean_price: dict[str, float] = field(default_factory=dict)
    customer_last_day: dict[int, float] = field(default_factory=dict)  # days since epoch
    customer_monetary: dict[int, float] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)
    reference_day: float = 0.0  # the last training day: recency is measured from here

    @property
    def columns(self) -> list[str]:
        return [c for g in self.groups for c in FEATURE_GROUPS[g]]

    @classmethod
    def fit(cls, train: pd.DataFrame, groups: list[str]) -> TabularEncoder:
        unknown = [g for g in groups if g not in FEATURE_GROUPS]
        if unknown:
            raise ValueError(f"unknown feature group(s) {unknown}; known: {', '.join(FEATURE_GROUPS)}")
        by_item = train.groupby("StockCode")
        return cls(
            groups=list(groups),
            countries={c: i for i, c in enumerate(sorted(train["Country"].dropna().unique()))},
            customer_invoices=train.groupby("CustomerID")["InvoiceNo"].nunique().astype(int).to_dict(),
            customer_lines=train.groupby("CustomerID").size().astype(int).to_dict(),
            item_lines=by_item.size().astype(int).to_dict(),
            item_customers=by_item["CustomerID"].nunique().astype(int).to_dict(),
            item_mean_price=by_item["UnitPrice"].mean().astype(float).to_dict(),
            customer_last_day=(train.groupby("CustomerID")["InvoiceDate"].max().astype("int64") / DAY_NS).to_dict(),
            customer_monetary=train.assign(_v=train["Quantity"] * train["UnitPrice"])
            .groupby("CustomerID")["_v"]
            .sum()
            .astype(float)
            .to_dict(),
            item_index={c: i for i, c in enumerate(sorted(train["StockCode"].astype(str).unique()))},
            reference_day=float(train["InvoiceDate"].max().value / DAY_NS),
        )

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=df.index)
        when = df["InvoiceDate"]
        price = df["UnitPrice"].astype(float)
        cust = df["CustomerID"]
        item = df["StockCode"]
        out["unit_price"] = price
        out["log_unit_price"] = np.log1p(price.clip(lower=0))
        out["hour"] = when.dt.hour
        out["weekday"] = when.dt.dayofweek
        out["month"] = when.dt.month
        out["day_of_month"] = when.dt.day
        out["customer_id"] = pd.to_numeric(cust, errors="coerce")  # text ids (Amazon's) are missing values
        out["country_code"] = df["Country"].map(self.countries).fillna(-1)
        out["customer_train_invoices"] = cust.map(self.customer_invoices).fillna(0)
        out["customer_train_lines"] = cust.map(self.customer_lines).fillna(0)
        basket = df.groupby("InvoiceNo")["StockCode"].transform("size")
        out["basket_lines"] = basket
        value = price  # quantity is the target, so the basket share uses prices only
        out["basket_value_share"] = value / df.assign(_v=value).groupby("InvoiceNo")["_v"].transform("sum").replace(
            0, np.nan
        )
        out["item_train_lines"] = item.map(self.item_lines).fillna(0)
        out["item_train_customers"] = item.map(self.item_customers).fillna(0)
        mean_price = item.map(self.item_mean_price)
        out["price_vs_item_mean"] = (price / mean_price).where(mean_price > 0)
        if "rfm" in self.groups:  # as of the end of training: no information from the rows' own period
            out["rfm_recency_days"] = self.reference_day - cust.map(self.customer_last_day)
            out["rfm_frequency"] = cust.map(self.customer_invoices).fillna(0)
            out["rfm_monetary"] = cust.map(self.customer_monetary).fillna(0)
        if "invoice" in self.groups:
            by_invoice = df.groupby("InvoiceNo")
            out["invoice_number"] = pd.to_numeric(df["InvoiceNo"].astype(str).str.lstrip("CA"), errors="coerce")
            out["invoice_lines"] = basket
            out["invoice_distinct_items"] = by_invoice["StockCode"].transform("nunique")
            out["invoice_price_sum"] = df.assign(_p=price).groupby("InvoiceNo")["_p"].transform("sum")
        if "stock_code" in self.groups:
            out["stock_code_index"] = item.astype(str).map(self.item_index).fillna(-1)
        return out[self.columns].astype("float32")

    def to_dict(self) -> dict:
        return {
            k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in self.__dict__.items()
        }

    @classmethod
    def from_dict(cls, d: dict) -> TabularEncoder:
        enc = cls(**d)
        enc.customer_invoices = {int(k): v for k, v in enc.customer_invoices.items()}
        enc.customer_lines = {int(k): v for k, v in enc.customer_lines.items()}
        enc.customer_last_day = {int(k): v for k, v in enc.customer_last_day.items()}
        enc.customer_monetary = {int(k): v for k, v in enc.customer_monetary.items()}
        return enc


TEXT_GROUPS = {
    "text_cluster": ["text_cluster"],
    "text_pca10": [f"text_pca10_{i}" for i in range(10)],
    "text_pca2": ["text_pca2_0", "text_pca2_1"],
}


@dataclass
class EmbeddingFeatures:
    """PCA (2 and 10 dimensions) and KMeans cluster labels of item embeddings, fitted on the
    embeddings of items sold in the training split only; applied to any stock code with an embedding."""

    codes: list[str]
    table: np.ndarray  # rows aligned with codes: [cluster, pca10 x10, pca2 x2]

    @classmethod
    def fit(cls, items: pd.DataFrame, train_codes, clusters: int, *, seed: int = 0) -> EmbeddingFeatures:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        vectors = np.stack(items["embedding"].to_numpy()).astype(np.float32)
        codes = items["StockCode"].astype(str).tolist()
        fit_rows = np.isin(codes, sorted({str(c) for c in train_codes}))
        if fit_rows.sum() < max(clusters, 10):
            raise ValueError(
                f"only {int(fit_rows.sum())} training items have embeddings; need at least "
                f"{max(clusters, 10)} for PCA/KMeans"
            )
        fitted = vectors[fit_rows]
        kmeans = KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit(fitted)
        pca10 = PCA(n_components=10, random_state=seed).fit(fitted)
        pca2 = PCA(n_components=2, random_state=seed).fit(fitted)
        table = np.column_stack([kmeans.predict(vectors), pca10.transform(vectors), pca2.transform(vectors)])
        return cls(codes, table.astype(np.float32))

    def transform(self, stock_codes: pd.Series, groups: list[str]) -> pd.DataFrame:
        columns = [c for g in TEXT_GROUPS for c in TEXT_GROUPS[g]]
        frame = pd.DataFrame(self.table, columns=columns, index=self.codes)
        wanted = [c for g in groups for c in TEXT_GROUPS[g]]
        out = frame.reindex(stock_codes.astype(str).to_numpy())[wanted]
        out.index = stock_codes.index
        if "text_cluster" in out:
            out["text_cluster"] = out["text_cluster"].fillna(-1)
        return out.astype("float32")
