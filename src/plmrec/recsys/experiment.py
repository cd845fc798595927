"""The comparison run: the classifier ablation and the recommenders over several seeds, summarised
as mean ± std tables in the study's layout, with a one-line verdict per comparison."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from plmrec.config import RecommendersParams
from plmrec.features import EmbeddingFeatures
from plmrec.recsys import recommend, views
from plmrec.recsys import rows as row_registry
from plmrec.tracking import safe_name
from plmrec.vectors import stack

CLASSIFIER_METRICS = ["test_accuracy", "test_precision_macro", "test_recall_macro", "test_f1_macro"]
CURVE_KS = list(range(1, 21))


def run_recommenders(
    prepared: pd.DataFrame,
    items: pd.DataFrame,
    rp: RecommendersParams,
    *,
    user_models=None,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One row per (model, seed) with test metrics (and its valid figure, on the valid customers no ranker
    learnt: what the served row is chosen by), for
    every row of plmrec.recsys.rows: the scored ones, then learning to rank, each in registry order.
    `user_models` (plmrec.usermodel.store.SavedUserModels, optional) adds the rows that need it: a row
    scored from it for the seeds it was trained with, learning to rank with its candidates and features
    (ltr+user_model) for every seed. The detail's `views` table scores the same models on every
    evaluation view of plmrec.recsys.views (one row per view, model and seed; valid_* and test_*)."""
    say = progress or (lambda _m: None)
    codes = items["StockCode"].astype(str).tolist()
    item_col = {c: i for i, c in enumerate(codes)}
    vectors = stack(items["embedding"])
    train_codes = prepared.loc[prepared["split"] == "train", "StockCode"].unique()
    ks = sorted(set(rp.ks))
    kmax = max(max(ks), max(CURVE_KS), views.NEW_ITEM_K)
    wv = recommend.make_window(prepared, item_col, "valid", exclude_history=rp.exclude_history)
    wt = recommend.make_window(prepared, item_col, "test", exclude_history=rp.exclude_history)
    if not len(wv.eval_rows) or not len(wt.eval_rows):
        raise ValueError(
            f"no customer to evaluate (valid {len(wv.eval_rows)}, test {len(wt.eval_rows)}): "
            f"customers need purchases before and inside the window"
        )
    windows = {"valid": wv, "test": wt}
    baskets = {
        split: views.new_customer_window(prepared, item_col, split, exclude_history=rp.exclude_history)
        for split in windows
    }
    targets = {split: _view_targets(w, baskets[split]) for split, w in windows.items()}
    new_columns = {split: views.new_item_columns(w) for split, w in windows.items()}
    say(
        "evaluation views (test customers): "
        + ", ".join(f"{v.replace('_', ' ')} {len(t.rows):,}" for v, t in targets["test"].items())
    )
    primary = rp.primary_metric
    records, view_records, curves, chosen, rankers = [], [], {}, {}, {}
    for seed in rp.seeds:
        clusters = EmbeddingFeatures.fit(items, train_codes, rp.clusters, seed=seed).table[:, 0].astype(np.int64)

        def ranked(w, scores):
            return recommend.top_k(scores, kmax, w.counts[w.eval_rows] if rp.exclude_history else None)

        def on_valid(scores):
            return recommend.evaluate(ranked(wv, scores), wv.relevant, ks)[primary]

        # choose the ALS size, then the blend weights, on valid
        by_factors = {}
        for f in rp.mf.factors:
            s = recommend.fit_scorers(wv, vectors, clusters, n_clusters=rp.clusters, factors=f, rp=rp, seed=seed)
            by_factors[f] = (recommend.evaluate(ranked(wv, s.mf), wv.relevant, ks)[primary], s)
        factors = max(by_factors, key=lambda f: by_factors[f][0])
        sv = by_factors[factors][1]
        weights = {
            row.weight: _chosen_weight(sv, row, row_registry.weight_grid(row, rp), score=on_valid)
            for row in row_registry.blends()
        }
        chosen[seed] = {"factors": factors, **weights}
        st = recommend.fit_scorers(
            wt, vectors, clusters, n_clusters=rp.clusters, factors=factors, rp=rp, seed=seed
        )  # refit on train + valid
        scorers = {"valid": sv, "test": st}
        basket_scorers = {
            split: views.basket_scorers(
                b, scorers[split], item_vectors=vectors, clusters=clusters, n_clusters=rp.clusters, rp=rp
            )
            for split, b in baskets.items()
        }
        if user_models is not None:
            for split, w in windows.items():
                scorers[split] = scorers[split].with_user_model(
                    *user_models.scores(split, w.customers[w.eval_rows], seed=seed)
                )
                rows = [baskets[split].counts[i].indices for i in range(baskets[split].counts.shape[0])]
                basket_scorers[split] = basket_scorers[split].with_user_model(
                    *user_models.basket_scores(split, rows, seed=seed)
                )
            chosen[seed]["user_model_seed"] = user_models.seed_for(seed)
        own_user_model = user_models is not None and seed in user_models.seeds  # scored from it: own seeds, honest std
        held = recommend.held_out_queries(np.arange(len(wv.eval_rows)), seed)  # valid customers no ranker learns
        honest = _held_targets(targets["valid"], held)  # every valid figure: rows compared on the same customers
        held_discovery = honest["discovery"]  # what the discover-list choices read
        lists: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # model -> split -> list kind -> top-k
        for row in row_registry.scored_rows():
            if row.user_model and not own_user_model:
                continue
            lists[row.name] = {}
            for split, w in windows.items():
                scores = row.score(scorers[split], weights)
                lists[row.name][split] = {
                    "mixed": ranked(w, scores),
                    "discover": recommend.top_k(scores, kmax, w.counts[w.eval_rows]),
                    "new_customers": recommend.top_k(row.score(basket_scorers[split], weights), kmax),
                }
        lists[views.CO_PURCHASE] = {
            split: {"new_customers": recommend.top_k(views.co_purchase_scores(w.counts, baskets[split].counts), kmax)}
            for split, w in windows.items()
        }
        if rp.ltr.enabled:
            for row in row_registry.ltr_rows():
                if row.user_model and user_models is None:
                    continue
                ranker, discover_ranker, lists[row.name], discover_valid = _learning_to_rank(
                    windows,
                    scorers,
                    baskets=baskets,
                    basket_scorers=basket_scorers,
                    rp=rp,
                    seed=seed,
                    k=kmax,
                    row=row,
                    held=held,
                    held_discovery=held_discovery,
                )
                chosen[seed][f"{row.name}_discover_ranker"] = "new" if discover_ranker is not None else "all"
                chosen[seed][f"{row.name}_discover_valid"] = discover_valid  # each ranker's valid discovery figure
                importance = dict(
                    zip(
                        recommend.ltr_features(row.user_model, text=row.text),
                        map(float, ranker.feature_importances_),
                    )
                )
                chosen[seed][f"{row.name}_best_iteration"] = int(ranker.best_iteration)
                chosen[seed][f"{row.name}_importance"] = importance
                chosen[seed][f"{row.name}_importance_by_source"] = recommend.importance_by_source(importance)
                rankers.setdefault(seed, {})[row.name] = ranker
                if discover_ranker is not None:  # the discover list's own ranker, chosen on valid
                    rankers[seed][f"{row.name}:discover"] = discover_ranker
        for name, by_split in lists.items():
            reads_text = name in row_registry.names() and row_registry.get(name).text
            if "discover" in by_split["test"] and reads_text:  # items nobody bought yet, by their text: chosen on valid
                slots = _new_item_slots(
                    by_split["valid"]["discover"],
                    scorers["valid"].similarity,
                    new_columns=new_columns["valid"],
                    discovery=held_discovery,
                    rp=rp,
                )
                chosen[seed][f"{name}_new_item_slots"] = slots
                for split in windows:
                    by_split[split]["discover"] = views.with_new_items(
                        by_split[split]["discover"], scorers[split].similarity, new_columns[split], slots=slots
                    )
            if "mixed" in by_split["test"]:
                on_valid, on_test = by_split["valid"]["mixed"], by_split["test"]["mixed"]
                t = recommend.evaluate(on_test, wt.relevant, ks)
                records.append(
                    {
                        "model": name,
                        "seed": seed,
                        f"valid_{primary}": honest["all"].figure(on_valid, ks, primary),
                        **{f"test_{k}": val for k, val in t.items() if "@" in k},
                        "test_customers": t["queries"],
                    }
                )
                if seed == rp.seeds[-1]:
                    curves[name] = [
                        recommend.evaluate(on_test[:, :k], wt.relevant, [k])[f"precision@{k}"] for k in CURVE_KS
                    ]
            for view in views.VIEWS:
                kind = "new_customers" if view == "new_customers" else views.LIST_OF_VIEW[view]
                if kind not in by_split["test"]:
                    continue
                found = {
                    split: views.score_view(
                        view,
                        by_split[split][kind],
                        honest[view] if split == "valid" else targets[split][view],
                        ks=ks,
                        new_columns=new_columns[split],
                    )
                    for split in windows
                }
                view_records.append(
                    {
                        "view": view,
                        "model": name,
                        "seed": seed,
                        **{f"valid_{k}": val for k, val in found["valid"].items()},
                        **{f"test_{k}": val for k, val in found["test"].items()},
                    }
                )
        say(
            f"recommenders seed {seed}: factors {factors}, "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in weights.items())
            + "; "
            + ", ".join(f"{r['model']} {r[f'test_{primary}']:.4f}" for r in records if r["seed"] == seed)
        )
    return pd.DataFrame(records), {
        "chosen": chosen,
        "precision_curves": curves,
        "valid_customers": len(wv.eval_rows),
        "valid_customers_scored": len(held),
        "test_customers": len(wt.eval_rows),
        "rankers": rankers,
        "views": pd.DataFrame(view_records),
        "view_customers": {view: len(t.rows) for view, t in targets["test"].items()},
    }


