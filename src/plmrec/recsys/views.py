"""The evaluation views: whom and what each one scores, from the same window and the same models.

- `all`: every item an evaluated customer bought in the window, scored on the mixed list (the
  default served list: repurchases and new items together);
- `discovery`: only the items new to the customer, scored on the discover list (the customer's own
  items left out of the ranking);
- `new_items`: only the items first sold in the window, which no id-based model can rank (their text
  can): recall@50 of the discover list, and the share of customers whose top 10 holds such an item;
- `new_customers`: customers whose first purchase falls in the window, served from their first day's
  basket (as the server serves an unknown customer with a basket); the targets are what they bought on
  later days of the window.

A customer counts in a view when the view leaves them at least one target item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from plmrec.data.prepare import window_rows
from plmrec.data.schema import DAY_NS
from plmrec.ranking import RANKING_METRICS
from plmrec.recsys import recommend

VIEWS = ("all", "discovery", "new_items", "new_customers")
LIST_OF_VIEW = {"all": "mixed", "discovery": "discover", "new_items": "discover", "new_customers": "mixed"}
TITLES = {
    "all": "All purchases",
    "discovery": "Discovery (items new to the customer)",
    "new_items": "New items (first sold in the window)",
    "new_customers": "New customers (served from their first basket)",
}
# The view each served list is chosen on (a basket: an unknown customer's lists, the new-customer path;
# buy_again has no view of its own and goes with mixed), and the served list each view scores.
VIEW_OF_LIST = {"mixed": "all", "buy_again": "all", "discover": "discovery", "basket": "new_customers"}
SERVED_LIST_OF_VIEW = {**LIST_OF_VIEW, "new_customers": "basket"}


def lists_by_row(lists: dict[str, str]) -> dict[str, list[str]]:
    """Each row with the served lists it ranks ('buy again' spelt with a space), in the lists' order."""
    out: dict[str, list[str]] = {}
    for kind, row in lists.items():
        out.setdefault(row, []).append(kind.replace("_", " "))
    return out


NEW_ITEM_K = 50  # new items: recall at this depth
NEW_ITEM_SHARE = "new_item_lists@10"  # the share of top-10 lists that hold a new item
CO_PURCHASE = "co-purchase"  # item-kNN over the purchase matrix: the new-customer view's id-only baseline


@dataclass
class Targets:
    """A view's customers (positions among the lists' rows) and their target items."""

    rows: np.ndarray
    relevant: list[set[int]]

    def among(self, rows: np.ndarray) -> Targets:
        """The same targets for those of `rows` the view holds (e.g. the valid customers no ranker learnt)."""
        kept = np.isin(self.rows, rows)
        return Targets(self.rows[kept], [r for r, k in zip(self.relevant, kept) if k])

    def figure(self, lists: np.ndarray, ks: list[int], metric: str) -> float:
        """`metric` of the lists (rows: the lists' customers) on these targets; 0 without a customer."""
        return recommend.evaluate(lists[self.rows], self.relevant, ks)[metric] if self.relevant else 0.0


def _kept(pairs) -> Targets:
    rows, relevant = [], []
    for i, items in pairs:
        if items:
            rows.append(i)
            relevant.append(items)
    return Targets(np.array(rows, dtype=np.int64), relevant)


def all_purchases(w: recommend.Window) -> Targets:
    return Targets(np.arange(len(w.eval_rows)), list(w.relevant))


def discovery(w: recommend.Window) -> Targets:
    pairs = enumerate(zip(w.eval_rows, w.relevant))
    return _kept((i, rel - set(w.counts[r].indices.tolist())) for i, (r, rel) in pairs)


def new_item_columns(w: recommend.Window) -> np.ndarray:
    """Item columns nobody bought before the window."""
    return np.flatnonzero(np.asarray(w.counts.sum(axis=0)).ravel() == 0)


def new_items(w: recommend.Window) -> Targets:
    new = set(new_item_columns(w).tolist())
    return _kept((i, rel & new) for i, rel in enumerate(w.relevant))


