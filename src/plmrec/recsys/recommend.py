"""Top-K recommenders on the temporal split: popularity, implicit ALS and its PLM variants, text
nearest neighbours, and a learning-to-rank re-ranker.

For an evaluation window (valid or test), models see only purchases before it; a customer is
evaluated when they have such a history and buy something in the window. Hyperparameters (ALS
factors, blend weights) are chosen on valid; the models are then refitted on train + valid and
the test window is scored once. The ranker learns on the valid window (features from models fitted
on train) and ranks the test window (features from models refitted on train + valid).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from plmrec.config import RecommendersParams
from plmrec.data.prepare import window_rows
from plmrec.data.schema import DAY_NS
from plmrec.ranking import ranking_metrics
from plmrec.recsys import rows as row_registry
from plmrec.vectors import normalise


@dataclass
class Window:
    """Purchases before an evaluation window and what each evaluated customer bought in it."""

    customers: np.ndarray  # every customer with history (matrix rows)
    counts: sp.csr_matrix  # customers x items, purchase lines before the window
    last_day: sp.csr_matrix  # customers x items, day (since epoch) of the latest such purchase + 1
    eval_rows: np.ndarray  # matrix rows of the evaluated customers
    relevant: list[set[int]]  # item columns bought in the window, per evaluated customer
    end_day: float  # the window's first day


def purchase_matrices(rows: pd.DataFrame, item_col: dict[str, int]):
    """Customers (sorted), their matrix row, and per (customer, item): purchase lines and the day
    (since epoch) of the latest purchase + 1."""
    customers = np.sort(rows["CustomerID"].unique())
    row = {c: i for i, c in enumerate(customers)}
    r = rows["CustomerID"].map(row).to_numpy()
    c = rows["StockCode"].astype(str).map(item_col).to_numpy()
    day = (rows["InvoiceDate"].astype("int64") // DAY_NS).to_numpy().astype(np.float64)
    shape = (len(customers), len(item_col))
    counts = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=shape)
    last = pd.DataFrame({"r": r, "c": c, "d": day}).groupby(["r", "c"])["d"].max().reset_index()
    last_day = sp.csr_matrix((last["d"].to_numpy() + 1, (last["r"], last["c"])), shape=shape)
    return customers, row, counts, last_day


def items_per_customer(rows: pd.DataFrame, item_col: dict[str, int]) -> pd.Series:
    """customer -> the set of item columns they bought in `rows` (items outside `item_col` left out)."""
    return rows.groupby("CustomerID")["StockCode"].agg(lambda s: {item_col[str(x)] for x in s if str(x) in item_col})


def make_window(prepared: pd.DataFrame, item_col: dict[str, int], split: str, *, exclude_history: bool) -> Window:
    past, future = window_rows(prepared, split)
    customers, row, counts, last_day = purchase_matrices(past, item_col)
    wanted = items_per_customer(future[future["CustomerID"].isin(row)], item_col)
    eval_rows, relevant = [], []
    for customer, items in wanted.items():
        i = row[customer]
        if exclude_history:
            items = items - set(counts[i].indices)
        if items:
            eval_rows.append(i)
            relevant.append(items)
    end_day = float(future["InvoiceDate"].min().value // DAY_NS)
    return Window(customers, counts, last_day, np.array(eval_rows, dtype=np.int64), relevant, end_day)


def fit_als(
    counts: sp.csr_matrix, factors: int, regularization: float, *, alpha: float, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    conf = confidence(counts, alpha)
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; threaded BLAS only slows it down
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=1.0, iterations=iterations, random_state=seed
        )
        model.fit(conf.astype(np.float32), show_progress=False)
    items = np.asarray(model.item_factors).copy()
    items[np.asarray(counts.sum(axis=0)).ravel() == 0] = 0.0  # an item nobody bought has no ALS vector
    return np.asarray(model.user_factors), items


def zscore(scores: np.ndarray) -> np.ndarray:
    """Standardised per customer (row): the blends' common scale."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return (scores - mean) / np.where(std > 0, std, 1.0)


