"""The serving bundle: everything the predictor needs to recommend without refitting.

`build_bundle` refits the evaluated recommender on every purchase (the evaluation's chosen
settings, the ranker trained on the valid window) and writes one directory:

    bundle.json          what was served, how it was chosen, its evaluation metrics
    items.parquet        stock code, description, text cluster, popularity, buyers
    item_vectors.npy     L2-normalised item embeddings (the fine-tuned encoder)
    item_factors.npy     ALS item factors;  user_factors.npy, customers.npy: one row per customer
    history_counts.npz, history_last_day.npz  purchase lines and latest purchase day per (customer, item)
    ranker.json          the learning-to-rank XGBoost model (a learning-to-rank row: ltr, ltr+user_model)
    ranker_discover.json the discover list's own ranker, when valid chose one (trained on new-to-them purchases)
    encoder/             the sentence-transformers encoder, for free-text queries
    search/              the BM25 index of the item descriptions (lexical and hybrid queries)
    user_model.pt        the GUIM user model (a row that needs it: user_model, ltr+user_model), with
    user_vectors.npy     every customer's C vectors (one row per customer) and
    user_item_vectors.npy  its item vectors: a customer scores an item by max_c cos(u_c, v_j)

`Recommender` loads it and scores a customer, a basket or a text query with the same functions
the evaluation used (`plmrec.recsys.recommend`, and the served row's entry in `plmrec.recsys.rows`),
so what is served is what was measured. A query
runs in the search mode evaluate-search chose on valid (bundle.json `search`), or the one a
request names: dense (the encoder), lexical (BM25) or hybrid (their reciprocal rank fusion).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from plmrec.config import Params, RecommendersParams
from plmrec.data.schema import DAY_NS
from plmrec.errors import BundleError
from plmrec.features import EmbeddingFeatures
from plmrec.recsys import recommend, views
from plmrec.recsys import rows as row_registry
from plmrec.search import SEARCH_MODES
from plmrec.search.fusion import fuse
from plmrec.search.lexical import Bm25Index
from plmrec.vectors import normalise, stack

BUNDLE_FORMAT = 2  # 2: the ranker's features by row (text-free twin, similarity to the last basket)


POPULAR = "popular"  # the fallback list: the items most bought, for a request the model cannot personalise
# The served lists: mixed (the model's ranking over every item: what `all` scores), discover (items the
# customer has not bought: the discovery view), buy_again (only the customer's own items, re-ranked).
LISTS = ("mixed", "discover", "buy_again")
DEFAULT_LIST = "mixed"
PLACES_DEPTH = 10  # a discover list's new-item places are the last of its top 10 (as evaluated)


@dataclass
class Recommendation:
    stock_codes: list[str]
    descriptions: list[str]
    scores: list[float]
    unknown_stock_codes: list[str]
    fallback: str | None = None  # POPULAR when the model had nothing to go on; `reason` says why
    reason: str | None = None
    list_kind: str | None = None  # which list (LISTS) a customer or basket request got
    new_items: list[str] = field(default_factory=list)  # nobody has bought them yet: there by their text

    def to_dict(self) -> dict:
        out = {
            "items": [
                {"stock_code": c, "description": d, "score": s, **({"new_item": True} if c in self.new_items else {})}
                for c, d, s in zip(self.stock_codes, self.descriptions, self.scores)
            ]
        }
        if self.list_kind:
            out["list"] = self.list_kind
        if self.unknown_stock_codes:
            out["unknown_stock_codes"] = self.unknown_stock_codes
        if self.fallback:
            out["fallback"], out["reason"] = self.fallback, self.reason
        return out


def search_settings(decision: dict | None) -> dict:
    """The query path's settings from evaluate-search's decision (dense, as before, without one)."""
    decision = decision or {}
    return {
        "default_mode": decision.get("mode", "dense"),
        "hybrid_weight": float(decision.get("hybrid_weight", 0.5)),
        "rrf_k": int(decision.get("rrf_k", 60)),
        "depth": int(decision.get("depth", 1000)),
        "chosen_by": (
            f"evaluate-search: best valid {decision['metric']} ({decision['ranker']}) on {decision.get('benchmark')}"
            if decision.get("evaluated")
            else f"default ({decision.get('reason', 'no evaluate-search decision')})"
        ),
    }


def _history(
    prepared: pd.DataFrame, item_col: dict[str, int]
) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix, float]:
    rows = prepared[prepared["StockCode"].astype(str).isin(item_col)]
    customers, _, counts, last_day = recommend.purchase_matrices(rows, item_col)
    return customers, counts, last_day, float(rows["InvoiceDate"].max().value // DAY_NS + 1)


def build_bundle(
    prepared: pd.DataFrame,
    items: pd.DataFrame,
    encoder_dir: str | Path,
    *,
    out_dir: str | Path,
    rp: RecommendersParams,
    model: str,
    chosen: dict,
    ranker=None,
    discover_ranker=None,
    metrics: dict | None = None,
    encoder_info: dict | None = None,
    user_model: str | Path | None = None,
    search: dict | None = None,
    lifts: list[dict] | None = None,
    catalogue: pd.DataFrame | None = None,
    lists: dict[str, tuple[str, str]] | None = None,
    searchable: bool = True,
) -> Path:
    """Refit `model` with the settings chosen on valid (`chosen`: factors, weights) on all purchases;
    `user_model` (a file plmrec.usermodel.store saved, refitted on train + valid) for the user-model rows;
    `search`: evaluate-search's decision (the default query mode and the fusion weight); `lifts`: the
    model's lift over its no-text twin per evaluation view (plmrec.recsys.comparison), kept in bundle.json;
    `catalogue` (StockCode, Description): the shop's products, of which those nobody has bought yet are
    added, encoded by the bundle's encoder (a discover list with new-item places can show them); `lists`:
    the lists another row ranks (list -> (that row, its bundle's path here)); `searchable` False: no encoder and
    no BM25 index (a row's bundle inside another, which answers the queries)."""
    if model not in row_registry.names():
        raise BundleError(f"unknown served model '{model}' (expected one of {', '.join(row_registry.names())})")
    row = row_registry.get(model)
    if row.learning_to_rank and ranker is None:
        raise BundleError(f"served model is {model} but no ranker was given")
    if row.user_model and user_model is None:
        raise BundleError(f"served model is {model} but no user model was given (run train-user-model)")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    items = with_catalogue(items, catalogue, encoder_dir)
    codes = items["StockCode"].astype(str).tolist()
    item_col = {c: i for i, c in enumerate(codes)}
    vectors = normalise(stack(items["embedding"]))
    seed = int(chosen.get("seed", rp.seeds[-1]))
    train_codes = prepared.loc[prepared["split"] == "train", "StockCode"].unique()
    clusters = EmbeddingFeatures.fit(items, train_codes, rp.clusters, seed=seed).table[:, 0].astype(np.int64)
    customers, counts, last_day, end_day = _history(prepared, item_col)
    uf, vf = recommend.fit_als(
        counts, int(chosen["factors"]), rp.mf.regularization, alpha=rp.mf.alpha, iterations=rp.mf.iterations, seed=seed
    )
    pd.DataFrame(
        {
            "StockCode": codes,
            "Description": items["Description"].astype(str).tolist(),
            "cluster": clusters,
            "popularity": recommend.item_popularity(counts),
            "customers": recommend.item_customer_counts(counts),
        }
    ).to_parquet(out / "items.parquet", index=False)
    np.save(out / "item_vectors.npy", vectors)
    np.save(out / "item_factors.npy", vf.astype(np.float32))
    np.save(out / "user_factors.npy", uf.astype(np.float32))
    np.save(out / "customers.npy", stored_ids(customers))
    sp.save_npz(out / "history_counts.npz", counts)
    sp.save_npz(out / "history_last_day.npz", last_day)
    if row.learning_to_rank:
        ranker.save_model(str(out / "ranker.json"))
        if discover_ranker is not None:
            discover_ranker.save_model(str(out / "ranker_discover.json"))
    if row.user_model:
        _write_user_model(user_model, out, prepared=prepared, customers=customers, codes=codes)
    if searchable:
        shutil.copytree(encoder_dir, out / "encoder")
        Bm25Index(items["Description"].astype(str).tolist()).save(out / "search")
    meta = {
        "format": BUNDLE_FORMAT,
        "model": model,
        "seed": seed,
        "factors": int(chosen["factors"]),
        **{weight: float(chosen.get(weight, 0.0)) for weight in row_registry.weight_names()},
        "similarity": rp.mf.similarity,
        "n_clusters": rp.clusters,
        "regularization": rp.mf.regularization,
        "alpha": rp.mf.alpha,
        "ltr": rp.ltr.model_dump(mode="json"),
        "end_day": end_day,
        "items": len(codes),
        "customers": int(len(customers)),
        "purchase_lines": int(counts.sum()),
        "metrics": metrics or {},
        "twin": row_registry.twin_of(model),
        "discover_ranker": discover_ranker is not None,
        "new_item_slots": int(chosen.get(f"{model}_new_item_slots", 0)),
        "unsold_items": int((recommend.item_popularity(counts) == 0).sum()),
        "lifts": lifts or [],
        "lists": {kind: where for kind, (_, where) in (lists or {}).items()},  # list -> the bundle that ranks it
        "list_rows": {kind: row for kind, (row, _) in (lists or {}).items()},
        "encoder": encoder_info or {},
        "search": search_settings(search),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    return out


CATALOGUE_COLUMNS = {"item": "StockCode", "text": "Description"}  # the canonical names also read


def read_catalogue(path: str | Path) -> pd.DataFrame:
    """A product catalogue (CSV or Parquet): StockCode and Description (or item and text), as strings."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"serving.catalogue_path: {path} is not a file")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    table = table.rename(columns=CATALOGUE_COLUMNS)
    missing = [c for c in ("StockCode", "Description") if c not in table]
    if missing:
        raise BundleError(
            f"serving.catalogue_path: {path} has no column {', '.join(missing)} (it needs StockCode and "
            f"Description, or item and text; it has {', '.join(map(str, table.columns))})"
        )
    table = table.dropna(subset=["StockCode", "Description"])
    return pd.DataFrame(
        {"StockCode": table["StockCode"].astype(str).str.strip(), "Description": table["Description"].astype(str)}
    ).drop_duplicates("StockCode")


def with_catalogue(items: pd.DataFrame, catalogue: pd.DataFrame | None, encoder_dir: str | Path) -> pd.DataFrame:
    """The item table plus the catalogue's products it lacks (nobody bought them), encoded by the encoder."""
    if catalogue is None:
        return items
    known = set(items["StockCode"].astype(str))
    extra = catalogue[~catalogue["StockCode"].astype(str).isin(known)]
    if not len(extra):
        return items
    from sentence_transformers import SentenceTransformer

    from plmrec.finetune.embed import encode_texts, item_table

    texts = extra["Description"].astype(str).tolist()
    vectors = encode_texts(SentenceTransformer(str(encoder_dir)), texts)
    added = item_table(extra["StockCode"].astype(str).tolist(), texts, vectors)
    return pd.concat([items[["StockCode", "Description", "embedding"]], added], ignore_index=True)


def _encoder_choice(encoder_dir: str | Path) -> str | None:
    """Which encoder evaluate-retrieval chose (selection.json beside the model), when it says."""
    found = Path(encoder_dir).parent / "selection.json"
    return json.loads(found.read_text()).get("chosen") if found.is_file() else None


def _write_user_model(source: str | Path, out: Path, *, prepared: pd.DataFrame, customers, codes) -> None:
    """The user model, every customer's C vectors (all purchases, in `customers` order) and its item vectors."""
    from plmrec.usermodel import store
    from plmrec.usermodel.retrieval import customer_sequences, customer_vectors, encode_items
    from plmrec.usermodel.sequences import with_item_rows

    model, saved = store.load(source)
    if saved["codes"] != list(codes):
        raise BundleError(f"{source}: the user model's item rows are not the bundle's {len(codes):,} items")
    rows = with_item_rows(prepared, {c: i for i, c in enumerate(codes)})
    end = rows["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    _, vectors = customer_vectors(model, customer_sequences(model, rows, cutoff=end), customers)
    np.save(out / "user_vectors.npy", vectors)
    np.save(out / "user_item_vectors.npy", encode_items(model))
    shutil.copy(source, out / "user_model.pt")


def write_bundle(
    params: Params,
    prepared: pd.DataFrame,
    items: pd.DataFrame,
    *,
    recommender_rows: pd.DataFrame,
    recommender_detail: dict,
    encoder_dir: str | Path,
    bundle_dir: str | Path,
    user_models=None,
    search: dict | None = None,
    lifts: list[dict] | None = None,
    catalogue: pd.DataFrame | None = None,
    lists: dict[str, str] | None = None,
) -> dict:
    """The serving bundle of registry.served_model (auto: the recommender chosen on valid) from a
    comparison's rows and detail, with its test metrics (mean and std over seeds); `user_models`
    (plmrec.usermodel.store.SavedUserModels) when the comparison had the user model. `lists` (list ->
    row, plmrec.recsys.comparison.Comparison.list_rows): a list another row ranks gets that row's bundle
    inside this one (`rows/<row>`), and the served answers that list from it."""
    from plmrec.recsys.experiment import served_choice

    rp = params.recommenders
    model, chosen_by = served_choice(recommender_rows, params.registry.served_model, rp.primary_metric)
    if model not in set(recommender_rows["model"]):
        raise BundleError(
            f"registry.served_model '{model}' was not evaluated (evaluated: "
            f"{', '.join(recommender_rows['model'].unique())}; ltr needs recommenders.ltr.enabled)"
        )
    seed = rp.seeds[-1]
    lists = {kind: row for kind, row in (lists or {}).items() if row != model}  # ranked by another row
    served_by = {kind: lists.get(kind, model) for kind in views.VIEW_OF_LIST}
    served_on = {view: served_by[kind] for view, kind in views.SERVED_LIST_OF_VIEW.items()}
    items = with_catalogue(items, catalogue, encoder_dir)  # once: every row's bundle holds the same items

    def build(row: str, out: Path, **extra) -> dict:
        user_model = None
        if row_registry.get(row).user_model:
            user_model = user_models.directory / "seeds" / str(user_models.seed_for(seed)) / "refit.pt"
        metrics = _row_metrics(recommender_rows, row)
        build_bundle(
            prepared,
            items,
            encoder_dir,
            out_dir=out,
            rp=rp,
            model=row,
            chosen={**recommender_detail["chosen"][seed], "seed": seed},
            ranker=recommender_detail["rankers"].get(seed, {}).get(row),
            discover_ranker=recommender_detail["rankers"].get(seed, {}).get(f"{row}:discover"),
            metrics=metrics,
            encoder_info={"source": str(encoder_dir), "name": _encoder_choice(encoder_dir)},
            user_model=user_model,
            search=search,
            lifts=[  # the served lists' lifts (each list's row on its views): all here, a row's in its own
                x
                for x in lifts or []
                if x["model"] == served_on.get(x.get("view", "all")) and row in (model, x["model"])
            ],
            **extra,
        )
        return metrics

    metrics = build(model, Path(bundle_dir), lists={kind: (row, _row_dir(row)) for kind, row in lists.items()})
    for row in dict.fromkeys(lists.values()):
        build(row, Path(bundle_dir) / _row_dir(row), searchable=False)
    return {"model": model, "metrics": metrics, "bundle": str(bundle_dir), "chosen_by": chosen_by, "lists": served_by}


def _row_dir(row: str) -> str:
    """Where a row that ranks some of the lists keeps its bundle, inside the served row's."""
    from plmrec.tracking import safe_name

    return f"rows/{safe_name(row)}"


def _row_metrics(recommender_rows: pd.DataFrame, model: str) -> dict:
    """A row's test figures: mean over seeds and their std."""
    rows = recommender_rows[recommender_rows["model"] == model]
    metrics = {
        c.replace("test_", ""): float(rows[c].mean()) for c in rows.columns if c.startswith("test_") and "@" in c
    }
    metrics.update({f"{k}_std": float(rows[f"test_{k}"].std(ddof=1)) if len(rows) > 1 else 0.0 for k in list(metrics)})
    return metrics


def lift_summary(meta: dict) -> str:
    """One line: the served model, its no-text twin and the lift over it per evaluation view; where other
    rows rank some lists (chosen on those lists' views), each list's row and its lift over its own twin."""
    model, twin, others = meta["model"], meta.get("twin"), meta.get("list_rows", {})
    if others:
        return _lists_lift_summary(meta)
    if twin == model:
        return f"served: {model}, which reads no item text (no language-model stage is served)"
    lifts = twin_lifts(meta)
    if not lifts:
        return f"served: {model} (no-text twin {twin}: not evaluated)"
    return f"served: {model}; lift over its no-text twin {twin}: " + "; ".join(
        f"{x['view'].replace('_', ' ')} {x['metric']} {x['mean']:.4f} vs {x['versus_mean']:.4f} ({lift_note(x)})"
        for x in lifts
    )


def twin_lifts(meta: dict) -> list[dict]:
    """A bundle's lifts over a no-text twin (each list's row against its own; a bundle from before lists
    were ranked by several rows: those against the served row's twin)."""
    return [x for x in meta.get("lifts", []) if x.get("against_twin", x["versus"] == meta.get("twin"))]


def _lists_lift_summary(meta: dict) -> str:
    model, others = meta["model"], meta["list_rows"]
    ordered = {k: model for k in (*LISTS, "basket") if k not in others} | others  # the served row's lists first
    served = "served: " + ", ".join(f"{row} ({', '.join(kinds)})" for row, kinds in views.lists_by_row(ordered).items())
    lifts = twin_lifts(meta)
    if not lifts:
        return f"{served}; no list's row reads item text (no language-model stage is served)"
    return f"{served}; lift over each list's no-text twin: " + "; ".join(
        f"{x['view'].replace('_', ' ')} {x['metric']} {x['model']} {x['mean']:.4f} vs {x['versus']} "
        f"{x['versus_mean']:.4f} ({lift_note(x)})"
        for x in lifts
    )


def lift_note(lift: dict) -> str:
    """A lift's relative size and whether it is clear: '+2.1%', 'from zero, within 2 std'."""
    relative = "from zero" if lift["relative_percent"] is None else f"{lift['relative_percent']:+.1f}%"
    return relative + ("" if lift["clear"] else ", within 2 std")


def read_meta(path: str | Path) -> dict:
    """bundle.json of a bundle directory, checked for the format this plmrec reads."""
    meta_file = Path(path) / "bundle.json"
    if not meta_file.exists():
        raise BundleError(f"{path}: not a plmrec serving bundle (no bundle.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_file}: bundle format {meta.get('format')}, this plmrec reads {BUNDLE_FORMAT}")
    return meta


class Recommender:
    """A loaded bundle: top-K for a known customer, an anonymous basket, or a free-text query."""

    def __init__(self, path: str | Path, load_encoder: bool = True):
        path = Path(path)
        self.path = path
        self.meta = read_meta(path)
        try:
            items = pd.read_parquet(path / "items.parquet")
            self.item_vectors = np.load(path / "item_vectors.npy")
            self.item_factors = np.load(path / "item_factors.npy")
            self.user_factors = np.load(path / "user_factors.npy")
            customers = np.load(path / "customers.npy")
            self.counts = sp.load_npz(path / "history_counts.npz").tocsr()
            self.last_day = sp.load_npz(path / "history_last_day.npz").tocsr()
        except FileNotFoundError as exc:
            raise BundleError(f"{path}: bundle file missing: {Path(exc.filename).name}") from None
        self.codes = items["StockCode"].astype(str).to_numpy()
        self.descriptions = items["Description"].astype(str).to_numpy()
        self.clusters = items["cluster"].to_numpy(np.int64)
        self.popularity = items["popularity"].to_numpy(np.float64)
        self.most_popular = np.argsort(-self.popularity, kind="stable")  # the fallback list's order, once
        self.unsold = np.flatnonzero(self.popularity == 0)  # nobody bought them: only their text can place them
        self.item_customers = items["customers"].to_numpy(np.float64)
        self.item_col = {c: i for i, c in enumerate(self.codes)}
        self.text_ids = customers.dtype.kind == "U"  # the shop's ids are text (Amazon's), else integers
        self.customer_row = {self.customer_key(c): i for i, c in enumerate(customers.tolist())}
        shapes = {
            "item_vectors": self.item_vectors.shape[0],
            "item_factors": self.item_factors.shape[0],
            "history": self.counts.shape[1],
        }
        bad = {k: v for k, v in shapes.items() if v != len(self.codes)}
        if bad or self.user_factors.shape[0] != len(customers):
            raise BundleError(
                f"{path}: arrays do not match {len(self.codes)} items / {len(customers)} customers: {bad}"
            )
        self.model = self.meta["model"]
        if self.model not in row_registry.names():
            raise BundleError(
                f"{path}: served model '{self.model}' is not a recommender row here "
                f"(known: {', '.join(row_registry.names())})"
            )
        self.row = row_registry.get(self.model)
        self.item_gram = recommend.gram(self.item_factors)  # V'V of every basket's ALS fold-in, once
        self.item_similarity = (  # computed once: a request then reads its items' rows (max text similarity)
            recommend.item_similarity(self.item_vectors) if self.meta.get("similarity") == "max" else None
        )
        self.rp = RecommendersParams.model_validate({"ltr": self.meta["ltr"]})  # the candidate settings
        self.ranker = self.discover_ranker = None
        self.user_model = self.user_vectors = self.user_item_vectors = None
        if self.row.user_model:
            self._load_user_model(len(customers))
        if self.row.learning_to_rank:
            self.ranker = _load_ranker(path / "ranker.json")
            self.discover_ranker = (
                _load_ranker(path / "ranker_discover.json") if self.meta.get("discover_ranker") else self.ranker
            )
        self.encoder = self._load_encoder() if load_encoder else None
        self.lists: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # `precompute`: known customers' lists
        self.lists_depth = 0
        loaded: dict[str, Recommender] = {}
        self.ranked_by = {  # the lists another row ranks (chosen on their own view): that row's bundle
            kind: loaded.setdefault(where, Recommender(path / where, load_encoder=False))
            for kind, where in self.meta.get("lists", {}).items()
        }
        self.search_settings = self.meta.get("search") or search_settings(None)
        self.lexical = Bm25Index.load(path / "search") if (path / "search").exists() else None

    def _load_user_model(self, n_customers: int) -> None:
        from plmrec.usermodel import store

        self.user_model, _ = store.load(self.path / "user_model.pt")
        try:
            self.user_vectors = np.load(self.path / "user_vectors.npy")
            self.user_item_vectors = np.load(self.path / "user_item_vectors.npy")
        except FileNotFoundError as exc:
            raise BundleError(f"{self.path}: bundle file missing: {Path(exc.filename).name}") from None
        if len(self.user_vectors) != n_customers or len(self.user_item_vectors) != len(self.codes):
            raise BundleError(f"{self.path}: user-model arrays do not match the customers and items")

    def _load_encoder(self):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.path / "encoder"))  # on a GPU when the pod has one

    @property
    def n_items(self) -> int:
        return len(self.codes)

    def customer_key(self, customer_id) -> int | str | None:
        """A customer id as the bundle holds it (int, or text where the shop's ids are text); None where
        it cannot be one of ours (the server answers a wrong type with a 400 before it gets here)."""
        if self.text_ids:
            return str(customer_id)
        try:
            return int(customer_id)
        except (TypeError, ValueError):
            return None

    def knows(self, customer_id) -> bool:
        return self.customer_key(customer_id) in self.customer_row

    # -- scoring -------------------------------------------------------------------------------------

    def _basket_row(self, basket: list[str]) -> tuple[np.ndarray, list[str]]:
        known = [self.item_col[c] for c in basket if c in self.item_col]
        unknown = [c for c in basket if c not in self.item_col]
        return np.array(sorted(set(known)), dtype=np.int64), unknown

    def _bought_now(self, items: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """One purchase line of each item, dated the day after the bundle's data ends (days since: 0)."""
        rows, shape = np.zeros(len(items)), (1, self.n_items)
        counts = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (rows, items)), shape=shape)
        last_day = sp.csr_matrix((np.full(len(items), self.meta["end_day"] + 1), (rows, items)), shape=shape)
        return counts, last_day

    def _window(self, counts: sp.csr_matrix, last_day: sp.csr_matrix) -> recommend.Window:
        n = counts.shape[0]
        return recommend.Window(
            customers=np.zeros(n),
            counts=counts,
            last_day=last_day,
            eval_rows=np.arange(n, dtype=np.int64),
            relevant=[set() for _ in range(n)],
            end_day=self.meta["end_day"],
        )

    def _user_vectors(self, last_day: sp.csr_matrix) -> np.ndarray:
        """(C, w): the user model over a purchase row as a sequence (distinct items oldest first, by the
        day of their latest purchase; days counted back from the day after the newest)."""
        from plmrec.usermodel.retrieval import encode_users
        from plmrec.usermodel.sequences import time_bucket

        items, day = last_day.indices, last_day.data  # day since epoch + 1
        order = np.lexsort((items, day))
        spec = self.user_model.spec
        days_before = self.meta["end_day"] + 1 - day[order]
        buckets = time_bucket(days_before, spec.time_buckets)  # all 0 for a model without time buckets
        return encode_users(self.user_model, [items[order].astype(np.int64)], [buckets])[0]

    def _rank(
        self,
        counts: sp.csr_matrix,
        last_day: sp.csr_matrix,
        user_factor: np.ndarray,
        *,
        k: int,
        kind: str,
        users: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows and scores of the list `kind` (LISTS) for one purchase row; `users` (C, w): its
        user-model vectors, for the user-model rows (computed from the row when not given)."""
        return self._rank_rows(
            counts, last_day, user_factor[None, :], k=k, kind=kind, users=None if users is None else users[None]
        )[0]

    def _rank_rows(
        self,
        counts: sp.csr_matrix,
        last_day: sp.csr_matrix,
        user_factors: np.ndarray,
        *,
        k: int,
        kind: str,
        users: np.ndarray | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per purchase row (a customer, or a basket): the top-k item rows and scores of the list `kind`.
        Each row is ranked alone (the same answer for it in any batch); a list is ranked to at least
        PLACES_DEPTH, where the new-item places sit, and cut at k, so a shorter list is a longer one's head."""
        if kind not in LISTS:
            raise BundleError(f"unknown list '{kind}' (expected one of {', '.join(LISTS)})")
        from plmrec.usermodel.store import item_scores

        m, depth, n = self.meta, max(k, PLACES_DEPTH), counts.shape[0]
        s = recommend.score_rows(
            counts,
            user_factors,
            self.item_factors,
            item_vectors=self.item_vectors,
            clusters=self.clusters,
            n_clusters=m["n_clusters"],
            popularity=self.popularity,
            similarity=m.get("similarity", "mean"),
            unit_vectors=True,  # normalised when the bundle was built
            pairwise=self.item_similarity,
            last_day=last_day,
        )
        if self.user_model is not None:
            if users is None:
                users = np.stack([self._user_vectors(last_day[i]) for i in range(n)])
            s = s.with_user_model(*item_scores(users, self.user_item_vectors))
        seen = [np.unique(counts[i].indices) for i in range(n)]
        ranked = []
        if self.row.learning_to_rank:  # the ranker orders the row's candidates
            w, with_user, text = self._window(counts, last_day), self.row.user_model, self.row.text
            candidates = recommend.ltr_candidates(w, s, self.rp, user_model=with_user, text=text)
            if kind == "discover":
                candidates = [np.setdiff1d(c, own) for c, own in zip(candidates, seen)]
            elif kind == "buy_again":
                candidates = seen
            frame, _ = recommend.ltr_frame(
                w, s, candidates, item_customers=self.item_customers, user_model=with_user, text=text
            )
            scores = recommend.ranker_scores(self.discover_ranker if kind == "discover" else self.ranker, frame)
            ends = np.cumsum([len(c) for c in candidates])
            for items, part in zip(candidates, np.split(scores, ends[:-1])):
                order = np.lexsort((items, -part))[:depth]
                ranked.append((items[order], part[order]))
        else:
            scores = self.row.score(s, m).astype(np.float64)  # its blend weight from bundle.json (0 when absent)
            for i, own in enumerate(seen):
                if kind == "discover":
                    scores[i, own] = -np.inf
                elif kind == "buy_again":
                    scores[i, np.setdiff1d(np.arange(scores.shape[1]), own)] = -np.inf
            for i, top in enumerate(recommend.top_k(scores, depth)):
                top = top[np.isfinite(scores[i, top])]
                ranked.append((top, scores[i, top]))
        out = []
        for i, (items, scores) in enumerate(ranked):
            items, scores = self._placed(items, scores, s.similarity[i], kind=kind, seen=seen[i])
            out.append((items[:k], scores[:k]))
        return out

    def _placed(
        self, items: np.ndarray, scores: np.ndarray, similarity: np.ndarray, *, kind: str, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A discover list with the bundle's new-item places (chosen on valid) given to the unsold items
        closest by text (`similarity`: the row's text score of every item) to what the customer bought
        (plmrec.recsys.views.with_new_items); an item placed so scores its text similarity."""
        from plmrec.recsys.views import new_item_picks, with_new_items

        slots = int(self.meta.get("new_item_slots", 0))
        fresh = np.setdiff1d(self.unsold, seen)
        if kind != "discover" or not slots or not len(fresh) or not len(items):
            return items, scores
        depth = min(len(items), PLACES_DEPTH)
        placed = with_new_items(items[None, :], similarity[None, :], fresh, slots=slots, depth=depth)[0]
        placed = placed[placed >= 0]
        given = dict(zip(items.tolist(), scores.tolist()))
        picks = new_item_picks(similarity[None, :], fresh, slots=min(slots, depth))[0]
        given.update((i, float(similarity[i])) for i in picks)
        return placed, np.array([given[i] for i in placed.tolist()])

    def _result(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        *,
        unknown: list[str] | None = None,
        kind: str | None = None,
    ) -> Recommendation:
        return Recommendation(
            self.codes[items].tolist(),
            self.descriptions[items].tolist(),
            [round(float(x), 6) for x in scores],
            unknown or [],
            list_kind=kind,
            new_items=self.codes[items[self.popularity[items] == 0]].tolist(),
        )

    def recommend_customer(
        self,
        customer_id: int,
        k: int,
        basket: list[str] | None = None,
        *,
        exclude_seen: bool = False,
        kind: str = DEFAULT_LIST,
    ) -> Recommendation:
        """Top-K of the list `kind` (LISTS; `exclude_seen`: discover) for a known customer (their history,
        plus an optional current basket); an unknown one is served from the basket as a new customer."""
        kind = "discover" if exclude_seen else kind
        row = self.customer_row.get(self.customer_key(customer_id))
        if row is None:
            if basket:
                return self.recommend_basket(basket, k, kind=kind)
            return self.popular(
                k,
                reason=f"customer {customer_id} is unknown (no purchases in the served model's data) and the "
                f'request has no basket: the most popular items (send "basket": [stock codes] for a '
                f"personal list)",
            )
        if kind in self.ranked_by:
            return self.ranked_by[kind].recommend_customer(customer_id, k, basket, kind=kind)
        if not basket and self.lists is not None and k <= self.lists_depth:  # known, no basket: read, not ranked
            items, scores = self.lists[kind]
            kept = items[row, :k] >= 0
            return self._result(items[row, :k][kept], scores[row, :k][kept], kind=kind)
        counts, last_day, factor = self.counts[row], self.last_day[row], self.user_factors[row]
        users = self.user_vectors[row] if self.user_vectors is not None else None  # from the exact timestamps
        unknown: list[str] = []
        if basket:
            items, unknown = self._basket_row(basket)
            if len(items):
                add, today = self._bought_now(items)
                counts = (counts + add).tocsr()
                last_day = last_day.maximum(today).tocsr()
                factor, users = self._fold_in(counts), None  # the user model reads the basket as its newest items
        return self._result(
            *self._rank(counts, last_day, factor, k=k, kind=kind, users=users), unknown=unknown, kind=kind
        )

    def precompute(self, depth: int, *, max_customers: int, progress=None, kinds: tuple[str, ...] = LISTS) -> bool:
        """Every known customer's lists (`kinds`, `depth` long) ranked once, here, by the live path in
        batches: a request for a known customer without a basket then reads its list (a basket, or a k
        beyond `depth`, still ranks live); a list another row ranks, by that row's bundle. Not done past
        `max_customers` (memory: about 36 bytes per customer and place); False then."""
        n = len(self.customer_row)
        if n > max_customers:
            return False
        for kind in kinds:
            if kind in self.ranked_by:
                self.ranked_by[kind].precompute(depth, max_customers=max_customers, progress=progress, kinds=(kind,))
        kinds = tuple(kind for kind in kinds if kind not in self.ranked_by)
        batch = max(1, min(256, 2**24 // max(self.n_items, 1)))
        lists = {}
        started = time.perf_counter()
        for kind in kinds:
            items = np.full((n, depth), -1, dtype=np.int32)
            scores = np.zeros((n, depth), dtype=np.float64)
            for start in range(0, n, batch):
                rows = np.arange(start, min(start + batch, n))
                users = self.user_vectors[rows] if self.user_vectors is not None else None
                ranked = self._rank_rows(
                    self.counts[rows], self.last_day[rows], self.user_factors[rows], k=depth, kind=kind, users=users
                )
                for r, (top, score) in zip(rows, ranked):
                    items[r, : len(top)], scores[r, : len(top)] = top, score
            lists[kind] = (items, scores)
            if progress:
                progress(f"{kind} lists of {n:,} customers ranked ({time.perf_counter() - started:.1f} s)")
        self.lists, self.lists_depth = lists, depth
        return True

    # -- embeddings ----------------------------------------------------------------------------------

    @functools.cached_property
    def text_profiles(self) -> np.ndarray:
        """Each customer's L2-normalised mean text vector of the items they bought (computed once)."""
        rows = np.arange(self.counts.shape[0])
        profiles, _ = recommend.user_profiles(
            self.counts, rows, self.item_vectors, clusters=self.clusters, n_clusters=self.meta["n_clusters"]
        )
        return profiles

    def embed_customer(self, customer_id) -> dict[str, np.ndarray] | None:
        """A known customer's vectors: `text_profile`, `mf` (ALS) and, with a user model, `user_model`
        (C x w); None for a customer the bundle does not know."""
        row = self.customer_row.get(self.customer_key(customer_id))
        if row is None:
            return None
        out = {"text_profile": self.text_profiles[row], "mf": self.user_factors[row]}
        if self.user_vectors is not None:
            out["user_model"] = self.user_vectors[row]
        return out

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """The encoder's L2-normalised vectors of texts (the space of the items' `text_vector`)."""
        if self.encoder is None:
            raise BundleError("this Recommender was loaded without its encoder")
        vectors = self.encoder.encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=64)
        return np.asarray(vectors, dtype=np.float32)

    def popular(self, k: int, *, reason: str) -> Recommendation:
        """The k most bought items (by purchase lines in the served data), flagged as the fallback."""
        top = self.most_popular[:k]
        rec = self._result(top, self.popularity[top])
        rec.fallback, rec.reason = POPULAR, reason
        return rec

    def _fold_in(self, counts: sp.csr_matrix) -> np.ndarray:
        return recommend.fold_in_rows(
            self.item_factors,
            counts,
            alpha=self.meta["alpha"],
            regularization=self.meta["regularization"],
            item_gram=self.item_gram,
        )[0]

    def recommend_basket(
        self, basket: list[str], k: int, exclude_seen: bool = False, *, kind: str = DEFAULT_LIST
    ) -> Recommendation:
        """Top-K of the list `kind` for an anonymous basket (a new customer): its ALS vector folded in,
        its items as the history (the new-customer view's path)."""
        kind = "discover" if exclude_seen else kind
        if "basket" in self.ranked_by:
            return self.ranked_by["basket"].recommend_basket(basket, k, kind=kind)
        items, unknown = self._basket_row(basket)
        if not len(items):
            rec = self.popular(k, reason="none of the basket's stock codes is in the catalogue: the most popular items")
            rec.unknown_stock_codes = unknown
            return rec
        counts, last_day = self._bought_now(items)
        return self._result(
            *self._rank(counts, last_day, self._fold_in(counts), k=k, kind=kind), unknown=unknown, kind=kind
        )

    def search(self, queries: list[str], k: int, mode: str | None = None) -> list[Recommendation]:
        """The top-K items for each free-text query in `mode` (None: the bundle's default): dense (one
        encoder pass for all queries), lexical (BM25; items sharing no word are left out) or hybrid
        (reciprocal rank fusion of both, the weight chosen on valid by evaluate-search)."""
        settings = self.search_settings
        mode = mode or settings["default_mode"]
        if mode not in SEARCH_MODES:
            raise BundleError(f"unknown search mode '{mode}' (expected one of {', '.join(SEARCH_MODES)})")
        if mode != "dense" and self.lexical is None:
            raise BundleError(f"{self.path}: no BM25 index (search/) for the {mode} mode; rebuild the bundle")
        if mode == "lexical":
            rows, scores = self.lexical.top(queries, k)
            return [self._result(r[r >= 0], s[r >= 0]) for r, s in zip(rows, scores)]
        q = self.embed_texts(queries)
        scores = q.astype(np.float32) @ self.item_vectors.T
        if mode == "dense":
            top = recommend.top_k(scores, k)
            return [self._result(t, scores[i, t]) for i, t in enumerate(top)]
        depth = min(settings["depth"], self.n_items)
        dense = recommend.top_k(scores, depth)
        lexical, _ = self.lexical.top(queries, depth)
        out = []
        for d, x in zip(dense, lexical):
            rows, fused = fuse(d, x, weight=settings["hybrid_weight"], k=settings["rrf_k"])
            out.append(self._result(rows[:k], fused[:k]))
        return out


def _load_ranker(path: Path):
    import xgboost as xgb

    if not path.exists():
        raise BundleError(f"{path.parent}: bundle file missing: {path.name}")
    ranker = xgb.XGBRanker()
    ranker.load_model(str(path))
    ranker.set_params(n_jobs=1)  # one request is a few hundred rows: threads only add overhead
    return ranker


def stored_ids(customers) -> np.ndarray:
    """Customer ids for customers.npy: int64 where the data's ids are integers, else text (no pickles)."""
    values = np.asarray(customers)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return values.astype(str)


def example_ids(path: str | Path) -> tuple[int | str, list[str]]:
    """A customer the bundle knows (the one with the most purchase lines) and its two most popular stock
    codes: ids a first request can use on this very data."""
    path = Path(path)
    customers = np.load(path / "customers.npy")
    lines = np.asarray(sp.load_npz(path / "history_counts.npz").sum(axis=1)).ravel()
    customer = customers.tolist()[int(np.argmax(lines))]
    items = pd.read_parquet(path / "items.parquet", columns=["StockCode", "popularity"])
    codes = items.sort_values("popularity", ascending=False, kind="stable")["StockCode"].astype(str).head(2).tolist()
    return customer, codes


def find_bundle(path: str | Path) -> Path:
    """The bundle directory inside `path`: itself, or below it (an MLflow model's artifacts/bundle,
    or the KServe storage initializer's /mnt/models)."""
    path = Path(path)
    if (path / "bundle.json").exists():
        return path
    found = sorted(path.glob("**/bundle.json"), key=lambda p: len(p.parts))
    if not found:
        raise BundleError(f"{path}: no serving bundle (bundle.json) in it or below it")
    return found[0].parent