def new_customer_window(
    prepared: pd.DataFrame, item_col: dict[str, int], split: str, *, exclude_history: bool = False
) -> recommend.Window:
    """The window's new customers (no purchase before it): each one's first day in it as their only
    history (`counts`; dated like a served basket, so days since is 0), the items they bought on later
    days as `relevant` (less the basket's with `exclude_history`); only customers with both."""
    past, future = window_rows(prepared, split)
    new = future[~future["CustomerID"].isin(past["CustomerID"].unique())]
    new = new[new["StockCode"].astype(str).isin(item_col)]
    day = new["InvoiceDate"].astype("int64") // DAY_NS
    first = day.groupby(new["CustomerID"]).transform("min")
    basket, later = new[day == first], new[day > first]
    wanted = recommend.items_per_customer(later, item_col)
    if exclude_history:
        bought = recommend.items_per_customer(basket, item_col)
        wanted = pd.Series({c: items - bought.get(c, set()) for c, items in wanted.items()}, dtype=object)
        wanted = wanted[wanted.map(len) > 0]
    basket = basket[basket["CustomerID"].isin(wanted.index)]
    customers, row, counts, _ = recommend.purchase_matrices(basket, item_col)
    end_day = float(future["InvoiceDate"].min().value // DAY_NS) if len(future) else 0.0
    last_day = (counts > 0).astype(np.float64) * (end_day + 1)
    return recommend.Window(
        customers=customers,
        counts=counts,
        last_day=sp.csr_matrix(last_day),
        eval_rows=np.arange(len(customers), dtype=np.int64),
        relevant=[wanted[c] for c in customers],
        end_day=end_day,
    )


def basket_scorers(
    basket: recommend.Window,
    history: recommend.Scorers,
    *,
    item_vectors: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int,
    rp,
) -> recommend.Scorers:
    """Scorers for new customers' baskets: each basket folded into the ALS item factors fitted on the
    history (`history`), popularity from the history, the text scores from the basket's items."""
    import dataclasses

    counts = basket.counts
    factors = recommend.fold_in_rows(
        history.item_factors, counts, alpha=rp.mf.alpha, regularization=rp.mf.regularization
    )
    s = recommend.score_rows(
        counts,
        factors,
        history.item_factors,
        item_vectors=item_vectors,
        clusters=clusters,
        n_clusters=n_clusters,
        popularity=history.popularity,
        similarity=rp.mf.similarity,
        last_day=basket.last_day,
    )
    return dataclasses.replace(s, item_factors=history.item_factors)


def co_purchase_scores(history: sp.csr_matrix, basket: sp.csr_matrix, *, neighbours: int = 100) -> np.ndarray:
    """Item-kNN (implicit's cosine item-item model over the history's purchase matrix): a basket's score
    for an item is the summed similarity of its items to it."""
    import warnings

    from implicit.nearest_neighbours import CosineRecommender
    from implicit.utils import ParameterWarning

    model = CosineRecommender(K=neighbours)
    with warnings.catch_warnings():  # implicit normalises into COO and warns about its own conversion
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(sp.csr_matrix(history, dtype=np.float32), show_progress=False)
    binary = (sp.csr_matrix(basket) > 0).astype(np.float32)
    return np.asarray((binary @ model.similarity).todense(), dtype=np.float32)


def score_view(view: str, lists: np.ndarray, targets: Targets, *, ks: list[int], new_columns=None) -> dict:
    """The view's metrics for one model's lists (rows: the lists' customers): the ranking metrics at `ks`
    and recall@NEW_ITEM_K; for `new_items` also the share of top-10 lists holding a new item."""
    depth = sorted(set(ks) | {NEW_ITEM_K})
    if not len(targets.rows):
        out = {f"{m}@{k}": float("nan") for k in ks for m in RANKING_METRICS}
        out[f"recall@{NEW_ITEM_K}"] = float("nan")
    else:
        found = recommend.evaluate(lists[targets.rows], targets.relevant, depth)
        out = {k: v for k, v in found.items() if "@" in k and (int(k.split("@")[1]) in ks)}
        out[f"recall@{NEW_ITEM_K}"] = found[f"recall@{NEW_ITEM_K}"]
    out["customers"] = len(targets.rows)
    if view == "new_items" and new_columns is not None:
        out[NEW_ITEM_SHARE] = float(np.isin(lists[:, :10], new_columns).any(axis=1).mean()) if len(lists) else 0.0
    return out


def new_item_picks(text_scores: np.ndarray, new_columns: np.ndarray, *, slots: int) -> np.ndarray:
    """Per row, the `slots` new items with the best text scores (ties: the first column)."""
    return new_columns[np.argsort(-text_scores[:, new_columns], axis=1, kind="stable")[:, :slots]]


def with_new_items(
    lists: np.ndarray, text_scores: np.ndarray, new_columns: np.ndarray, *, slots: int, depth: int = 10
) -> np.ndarray:
    """Each list (rows: customers, -1 pads) with its `slots` best new items by text score (customers x
    items, e.g. the cosine to what they bought) in the last `slots` places of its top `depth`; the list's
    other items follow in their order, each item once. The way a product nobody has bought yet reaches a
    discover list: a row's slots are chosen on valid (0: none)."""
    if not slots or not len(new_columns) or not len(lists):
        return lists
    k, slots = lists.shape[1], min(slots, depth)
    picked = new_item_picks(text_scores, new_columns, slots=slots)
    out = np.full_like(lists, -1)
    for i, row in enumerate(lists):
        rest = row[(row >= 0) & ~np.isin(row, picked[i])]
        head = depth - len(picked[i])
        merged = np.concatenate([rest[:head], picked[i], rest[head:]])[:k]
        out[i, : len(merged)] = merged
    return out