def user_profiles(
    counts: sp.csr_matrix, rows: np.ndarray, item_vectors: np.ndarray, *, clusters: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: the normalised mean of their items' vectors and their share of purchases per cluster."""
    sub = counts[rows]
    binary = sub.copy()
    binary.data[:] = 1.0
    vecs = binary @ item_vectors
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    onehot = sp.csr_matrix(
        (np.ones(len(clusters)), (np.arange(len(clusters)), clusters)), shape=(len(clusters), n_clusters)
    )
    share = np.asarray((sub @ onehot).todense(), dtype=np.float32)
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-12)
    return vecs.astype(np.float32), share


SIMILARITY_MATRIX_MAX_ITEMS = 8192  # below this the item x item cosine matrix is kept (256 MiB at most)


def item_similarity(item_vectors: np.ndarray) -> np.ndarray | None:
    """The item x item cosine matrix (float32), or None above SIMILARITY_MATRIX_MAX_ITEMS items."""
    if len(item_vectors) > SIMILARITY_MATRIX_MAX_ITEMS:
        return None
    v = normalise(item_vectors)
    return v @ v.T


def max_similarity(
    counts: sp.csr_matrix,
    item_vectors: np.ndarray,
    *,
    block: int = 256,
    unit: bool = False,
    pairwise: np.ndarray | None = None,
) -> np.ndarray:
    """Per customer row and item: the cosine of the item to the most similar item the customer bought
    (item-to-item neighbours over text, one interest per bought item); 0 for a customer without history.
    pairwise: item_similarity() computed once (the server keeps it), else built here for a large batch;
    unit: the vectors are already L2-normalised (a serving bundle's), so they are used as they are."""
    counts = sp.csr_matrix(counts)
    v = None
    if pairwise is None:
        v = item_vectors.astype(np.float32, copy=False) if unit else normalise(item_vectors)
        if counts.nnz > len(v):  # a batch with more history rows than items: the matrix pays off
            pairwise = item_similarity(v)
    out = np.zeros((counts.shape[0], len(item_vectors)), dtype=np.float32)
    for start in range(0, counts.shape[0], block):
        part = counts[start : start + block]
        lengths = np.diff(part.indptr)
        if not lengths.any():
            continue
        rows = pairwise[part.indices] if pairwise is not None else v[part.indices] @ v.T
        filled = np.flatnonzero(lengths)  # segments of the non-empty rows are contiguous in `rows`
        out[start + filled] = np.maximum.reduceat(rows, part.indptr[filled], axis=0)
    return out


def top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    scores = scores.copy()
    if exclude is not None:
        r, c = exclude.nonzero()
        scores[r, c] = -np.inf
    part = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1)
    idx = np.lexsort((part, -order), axis=1)  # by score, ties by item column
    return np.take_along_axis(part, idx, axis=1)


