"""The comparison run: the classifier ablation and the recommenders over several seeds, summarised
as mean ± std tables in the study's layout, with a one-line verdict per comparison."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from plmrec.config import RecommendersParams
from plmrec.features import EmbeddingFeatures
from plmrec.recsys import recommend
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
    """One row per (model, seed) with test metrics (and the valid figure that chose its settings), for
    every row of plmrec.recsys.rows: the scored ones, then learning to rank, each in registry order.
    `user_models` (plmrec.usermodel.store.SavedUserModels, optional) adds the rows that need it: a row
    scored from it for the seeds it was trained with, learning to rank with its candidates and features
    (ltr+user_model) for every seed."""
    say = progress or (lambda _m: None)
    codes = items["StockCode"].astype(str).tolist()
    item_col = {c: i for i, c in enumerate(codes)}
    vectors = stack(items["embedding"])
    train_codes = prepared.loc[prepared["split"] == "train", "StockCode"].unique()
    ks = sorted(set(rp.ks))
    kmax = max(max(ks), max(CURVE_KS))
    wv = recommend.make_window(prepared, item_col, "valid", exclude_history=rp.exclude_history)
    wt = recommend.make_window(prepared, item_col, "test", exclude_history=rp.exclude_history)
    if not len(wv.eval_rows) or not len(wt.eval_rows):
        raise ValueError(
            f"no customer to evaluate (valid {len(wv.eval_rows)}, test {len(wt.eval_rows)}): "
            f"customers need purchases before and inside the window"
        )
    primary = rp.primary_metric
    records, curves, chosen, rankers = [], {}, {}, {}
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
        if user_models is not None:
            sv = sv.with_user_model(*user_models.scores("valid", wv.customers[wv.eval_rows], seed=seed))
            st = st.with_user_model(*user_models.scores("test", wt.customers[wt.eval_rows], seed=seed))
            chosen[seed]["user_model_seed"] = user_models.seed_for(seed)
        own_user_model = user_models is not None and seed in user_models.seeds  # scored from it: own seeds, honest std
        lists = {
            row.name: (ranked(wv, row.score(sv, weights)), ranked(wt, row.score(st, weights)))
            for row in row_registry.scored_rows()
            if own_user_model or not row.user_model
        }
        if rp.ltr.enabled:
            for row in row_registry.ltr_rows():
                if row.user_model and user_models is None:
                    continue
                name, with_user = row.name, row.user_model
                ranker, lists[name] = _learning_to_rank(
                    (wv, wt), (sv, st), rp=rp, seed=seed, k=kmax, user_model=with_user
                )
                chosen[seed][f"{name}_best_iteration"] = int(ranker.best_iteration)
                chosen[seed][f"{name}_importance"] = dict(
                    zip(recommend.ltr_features(with_user), map(float, ranker.feature_importances_))
                )
                rankers.setdefault(seed, {})[name] = ranker
        for name, (on_valid, on_test) in lists.items():
            v = recommend.evaluate(on_valid, wv.relevant, ks)
            t = recommend.evaluate(on_test, wt.relevant, ks)
            records.append(
                {
                    "model": name,
                    "seed": seed,
                    f"valid_{primary}": v[primary],
                    **{f"test_{k}": val for k, val in t.items() if "@" in k},
                    "test_customers": t["queries"],
                }
            )
            if seed == rp.seeds[-1]:
                curves[name] = [
                    recommend.evaluate(on_test[:, :k], wt.relevant, [k])[f"precision@{k}"] for k in CURVE_KS
                ]
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
        "test_customers": len(wt.eval_rows),
        "rankers": rankers,
    }


def _learning_to_rank(
    windows: tuple[recommend.Window, recommend.Window],
    scorers: tuple[recommend.Scorers, recommend.Scorers],
    *,
    rp: RecommendersParams,
    seed: int,
    k: int,
    user_model: bool,
):
    """The ranker trained on the valid window (features from models fitted on train) and the top-k
    lists it gives on valid and on test (features from models refitted on train + valid); `windows`
    and `scorers` are (valid, test)."""
    (wv, wt), (sv, st) = windows, scorers

    def frame(w, s):
        candidates = _drop_history(recommend.ltr_candidates(w, s, rp, user_model=user_model), w, rp.exclude_history)
        return (*recommend.ltr_frame(w, s, candidates, user_model=user_model), candidates)

    frame_v, qid_v, cand_v = frame(wv, sv)
    ranker = recommend.fit_ranker(frame_v, qid_v, recommend.ltr_labels(wv, cand_v), rp=rp, seed=seed)
    frame_t, qid_t, cand_t = frame(wt, st)
    return ranker, (
        recommend.ltr_rank(ranker, frame_v, qid_v, candidates=cand_v, k=k),
        recommend.ltr_rank(ranker, frame_t, qid_t, candidates=cand_t, k=k),
    )


def _chosen_weight(s: recommend.Scorers, row: row_registry.Row, grid: list[float], *, score) -> float:
    """The blend weight of `row` with the best valid figure (the first of equals)."""
    return max(grid, key=lambda a: score(row.scores(s, a)))


def served_model(rows: pd.DataFrame, primary: str) -> str:
    """The recommender to serve: the best mean valid figure of the primary metric (never the test one)."""
    by_model = rows.groupby("model", sort=False)[f"valid_{primary}"].mean()
    return str(by_model.idxmax())


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