def _new_item_slots(
    discover: np.ndarray, similarity: np.ndarray, *, new_columns: np.ndarray, discovery: views.Targets, rp
) -> int:
    """The row's places for new items in its valid discover lists (rp.new_item_slots), by the discovery
    figure on `discovery` (the valid customers no ranker learnt); the fewest places among equals."""
    if not discovery.relevant:
        return 0
    ks, grid = sorted(set(rp.ks)), sorted(set(rp.new_item_slots))
    scores = {
        slots: discovery.figure(
            views.with_new_items(discover, similarity, new_columns, slots=slots), ks, rp.primary_metric
        )
        for slots in grid
    }
    return max(grid, key=lambda slots: (scores[slots], -slots))


def _held_targets(valid: dict[str, views.Targets], held: np.ndarray) -> dict[str, views.Targets]:
    """The valid targets every valid figure reads: those of the customers no ranker learnt (`held`, the
    early-stopping fifth) on the views drawn from the window's known customers, so a learning-to-rank row,
    trained on the other four fifths, is compared with the others out of sample. New customers are not
    among any ranker's training queries: all of them count."""
    return {view: t if view == "new_customers" else t.among(held) for view, t in valid.items()}


def _view_targets(w: recommend.Window, basket: recommend.Window) -> dict[str, views.Targets]:
    return {
        "all": views.all_purchases(w),
        "discovery": views.discovery(w),
        "new_items": views.new_items(w),
        "new_customers": views.all_purchases(basket),
    }


