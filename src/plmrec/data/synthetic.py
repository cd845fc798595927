"""A seeded generator of Online Retail-shaped transactions, the offline default data source.

Products are named from a vocabulary (colour, material, theme, product type), and every
product belongs to one theme. Each customer has latent tastes over themes and a buying
scale (retail or wholesale), so descriptions carry real signal about who buys what and how
much. The output mirrors the real file's quirks: cancellations ('C' invoices with negative
quantities), returns without a 'C', guest checkouts with no CustomerID, zero prices,
postage lines, heavy-tailed quantities and prices, and a pre-Christmas peak.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from plmrec.config import SyntheticParams

COLOURS = ["RED", "WHITE", "PINK", "BLUE", "GREEN", "IVORY", "BLACK", "SILVER", "GOLD", "PURPLE", "CREAM", "YELLOW"]
MATERIALS = ["METAL", "GLASS", "WOODEN", "CERAMIC", "ENAMEL", "PAPER", "FELT", "ZINC", "WICKER", "PORCELAIN"]
THEMES = {
    "HEART": ["HEART", "LOVE", "SWEETHEART"],
    "CHRISTMAS": ["CHRISTMAS", "SANTA", "REINDEER", "SNOWFLAKE"],
    "VINTAGE": ["VINTAGE", "ANTIQUE", "RETRO"],
    "GARDEN": ["GARDEN", "BIRD", "FLOWER", "ROSE"],
    "KIDS": ["SPACEBOY", "DOLLY GIRL", "CIRCUS", "DINOSAUR"],
    "KITCHEN": ["BAKING", "REGENCY", "TEA TIME", "CAKE"],
    "PARTY": ["PARTY", "BUNTING", "WEDDING", "BIRTHDAY"],
    "NAUTICAL": ["NAUTICAL", "SEASIDE", "ANCHOR", "SHELL"],
}
# product type -> (base unit price in GBP, typical pack quantity)
PRODUCT_TYPES = {
    "T-LIGHT HOLDER": (2.5, 12), "LANTERN": (4.5, 4), "MUG": (1.6, 12), "CAKE STAND": (9.9, 2),
    "SHOPPING BAG": (1.9, 10), "LUNCH BOX": (1.9, 12), "NAPKINS": (0.85, 12), "PAPER CUPS": (0.65, 24),
    "CANDLE": (1.25, 12), "CUSHION COVER": (3.75, 4), "PHOTO FRAME": (2.95, 6), "WALL CLOCK": (8.5, 2),
    "DOORSTOP": (4.25, 4), "HOT WATER BOTTLE": (4.95, 4), "TEA TOWEL": (1.25, 12), "STICKERS": (0.42, 24),
    "WRAPPING PAPER": (0.42, 25), "GIFT BOX": (1.65, 12), "BUNTING": (2.95, 6), "ORNAMENT": (0.85, 24),
}
COUNTRIES = [("United Kingdom", 0.89), ("Germany", 0.022), ("France", 0.02), ("EIRE", 0.018), ("Spain", 0.006),
             ("Netherlands", 0.006), ("Belgium", 0.005), ("Switzerland", 0.005), ("Portugal", 0.004),
             ("Australia", 0.004), ("Norway", 0.004), ("Italy", 0.004), ("Sweden", 0.004), ("Japan", 0.004)]
POSTAGE_CODE, POSTAGE_DESCRIPTION = "POST", "POSTAGE"
FIRST_INVOICE, FIRST_CUSTOMER = 536365, 12346


def _catalogue(rng: np.random.Generator, n_products: int) -> pd.DataFrame:
    theme_names = list(THEMES)
    types = list(PRODUCT_TYPES)
    rows, seen = [], set()
    codes = rng.choice(np.arange(10000, 90000), size=n_products * 3, replace=False)
    ci = 0
    while len(rows) < n_products:
        theme = theme_names[len(rows) % len(theme_names)]
        ptype = types[rng.integers(len(types))]
        word = THEMES[theme][rng.integers(len(THEMES[theme]))]
        pattern = rng.integers(4)
        colour, material = COLOURS[rng.integers(len(COLOURS))], MATERIALS[rng.integers(len(MATERIALS))]
        desc = [f"{colour} {word} {ptype}", f"{word} {material} {ptype}", f"{colour} {material} {word} {ptype}",
                f"SET OF 3 {word} {ptype}S"][pattern]
        if desc in seen:
            continue
        seen.add(desc)
        base, pack = PRODUCT_TYPES[ptype]
        price = round(float(base * rng.lognormal(0.0, 0.35) * (2.4 if pattern == 3 else 1.0)), 2)
        code = str(codes[ci]) + ("" if rng.random() > 0.12 else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[rng.integers(26)])
        ci += 1
        rows.append((code, desc, theme, price, pack))
    cat = pd.DataFrame(rows, columns=["StockCode", "Description", "theme", "price", "pack"])
    cat["popularity"] = rng.pareto(1.2, size=len(cat)) + 0.05
    return cat


def _customers(rng: np.random.Generator, n: int) -> pd.DataFrame:
    names, probs = zip(*COUNTRIES)
    probs = np.array(probs) / np.sum(probs)
    taste = rng.dirichlet(np.full(len(THEMES), 0.25), size=n)  # sparse: 1-2 favourite themes
    return pd.DataFrame({
        "CustomerID": FIRST_CUSTOMER + rng.choice(np.arange(6000), size=n, replace=False),
        "Country": rng.choice(np.array(names), size=n, p=probs),
        "activity": rng.lognormal(0.0, 1.1, size=n),
        "wholesale": rng.random(n) < 0.3,
        "taste": list(taste),
    })


def _invoice_times(rng: np.random.Generator, n: int, start: dt.date, *, end: dt.date) -> np.ndarray:
    days = pd.date_range(start, end, freq="D")
    days = days[days.dayofweek != 5]  # the shop took no orders on Saturdays
    month_weight = np.array([1.0, 0.8, 0.8, 1.0, 0.9, 1.0, 1.0, 1.0, 1.1, 1.5, 1.9, 1.6])[days.month - 1]
    day = rng.choice(len(days), size=n, p=month_weight / month_weight.sum())
    minutes = np.clip(rng.normal(12.5 * 60, 150, size=n), 7 * 60 + 30, 20 * 60).astype(int)
    stamps = days.values[day] + minutes.astype("timedelta64[m]")
    return np.sort(stamps)


def generate_transactions(params: SyntheticParams | None = None) -> pd.DataFrame:
    """Generate a transactions table in the exact Online Retail schema; same params, same table."""
    p = params or SyntheticParams()
    rng = np.random.default_rng(p.seed)
    cat = _catalogue(rng, p.n_products)
    cust = _customers(rng, p.n_customers)
    theme_index = {t: i for i, t in enumerate(THEMES)}
    by_theme = [np.flatnonzero(cat["theme"].map(theme_index).to_numpy() == i) for i in range(len(THEMES))]
    theme_pop = [cat["popularity"].to_numpy()[ix] / cat["popularity"].to_numpy()[ix].sum() for ix in by_theme]

    times = _invoice_times(rng, p.n_invoices, p.start, end=p.end)
    guest = rng.random(p.n_invoices) < p.guest_fraction
    who = rng.choice(len(cust), size=p.n_invoices, p=cust["activity"] / cust["activity"].sum())
    n_lines = np.clip(rng.lognormal(2.3, 0.9, size=p.n_invoices).astype(int), 1, 250)

    lines: list[tuple] = []
    invoice_no = FIRST_INVOICE
    issued: list[tuple[int, list[int]]] = []  # (index into lines of first row, rows) for cancellations
    for i in range(p.n_invoices):
        c = who[i]
        taste = cust.at[c, "taste"] if not guest[i] else np.full(len(THEMES), 1 / len(THEMES))
        wholesale = bool(cust.at[c, "wholesale"]) and not guest[i]
        themes = rng.choice(len(THEMES), size=n_lines[i], p=taste)
        items = {int(by_theme[t][rng.choice(len(by_theme[t]), p=theme_pop[t])]) for t in themes}
        first = len(lines)
        cid = None if guest[i] else int(cust.at[c, "CustomerID"])
        country = "United Kingdom" if guest[i] else cust.at[c, "Country"]
        for j in items:
            pack = int(cat.at[j, "pack"])
            if wholesale:
                qty = pack * int(rng.choice([1, 1, 1, 2, 2, 4, 8], p=None)) * int(1 + rng.pareto(3.0))
            else:
                qty = int(np.clip(rng.geometric(0.45), 1, 50)) if rng.random() < 0.7 else pack
            price = float(cat.at[j, "price"])
            if qty >= 2 * pack:  # volume discount, as in the real price list
                price = round(price * 0.85, 2)
            if rng.random() < 0.001:
                price = 0.0
            lines.append((str(invoice_no), cat.at[j, "StockCode"], cat.at[j, "Description"], qty, times[i], price, cid, country))
        if country != "United Kingdom" and rng.random() < 0.6:
            lines.append((str(invoice_no), POSTAGE_CODE, POSTAGE_DESCRIPTION, int(rng.integers(1, 4)), times[i], 18.0, cid, country))
        if cid is not None:
            issued.append((first, list(range(first, len(lines)))))
        invoice_no += 1

    # Cancellations: a 'C' invoice reverses some lines of an earlier invoice a little later.
    last_moment = np.datetime64(p.end) + np.timedelta64(20 * 60, "m")  # closing time on the last day
    n_cancel = int(p.cancel_fraction * len(issued))
    for k in rng.choice(len(issued), size=n_cancel, replace=False):
        _, rows = issued[k]
        chosen = rng.choice(rows, size=max(1, len(rows) // 3), replace=False)
        for r in chosen:
            inv, code, desc, qty, when, price, cid, country = lines[r]
            later = min(when + np.timedelta64(int(rng.integers(60, 60 * 24 * 14)), "m"), last_moment)
            lines.append((f"C{invoice_no}", code, desc, -qty, later, price, cid, country))
        invoice_no += 1
    # Stock adjustments: negative quantities, no customer, zero price, not cancelled.
    for _ in range(max(1, p.n_invoices // 200)):
        j = int(rng.integers(len(cat)))
        lines.append((str(invoice_no), cat.at[j, "StockCode"], None, -int(rng.integers(1, 100)),
                      times[int(rng.integers(len(times)))], 0.0, None, "United Kingdom"))
        invoice_no += 1

    df = pd.DataFrame(lines, columns=["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate",
                                      "UnitPrice", "CustomerID", "Country"])
    df = df.sort_values(["InvoiceDate", "InvoiceNo"], kind="stable").reset_index(drop=True)
    for col in ("InvoiceNo", "StockCode", "Description", "Country"):
        df[col] = df[col].astype("string")
    df["Quantity"] = df["Quantity"].astype("int64")
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"]).astype("datetime64[ns]")
    df["UnitPrice"] = df["UnitPrice"].astype("float64")
    df["CustomerID"] = df["CustomerID"].astype("Int64")
    return df


def synthetic_catalogue(params: SyntheticParams | None = None) -> pd.DataFrame:
    """The generator's product table with each item's latent theme (ground truth for tests)."""
    p = params or SyntheticParams()
    return _catalogue(np.random.default_rng(p.seed), p.n_products)