def evaluate(ranked: np.ndarray, relevant: list[set[int]], ks: list[int]) -> dict[str, float]:
    m = ranking_metrics(ranked, relevant, ks)
    for k in ks:
        p, r = m[f"precision@{k}"], m[f"recall@{k}"]
        m[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0  # of the mean P and R, as in the study
    return m


@dataclass
class Scorers:
    """Everything fitted on one window's history that the recommenders score with."""

    mf: np.ndarray  # eval customers x items
    similarity: np.ndarray  # text score: max (or mean-profile) cosine to the customer's items
    cluster: np.ndarray  # the customer's purchase share of the item's cluster
    popularity: np.ndarray  # items, log1p purchase lines
    bought: np.ndarray  # eval customers x items, 1 where the customer bought the item before
    recent_similarity: np.ndarray | None = None  # max cosine to the items of the customer's latest purchase day
    item_factors: np.ndarray | None = None  # the ALS item factors (a new customer's basket is folded into them)
    user_model: np.ndarray | None = None  # eval customers x items: max_c cos(u_c, v_j) of the user model
    user_model_c: np.ndarray | None = None  # the c that attains it

    def with_user_model(self, scores: np.ndarray, which: np.ndarray) -> Scorers:
        """These scorers with the user model's scores (from plmrec.usermodel.store.item_scores) added."""
        if scores.shape != self.mf.shape:
            raise ValueError(f"user-model scores {scores.shape} do not match the customers x items {self.mf.shape}")
        return dataclasses.replace(self, user_model=scores, user_model_c=which)


def fit_scorers(
    w: Window,
    item_vectors: np.ndarray,
    clusters: np.ndarray,
    *,
    n_clusters: int,
    factors: int,
    rp: RecommendersParams,
    seed: int,
) -> Scorers:
    uf, vf = fit_als(w.counts, factors, rp.mf.regularization, alpha=rp.mf.alpha, iterations=rp.mf.iterations, seed=seed)
    s = score_rows(
        w.counts[w.eval_rows],
        uf[w.eval_rows],
        vf,
        item_vectors=item_vectors,
        clusters=clusters,
        n_clusters=n_clusters,
        popularity=item_popularity(w.counts),
        similarity=rp.mf.similarity,
        last_day=w.last_day[w.eval_rows],
    )
    return dataclasses.replace(s, item_factors=vf)


def latest_items(last_day: sp.csr_matrix) -> sp.csr_matrix:
    """Per row, 1 for the items bought on the row's latest purchase day (its last basket), else 0."""
    last_day = sp.csr_matrix(last_day)
    newest = np.asarray(last_day.max(axis=1).todense()).ravel()
    keep = last_day.data >= np.repeat(newest, np.diff(last_day.indptr))
    out = sp.csr_matrix(
        (keep.astype(np.float32), last_day.indices.copy(), last_day.indptr.copy()), shape=last_day.shape
    )
    out.eliminate_zeros()  # in place: on copies, so the caller's matrix keeps its own indices
    return out


def item_popularity(counts: sp.csr_matrix) -> np.ndarray:
    return np.log1p(np.asarray(counts.sum(axis=0)).ravel())


def row_products(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """rows @ items.T as float32, summed in float64: each row's scores are the same whatever batch it is in
    (a float32 product's last bit depends on the batch's shape, and a ranker's split can sit on that bit),
    so a customer ranked alone per request and in a batch at load get one list."""
    return (np.asarray(rows, dtype=np.float64) @ np.asarray(items, dtype=np.float64).T).astype(np.float32)


def score_rows(
    counts: sp.csr_matrix,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    *,
    item_vectors: np.ndarray,
    clusters: np.ndarray,
    n_clusters: int,
    popularity: np.ndarray,
    similarity: str = "max",
    unit_vectors: bool = False,
    pairwise: np.ndarray | None = None,
    last_day: sp.csr_matrix | None = None,
) -> Scorers:
    """Scorers for the customers whose purchase rows (and ALS vectors) are given; the served path
    scores one customer or basket with the same function as the evaluation. `last_day` (the rows'
    latest purchase days) gives the similarity to the last basket; without it that is all the row."""
    vecs, share = user_profiles(
        counts, np.arange(counts.shape[0]), item_vectors, clusters=clusters, n_clusters=n_clusters
    )
    if similarity not in ("max", "mean"):
        raise ValueError(f"unknown similarity '{similarity}' (expected max or mean)")
    counts = sp.csr_matrix(counts)
    latest = counts if last_day is None else latest_items(last_day)

    def best_cosine(rows: sp.csr_matrix) -> np.ndarray:
        return max_similarity(rows, item_vectors, unit=unit_vectors, pairwise=pairwise)

    text = best_cosine(counts) if similarity == "max" else row_products(vecs, item_vectors)
    whole_history = latest.nnz == counts.nnz  # every bought item is in the last basket (a basket request)
    return Scorers(
        mf=row_products(user_factors, item_factors),
        similarity=text,
        cluster=share[:, clusters],
        popularity=popularity,
        bought=(counts > 0).toarray().astype(np.float32),
        recent_similarity=text if similarity == "max" and whole_history else best_cosine(latest),
    )


def confidence(counts: sp.csr_matrix | np.ndarray, alpha: float):
    """ALS confidence of purchase lines: 1 + alpha * log1p(lines)."""
    if sp.issparse(counts):
        out = counts.copy()
        out.data = 1.0 + alpha * np.log1p(out.data)
        return out
    return 1.0 + alpha * np.log1p(np.asarray(counts, dtype=np.float64))


def gram(item_factors: np.ndarray) -> np.ndarray:
    """V'V in float64: the part of every fold-in that does not depend on the row (once per item factors)."""
    v = item_factors.astype(np.float64)
    return v.T @ v


def fold_in(
    item_factors: np.ndarray,
    items: np.ndarray,
    conf: np.ndarray,
    *,
    regularization: float,
    item_gram: np.ndarray | None = None,
) -> np.ndarray:
    """The ALS user vector of a new purchase row (the least-squares step for one user, items held fixed):
    (V'V + V_i'(C_i - 1)V_i + lambda I) x = V_i' C_i; `item_gram`: V'V (`gram`) when the caller keeps it."""
    vi = item_factors[items].astype(np.float64)
    vv = gram(item_factors) if item_gram is None else item_gram
    a = vv + (vi.T * (conf - 1.0)) @ vi + regularization * np.eye(item_factors.shape[1])
    return np.linalg.solve(a, vi.T @ conf).astype(np.float32)


def fold_in_rows(
    item_factors: np.ndarray,
    counts: sp.csr_matrix,
    *,
    alpha: float,
    regularization: float,
    item_gram: np.ndarray | None = None,
) -> np.ndarray:
    """The ALS user vector of each purchase row (`fold_in` with its confidences): (rows, factors)."""
    counts = sp.csr_matrix(counts)
    if not counts.shape[0]:
        return np.zeros((0, item_factors.shape[1]), dtype=np.float32)
    vv = gram(item_factors) if item_gram is None else item_gram
    return np.stack(
        [
            fold_in(item_factors, row.indices, confidence(row.data, alpha), regularization=regularization, item_gram=vv)
            for row in (counts[i] for i in range(counts.shape[0]))
        ]
    )


def scorer_scores(s: Scorers, field: str) -> np.ndarray:
    """One scorer as customers x items: a per-item score (popularity) is the same for every customer."""
    value = getattr(s, field)
    if value is None:
        raise ValueError(f"the scorers have no {field} scores (the user model's come from train-user-model)")
    return np.broadcast_to(value, s.mf.shape) if value.ndim == 1 else value


def variant_scores(s: Scorers, **weights: float) -> dict[str, np.ndarray]:
    """The scores of every row scored from the scorers (plmrec.recsys.rows; learning to rank aside), in
    registry order, each blend at its weight in `weights` (by the weight's name; 0 when not given); the
    user-model rows when the scorers have the user model."""
    unknown = set(weights) - set(row_registry.weight_names())
    if unknown:
        raise TypeError(
            f"unknown blend weight(s) {', '.join(sorted(unknown))} (known: {', '.join(row_registry.weight_names())})"
        )
    return {
        row.name: row.score(s, weights)
        for row in row_registry.scored_rows()
        if s.user_model is not None or not row.user_model
    }


# The ranker's features, each with its source (feature importance is summed per source). The text
# sources are what the no-text twin (a row registered with text=False) leaves out.
LTR_FEATURES = {
    "mf": "mf",
    "mf_rank": "mf",
    "similarity": "text",  # max cosine to an item the customer bought
    "cluster_share": "text",  # the customer's share of purchases in the item's text cluster
    "popularity": "popularity",
    "user_item_lines": "history",
    "days_since_user_bought_item": "history",
    "user_lines": "history",
    "item_customers": "popularity",
    "similarity_recent": "text",  # max cosine to an item of the customer's last basket
}
USER_MODEL_FEATURES = {"user_model": "user_model", "user_model_c": "user_model"}  # max_c cos, which c won
TEXT_SOURCES = ("text", "user_model")  # the user model reads the items' text (its id-only twin is not served)


def ltr_features(user_model: bool, *, text: bool = True) -> list[str]:
    """The ranker's feature columns: with the user model's, without the text-derived ones (`text` False)."""
    found = {**LTR_FEATURES, **(USER_MODEL_FEATURES if user_model else {})}
    return [f for f, source in found.items() if text or source not in TEXT_SOURCES]


def importance_by_source(importance: dict[str, float]) -> dict[str, float]:
    """A ranker's feature importance summed per source (history, mf, popularity, text, user_model)."""
    source, out = {**LTR_FEATURES, **USER_MODEL_FEATURES}, {}
    for name, value in importance.items():
        out[source[name]] = out.get(source[name], 0.0) + float(value)
    return out


def ltr_candidates(
    w: Window, s: Scorers, rp: RecommendersParams, *, user_model: bool = False, text: bool = True
) -> list[np.ndarray]:
    """Per evaluated customer: the top items by MF, by text similarity to what they bought and to their
    last basket (not for the no-text twin, `text` False), the most popular items, the customer's own
    items and, with `user_model`, the user model's top items."""
    lt = rp.ltr
    sources = [top_k(s.mf, lt.mf_candidates)]
    if text:
        sources.append(top_k(s.similarity, lt.neighbour_candidates))
        if lt.recent_neighbour_candidates and s.recent_similarity is not None:
            sources.append(top_k(s.recent_similarity, lt.recent_neighbour_candidates))
    if user_model:
        if s.user_model is None:
            raise ValueError("ltr candidates from the user model asked for, but the scorers have no user model")
        if lt.user_model_candidates:
            sources.append(top_k(s.user_model, lt.user_model_candidates))
    popular = np.argsort(-s.popularity, kind="stable")[: lt.popular_candidates]
    out = []
    for i, r in enumerate(w.eval_rows):
        own = w.counts[r].indices
        out.append(np.unique(np.concatenate([*(top[i] for top in sources), popular, own])))
    return out


def item_customer_counts(counts: sp.csr_matrix) -> np.ndarray:
    return np.asarray((counts > 0).sum(axis=0)).ravel()


def ltr_frame(
    w: Window,
    s: Scorers,
    candidates: list[np.ndarray],
    *,
    item_customers: np.ndarray | None = None,
    user_model: bool = False,
    text: bool = True,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per (customer, candidate) with the ranker's features (`ltr_features(user_model, text=text)`);
    also the query id per row. `item_customers` (buyers per item) defaults to the window's own counts."""
    if item_customers is None:
        item_customers = item_customer_counts(w.counts)
    lengths = np.array([len(c) for c in candidates], dtype=np.int64)
    qid = np.repeat(np.arange(len(candidates)), lengths)  # the query (row of the scorers) of each pair
    names = ltr_features(user_model, text=text)
    if not lengths.sum():  # no customer, or none with a candidate
        return pd.DataFrame(np.zeros((0, len(names))), columns=names), qid
    items = np.concatenate(candidates).astype(np.int64)
    rows = w.eval_rows[qid]
    order = np.argsort(-s.mf, axis=1)  # its inverse permutation is the rank (as argsort of argsort)
    mf_rank = np.empty_like(order)
    np.put_along_axis(mf_rank, order, np.arange(s.mf.shape[1])[None, :], axis=1)
    lines = np.asarray(w.counts[rows, items]).ravel()
    last = np.asarray(w.last_day[rows, items]).ravel()
    user_lines = np.asarray(w.counts.sum(axis=1)).ravel()
    recent = s.recent_similarity if s.recent_similarity is not None else s.similarity
    column = {
        "mf": lambda: s.mf[qid, items],
        "mf_rank": lambda: mf_rank[qid, items],
        "similarity": lambda: s.similarity[qid, items],
        "cluster_share": lambda: s.cluster[qid, items],
        "popularity": lambda: s.popularity[items],
        "user_item_lines": lambda: lines,
        "days_since_user_bought_item": lambda: np.where(last > 0, w.end_day - (last - 1), 9999.0),
        "user_lines": lambda: user_lines[rows],
        "item_customers": lambda: item_customers[items],
        "similarity_recent": lambda: recent[qid, items],
        "user_model": lambda: s.user_model[qid, items],
        "user_model_c": lambda: s.user_model_c[qid, items],
    }
    frame = np.column_stack([column[n]() for n in names]).astype(np.float64)
    return pd.DataFrame(frame, columns=names), qid


def ltr_labels(w: Window, candidates: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.isin(items, list(rel)).astype(np.float32) for items, rel in zip(candidates, w.relevant)])


def held_out_queries(qid: np.ndarray, seed: int) -> np.ndarray:
    """The fifth of a window's queries (customers) a ranker is early-stopped on, never trained on."""
    queries = np.unique(qid)
    return np.random.default_rng(seed).choice(queries, size=max(1, len(queries) // 5), replace=False)


def fit_ranker(
    frame: pd.DataFrame,
    qid: np.ndarray,
    labels: np.ndarray,
    *,
    rp: RecommendersParams,
    seed: int,
    held: np.ndarray | None = None,
):
    """XGBoost rank:ndcg on the valid window; early stopping on a held-out fifth of its customers
    (`held`: those queries, else `held_out_queries`)."""
    import xgboost as xgb

    xp = rp.ltr.xgboost
    held = held_out_queries(qid, seed) if held is None else held
    is_held = np.isin(qid, held)
    ranker = xgb.XGBRanker(**xp.booster_settings(), objective="rank:ndcg", eval_metric="ndcg@10", random_state=seed)
    from plmrec.recsys.boosting import fit_ranker as fit_on_backend

    return fit_on_backend(
        ranker,
        xp,
        x=frame[~is_held],
        y=labels[~is_held],
        qid=qid[~is_held],
        eval_set=[(frame[is_held], labels[is_held])],
        eval_qid=[qid[is_held]],
    )


def ranker_scores(ranker, frame: pd.DataFrame) -> np.ndarray:
    """The ranker's score of each frame row (none for an empty frame, which XGBoost refuses): what
    `XGBRanker.predict` gives (the trees up to the early-stopping best iteration), read from the frame's
    array by the booster itself, without the wrapper's per-call pandas conversion (half a served request's
    prediction time); the frame's columns must be the ranker's features, in order."""
    if not len(frame):
        return np.zeros(0)
    booster = ranker.get_booster()
    if booster.feature_names is not None and list(frame.columns) != list(booster.feature_names):
        raise ValueError(f"ranker features {booster.feature_names} but the frame has {list(frame.columns)}")
    best = getattr(ranker, "best_iteration", None)
    span = (0, best + 1) if best is not None else (0, 0)
    return booster.inplace_predict(np.ascontiguousarray(frame.to_numpy()), iteration_range=span)


def ltr_rank(
    ranker,
    frame: pd.DataFrame,
    qid: np.ndarray,
    *,
    candidates: list[np.ndarray],
    k: int,
    keep: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> np.ndarray:
    """Each query's top-k candidates by the ranker's score (ties by item; -1 pads a short list).
    `keep`: a mask over the frame's rows (e.g. not bought before: the discover list); `scores`: the
    ranker's predictions for the frame when already made."""
    scores = ranker_scores(ranker, frame) if scores is None else scores
    out = np.full((len(candidates), k), -1, dtype=np.int64)
    start = 0
    for i, items in enumerate(candidates):
        sc = scores[start : start + len(items)]
        if keep is not None:
            mask = keep[start : start + len(items)]
            items, sc = items[mask], sc[mask]
        order = np.lexsort((items, -sc))[:k]
        out[i, : len(order)] = items[order]
        start += len(candidates[i])
    return out