def _learning_to_rank(
    windows: dict[str, recommend.Window],
    scorers: dict[str, recommend.Scorers],
    *,
    baskets: dict[str, recommend.Window],
    basket_scorers: dict[str, recommend.Scorers],
    rp: RecommendersParams,
    seed: int,
    k: int,
    row: row_registry.Row,
    held: np.ndarray,
    held_discovery: views.Targets,
):
    """The rankers of a learning-to-rank row, trained on the valid window (features from models fitted on
    train), and its top-k lists per split ("valid", "test": features from models refitted on train +
    valid): mixed, discover (the customer's own items left out) and the new customers' (from their
    basket, buyers per item from the window's history). The discover list is ranked by the ranker
    trained on every purchase, or by one trained on the valid window's new-to-the-customer purchases
    alone, whichever gives the better discovery figure on `held_discovery` (the valid customers neither
    was trained on: `held`, the early-stopping fifth); `discover_ranker` is None for the first."""
    user_model, text = row.user_model, row.text

    def frame(w, s, item_customers=None):
        found = recommend.ltr_candidates(w, s, rp, user_model=user_model, text=text)
        candidates = _drop_history(found, w, rp.exclude_history)
        f, qid = recommend.ltr_frame(w, s, candidates, item_customers=item_customers, user_model=user_model, text=text)
        return f, qid, candidates

    f, qid, candidates = frame(windows["valid"], scorers["valid"])
    labels = recommend.ltr_labels(windows["valid"], candidates)
    new_to_them = f["user_item_lines"].to_numpy() == 0
    ranker = recommend.fit_ranker(f, qid, labels, rp=rp, seed=seed, held=held)
    discover_ranker = recommend.fit_ranker(
        f[new_to_them], qid[new_to_them], labels[new_to_them], rp=rp, seed=seed, held=held
    )
    valid_scores = {"all": recommend.ranker_scores(ranker, f), "new": recommend.ranker_scores(discover_ranker, f)}
    valid_discover = {  # each ranker's valid discover lists: the choice reads the held-out customers
        kind: recommend.ltr_rank(ranker, f, qid, candidates=candidates, k=k, keep=new_to_them, scores=scores)
        for kind, scores in valid_scores.items()
    }
    on_valid = {
        kind: held_discovery.figure(ranked, sorted(set(rp.ks)), rp.primary_metric)
        for kind, ranked in valid_discover.items()
    }
    which = "new" if on_valid["new"] > on_valid["all"] else "all"

    def lists(split, framed, *, scores, discover):
        """The split's lists from its frame (frame, qid, candidates) and the ranker's scores of it."""
        f, qid, candidates = framed
        new = frame(
            baskets[split],
            basket_scorers[split],
            item_customers=recommend.item_customer_counts(windows[split].counts),
        )
        return {
            "mixed": recommend.ltr_rank(ranker, f, qid, candidates=candidates, k=k, scores=scores),
            "discover": discover,
            "new_customers": recommend.ltr_rank(ranker, new[0], new[1], candidates=new[2], k=k),
        }

    out = {"valid": lists("valid", (f, qid, candidates), scores=valid_scores["all"], discover=valid_discover[which])}
    f, qid, candidates = frame(windows["test"], scorers["test"])
    scores = recommend.ranker_scores(ranker, f)
    discover = recommend.ltr_rank(  # only the ranker valid chose ranks the test window's discover lists
        ranker,
        f,
        qid,
        candidates=candidates,
        k=k,
        keep=f["user_item_lines"].to_numpy() == 0,
        scores=scores if which == "all" else recommend.ranker_scores(discover_ranker, f),
    )
    out["test"] = lists("test", (f, qid, candidates), scores=scores, discover=discover)
    return ranker, (discover_ranker if which == "new" else None), out, on_valid


