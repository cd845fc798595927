"""Tabular (non-text) features for the quantity-label model, fitted on the training split only.

Each group can be switched on or off in `params.yaml` (baseline.feature_groups), so later
feature ablations (text embeddings, clusters) add groups without reshaping this code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FEATURE_GROUPS = {
    "transaction": ["unit_price", "log_unit_price", "hour", "weekday", "month", "day_of_month"],
    "customer": ["customer_id", "country_code", "customer_train_invoices", "customer_train_lines"],
    "basket": ["basket_lines", "basket_value_share"],
    "item": ["item_train_lines", "item_train_customers", "price_vs_item_mean"],
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

    @property
    def columns(self) -> list[str]:
        return [c for g in self.groups for c in FEATURE_GROUPS[g]]

    @classmethod
    def fit(cls, train: pd.DataFrame, groups: list[str]) -> "TabularEncoder":
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
        out["customer_id"] = cust.astype(float)
        out["country_code"] = df["Country"].map(self.countries).fillna(-1)
        out["customer_train_invoices"] = cust.map(self.customer_invoices).fillna(0)
        out["customer_train_lines"] = cust.map(self.customer_lines).fillna(0)
        basket = df.groupby("InvoiceNo")["StockCode"].transform("size")
        out["basket_lines"] = basket
        value = price  # quantity is the target, so the basket share uses prices only
        out["basket_value_share"] = value / df.assign(_v=value).groupby("InvoiceNo")["_v"].transform("sum").replace(0, np.nan)
        out["item_train_lines"] = item.map(self.item_lines).fillna(0)
        out["item_train_customers"] = item.map(self.item_customers).fillna(0)
        mean_price = item.map(self.item_mean_price)
        out["price_vs_item_mean"] = (price / mean_price).where(mean_price > 0)
        return out[self.columns].astype("float32")

    def to_dict(self) -> dict:
        return {k: ({str(kk): vv for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TabularEncoder":
        enc = cls(**d)
        enc.customer_invoices = {int(k): v for k, v in enc.customer_invoices.items()}
        enc.customer_lines = {int(k): v for k, v in enc.customer_lines.items()}
        return enc
