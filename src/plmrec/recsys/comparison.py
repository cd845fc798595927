"""The comparison compare-models reports: the classifier ablation and the recommenders over seeds,
summarised as per-run rows, mean ± std per variant, the variants chosen on valid and one verdict per
PLM-vs-vanilla question (the recommender rows' questions come from `plmrec.recsys.rows`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from plmrec import tracking
from plmrec.config import Params
from plmrec.ranking import RANKING_METRICS
from plmrec.recsys import rows as row_registry
from plmrec.recsys import views


@dataclass
class Comparison:
    """The classifier ablation and the recommenders over seeds, summarised: per-run rows, mean ± std
    per variant, the variants chosen on valid and one verdict per PLM-vs-vanilla comparison."""

    params: Params
    classifier_rows: pd.DataFrame
    classifier_detail: dict
    recommender_rows: pd.DataFrame
    recommender_detail: dict

    @classmethod
    def compute(
        cls,
        params: Params,
        prepared: pd.DataFrame,
        items: pd.DataFrame,
        *,
        user_models=None,
        progress: Callable[[str], None] | None = None,
    ) -> Comparison:
        """Both studies on the prepared table with the encoder's item embeddings (`items`); `user_models`
        (plmrec.usermodel.store.SavedUserModels) adds the user-model rows."""
        from plmrec.recsys.classify import run_ablation
        from plmrec.recsys.experiment import run_recommenders

        recommenders = params.recommenders
        why = prepared.attrs.get("plmrec", {}).get("skipped", {}).get("quantity_labels")
        if why:  # no quantities: nothing for the quantity-label classifiers to learn
            if progress:
                progress(f"classifier ablation skipped: {why}")
            clf_rows, clf_detail = pd.DataFrame(), {"skipped": why}
        else:
            clf_rows, clf_detail = run_ablation(
                prepared,
                items,
                recommenders.classifier,
                n_labels=params.clean.n_quantity_labels,
                seeds=recommenders.seeds,
                clusters=recommenders.clusters,
                progress=progress,
            )
        rec_rows, rec_detail = run_recommenders(
            prepared, items, recommenders, user_models=user_models, progress=progress
        )
        return cls(params, clf_rows, clf_detail, rec_rows, rec_detail)

    def __post_init__(self) -> None:
        from plmrec.recsys.experiment import CLASSIFIER_METRICS, mean_std

        recommenders = self.params.recommenders
        self.classifier_metrics = CLASSIFIER_METRICS
        self.recommender_metrics = [f"test_{m}@{k}" for k in sorted(set(recommenders.ks)) for m in RANKING_METRICS]
        self.primary = f"test_{recommenders.primary_metric}"
        self.recommender_summary = mean_std(self.recommender_rows, "model", self.recommender_metrics)
        self._summarise_views()
        self.classifier_skipped = self.classifier_detail.get("skipped")
        if self.classifier_skipped:
            self.classifier_metrics, self.classifier_summary = [], pd.DataFrame()
            self.kept_features, self.best_classifier, self.text_variants, self.plm_classifier = None, None, [], None
            return
        self.classifier_summary = mean_std(self.classifier_rows, "variant", CLASSIFIER_METRICS)
        self.kept_features = self.classifier_rows.groupby("variant", sort=False)[["features", "text_features"]].mean()
        self.best_classifier = self.classifier_detail["best_variant"]
        self.text_variants = [v for v in self.kept_features.index if self.kept_features.loc[v, "text_features"] > 0]
        self.plm_classifier = (
            max(self.text_variants, key=self._valid_accuracy) if self.text_variants else self.best_classifier
        )

    def _summarise_views(self) -> None:
        """Mean ± std per model on every evaluation view, the served model, its no-text twin and the row
        that ranks each served list."""
        from plmrec.recsys.experiment import mean_std

        found = self.recommender_detail.get("views")
        self.view_rows = found if found is not None else pd.DataFrame()
        self.view_summaries: dict[str, pd.DataFrame] = {}
        self.view_metrics: dict[str, list[str]] = {}
        for view in views.VIEWS:
            if self.view_rows.empty:
                break
            rows = self.view_rows[self.view_rows["view"] == view]
            metrics = [self.primary, f"test_recall@{views.NEW_ITEM_K}"]
            if view == "new_items":
                metrics.append(f"test_{views.NEW_ITEM_SHARE}")
            if len(rows) and rows["test_customers"].max() > 0:  # e.g. leave-one-out has no new customer
                self.view_metrics[view] = metrics
                self.view_summaries[view] = mean_std(rows, "model", metrics)
        self.served = self.served_model()
        self.twin = row_registry.twin_of(self.served) if self.served in row_registry.names() else None
        self._lists = self._choose_list_rows()

    def served_model(self) -> str | None:
        """The row the bundle serves: registry.served_model, or (auto) the best on valid."""
        from plmrec.recsys.experiment import served_choice

        rows = self.recommender_rows
        if rows.empty:
            return None
        model, _ = served_choice(rows, self.params.registry.served_model, self.params.recommenders.primary_metric)
        return model if model in set(rows["model"]) else None

    def view_lifts(self) -> list:
        """Per view: the row serving the view's list against its no-text twin (where it reads text), and on
        new customers against popularity and co-purchase; each a Verdict carrying its figures (`.lift`)."""
        from plmrec.recsys.experiment import Verdict, lift, view_metric

        if self.served is None:
            return []
        out, text_free = [], {}
        for view, summary in self.view_summaries.items():
            served = self.served_on(view)
            twin = row_registry.twin_of(served)
            against = [(twin, "its no-text twin")]
            if served == twin:
                text_free[view], against = served, []
            metric = "test_" + view_metric(view, self.params.recommenders.primary_metric)
            if view == "new_customers":
                against += [("popularity", "popularity"), (views.CO_PURCHASE, "co-purchase item-kNN")]
            for other, words in against:
                if other != served and {served, other} <= set(summary.index):
                    line = lift(summary, metric, served, versus=other, label=f"{views.TITLES[view]}, served vs {words}")
                    line.tag_name = f"{view}.{line.tag_name}"
                    line.lift.update(view=view, against_twin=other == twin)
                    out.append(line)
        if text_free and not any(line.lift["against_twin"] for line in out):
            served = ", ".join(dict.fromkeys(text_free.values()))
            return [Verdict(f"The served model, {served}, reads no item text: no language-model stage is served"), *out]
        return out + [
            Verdict(f"{views.TITLES[view]}: the list served there, {row}'s, reads no item text")
            for view, row in text_free.items()
        ]

    def list_rows(self) -> dict[str, str]:
        """Per served list (plmrec.recsys.views.VIEW_OF_LIST), the row that ranks it."""
        return dict(self._lists)

    def _choose_list_rows(self) -> dict[str, str]:
        """With registry.served_model auto, each list's row is the best on valid on the list's view among
        the rows a bundle can serve (the served row where the view was not scored); else the named row
        on every list."""
        if self.served is None:
            return {}
        choices = self.view_choices(servable=True) if self.params.registry.served_model == "auto" else {}
        return {kind: choices.get(view, self.served) for kind, view in views.VIEW_OF_LIST.items()}

    def served_on(self, view: str) -> str | None:
        """The row that ranks the list `view` scores (new items: the discover list's)."""
        return self.list_rows().get(views.SERVED_LIST_OF_VIEW.get(view, "mixed"), self.served)

    def view_choices(self, *, servable: bool = False) -> dict[str, str]:
        """Per view, the model with the best mean valid figure of the view's metric (never the test one)."""
        from plmrec.recsys.experiment import view_metric

        out = {}
        for view in self.view_summaries:
            rows = self.view_rows[self.view_rows["view"] == view]
            if servable:  # rows a bundle can hold: registered rows the main table scored (not co-purchase)
                rows = rows[
                    rows["model"].isin(row_registry.names()) & rows["model"].isin(self.recommender_rows["model"])
                ]
            column = f"valid_{view_metric(view, self.params.recommenders.primary_metric)}"
            if len(rows):
                out[view] = str(rows.groupby("model", sort=False)[column].mean().idxmax())
        return out

    def view_table(self) -> pd.DataFrame:
        """One row per model, one column per view: the view's figure as 'mean ± std' (%)."""
        from plmrec.recsys.experiment import view_metric

        primary = self.params.recommenders.primary_metric
        models = list(dict.fromkeys(m for s in self.view_summaries.values() for m in s.index))
        table = pd.DataFrame({"model": models})
        for view, summary in self.view_summaries.items():
            names = [view_metric(view, primary)] + ([views.NEW_ITEM_SHARE] if view == "new_items" else [])
            for name in names:
                metric = f"test_{name}"
                table[f"{view} {name}"] = [
                    f"{summary.loc[m, ('mean', metric)] * 100:.1f} ± {summary.loc[m, ('std', metric)] * 100:.1f}"
                    if m in summary.index
                    else "-"
                    for m in models
                ]
        lists = self.list_rows()
        twins = {row_registry.twin_of(r) for r in lists.values()} - set(lists.values())
        table["role"] = [
            "served: " + ", ".join(k.replace("_", " ") for k, r in lists.items() if r == m)
            if m in lists.values()
            else "no-text twin"
            if m in twins
            else ""
            for m in models
        ]
        return table

    def _valid_accuracy(self, variant: str) -> float:
        rows = self.classifier_rows
        return rows[rows["variant"] == variant]["valid_accuracy"].mean()

    def verdicts(self) -> list[str]:
        from plmrec.recsys.classify import TEXT_THEN_SELECTION, plm_counterpart
        from plmrec.recsys.experiment import verdict

        classifier, recommender, primary = self.classifier_summary, self.recommender_summary, self.primary
        counterpart = (  # the text-then-selection row starts from vanilla; the cumulative rows from the row before
            "vanilla"
            if self.plm_classifier == TEXT_THEN_SELECTION
            else plm_counterpart(self.params.recommenders.classifier)
        )
        recommender_verdicts = [  # each recommender row against its vanilla counterparts, when both were evaluated
            verdict(recommender, primary, row.name, vanilla=versus.vanilla, label=versus.label)
            for row in row_registry.reported_rows()
            for versus in row.versus
            if {row.name, versus.vanilla} <= set(recommender.index)
        ]
        if self.classifier_skipped:
            return [
                f"XGBoost quantity label: skipped ({self.classifier_skipped})",
                *filter(None, recommender_verdicts),
                *self.view_lifts(),
            ]
        found = [
            verdict(
                classifier, "test_accuracy", self.plm_classifier, vanilla=counterpart, label="XGBoost quantity label"
            )
            if self.text_variants
            else "XGBoost quantity label: no variant kept a text feature (random-forest selection dropped them all)",
            verdict(
                classifier,
                "test_accuracy",
                self.best_classifier,
                vanilla="vanilla",
                label="XGBoost, best variant on valid",
            )
            if self.best_classifier != "vanilla"
            else "XGBoost: the variant chosen on valid accuracy is vanilla",
            *recommender_verdicts,
        ]
        return [v for v in found if v] + self.view_lifts()

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The classifier and recommender tables in the study's layout ('mean ± std' in %)."""
        from plmrec.recsys.experiment import format_table

        if self.classifier_skipped:
            return pd.DataFrame(), format_table(self.recommender_summary, self.recommender_metrics)
        kept = self.kept_features
        classifier = format_table(self.classifier_summary, self.classifier_metrics)
        classifier["features (text)"] = [
            f"{kept.loc[v, 'features']:.1f} ({kept.loc[v, 'text_features']:.1f})" for v in classifier["variant"]
        ]
        return classifier, format_table(self.recommender_summary, self.recommender_metrics)

    def write_reports(self, out: Path, verdicts: list[str]) -> None:
        """results.md, the per-run and summary CSVs, and the pictures, under `out`."""
        from plmrec.plots import plot_confusion, plot_curves, plot_importance
        from plmrec.recsys.experiment import CURVE_KS
        from plmrec.reports import markdown_table

        recommenders, (clf_table, rec_table) = self.params.recommenders, self.tables()
        classifier_section = (
            f"## XGBoost, quantity label\n\nSkipped: {self.classifier_skipped}.\n\n"
            if self.classifier_skipped
            else f"## XGBoost, 5-level quantity label (test, %, mean ± std over seeds {recommenders.seeds})\n\n"
            + markdown_table(clf_table)
            + f"\nVariant chosen on valid accuracy: {self.best_classifier}.\n\n"
        )
        (out / "results.md").write_text(
            classifier_section + f"## Recommenders (test, %, mean ± std over seeds {recommenders.seeds}; "
            f"{self.recommender_detail['test_customers']:,} customers)\n\n"
            + markdown_table(rec_table)
            + self._views_section()
            + "\n## Verdicts\n\n"
            + "".join(f"- {v}\n" for v in verdicts)
        )
        self.classifier_rows.to_csv(out / "classifier_runs.csv", index=False)
        self.recommender_rows.to_csv(out / "recommender_runs.csv", index=False)
        self.view_rows.to_csv(out / "view_runs.csv", index=False)
        self.view_table().to_csv(out / "view_table.csv", index=False)
        clf_table.to_csv(out / "classifier_table.csv", index=False)
        rec_table.to_csv(out / "recommender_table.csv", index=False)
        if not self.classifier_skipped:
            plot_confusion(
                self.classifier_detail["confusion_matrix"],
                out / "confusion_matrix_best.png",
                f"XGBoost {self.best_classifier}, test",
            )
            plot_importance(
                self.classifier_detail["importance"], out / "feature_importance.png", f"XGBoost {self.best_classifier}"
            )
        plot_curves(self.recommender_detail["precision_curves"], out / "precision_at_k.png", ks=CURVE_KS)
        last = self.recommender_detail["chosen"][recommenders.seeds[-1]]
        for name in (row.name for row in row_registry.ltr_rows()):
            if f"{name}_importance" in last:
                plot_importance(
                    last[f"{name}_importance"],
                    out / f"{tracking.safe_name(name)}_feature_importance.png",
                    f"{name} features",
                )

    def write_precision_curve(self, path: Path) -> None:
        """Test precision@K (K = 1..20, last seed) of the served model and its no-text twin, one row per
        (model, K), the table `dvc plots show` draws and `dvc plots diff` overlays across experiments."""
        from plmrec.recsys.experiment import CURVE_KS

        curves = self.recommender_detail["precision_curves"]
        shown = [m for m in dict.fromkeys([self.served, self.twin]) if m in curves]
        rows = [{"k": k, "precision": p, "model": m} for m in shown for k, p in zip(CURVE_KS, curves[m])]
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["k", "precision", "model"]).to_csv(path, index=False)

    def _views_section(self) -> str:
        from plmrec.reports import markdown_table

        if not self.view_summaries:
            return ""
        counts = self.recommender_detail.get("view_customers", {})
        who = "; ".join(f"{views.TITLES[v].lower()}: {counts.get(v, 0):,} customers" for v in self.view_summaries)
        last = self.recommender_detail["chosen"][self.params.recommenders.seeds[-1]]
        sources = "".join(
            f"- {name}: {_shares(last[f'{name}_importance_by_source'])}\n"
            for name in (row.name for row in row_registry.ltr_rows())
            if f"{name}_importance_by_source" in last
        )
        chosen = "; ".join(f"{v.replace('_', ' ')}: {m}" for v, m in self.view_choices().items())
        return (
            f"\n## Evaluation views (test, %, mean ± std over seeds; {who})\n\n"
            + markdown_table(self.view_table())
            + f"\nBest on valid per view: {chosen}. Lists served: {served_lists(self.list_rows())}.\n"
            + (f"\nLearning to rank, feature importance by source (share, last seed):\n\n{sources}" if sources else "")
        )

    @staticmethod
    def _mean_std(summary: pd.DataFrame, metrics: list[str]) -> dict:
        return {
            v: {
                m.replace("test_", ""): {
                    "mean": float(summary.loc[v, ("mean", m)]),
                    "std": float(summary.loc[v, ("std", m)]),
                }
                for m in metrics
            }
            for v in summary.index
        }

    def summary(self, verdicts: list[str]) -> dict:
        return {
            "classifier": self._mean_std(self.classifier_summary, self.classifier_metrics),
            "recommenders": self._mean_std(self.recommender_summary, self.recommender_metrics),
            "best_classifier_variant": self.best_classifier,
            "chosen": self.recommender_detail["chosen"],
            "verdicts": verdicts,
            "views": {v: self._mean_std(found, self.view_metrics[v]) for v, found in self.view_summaries.items()},
            "view_customers": self.recommender_detail.get("view_customers", {}),
            "served_model": self.served,
            "twin": self.twin,
            "view_choices": self.view_choices(),
            "list_rows": self.list_rows(),
            "lifts": [v.lift for v in verdicts if getattr(v, "lift", None)],
            "test_customers": self.recommender_detail["test_customers"],
            "seeds": self.params.recommenders.seeds,
        }

    def log(self, out: Path, verdicts: list[str], *, run_key: str | None, tracking_uri: str | None) -> None:
        """Means per variant on the stage run, the run tables and reports, headline metrics on the parent."""
        from plmrec.recsys.experiment import CURVE_KS

        classifier, recommender, recommenders = (
            self.classifier_summary,
            self.recommender_summary,
            self.params.recommenders,
        )
        for v in classifier.index:
            tracking.log_numeric(
                {f"{m.replace('test_', '')}_mean": classifier.loc[v, ("mean", m)] for m in self.classifier_metrics},
                f"classifier/{tracking.safe_name(v.lstrip('+'))}/",
            )
        for v in recommender.index:
            tracking.log_numeric(
                {
                    f"{m.replace('test_', '').replace('@', '_at_')}_mean": recommender.loc[v, ("mean", m)]
                    for m in self.recommender_metrics
                },
                f"recommender/{tracking.safe_name(v)}/",
            )
        for view, summary in self.view_summaries.items():
            for v in summary.index:
                tracking.log_numeric(
                    {
                        f"{m.replace('test_', '').replace('@', '_at_')}_mean": summary.loc[v, ("mean", m)]
                        for m in self.view_metrics[view]
                    },
                    f"view/{view}/{tracking.safe_name(v)}/",
                )
        for model, curve in self.recommender_detail["precision_curves"].items():  # K as the step: runs overlay
            for k, value in zip(CURVE_KS, curve):
                tracking.log_metric(f"precision_at_k/{tracking.safe_name(model)}", value, step=k)
        tracking.log_table(self.classifier_rows, "compare/classifier_runs.json")
        tracking.log_table(self.recommender_rows, "compare/recommender_runs.json")
        tracking.log_dir(out, "compare")
        tracking.set_verdicts(verdicts, title="Verdicts (test, mean ± std over seeds)")
        ltr = recommender.loc["ltr", ("mean", self.primary)] if "ltr" in recommender.index else 0.0
        headline = {f"test_{recommenders.primary_metric.replace('@', '_at_')}_ltr": ltr}
        for line in verdicts:  # the served list's lift over its row's no-text twin, per view
            found = getattr(line, "lift", None)
            if found and found.get("against_twin"):
                headline[f"lift_over_twin_{found['view']}_{found['metric'].replace('@', '_at_')}"] = found["difference"]
        if not self.classifier_skipped:
            headline["test_accuracy_plm_xgboost"] = classifier.loc[self.plm_classifier, ("mean", "test_accuracy")]
            headline["test_accuracy_best_xgboost"] = classifier.loc[self.best_classifier, ("mean", "test_accuracy")]
        tracking.log_parent_metrics(params=self.params, run_key=run_key, tracking_uri=tracking_uri, metrics=headline)


def served_lists(lists: dict[str, str]) -> str:
    """'mixed, buy again: ltr; discover: mf; basket: mf+repeat': each row with the lists it ranks."""
    return "; ".join(f"{', '.join(kinds)}: {row}" for row, kinds in views.lists_by_row(lists).items())


def _shares(shares: dict[str, float]) -> str:
    """'text 0.31, mf 0.22, ...': the largest share first."""
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