def _chosen_weight(s: recommend.Scorers, row: row_registry.Row, grid: list[float], *, score) -> float:
    """The blend weight of `row` with the best valid figure (the first of equals)."""
    return max(grid, key=lambda a: score(row.scores(s, a)))


def served_model(rows: pd.DataFrame, primary: str) -> str:
    """The recommender to serve: the best mean valid figure of the primary metric (never the test one),
    read on the valid customers no ranker learnt (`_held_targets`)."""
    by_model = rows.groupby("model", sort=False)[f"valid_{primary}"].mean()
    return str(by_model.idxmax())


def served_choice(rows: pd.DataFrame, choice: str, primary: str) -> tuple[str, str]:
    """The row registry.served_model names (`choice`; auto: `served_model`) and what chose it."""
    if choice == "auto":
        return served_model(rows, primary), f"best valid {primary}"
    return choice, "registry.served_model"


def _drop_history(candidates: list[np.ndarray], w: recommend.Window, exclude: bool) -> list[np.ndarray]:
    if not exclude:
        return candidates
    return [np.setdiff1d(c, w.counts[r].indices) for c, r in zip(candidates, w.eval_rows)]


def mean_std(table: pd.DataFrame, by: str, metrics: list[str]) -> pd.DataFrame:
    """mean and std per group (std over seeds, ddof=1; 0 for one seed), keeping the first-seen order."""
    g = table.groupby(by, sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
    return pd.concat({"mean": mean, "std": std}, axis=1)


def format_table(summary: pd.DataFrame, metrics: list[str], scale: float = 100.0, *, digits: int = 1) -> pd.DataFrame:
    """'mean ± std' strings (percent by default), the study's layout."""
    out = pd.DataFrame(index=summary.index)
    for m in metrics:
        out[m.replace("test_", "")] = [
            f"{a * scale:.{digits}f} ± {b * scale:.{digits}f}"
            for a, b in zip(summary[("mean", m)], summary[("std", m)])
        ]
    return out.reset_index()


class Verdict(str):
    """A verdict line that also carries a short MLflow tag (`tag_name` `<model>.vs.<counterpart>`,
    `tag_value` the difference): the run page shows a tag whole only when name and value together
    stay within about 50 characters, so the full line goes to the run's description."""

    tag_name: str = ""
    tag_value: str = ""
    lift: dict | None = None  # a lift line's figures (`lift`)

    def extended(self, suffix: str, short: str) -> Verdict:
        out = Verdict(self + suffix)
        out.tag_name, out.tag_value = self.tag_name, self.tag_value + short
        return out


def verdict(summary: pd.DataFrame, metric: str, plm: str, *, vanilla: str, label: str) -> Verdict:
    """Does the PLM variant beat its vanilla counterpart on the metric, by how much."""
    a, sa = summary.loc[plm, ("mean", metric)], summary.loc[plm, ("std", metric)]
    b, sb = summary.loc[vanilla, ("mean", metric)], summary.loc[vanilla, ("std", metric)]
    diff = a - b
    rel = diff / b * 100 if b else float("nan")
    clear = abs(diff) > (sa + sb)
    word = ("beats" if diff > 0 else "trails") + ("" if clear else " (within one std of)")
    name = metric.replace("test_", "")
    out = Verdict(
        f"{label}: {plm} {word} {vanilla} on {name}: {a:.4f} ± {sa:.4f} vs "
        f"{b:.4f} ± {sb:.4f} ({diff:+.4f} absolute, {rel:+.1f}% relative)"
    )
    out.tag_name = f"{safe_name(plm)}.vs.{safe_name(vanilla)}"  # about 50 characters in all show whole
    out.tag_value = f"{diff:+.4f}" + ("" if clear else " (within std)")
    return out


def view_metric(view: str, primary: str) -> str:
    """The figure a view is judged on: the primary metric; recall@50 for the new items."""
    return f"recall@{views.NEW_ITEM_K}" if view == "new_items" else primary


def lift(summary: pd.DataFrame, metric: str, model: str, *, versus: str, label: str) -> Verdict:
    """The lift of `model` over `versus` on a metric, mean ± std over seeds, and whether it is clear: more
    than twice the spread of the difference (2 * sqrt(std_a^2 + std_b^2)) either way."""
    a, sa = summary.loc[model, ("mean", metric)], summary.loc[model, ("std", metric)]
    b, sb = summary.loc[versus, ("mean", metric)], summary.loc[versus, ("std", metric)]
    diff, spread = a - b, 2 * float(np.hypot(sa, sb))
    rel = diff / b * 100 if b else None  # nothing to be relative to (an id-only row's zero on new items)
    word = ("beats" if diff > 0 else "trails") if abs(diff) > spread else "is level with (within 2 std)"
    name = metric.replace("test_", "")
    out = Verdict(
        f"{label}: {model} {word} {versus} on {name}: {a:.4f} ± {sa:.4f} vs {b:.4f} ± {sb:.4f} "
        f"({diff:+.4f} absolute, {'no' if rel is None else f'{rel:+.1f}%'} relative; "
        f"2 std of the difference {spread:.4f})"
    )
    out.tag_name = f"{safe_name(model)}.vs.{safe_name(versus)}"
    out.tag_value = f"{diff:+.4f}" + ("" if abs(diff) > spread else " (within 2 std)")
    out.lift = {
        "model": model,
        "versus": versus,
        "metric": name,
        "mean": float(a),
        "std": float(sa),
        "versus_mean": float(b),
        "versus_std": float(sb),
        "difference": float(diff),
        "relative_percent": rel,
        "clear": bool(abs(diff) > spread),
    }
    return out
